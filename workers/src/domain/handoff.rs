//! Hand-offs between stages: every stage's name (its queue's routing key)
//! in one place, so that a stage names the next one without importing it,
//! and the outbox message for a hand-off made outside a stage's
//! transaction (the sweeper, the operator's commands).

use payfleet_common::{PaymentId, Topology, outbox::OutboxMessage};
use serde::Serialize;

pub const ORDER_VALIDATION: &str = "order-validation";
pub const FUND_FREEZE: &str = "fund-freeze";
pub const CHANNEL_CALL: &str = "channel-call";
pub const CALLBACK: &str = "callback";
pub const SETTLEMENT: &str = "settlement";
pub const NOTIFICATION: &str = "notification";

/// Every stage, in chain order.
pub const STAGES: [&str; 6] = [
    ORDER_VALIDATION,
    FUND_FREEZE,
    CHANNEL_CALL,
    CALLBACK,
    SETTLEMENT,
    NOTIFICATION,
];

/// The outbox message handing payment `payment_id` to `stage`, for a
/// hand-off made outside a stage's transaction; inside one, a stage uses
/// `StageTx::emit_to_stage`. The payment id is the correlation id.
pub fn to_stage(
    topology: &Topology,
    stage: &str,
    message_type: &str,
    payment_id: PaymentId,
    body: &impl Serialize,
) -> Result<OutboxMessage, serde_json::Error> {
    OutboxMessage::json(
        &topology.exchanges().stages,
        stage,
        message_type,
        Some(&payment_id.to_string()),
        body,
    )
}
