//! Fault injection for crash tests: `PAYFLEET_FAULT=<point>@<n>` aborts the
//! process the n-th time it passes `<point>` (n defaults to 1). Unset, every
//! check is one relaxed atomic load.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

/// After a stage's transaction committed, before the input is acked.
pub const AFTER_COMMIT_BEFORE_ACK: &str = "after-commit-before-ack";
/// After a stage's transaction committed, before its outbox rows are handed
/// to the relay (they are claimed by this process until the lease runs out).
pub const AFTER_COMMIT_BEFORE_HANDOFF: &str = "after-commit-before-handoff";
/// After the relay's publishes were confirmed, before the rows are marked sent.
pub const AFTER_PUBLISH_BEFORE_MARK_SENT: &str = "after-publish-before-mark-sent";
/// After the dead-letter keeper committed a row, before it acks the DLQ message.
pub const KEEPER_AFTER_COMMIT: &str = "keeper-after-commit";

struct Armed {
    point: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("PAYFLEET_FAULT").ok()?;
            let (point, at) = match spec.split_once('@') {
                Some((point, n)) => (point.to_owned(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed {
                point,
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process here if this point is armed and its count is reached.
pub fn point(name: &str) {
    if let Some(armed) = armed() {
        if armed.point == name && armed.seen.fetch_add(1, Ordering::SeqCst) + 1 == armed.at {
            eprintln!("payfleet: fault injection: aborting at {name}");
            std::process::abort();
        }
    }
}
