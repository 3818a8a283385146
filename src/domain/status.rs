//! Execution status and the one place its transitions are checked.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Expired
        )
    }

    /// `pending → processing → terminal`; a pending execution may also end directly
    /// (cancelled before it started, or failed with no usable route). Terminal is final.
    pub fn can_move_to(self, next: Status) -> bool {
        match (self, next) {
            (Status::Pending, Status::Processing) => true,
            (Status::Pending | Status::Processing, next) => next.is_terminal(),
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Processing,
            Status::Completed,
            Status::Failed,
            Status::Cancelled,
            Status::Expired,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;

    #[test]
    fn terminal_statuses_never_change() {
        for from in [Completed, Failed, Cancelled, Expired] {
            for to in [Pending, Processing, Completed, Failed, Cancelled, Expired] {
                assert!(!from.can_move_to(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn the_lifecycle_moves_forward_only() {
        assert!(Pending.can_move_to(Processing));
        assert!(Processing.can_move_to(Completed));
        assert!(Pending.can_move_to(Cancelled));
        assert!(!Processing.can_move_to(Pending));
        assert!(!Pending.can_move_to(Pending));
        assert_eq!(super::Status::parse("expired"), Some(Expired));
        assert_eq!(super::Status::parse("done"), None);
    }
}
