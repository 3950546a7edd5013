//! The payment domain the stages share: the payment and its statuses, the
//! attempt at a channel and its statuses, TCC
//! (Try / Confirm / Cancel), the books, and the names the stages hand off
//! to. A stage imports this module, `channels` and `payfleet_common`, never
//! another stage.

pub mod attempt;
pub mod handoff;
pub mod ledger;
pub mod payment;
pub mod step;
pub mod tcc;
