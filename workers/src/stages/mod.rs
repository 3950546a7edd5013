//! The six stages of the chain (the chain order is `crate::STAGES`). A stage imports
//! `crate::domain`, the channels and `payfleet_common`, never another stage:
//! it hands off by name (`crate::domain::handoff`).

pub mod callback;
pub mod channel_call;
pub mod fund_freeze;
pub mod notification;
pub mod order_validation;
pub mod settlement;
