//! The OpenAI chat completions wire format, for any OpenAI-compatible API.

use serde::Deserialize;

use super::http::Http;
use super::sse::{self, Parsed};
use super::structured;
use super::{Delta, Embeddings, ProviderError, ProviderStream, StreamItem, UpstreamRequest};
use crate::domain::tools::{FunctionCall, ToolKind};
use crate::domain::{Message, ToolCall, ToolCallDelta, Usage};
use crate::settings::{ProviderKind, ProviderSettings};
use crate::store::AttemptLog;

pub struct OpenAi {
    url: String,
    embeddings_url: String,
    api_key: Option<String>,
    http: Http,
}

impl OpenAi {
    pub fn new(settings: &ProviderSettings, http: Http) -> OpenAi {
        let base = settings.base_url.as_deref().unwrap_or_default();
        OpenAi {
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            embeddings_url: format!("{}/embeddings", base.trim_end_matches('/')),
            api_key: settings.api_key.clone(),
            http,
        }
    }

    pub async fn open(
        &self,
        req: &UpstreamRequest,
        log: &AttemptLog,
    ) -> Result<ProviderStream, ProviderError> {
        let body = request_body(req);
        let http = self.http.client();
        let mut builder = http.post(&self.url);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let resp = sse::send(&http, builder, &body, log, ProviderError::from_status).await?;
        Ok(sse::parse_response(resp, log.clone(), |ev| {
            parse_data(&ev.data)
        }))
    }
}

impl OpenAi {
    /// `POST /embeddings` with float vectors.
    pub async fn embed(
        &self,
        model: &str,
        input: &[String],
        dimensions: Option<u32>,
    ) -> Result<Embeddings, ProviderError> {
        let mut body =
            serde_json::json!({"model": model, "input": input, "encoding_format": "float"});
        if let Some(d) = dimensions {
            body["dimensions"] = d.into();
        }
        let http = self.http.client();
        let mut builder = http.post(&self.embeddings_url);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let log = AttemptLog::disabled();
        let resp = sse::send(&http, builder, &body, &log, ProviderError::from_status).await?;
        let headroom = super::Headroom::from_headers(resp.headers(), crate::domain::now_ms());
        #[derive(Deserialize)]
        struct Item {
            embedding: Vec<f32>,
        }
        #[derive(Deserialize)]
        struct Answer {
            data: Vec<Item>,
            #[serde(default)]
            usage: Option<Usage>,
        }
        let answer: Answer = resp.json().await.map_err(|e| {
            ProviderError::new(
                crate::error::ErrorCode::ProviderError,
                format!("malformed embeddings answer: {e}"),
            )
        })?;
        if answer.data.len() != input.len() {
            return Err(ProviderError::new(
                crate::error::ErrorCode::ProviderError,
                format!(
                    "provider returned {} embeddings for {} inputs",
                    answer.data.len(),
                    input.len()
                ),
            ));
        }
        Ok(Embeddings {
            vectors: answer.data.into_iter().map(|i| i.embedding).collect(),
            prompt_tokens: answer.usage.map_or(0, |u| u.prompt_tokens),
            headroom,
        })
    }
}

/// The JSON body sent upstream (also what the debug log records).
pub fn request_body(req: &UpstreamRequest) -> serde_json::Value {
    let json = structured::plan(ProviderKind::Openai, req);
    let conversation = json.messages(&req.messages);
    let messages: Vec<WireMessage> = conversation.iter().map(WireMessage::from).collect();
    let mut body = serde_json::json!({
        "model": req.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let (Some(obj), serde_json::Value::Object(mut params)) = (
        body.as_object_mut(),
        serde_json::to_value(&req.params).unwrap_or_default(),
    ) {
        if req.params.tools.is_empty() {
            // OpenAI refuses these without `tools` (400), though they ask for nothing then.
            params.remove("tool_choice");
            params.remove("parallel_tool_calls");
        }
        // The route's structured-output mode decides what is sent, not the request alone.
        params.remove("response_format");
        if let structured::Native::ResponseFormat(format) = json.native {
            params.insert("response_format".into(), format.into_owned());
        }
        obj.extend(params);
    }
    body
}

/// A canonical message as OpenAI wants it: an assistant turn that only calls tools has
/// `content: null`, not an empty string; a message with images has content parts.
#[derive(serde::Serialize)]
struct WireMessage<'a> {
    role: crate::domain::Role,
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// A call as OpenAI's API takes it: without `extra_content`, which is data for other providers'
/// APIs and a field OpenAI's does not know.
#[derive(serde::Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: ToolKind,
    function: &'a FunctionCall,
}

impl<'a> From<&'a ToolCall> for WireToolCall<'a> {
    fn from(call: &'a ToolCall) -> Self {
        WireToolCall {
            id: &call.id,
            kind: call.kind,
            function: &call.function,
        }
    }
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Parts(Vec<WirePart<'a>>),
}

#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text {
        text: &'a str,
    },
    ImageUrl {
        image_url: &'a crate::domain::request::Image,
    },
}

impl<'a> WireContent<'a> {
    fn of(m: &'a Message) -> Option<WireContent<'a>> {
        if m.images.is_empty() {
            let only_calls = m.content.is_empty() && !m.tool_calls.is_empty();
            return (!only_calls).then_some(WireContent::Text(&m.content));
        }
        let text = (!m.content.is_empty()).then_some(WirePart::Text { text: &m.content });
        let images = m
            .images
            .iter()
            .map(|image_url| WirePart::ImageUrl { image_url });
        Some(WireContent::Parts(text.into_iter().chain(images).collect()))
    }
}

impl<'a> From<&'a Message> for WireMessage<'a> {
    fn from(m: &'a Message) -> Self {
        WireMessage {
            role: m.role,
            content: WireContent::of(m),
            name: m.name.as_deref(),
            tool_calls: m.tool_calls.iter().map(WireToolCall::from).collect(),
            tool_call_id: m.tool_call_id.as_deref(),
        }
    }
}

#[derive(Deserialize)]
struct ChunkPayload {
    #[serde(default)]
    choices: Vec<ChoicePayload>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoicePayload {
    #[serde(default)]
    delta: Option<DeltaPayload>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaPayload {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallPayload>,
}

#[derive(Deserialize)]
struct ToolCallPayload {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionPayload>,
}

#[derive(Deserialize)]
struct FunctionPayload {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl From<ToolCallPayload> for ToolCallDelta {
    fn from(p: ToolCallPayload) -> Self {
        let (name, arguments) = p.function.map_or((None, None), |f| (f.name, f.arguments));
        ToolCallDelta {
            index: p.index,
            id: p.id,
            name,
            arguments: arguments.unwrap_or_default(),
            thought_signature: None,
        }
    }
}

/// One SSE `data:` payload → a canonical item, an error event, or the end marker.
fn parse_data(data: &str) -> Parsed {
    if data.trim() == "[DONE]" {
        return Parsed::Done;
    }
    match serde_json::from_str::<ChunkPayload>(data) {
        Ok(chunk) => {
            if let Some(err) = chunk.error {
                return Parsed::Error(ProviderError::in_stream(&err));
            }
            let choice = chunk.choices.into_iter().next();
            let (delta, finish_reason) = match choice {
                Some(c) => (c.delta, c.finish_reason),
                None => (None, None),
            };
            let (text, calls) = delta.map_or((None, Vec::new()), |d| (d.content, d.tool_calls));
            Parsed::Item(StreamItem::Delta(Delta {
                text: text.filter(|t| !t.is_empty()),
                tool_calls: calls.into_iter().map(ToolCallDelta::from).collect(),
                finish_reason,
                usage: chunk.usage,
                ..Delta::default()
            }))
        }
        Err(e) => sse::skipped(data, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn run(body: &'static str) -> Vec<Result<StreamItem, ProviderError>> {
        sse::run_recorded(body, |ev| parse_data(&ev.data))
    }

    fn text(item: &Result<StreamItem, ProviderError>) -> Option<&str> {
        match item {
            Ok(StreamItem::Delta(d)) => d.text.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn a_full_stream_yields_text_finish_and_usage() {
        let items = run(concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
        ));
        assert_eq!(items.len(), 4);
        assert_eq!(text(&items[0]), Some("Hel"));
        assert_eq!(text(&items[1]), Some("lo"));
        match &items[3] {
            Ok(StreamItem::Delta(d)) => assert_eq!(d.usage.unwrap().total_tokens, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_call_fragments_come_through_with_their_index() {
        let items = run(concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n",
        ));
        let deltas: Vec<&Delta> = items
            .iter()
            .map(|i| match i {
                Ok(StreamItem::Delta(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deltas[0].tool_calls[0].id.as_deref(), Some("call_1"));
        assert_eq!(deltas[0].tool_calls[0].name.as_deref(), Some("get_weather"));
        assert_eq!(deltas[0].text, None);
        assert_eq!(deltas[1].tool_calls[0].arguments, "{\"city\"");
        assert_eq!(deltas[2].finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn assistant_turns_that_only_call_tools_send_null_content_and_no_extra_content() {
        let call: crate::domain::ToolCall = serde_json::from_value(serde_json::json!(
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
             "extra_content": {"google": {"thought_signature": "c2ln"}}}))
        .unwrap();
        let mut assistant = Message::new(crate::domain::Role::Assistant, "");
        assistant.tool_calls = vec![call];
        let mut result = Message::new(crate::domain::Role::Tool, "sunny");
        result.tool_call_id = Some("c1".into());
        let req = UpstreamRequest {
            model: "m".into(),
            messages: vec![assistant, result],
            params: crate::domain::Params::default(),
            fault: None,
            structured: Default::default(),
        };
        let body = request_body(&req);
        assert_eq!(body["messages"][0]["content"], serde_json::Value::Null);
        assert_eq!(
            body["messages"][0]["tool_calls"],
            serde_json::json!([{"id": "c1", "type": "function",
                                "function": {"name": "f", "arguments": "{}"}}])
        );
        assert_eq!(body["messages"][1]["tool_call_id"], "c1");
        assert!(body.get("tools").is_none(), "no tools key without tools");
    }

    #[test]
    fn tool_options_without_tools_stay_home() {
        use crate::domain::tools::{ToolChoice, ToolMode};
        let req = UpstreamRequest {
            model: "m".into(),
            messages: vec![Message::new(crate::domain::Role::User, "hi")],
            params: crate::domain::Params {
                tool_choice: Some(ToolChoice::Mode(ToolMode::None)),
                parallel_tool_calls: Some(false),
                ..crate::domain::Params::default()
            },
            fault: None,
            structured: Default::default(),
        };
        let body = request_body(&req);
        assert!(body.get("parallel_tool_calls").is_none(), "{body}");
        assert!(body.get("tool_choice").is_none(), "{body}");
    }

    #[test]
    fn images_go_as_content_parts_after_the_text() {
        let mut user = Message::new(crate::domain::Role::User, "what is this?");
        user.images = vec![crate::domain::request::Image {
            url: "https://example.test/cat.png".into(),
            detail: Some("low".into()),
        }];
        let req = UpstreamRequest {
            model: "m".into(),
            messages: vec![user],
            params: crate::domain::Params::default(),
            fault: None,
            structured: Default::default(),
        };
        assert_eq!(
            request_body(&req)["messages"][0]["content"],
            serde_json::json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "low"}}
            ])
        );
    }

    fn json_schema_format() -> serde_json::Value {
        serde_json::json!({"type": "json_schema", "json_schema": {"name": "todo", "strict": true,
            "schema": {"type": "object", "properties": {"title": {"type": "string"}},
                       "required": ["title"], "additionalProperties": false}}})
    }

    fn structured_req(mode: crate::settings::StructuredMode) -> UpstreamRequest {
        UpstreamRequest {
            model: "m".into(),
            messages: vec![Message::new(crate::domain::Role::User, "plan my day")],
            params: crate::domain::Params {
                response_format: Some(json_schema_format()),
                ..crate::domain::Params::default()
            },
            structured: mode,
            fault: None,
        }
    }

    #[test]
    fn structured_output_takes_the_shape_of_the_route_mode() {
        use crate::settings::StructuredMode;
        let body = request_body(&structured_req(StructuredMode::Native));
        assert_eq!(body["response_format"], json_schema_format());
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);

        let body = request_body(&structured_req(StructuredMode::JsonMode));
        assert_eq!(
            body["response_format"],
            serde_json::json!({"type": "json_object"})
        );
        assert_eq!(body["messages"][0]["role"], "system");
        let instruction = body["messages"][0]["content"].as_str().unwrap();
        assert!(
            instruction.contains(r#""required":["title"]"#),
            "{instruction}"
        );
        assert_eq!(body["messages"][1]["content"], "plan my day");

        let body = request_body(&structured_req(StructuredMode::Instructions));
        assert!(body.get("response_format").is_none(), "{body}");
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Answer with a single JSON value"));
    }

    #[test]
    fn json_object_without_the_word_json_gets_it_in_a_system_message() {
        let mut req = structured_req(crate::settings::StructuredMode::Native);
        req.params.response_format = Some(serde_json::json!({"type": "json_object"}));
        let body = request_body(&req);
        assert_eq!(
            body["response_format"],
            serde_json::json!({"type": "json_object"})
        );
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("JSON object"));
        req.messages[0].content = "plan my day, in json".into();
        assert_eq!(request_body(&req)["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_cut_stream_ends_with_stream_interrupted() {
        let items = run("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1].as_ref().unwrap_err().code,
            ErrorCode::StreamInterrupted
        );
    }

    #[test]
    fn finish_without_done_completes() {
        let items = run(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\n",
        );
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());
    }

    #[test]
    fn garbage_is_skipped_and_error_events_end_the_stream() {
        let items = run(concat!(
            "data: {not json\n\n",
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"never\"}}]}\n\n",
        ));
        assert!(matches!(items[0], Ok(StreamItem::Skipped { .. })));
        assert_eq!(
            items[1].as_ref().unwrap_err().code,
            ErrorCode::StreamInterrupted
        );
        assert_eq!(items.len(), 2);
    }
}
