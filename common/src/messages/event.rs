//! Routing keys (and `event_type`) of BI events on `payfleet.events`.

pub const SUCCEEDED: &str = "payment.succeeded";
pub const FAILED: &str = "payment.failed";
pub const REJECTED: &str = "payment.rejected";
pub const EXCEPTION: &str = "payment.exception";
pub const REFUND_SUCCEEDED: &str = "refund.succeeded";
pub const REFUND_FAILED: &str = "refund.failed";
pub const REVERSED: &str = "payment.reversed";
pub const REVERSAL_FAILED: &str = "payment.reversal_failed";
pub const WITHDRAWAL_SUCCEEDED: &str = "withdrawal.succeeded";
pub const WITHDRAWAL_FAILED: &str = "withdrawal.failed";
pub const WITHDRAWAL_RETURNED: &str = "withdrawal.returned";
pub const TOPUP_SUCCEEDED: &str = "topup.succeeded";
pub const TOPUP_FAILED: &str = "topup.failed";
pub const TOPUP_EXCEPTION: &str = "topup.exception";
pub const PAYOUT_SUCCEEDED: &str = "payout.succeeded";
pub const PAYOUT_FAILED: &str = "payout.failed";
pub const PAYOUT_RETURNED: &str = "payout.returned";
pub const TRANSFER_SUCCEEDED: &str = "transfer.succeeded";
pub const TRANSFER_FAILED: &str = "transfer.failed";
