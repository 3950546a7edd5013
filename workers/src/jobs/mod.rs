//! Background jobs every fleet process runs beside its stages: the expiry
//! sweeper, the balance roll-up and the refund sender.

pub mod refunds;
pub mod sweeper;
