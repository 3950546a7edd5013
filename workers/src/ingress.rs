//! Webhook ingress: `POST /callbacks/<channel>/<payment id>` for trades
//! and their refunds, `POST /callbacks/<channel>/payouts/<withdrawal id>`
//! for payouts. The channel's adapter verifies the notice (its signature
//! and timestamp window) and reads it; the ingress knows no channel by name.
//! It stores the raw payload in the integration log (with the body byte for
//! byte and the signed timestamp and signature as sent, so it can be
//! verified again), publishes the result to the callback stage with a
//! confirm, and answers 200 fast. A bad or stale signature gets 401 and
//! changes nothing; a notice that decides nothing yet (pending) is logged
//! and acknowledged (statuses never move backwards). A webhook for an
//! attempt not yet committed is published all the same: the callback stage
//! retries it until it is. A notice is taken only for an attempt of the
//! payment in its address, at the channel of its address, which is also
//! the channel it names; anything else is refused with a 4xx, counted and
//! logged as refused, and kept out of every payment's integration log. A
//! notice about a refund of the attempt's charge (a refund the channel
//! finished later) goes to callback as the refund's result, held to the
//! addressed payment there.
//!
//! A payout's notice (a paid payout sent back by the payee's bank, say) is
//! taken the same way for the withdrawal in its address, at the channel
//! that pays it out: it goes to the payouts' integration log
//! (`withdrawal_log`) and, when final, to callback as the withdrawal's
//! result; a duplicate notice is the same message.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use payfleet_common::{
    AttemptId, PaymentId,
    broker::{self, Outgoing},
    messages::{ChannelResult, ChannelStatus, RefundStep, SCHEMA_VERSION, kind, stable_id},
    runtime::Shared,
};
use serde_json::Value;
use uuid::Uuid;

mod payout;

use crate::channels::{AdapterError, Adapters, ChannelAdapter, WebhookNotice, WebhookRefusal};

/// The payment's route, and the owner and channel of the notice's attempt
/// when it is committed.
type Owner = (Option<String>, Option<PaymentId>, Option<String>);

type Answer = (StatusCode, &'static str);

struct Ingress {
    shared: Arc<Shared>,
    adapters: Adapters,
}

pub fn router(shared: Arc<Shared>) -> Router {
    let adapters = Adapters::new(shared.settings.channel_timeout);
    Router::new()
        .route("/callbacks/{channel}/{payment_id}", post(receive))
        .route(
            "/callbacks/{channel}/payouts/{withdrawal_id}",
            post(payout::receive),
        )
        .with_state(Arc::new(Ingress { shared, adapters }))
}

async fn receive(
    State(ingress): State<Arc<Ingress>>,
    Path((channel, payment_id)): Path<(String, PaymentId)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let shared = &ingress.shared;
    let notice = match verify(&ingress, &channel, &headers, &body).await {
        Ok(notice) => notice,
        Err(answer) => return answer,
    };
    let attempt_id = notice.attempt_id;
    if notice.channel != channel {
        return refuse(
            &channel,
            payment_id,
            attempt_id,
            StatusCode::CONFLICT,
            "the notice names another channel\n",
        );
    }
    match misdirected(shared, &channel, payment_id, attempt_id).await {
        Ok(None) => {}
        Ok(Some((status, why))) => return refuse(&channel, payment_id, attempt_id, status, why),
        Err(answer) => return answer,
    }
    // The notice as received: the signed bytes and both headers as sent, so
    // the signature can be checked again later (the JSON is for reading).
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let logged = sqlx::query(
        "INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload, raw_body, signed_timestamp, signature)
         VALUES ($1, $2, $3, 'callback', $4, $5, $6, $7)",
    )
    .bind(payment_id)
    .bind(attempt_id)
    .bind(&channel)
    .bind(&raw)
    .bind(body.as_ref())
    .bind(&notice.signed_timestamp)
    .bind(&notice.signature)
    .execute(&shared.pool)
    .await;
    if logged.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
    }
    if let Some(refund) = &notice.refund {
        let Some(result) = refund.result else {
            return (StatusCode::OK, "noted\n");
        };
        let mut step = RefundStep::new(refund.refund_id, payment_id);
        step.result = Some(result);
        step.reason = notice.reason.clone();
        return hand_to_callback(
            shared,
            channel_notice_id(&channel, &notice),
            &payment_id.to_string(),
            kind::REFUND_RESULT,
            &step,
        )
        .await;
    }
    let Some(status) = notice.status else {
        return (StatusCode::OK, "noted\n");
    };
    publish(shared, &channel, payment_id, status, notice).await
}

/// The notice as the channel's adapter verified and read it, or the answer
/// that refuses it.
async fn verify(
    ingress: &Ingress,
    channel: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<WebhookNotice, Answer> {
    let adapter = adapter(ingress, channel).await?;
    let tolerance = ingress.shared.settings.callback_tolerance;
    adapter
        .verify_webhook(headers, body, tolerance)
        .map_err(refusal_answer)
}

/// The adapter of the channel in a notice's address, or the answer that
/// refuses the notice.
async fn adapter(ingress: &Ingress, channel: &str) -> Result<Arc<dyn ChannelAdapter>, Answer> {
    match ingress.adapters.get(&ingress.shared.pool, channel).await {
        Ok(adapter) => Ok(adapter),
        Err(AdapterError::Unknown(_) | AdapterError::Unbuildable { .. }) => {
            Err((StatusCode::NOT_FOUND, "unknown channel\n"))
        }
        Err(error) => {
            tracing::warn!(%error, "webhook ingress: channel unavailable");
            Err((StatusCode::SERVICE_UNAVAILABLE, "try again\n"))
        }
    }
}

/// The answer to a notice its adapter refused, counted when it is a
/// forgery or a replay; a trade's and a payout's alike.
fn refusal_answer(refusal: WebhookRefusal) -> Answer {
    match refusal {
        WebhookRefusal::NotTaken => (StatusCode::NOT_FOUND, "unknown channel\n"),
        WebhookRefusal::BadSignature => {
            metrics::counter!("payfleet_webhooks_in_total", "result" => "bad_signature")
                .increment(1);
            (StatusCode::UNAUTHORIZED, "bad signature\n")
        }
        WebhookRefusal::Stale => {
            metrics::counter!("payfleet_webhooks_in_total", "result" => "stale").increment(1);
            (StatusCode::UNAUTHORIZED, "stale timestamp\n")
        }
        WebhookRefusal::Unreadable => (StatusCode::BAD_REQUEST, "unreadable notice\n"),
        WebhookRefusal::UnreadableMoney => {
            (StatusCode::BAD_REQUEST, "unreadable amount or currency\n")
        }
        WebhookRefusal::UnknownAttempt => (StatusCode::BAD_REQUEST, "unknown out_trade_no\n"),
    }
}

/// Why a notice for `attempt_id` does not belong to `payment_id` at
/// `channel`, if it does not. The attempt as we committed it; one the
/// notice overtook is held to the payment's route here, and to its own row
/// by callback.
async fn misdirected(
    shared: &Shared,
    channel: &str,
    payment_id: PaymentId,
    attempt_id: AttemptId,
) -> Result<Option<Answer>, Answer> {
    let owner = sqlx::query_as::<_, Owner>(
        "SELECT p.channel, a.payment_id, a.channel
         FROM payments p LEFT JOIN payment_attempts a ON a.id = $2 WHERE p.id = $1",
    )
    .bind(payment_id)
    .bind(attempt_id)
    .fetch_optional(&shared.pool)
    .await;
    Ok(match owner {
        Err(error) => {
            tracing::warn!(%error, "webhook ingress: database unavailable");
            return Err((StatusCode::SERVICE_UNAVAILABLE, "try again\n"));
        }
        Ok(None) => Some((StatusCode::NOT_FOUND, "unknown payment\n")),
        Ok(Some((_, Some(owner), _))) if owner != payment_id => Some((
            StatusCode::CONFLICT,
            "the attempt belongs to another payment\n",
        )),
        Ok(Some((_, Some(_), at))) if at.as_deref() != Some(channel) => {
            Some((StatusCode::CONFLICT, "the attempt is at another channel\n"))
        }
        Ok(Some((routed, None, _))) if routed.as_deref() != Some(channel) => {
            Some((StatusCode::CONFLICT, "the payment is at another channel\n"))
        }
        Ok(Some(_)) => None,
    })
}

/// Publishes a notice's result to the callback stage, with a confirm.
async fn publish(
    shared: &Shared,
    channel: &str,
    payment_id: PaymentId,
    status: ChannelStatus,
    notice: WebhookNotice,
) -> Answer {
    let message_id = channel_notice_id(channel, &notice);
    let result = ChannelResult {
        schema_version: SCHEMA_VERSION,
        payment_id,
        attempt_id: notice.attempt_id,
        channel: channel.to_owned(),
        status,
        amount: notice.amount,
        currency: notice.currency,
        channel_reference: Some(notice.reference),
        reason: notice.reason,
        reported_at: notice.occurred_at,
    };
    hand_to_callback(
        shared,
        message_id,
        &payment_id.to_string(),
        kind::CHANNEL_RESULT,
        &result,
    )
    .await
}

/// One id per channel notice: a duplicate webhook is the same message.
fn channel_notice_id(channel: &str, notice: &WebhookNotice) -> Uuid {
    stable_id(&["webhook", channel, &notice.reference, &notice.event])
}

/// Publishes what a notice says to the callback stage, with a confirm;
/// `correlation_id` is the payment's or the withdrawal's id.
async fn hand_to_callback(
    shared: &Shared,
    message_id: Uuid,
    correlation_id: &str,
    message_type: &str,
    body: &impl serde::Serialize,
) -> Answer {
    let Ok(body) = serde_json::to_vec(body) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding\n");
    };
    let message = Outgoing {
        exchange: shared.topology.exchanges().stages.clone(),
        routing_key: crate::domain::handoff::CALLBACK.to_owned(),
        body,
        properties: broker::properties(
            &message_id.to_string(),
            Some(correlation_id),
            Some(message_type),
        ),
    };
    match shared.publisher.publish(&message).await {
        Ok(()) => {
            metrics::counter!("payfleet_webhooks_in_total", "result" => "accepted").increment(1);
            (StatusCode::OK, "ok\n")
        }
        Err(error) => {
            tracing::warn!(%error, "webhook ingress: cannot publish; the channel will retry");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n")
        }
    }
}

/// A genuine but misdirected notice: answered with `status`, counted and
/// logged as refused, stored nowhere.
fn refuse(
    channel: &str,
    payment_id: PaymentId,
    attempt_id: AttemptId,
    status: StatusCode,
    why: &'static str,
) -> Answer {
    tracing::warn!(
        channel,
        %payment_id,
        %attempt_id,
        why = why.trim_end(),
        "webhook refused"
    );
    refused(status, why)
}

/// Counts a refused notice and answers it with `status`.
fn refused(status: StatusCode, why: &'static str) -> Answer {
    metrics::counter!("payfleet_webhooks_in_total", "result" => "refused").increment(1);
    (status, why)
}
