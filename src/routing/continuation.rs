//! Continuing an interrupted answer: the request a strategy sends, and the reconciliation of
//! the continuation's head with the text already emitted (no repeat, no gap).

use crate::domain::{Message, Role};
use crate::settings::ContinuationStrategy;

/// The user turn the `instruction` strategy appends after the partial answer.
pub const CONTINUE_INSTRUCTION: &str = "Your previous answer was cut off. Continue it exactly \
where it stopped: do not repeat any text already written, do not add a preamble, start with the \
very next character.";

/// The messages of a continuation request.
pub fn continuation_messages(
    original: &[Message],
    emitted: &str,
    strategy: ContinuationStrategy,
) -> Vec<Message> {
    let mut messages = original.to_vec();
    match strategy {
        ContinuationStrategy::Prefill => {
            messages.push(Message::new(Role::Assistant, emitted));
        }
        ContinuationStrategy::Instruction => {
            messages.push(Message::new(Role::Assistant, emitted));
            messages.push(Message::new(Role::User, CONTINUE_INSTRUCTION));
        }
        ContinuationStrategy::Restart => {}
    }
    messages
}

/// Shortest overlap between the emitted tail and the continuation head that is trimmed; a
/// shorter match is too likely to be a coincidence.
const MIN_OVERLAP: usize = 3;
/// How far back in the emitted text an overlap is looked for.
const OVERLAP_WINDOW: usize = 512;

/// Holds back the head of a continuation until it is clear whether it repeats emitted text,
/// then lets everything through unchanged.
#[derive(Debug)]
pub struct Reconciler {
    emitted: String,
    held: String,
    settled: bool,
}

impl Reconciler {
    pub fn new(emitted: &str) -> Reconciler {
        Reconciler {
            emitted: emitted.to_string(),
            held: String::new(),
            settled: emitted.is_empty(),
        }
    }

    /// Feeds one delta; returns the text that may be emitted now (once settled, the delta
    /// itself, moved through without a copy).
    pub fn push(&mut self, delta: String) -> Option<String> {
        if self.settled {
            return Some(delta).filter(|d| !d.is_empty());
        }
        self.held.push_str(&delta);
        if self.undecided() {
            return None;
        }
        self.settle()
    }

    /// The continuation ended: release whatever is held, reconciled.
    pub fn finish(&mut self) -> Option<String> {
        if self.settled {
            return None;
        }
        if self.emitted.starts_with(&self.held) {
            // It only repeated part of what was already emitted.
            self.settled = true;
            self.held.clear();
            return None;
        }
        self.settle()
    }

    /// Whether more text could still turn the held head into a repeat or an overlap.
    fn undecided(&self) -> bool {
        let e = &self.emitted;
        let h = &self.held;
        if e.starts_with(h.as_str()) && h.len() < e.len() {
            return true;
        }
        let window_start = floor_char_boundary(e, e.len().saturating_sub(OVERLAP_WINDOW));
        (window_start..e.len()).any(|i| {
            e.is_char_boundary(i) && e.len() - i > h.len() && e[i..].starts_with(h.as_str())
        })
    }

    fn settle(&mut self) -> Option<String> {
        self.settled = true;
        let held = std::mem::take(&mut self.held);
        let fresh = if let Some(rest) = held.strip_prefix(self.emitted.as_str()) {
            rest.to_string()
        } else {
            let k = overlap(&self.emitted, &held);
            held[k..].to_string()
        };
        Some(fresh).filter(|f| !f.is_empty())
    }
}

/// The longest head of `head` that the emitted text ends with, starting at a word boundary.
fn overlap(emitted: &str, head: &str) -> usize {
    let max = head.len().min(emitted.len()).min(OVERLAP_WINDOW);
    (MIN_OVERLAP..=max)
        .rev()
        .find(|&k| {
            head.is_char_boundary(k) && emitted.ends_with(&head[..k]) && {
                let start = emitted.len() - k;
                start == 0 || emitted[..start].ends_with(char::is_whitespace)
            }
        })
        .unwrap_or(0)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(emitted: &str, deltas: &[&str]) -> String {
        let mut r = Reconciler::new(emitted);
        let mut out = String::new();
        for d in deltas {
            out.extend(r.push(d.to_string()));
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn a_clean_continuation_passes_through() {
        assert_eq!(run("w0 w1 ", &["w2 ", "w3 "]), "w2 w3 ");
    }

    #[test]
    fn a_restarted_answer_skips_the_repeated_head() {
        assert_eq!(run("w0 w1 ", &["w0 ", "w1 ", "w2 "]), "w2 ");
        assert_eq!(run("w0 w1 ", &["w0 w1 w2 ", "w3 "]), "w2 w3 ");
    }

    #[test]
    fn an_overlapping_head_is_trimmed() {
        assert_eq!(run("w0 w1 w2 ", &["w2 ", "w3 "]), "w3 ");
        assert_eq!(run("w0 w1 w2 ", &["w1 w2 w3 "]), "w3 ");
    }

    #[test]
    fn short_coincidences_are_kept() {
        assert_eq!(run("the cat sat on", &["n the mat"]), "n the mat");
    }

    #[test]
    fn nothing_emitted_means_nothing_to_reconcile() {
        assert_eq!(run("", &["a", "b"]), "ab");
    }

    #[test]
    fn multibyte_text_is_safe() {
        assert_eq!(run("héllo wörld ", &["wörld ", "ünd"]), "ünd");
        assert_eq!(run("日本語 ", &["日本語 です"]), "です");
    }

    #[test]
    fn continuation_messages_follow_the_strategy() {
        let original = vec![Message::new(Role::User, "hi")];
        let p = continuation_messages(&original, "part", ContinuationStrategy::Prefill);
        assert_eq!(p.last().unwrap().role, Role::Assistant);
        let i = continuation_messages(&original, "part", ContinuationStrategy::Instruction);
        assert_eq!(i.len(), 3);
        assert_eq!(i[2].content, CONTINUE_INSTRUCTION);
        let r = continuation_messages(&original, "part", ContinuationStrategy::Restart);
        assert_eq!(r, original);
    }
}
