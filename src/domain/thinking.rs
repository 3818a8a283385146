//! Extended thinking: the reasoning blocks an Anthropic route streams before its answer, kept
//! whole (with the signature that lets a later turn send them back) and passed through to
//! clients that asked for them. A block is either thinking text with its signature, or a
//! redacted block (opaque data).

use serde::{Deserialize, Serialize};

/// `params.thinking`: let the model think, within `budget_tokens` (Anthropic requires it to be
/// at least 1024 and below `max_tokens`). Routes without extended thinking answer without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThinkingParam {
    pub budget_tokens: u32,
}

/// One finished thinking block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingBlock {
    Thinking { thinking: String, signature: String },
    RedactedThinking { data: String },
}

/// A thinking fragment as a provider streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkingDelta {
    /// More thinking text of the open block.
    Text(String),
    /// The open block's signature: the block is complete.
    Signature(String),
    /// A whole redacted block.
    Redacted(String),
}

/// Thinking blocks assembled from fragments. A block without its signature is incomplete: a
/// stream cut there leaves it out, and the answer's thinking starts over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThinkingAssembly {
    pub done: Vec<ThinkingBlock>,
    open: Option<String>,
}

impl ThinkingAssembly {
    pub fn push(&mut self, delta: &ThinkingDelta) {
        match delta {
            ThinkingDelta::Text(text) => self.open.get_or_insert_default().push_str(text),
            ThinkingDelta::Signature(signature) => {
                let thinking = self.open.take().unwrap_or_default();
                self.done.push(ThinkingBlock::Thinking {
                    thinking,
                    signature: signature.clone(),
                });
            }
            ThinkingDelta::Redacted(data) => self
                .done
                .push(ThinkingBlock::RedactedThinking { data: data.clone() }),
        }
    }

    /// Whether a block is half made (text without its signature yet).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty() && self.open.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_close_with_their_signature() {
        let mut a = ThinkingAssembly::default();
        a.push(&ThinkingDelta::Text("Let me ".into()));
        a.push(&ThinkingDelta::Text("think.".into()));
        assert!(a.is_open());
        a.push(&ThinkingDelta::Signature("sig".into()));
        a.push(&ThinkingDelta::Redacted("opaque".into()));
        assert!(!a.is_open());
        assert_eq!(
            a.done,
            vec![
                ThinkingBlock::Thinking {
                    thinking: "Let me think.".into(),
                    signature: "sig".into()
                },
                ThinkingBlock::RedactedThinking {
                    data: "opaque".into()
                }
            ]
        );
        let json = serde_json::to_value(&a.done[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "thinking", "thinking": "Let me think.", "signature": "sig"})
        );
    }
}
