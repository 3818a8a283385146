//! The conversation as the Anthropic and Gemini APIs want it: system text apart, and strictly
//! alternating user/assistant turns (consecutive same-role messages merged, each message kept
//! as its own text part).

use crate::domain::request::Stop;
use crate::domain::{Message, Params, Role};

/// Who speaks a turn; tool results have no turn of their own in these formats and are sent as
/// user text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn<'a> {
    pub speaker: Speaker,
    /// One entry per merged message, in order; never empty strings.
    pub texts: Vec<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation<'a> {
    pub system: Vec<&'a str>,
    pub turns: Vec<Turn<'a>>,
}

/// Splits off the system messages and merges consecutive same-speaker messages. Empty messages
/// are dropped: both APIs reject empty text parts.
pub fn conversation(messages: &[Message]) -> Conversation<'_> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn<'_>> = Vec::new();
    for m in messages.iter().filter(|m| !m.content.is_empty()) {
        let speaker = match m.role {
            Role::System => {
                system.push(m.content.as_str());
                continue;
            }
            Role::Assistant => Speaker::Assistant,
            Role::User | Role::Tool => Speaker::User,
        };
        match turns.last_mut() {
            Some(turn) if turn.speaker == speaker => turn.texts.push(&m.content),
            _ => turns.push(Turn {
                speaker,
                texts: vec![&m.content],
            }),
        }
    }
    Conversation { system, turns }
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

    #[test]
    fn system_is_separated_and_same_speaker_messages_merge() {
        let msgs = vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "a"),
            Message::new(Role::System, "and kind"),
            Message::new(Role::User, "b"),
            Message::new(Role::Tool, "result"),
            Message::new(Role::Assistant, ""),
            Message::new(Role::Assistant, "c"),
            Message::new(Role::User, "d"),
        ];
        let c = conversation(&msgs);
        assert_eq!(c.system, ["be brief", "and kind"]);
        let shape: Vec<_> = c
            .turns
            .iter()
            .map(|t| (t.speaker, t.texts.clone()))
            .collect();
        assert_eq!(
            shape,
            [
                (Speaker::User, vec!["a", "b", "result"]),
                (Speaker::Assistant, vec!["c"]),
                (Speaker::User, vec!["d"]),
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
