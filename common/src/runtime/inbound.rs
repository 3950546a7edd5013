//! A delivery as a stage sees it, and what its headers tell the runtime.

use std::time::Duration;

use lapin::message::Delivery;

use super::{Inbound, dead_letter};
use crate::broker::{self, header};

/// The handler's view of a delivery. What upstream published to the ingress
/// exchange keeps none of the fleet's internal `x-payfleet-*` headers (the
/// attempt and suspect counters, failure and replay marks), only its
/// signature: upstream cannot spend a message's retries or force the
/// crash-loop path. The same holds for a message put straight on a queue
/// through the default exchange. The fleet's own retries and replays arrive
/// through the stages exchange, their headers intact.
pub fn inbound(stage: &str, delivery: &Delivery, ingress_exchange: &str) -> Inbound {
    let props = &delivery.properties;
    let mut headers = props.headers().clone().unwrap_or_default();
    // The fleet publishes only through named exchanges: what came through
    // the ingress exchange, or straight to a queue through the default
    // exchange, is not the fleet's own.
    let exchange = delivery.exchange.as_str();
    if exchange == ingress_exchange || exchange.is_empty() {
        headers = from_upstream(headers);
    }
    Inbound {
        stage: stage.to_owned(),
        message_id: props
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| dead_letter::body_message_id(&delivery.data)),
        correlation_id: props
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned()),
        message_type: props.kind().as_ref().map(|t| t.as_str().to_owned()),
        attempt: broker::header_i64(Some(&headers), header::ATTEMPT)
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX)) as u32,
        redelivered: delivery.redelivered,
        suspect: delivery.redelivered || headers.contains_key(header::SUSPECT),
        routing_key: delivery.routing_key.as_str().to_owned(),
        headers,
        body: delivery.data.clone(),
    }
}

/// How long a first delivery relayed by the outbox waited in its queue:
/// from the relay's stamp to now. Retries (which also sat in a delay
/// queue), copies bounced for a busy lock, suspects and what upstream
/// published carry no meaningful stamp.
pub(super) fn queue_wait(inbound: &Inbound) -> Option<Duration> {
    if inbound.attempt > 0 || inbound.suspect || inbound.headers.contains_key(header::LOCK_WAITS) {
        return None;
    }
    let relayed_at = broker::header_i64(Some(&inbound.headers), header::RELAYED_AT_MS)?;
    let waited_ms = chrono::Utc::now().timestamp_millis() - relayed_at;
    Some(Duration::from_millis(u64::try_from(waited_ms).unwrap_or(0)))
}

/// Upstream's headers without the fleet's internal ones.
pub fn from_upstream(headers: lapin::types::FieldTable) -> lapin::types::FieldTable {
    let mut map = headers.inner().clone();
    map.retain(|key, _| {
        let key = key.as_str().to_ascii_lowercase();
        !key.starts_with(header::INTERNAL_PREFIX) || key == crate::messages::SIGNATURE_HEADER
    });
    map.into()
}
