//! The payment domain the stages share: the payment and its statuses, the
//! attempt at a channel and its statuses, TCC
//! (Try / Confirm / Cancel), the books, and the names the stages hand off
//! to. A stage imports this module, `channels` and `payfleet_common`, never
//! another stage.

pub mod attempt;
pub mod business_day;
pub mod confirm_many;
pub mod handoff;
pub mod ledger;
pub mod limits;
pub mod merchant;
pub mod payment;
pub mod refund;
pub mod step;
pub mod stock;
pub mod tcc;
pub mod top_up;
pub mod transfer;
pub mod try_many;
pub mod webhook_delivery;
pub mod withdrawal;

use payfleet_common::runtime::StageError;

/// A status stored as text, read back: the one of `all` named `text`.
fn parse_status<S: Copy>(
    all: &[S],
    name: fn(S) -> &'static str,
    text: &str,
    what: &str,
) -> Result<S, StageError> {
    all.iter()
        .copied()
        .find(|status| name(*status) == text)
        .ok_or_else(|| StageError::permanent(format!("unknown {what} status `{text}`")))
}
