//! The Responses API's side of a request: what its response object echoes (instructions,
//! tools, sampling, background, …) and its own input items, kept beside the execution (the
//! execution keeps only the canonical chat request).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::store::Store;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub background: bool,
    #[serde(default = "stored")]
    pub store: bool,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// This request's input items in OpenAI's item shapes, each with an id (the conversation
    /// of a previous response is not repeated here).
    #[serde(default)]
    pub input: Vec<Value>,
    /// The tools as the client sent them (Responses' flat function shape).
    #[serde(default)]
    pub tools: Vec<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `text`, with `format` defaulted to `{"type": "text"}`.
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
}

fn stored() -> bool {
    true
}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            background: false,
            store: true,
            instructions: None,
            previous_response_id: None,
            input: Vec::new(),
            tools: Vec::new(),
            tool_choice: None,
            text: None,
            temperature: None,
            top_p: None,
            max_output_tokens: None,
            parallel_tool_calls: None,
            user: None,
        }
    }
}

impl Meta {
    pub fn save(&self, store: &Store, id: &str) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(self).expect("response meta serializes");
        store.put_response_meta(id, &bytes)?;
        Ok(())
    }

    /// The stored side of execution `id`; an execution submitted another way has none and
    /// reads as a plain response.
    pub fn load(store: &Store, id: &str) -> Result<Meta, ApiError> {
        Ok(match store.response_meta(id)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Meta::default(),
        })
    }
}
