//! Continuing an interrupted answer: the request a strategy sends, and the reconciliation of
//! the continuation's head with the text already emitted (no repeat, no gap, no honest text
//! dropped).

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

/// The assistant turn a continuation request continues (what [`continuation_messages`] made
/// of it: the final assistant turn of a prefill, or the one before the continue instruction);
/// `None` for a request that starts an answer.
pub fn continued_turn(messages: &[Message]) -> Option<&Message> {
    match messages {
        [.., last] if last.role == Role::Assistant => Some(last),
        [.., prior, last]
            if prior.role == Role::Assistant
                && last.role == Role::User
                && last.content == CONTINUE_INSTRUCTION =>
        {
            Some(prior)
        }
        _ => None,
    }
}

/// Under `instruction`, the shortest emitted text whose reproduction at the head of a
/// continuation is taken as evidence that the model restarted its answer. Below it, a match is
/// too likely to be honest text that happens to begin like the answer (`#` then `# Title`), so
/// nothing is trimmed: a model that restarts after so little repeats a few characters, visibly,
/// rather than an honest answer losing some silently.
pub const MIN_RESTART_EVIDENCE: usize = 32;

/// What reconciliation removed from the head of a continuation: always the whole emitted text,
/// reproduced by a provider that started its answer over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Trim {
    /// Bytes of the continuation dropped (the length of the emitted text).
    pub trimmed_bytes: usize,
}

/// How a continuation joined the emitted text, once its head is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Still deciding: the head so far is a prefix of the emitted text.
    Pending,
    /// The continuation is used as it came.
    Exact,
    /// The continuation reproduced the emitted text first; that reproduction was dropped.
    Trimmed(Trim),
}

/// A `restart` continuation that does not reproduce the emitted text: a different answer,
/// which cannot be joined to the one already delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverged {
    /// Bytes of the emitted text the restarted answer matched before it went its own way.
    pub matched_bytes: usize,
}

/// Joins a continuation to the text already emitted, per strategy, provably without dropping
/// honest text:
/// - `prefill`: the provider extended exactly what it was given; nothing is held or trimmed.
/// - `instruction`: the provider was shown the text and asked to go on. Only a head that
///   reproduces the *whole* emitted text (of at least [`MIN_RESTART_EVIDENCE`] bytes) is taken
///   as a restart and dropped; any other head, however it resembles the answer, is kept. A
///   head that is still a prefix of the emitted text is held until it decides.
/// - `restart`: the provider was sent the original request, so it must reproduce the emitted
///   text before anything new; that reproduction is dropped, and a head that differs is
///   [`Diverged`] (the attempt fails rather than splice two different answers).
///
/// A suffix of the emitted text at the continuation's head is never trimmed: repetition is
/// ordinary in answers (closing braces, table rows, refrains).
#[derive(Debug)]
pub struct Reconciler {
    strategy: ContinuationStrategy,
    emitted: String,
    held: String,
    join: Join,
}

impl Reconciler {
    pub fn new(emitted: &str, strategy: ContinuationStrategy) -> Reconciler {
        let passes_through = emitted.is_empty()
            || match strategy {
                ContinuationStrategy::Prefill => true,
                ContinuationStrategy::Instruction => emitted.len() < MIN_RESTART_EVIDENCE,
                ContinuationStrategy::Restart => false,
            };
        Reconciler {
            strategy,
            emitted: if passes_through {
                String::new()
            } else {
                emitted.to_string()
            },
            held: String::new(),
            join: if passes_through {
                Join::Exact
            } else {
                Join::Pending
            },
        }
    }

    /// How the continuation joined so far.
    pub fn join(&self) -> Join {
        self.join
    }

    /// Feeds one delta; returns the text that may be emitted now (once settled, the delta
    /// itself, moved through without a copy).
    pub fn push(&mut self, delta: String) -> Result<Option<String>, Diverged> {
        if self.join != Join::Pending {
            return Ok(Some(delta).filter(|d| !d.is_empty()));
        }
        self.held.push_str(&delta);
        if self.emitted.starts_with(self.held.as_str()) && self.held.len() < self.emitted.len() {
            return Ok(None);
        }
        self.settle()
    }

    /// The continuation finished: release whatever is held.
    pub fn finish(&mut self) -> Result<Option<String>, Diverged> {
        if self.join != Join::Pending {
            return Ok(None);
        }
        match self.strategy {
            // The whole answer it finished with is shorter than what was already delivered.
            ContinuationStrategy::Restart => Err(Diverged {
                matched_bytes: self.held.len(),
            }),
            // Honest text that happened to begin like the answer: kept.
            _ => {
                self.join = Join::Exact;
                Ok(Some(std::mem::take(&mut self.held)).filter(|h| !h.is_empty()))
            }
        }
    }

    /// The head no longer is a strict prefix of the emitted text: decide.
    fn settle(&mut self) -> Result<Option<String>, Diverged> {
        let held = std::mem::take(&mut self.held);
        if held.starts_with(self.emitted.as_str()) {
            let trimmed_bytes = self.emitted.len();
            self.join = Join::Trimmed(Trim { trimmed_bytes });
            self.emitted = String::new();
            return Ok(Some(held[trimmed_bytes..].to_string()).filter(|f| !f.is_empty()));
        }
        if self.strategy == ContinuationStrategy::Restart {
            let matched_bytes = common_prefix(&held, &self.emitted);
            return Err(Diverged { matched_bytes });
        }
        self.join = Join::Exact;
        self.emitted = String::new();
        Ok(Some(held))
    }
}

/// Length in bytes of the longest common prefix, on a char boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    use ContinuationStrategy::{Instruction, Prefill, Restart};

    fn run(emitted: &str, strategy: ContinuationStrategy, deltas: &[&str]) -> (String, Join) {
        let mut r = Reconciler::new(emitted, strategy);
        let mut out = String::new();
        for d in deltas {
            out.extend(r.push(d.to_string()).expect("joins"));
        }
        out.extend(r.finish().expect("joins"));
        (out, r.join())
    }

    const LONG: &str = "The first part of an answer long enough to count. ";

    #[test]
    fn prefill_is_never_trimmed() {
        // Each of these was cut by the old suffix-overlap rule.
        for (emitted, cont) in [
            ("{\n  \"a\": {\n    \"b\": 1\n  }\n", "}\n"),
            ("{\"a\": {\"b\": {}\n    }\n", "  }\n}"),
            ("| x | 1 |\n| x | 1 |\n", "| x | 1 |\n"),
            (LONG, LONG),
            ("w0 w1 w2 ", "w2 w3 "),
        ] {
            assert_eq!(
                run(emitted, Prefill, &[cont]),
                (cont.to_string(), Join::Exact)
            );
        }
    }

    #[test]
    fn instruction_keeps_a_head_that_only_resembles_the_answer() {
        assert_eq!(run("w0 w1 w2 ", Instruction, &["w2 ", "w3 "]).0, "w2 w3 ");
        assert_eq!(run("#", Instruction, &["# Title"]).0, "# Title");
        // Begins like the answer for a while, then goes on differently: all of it is kept.
        let emitted = format!("{LONG}and more");
        let (out, join) = run(
            &emitted,
            Instruction,
            &["The first part", " of something else"],
        );
        assert_eq!(out, "The first part of something else");
        assert_eq!(join, Join::Exact);
        // Ends while still a prefix of the answer: kept too.
        assert_eq!(run(LONG, Instruction, &["The first"]).0, "The first");
    }

    #[test]
    fn instruction_drops_a_reproduction_of_the_whole_emitted_text() {
        let (out, join) = run(
            LONG,
            Instruction,
            &[
                "The first part",
                " of an answer long enough to count. ",
                "next",
            ],
        );
        assert_eq!(out, "next");
        assert_eq!(
            join,
            Join::Trimmed(Trim {
                trimmed_bytes: LONG.len()
            })
        );
    }

    #[test]
    fn instruction_does_not_guess_on_short_emitted_text() {
        let short = "Sure, here";
        assert!(short.len() < MIN_RESTART_EVIDENCE);
        assert_eq!(
            run(short, Instruction, &["Sure, here is"]).0,
            "Sure, here is"
        );
    }

    #[test]
    fn restart_drops_the_reproduced_head() {
        assert_eq!(run("w0 w1 ", Restart, &["w0 ", "w1 ", "w2 "]).0, "w2 ");
        let (out, join) = run("w0 w1 ", Restart, &["w0 w1 w2 ", "w3 "]);
        assert_eq!(out, "w2 w3 ");
        assert_eq!(join, Join::Trimmed(Trim { trimmed_bytes: 6 }));
    }

    #[test]
    fn a_restart_that_differs_has_diverged() {
        let mut r = Reconciler::new("w0 w1 ", Restart);
        assert_eq!(r.push("w0 ".into()), Ok(None));
        assert_eq!(r.push("x1 ".into()), Err(Diverged { matched_bytes: 3 }));
        let mut r = Reconciler::new("w0 w1 ", Restart);
        assert_eq!(r.push("w0".into()), Ok(None));
        assert_eq!(r.finish(), Err(Diverged { matched_bytes: 2 }));
    }

    #[test]
    fn nothing_emitted_means_nothing_to_reconcile() {
        for s in [Prefill, Instruction, Restart] {
            assert_eq!(run("", s, &["a", "b"]).0, "ab");
        }
    }

    #[test]
    fn multibyte_text_is_safe() {
        assert_eq!(
            run("héllo wörld ", Restart, &["héllo wörld ", "ünd"]).0,
            "ünd"
        );
        let mut r = Reconciler::new("日本語 ", Restart);
        assert_eq!(r.push("日本x".into()), Err(Diverged { matched_bytes: 6 }));
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
