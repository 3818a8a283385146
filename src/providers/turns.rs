//! The conversation as the Anthropic and Gemini APIs want it: system text apart, and strictly
//! alternating user/assistant turns (consecutive same-role messages merged, each message kept
//! as its own part), tool calls as parts of assistant turns, tool results and images as parts
//! of user turns.

use crate::domain::request::{Image, Stop};
use crate::domain::{Message, Params, Role, ThinkingBlock, ToolCall};

/// Who speaks a turn; tool results have no turn of their own in these formats: they are parts
/// of a user turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

/// One piece of a turn, in the order the wire formats need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part<'a> {
    /// Never an empty string (both APIs reject empty text parts).
    Text(&'a str),
    /// An image a user message shows, placed before that message's text (both APIs advise
    /// images first).
    Image(&'a Image),
    /// A call an assistant turn made.
    Call(&'a ToolCall),
    /// A thinking block an assistant turn began with (Anthropic takes it back; Gemini has no
    /// use for another model's thinking and leaves it out).
    Thinking(&'a ThinkingBlock),
    /// The answer to a call: its id, the function it answers (Gemini identifies results by
    /// name) and the result text.
    Result {
        call_id: &'a str,
        function: &'a str,
        content: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn<'a> {
    pub speaker: Speaker,
    /// Never empty: a turn exists because a part was added to it.
    pub parts: Vec<Part<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation<'a> {
    pub system: Vec<&'a str>,
    pub turns: Vec<Turn<'a>>,
}

/// Splits off the system messages and merges consecutive same-speaker messages. Empty texts
/// are dropped; a tool result is kept even when empty, since its call needs an answer.
pub fn conversation(messages: &[Message]) -> Conversation<'_> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let (speaker, parts) = match m.role {
            Role::System => {
                if !m.content.is_empty() {
                    system.push(m.content.as_str());
                }
                continue;
            }
            Role::User => {
                let images = m.images.iter().map(Part::Image);
                (Speaker::User, images.chain(text(m)).collect())
            }
            Role::Assistant => {
                let thinking = m.thinking.iter().map(Part::Thinking);
                let calls = m.tool_calls.iter().map(Part::Call);
                (
                    Speaker::Assistant,
                    thinking.chain(text(m)).chain(calls).collect(),
                )
            }
            Role::Tool => (Speaker::User, vec![result(m, &messages[..i])]),
        };
        for part in parts {
            push(&mut turns, speaker, part);
        }
    }
    Conversation { system, turns }
}

fn text(m: &Message) -> impl Iterator<Item = Part<'_>> {
    Some(m.content.as_str())
        .filter(|t| !t.is_empty())
        .map(Part::Text)
        .into_iter()
}

/// A tool message as a result part. Validation guarantees the call it answers comes earlier;
/// the empty name is only a fallback for a conversation built without that check.
fn result<'a>(m: &'a Message, earlier: &'a [Message]) -> Part<'a> {
    Part::Result {
        call_id: m.tool_call_id.as_deref().unwrap_or_default(),
        function: m.answered_function(earlier).unwrap_or_default(),
        content: &m.content,
    }
}

/// Adds a part to the last turn if it has the same speaker, else starts a turn. Results go
/// before any text of their user turn: Anthropic requires the answers to the calls first, and
/// Gemini takes the parts in any order.
fn push<'a>(turns: &mut Vec<Turn<'a>>, speaker: Speaker, part: Part<'a>) {
    match turns.last_mut() {
        Some(turn) if turn.speaker == speaker => {
            let at = match part {
                Part::Result { .. } => turn
                    .parts
                    .iter()
                    .take_while(|p| matches!(p, Part::Result { .. }))
                    .count(),
                Part::Text(_) | Part::Image(_) | Part::Call(_) | Part::Thinking(_) => {
                    turn.parts.len()
                }
            };
            turn.parts.insert(at, part);
        }
        _ => turns.push(Turn {
            speaker,
            parts: vec![part],
        }),
    }
}

/// The stop sequences as a list, whichever form the request used.
pub fn stop_sequences(params: &Params) -> Option<Vec<String>> {
    match &params.stop {
        None => None,
        Some(Stop::One(s)) => Some(vec![s.clone()]),
        Some(Stop::Many(v)) => Some(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tools::{FunctionCall, ToolKind};

    #[test]
    fn system_is_separated_and_same_speaker_messages_merge() {
        let msgs = vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "a"),
            Message::new(Role::System, "and kind"),
            Message::new(Role::User, "b"),
            Message::new(Role::Assistant, ""),
            Message::new(Role::Assistant, "c"),
            Message::new(Role::User, "d"),
        ];
        let c = conversation(&msgs);
        assert_eq!(c.system, ["be brief", "and kind"]);
        let shape: Vec<_> = c
            .turns
            .iter()
            .map(|t| (t.speaker, t.parts.clone()))
            .collect();
        assert_eq!(
            shape,
            [
                (Speaker::User, vec![Part::Text("a"), Part::Text("b")]),
                (Speaker::Assistant, vec![Part::Text("c")]),
                (Speaker::User, vec![Part::Text("d")]),
            ]
        );
    }

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: ToolKind::Function,
            function: FunctionCall {
                name: name.into(),
                arguments: "{}".into(),
            },
            extra_content: None,
        }
    }

    fn answer(id: &str, content: &str) -> Message {
        Message {
            tool_call_id: Some(id.into()),
            ..Message::new(Role::Tool, content)
        }
    }

    #[test]
    fn calls_follow_their_text_and_results_lead_their_user_turn() {
        let (x, y) = (call("c1", "weather"), call("c2", "time"));
        let msgs = vec![
            Message::new(Role::User, "go"),
            Message {
                tool_calls: vec![x.clone(), y.clone()],
                ..Message::new(Role::Assistant, "checking")
            },
            answer("c1", "3 degrees"),
            Message::new(Role::User, "and hurry"),
            answer("c2", ""),
        ];
        let c = conversation(&msgs);
        assert_eq!(c.turns.len(), 3);
        assert_eq!(
            c.turns[1].parts,
            [Part::Text("checking"), Part::Call(&x), Part::Call(&y)]
        );
        assert_eq!(
            c.turns[2].parts,
            [
                Part::Result {
                    call_id: "c1",
                    function: "weather",
                    content: "3 degrees"
                },
                Part::Result {
                    call_id: "c2",
                    function: "time",
                    content: ""
                },
                Part::Text("and hurry"),
            ]
        );
    }

    #[test]
    fn images_lead_the_text_of_their_message() {
        let image = Image {
            url: "https://example.test/cat.png".into(),
            detail: None,
        };
        let msgs = vec![
            Message::new(Role::User, "first"),
            Message {
                images: vec![image.clone()],
                ..Message::new(Role::User, "what is this?")
            },
        ];
        let c = conversation(&msgs);
        assert_eq!(
            c.turns[0].parts,
            [
                Part::Text("first"),
                Part::Image(&image),
                Part::Text("what is this?")
            ]
        );
    }

    #[test]
    fn stop_is_always_a_list() {
        let mut p = Params::default();
        assert_eq!(stop_sequences(&p), None);
        p.stop = Some(Stop::One("x".into()));
        assert_eq!(stop_sequences(&p), Some(vec!["x".to_string()]));
    }
}
