//! Background jobs every fleet process runs beside its stages: the expiry
//! sweeper, the balance roll-up, the refund sender and the daily merchant
//! payouts.

pub mod payouts;
pub mod refunds;
pub mod sweeper;
