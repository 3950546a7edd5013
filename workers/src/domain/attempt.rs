//! An attempt: one try at taking a payment's money at a channel, keyed by
//! our attempt id (the channel's idempotency key). Its status follows the
//! channel's answers and only moves forward; the SQL that moves it is a
//! compare-and-set on the open statuses.
//!
//! ```text
//! sending ─▶ pending | unknown ─▶ succeeded | failed | closed
//! ```

use payfleet_common::{messages::ChannelStatus, runtime::StageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptStatus {
    /// Committed before the call: the channel may or may not have it.
    Sending,
    /// The channel accepted it; the result comes by webhook or query.
    Pending,
    /// No answer (timeout, connection error, 5xx): status queries decide.
    Unknown,
    /// The channel took the money. Terminal.
    Succeeded,
    /// The channel refused it. Terminal.
    Failed,
    /// Closed at the channel (or never sent): nothing can be paid. Terminal.
    Closed,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 6] = [
        AttemptStatus::Sending,
        AttemptStatus::Pending,
        AttemptStatus::Unknown,
        AttemptStatus::Succeeded,
        AttemptStatus::Failed,
        AttemptStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Sending => "sending",
            AttemptStatus::Pending => "pending",
            AttemptStatus::Unknown => "unknown",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "attempt")
    }

    /// Whether the channel's word on it is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AttemptStatus::Succeeded | AttemptStatus::Failed | AttemptStatus::Closed
        )
    }

    /// Still waiting for the channel's final word (the SQL's
    /// `status IN ('sending', 'pending', 'unknown')`).
    pub fn is_open(self) -> bool {
        !self.is_terminal()
    }

    /// The status a channel's final answer puts an open attempt in.
    pub fn of(result: ChannelStatus) -> Self {
        match result {
            ChannelStatus::Succeeded => AttemptStatus::Succeeded,
            ChannelStatus::Failed => AttemptStatus::Failed,
        }
    }
}

impl std::fmt::Display for AttemptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_and_the_open_ones_are_the_sqls() {
        for status in AttemptStatus::ALL {
            assert_eq!(AttemptStatus::parse(status.as_str()).ok(), Some(status));
        }
        let open: Vec<&str> = AttemptStatus::ALL
            .into_iter()
            .filter(|s| s.is_open())
            .map(AttemptStatus::as_str)
            .collect();
        assert_eq!(open, ["sending", "pending", "unknown"]);
    }
}
