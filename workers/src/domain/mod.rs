//! The payment domain the stages share: the payment and its statuses, TCC
//! (Try / Confirm / Cancel), the books, and the names the stages hand off
//! to. A stage imports this module, `channels` and `payfleet_common`, never
//! another stage.

pub mod handoff;
pub mod ledger;
pub mod payment;
pub mod step;
pub mod stock;
pub mod tcc;
