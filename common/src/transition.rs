//! Compare-and-set state transitions. `UPDATE … SET status = $to WHERE
//! status = $from` that matches nothing is one of three things (ARCHITECTURE
//! rule 1), and each is handled as itself.

use crate::runtime::Outcome;

/// A status of a state machine whose statuses only move forward.
pub trait Status: Copy + Eq + std::fmt::Debug {
    /// Position along the forward path; later statuses have larger ranks.
    fn rank(self) -> u8;
    /// Whether no transition leaves this status.
    fn is_terminal(self) -> bool;
}

/// Why a compare-and-set matched nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasMiss {
    /// The state is already at or past the target: a stale duplicate → ack.
    Stale,
    /// The state this message needs does not exist yet → retry.
    TooEarly,
    /// A different final state was reached (paid vs failed) → exception.
    Conflict,
}

/// Classifies a missed `from → to` given the status found (`None`: no row yet).
pub fn classify<S: Status>(found: Option<S>, from: S, to: S) -> CasMiss {
    match found {
        None => CasMiss::TooEarly,
        Some(current) if current == to => CasMiss::Stale,
        Some(current) if current.is_terminal() && to.is_terminal() => CasMiss::Conflict,
        Some(current) if current.rank() < from.rank() => CasMiss::TooEarly,
        Some(current) if current.is_terminal() && current.rank() < to.rank() => CasMiss::Conflict,
        Some(_) => CasMiss::Stale,
    }
}

impl CasMiss {
    /// The runtime outcome for this miss.
    pub fn outcome(self, what: impl Into<String>) -> Outcome {
        let reason = what.into();
        match self {
            CasMiss::Stale => Outcome::Stale { reason },
            CasMiss::TooEarly => Outcome::NotYet { reason },
            CasMiss::Conflict => Outcome::Exception { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Attempt {
        Sending,
        Unknown,
        Succeeded,
        Failed,
    }

    impl Status for Attempt {
        fn rank(self) -> u8 {
            match self {
                Attempt::Sending => 0,
                Attempt::Unknown => 1,
                Attempt::Succeeded | Attempt::Failed => 2,
            }
        }
        fn is_terminal(self) -> bool {
            matches!(self, Attempt::Succeeded | Attempt::Failed)
        }
    }

    #[test]
    fn a_duplicate_of_a_done_step_is_stale() {
        assert_eq!(
            classify(
                Some(Attempt::Succeeded),
                Attempt::Unknown,
                Attempt::Succeeded
            ),
            CasMiss::Stale
        );
    }

    #[test]
    fn a_message_before_its_row_is_too_early() {
        assert_eq!(
            classify(None, Attempt::Sending, Attempt::Succeeded),
            CasMiss::TooEarly
        );
    }

    #[test]
    fn opposite_final_states_conflict() {
        assert_eq!(
            classify(Some(Attempt::Failed), Attempt::Unknown, Attempt::Succeeded),
            CasMiss::Conflict
        );
        assert_eq!(
            classify(Some(Attempt::Succeeded), Attempt::Sending, Attempt::Failed),
            CasMiss::Conflict
        );
    }

    #[test]
    fn an_older_step_arriving_late_is_stale() {
        // Sending → Unknown arrives after the attempt already succeeded.
        assert_eq!(
            classify(Some(Attempt::Succeeded), Attempt::Sending, Attempt::Unknown),
            CasMiss::Stale
        );
    }
}
