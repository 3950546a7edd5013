//! Webhook ingress: `POST /callbacks/<channel>/<payment id>`. Verifies the
//! channel's signature and the timestamp window, stores the raw payload in
//! the integration log (with the body byte for byte and the timestamp and
//! signature headers, so it can be verified again), publishes the result to
//! the callback stage with a confirm, and answers 200 fast. A bad or stale signature gets 401 and
//! changes nothing; a PENDING notice is logged and acknowledged (statuses
//! never move backwards). A webhook for an attempt not yet committed is
//! published all the same: the callback stage retries it until it is.
//! A notice is taken only for an attempt of the payment in its address, at
//! the channel of its address, which is also the channel it names; anything
//! else is refused with a 4xx, counted and logged as refused, and kept out
//! of every payment's integration log.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use chrono::Utc;
use payfleet_common::{
    broker::{self, Outgoing},
    messages::{ChannelResult, ChannelStatus, SCHEMA_VERSION, kind},
    runtime::Shared,
};
use serde_json::Value;
use uuid::Uuid;

use crate::sandbox_gateway::{Notice, TradeStatus, sign_notice};

/// The headers a channel signs its notices with (kept with each notice).
const TIMESTAMP_HEADER: &str = "x-sandbox-timestamp";
const SIGNATURE_HEADER: &str = "x-sandbox-signature";

/// The payment's route, and the owner and channel of the notice's attempt
/// when it is committed.
type Owner = (Option<String>, Option<Uuid>, Option<String>);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/callbacks/{channel}/{payment_id}", post(receive))
        .with_state(shared)
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path((channel, payment_id)): Path<(String, Uuid)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let secret: Option<Option<String>> =
        match sqlx::query_scalar("SELECT webhook_secret FROM channels WHERE name = $1")
            .bind(&channel)
            .fetch_optional(&shared.pool)
            .await
        {
            Ok(secret) => secret,
            Err(error) => {
                tracing::warn!(%error, "webhook ingress: database unavailable");
                return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
            }
        };
    let Some(Some(secret)) = secret else {
        return (StatusCode::NOT_FOUND, "unknown channel\n");
    };
    let timestamp: i64 = header(TIMESTAMP_HEADER).parse().unwrap_or(0);
    let age_ms = (Utc::now().timestamp() - timestamp).abs() * 1000;
    if !payfleet_common::messages::verify_hex(
        &sign_notice(&secret, timestamp, &body),
        &header(SIGNATURE_HEADER),
    ) {
        metrics::counter!("payfleet_webhooks_in_total", "result" => "bad_signature").increment(1);
        return (StatusCode::UNAUTHORIZED, "bad signature\n");
    }
    if age_ms as u64 > shared.settings.callback_tolerance_ms {
        metrics::counter!("payfleet_webhooks_in_total", "result" => "stale").increment(1);
        return (StatusCode::UNAUTHORIZED, "stale timestamp\n");
    }
    // A notice without a readable amount and currency is no answer: the
    // channel sends it again, or a status query decides.
    let Ok(notice) = serde_json::from_slice::<Notice>(&body) else {
        return (StatusCode::BAD_REQUEST, "unreadable notice\n");
    };
    if notice.amount.scale() > payfleet_common::money::MINOR_DIGITS
        || notice.amount <= rust_decimal::Decimal::ZERO
        || !crate::channels::is_currency_code(&notice.currency)
    {
        return (StatusCode::BAD_REQUEST, "unreadable amount or currency\n");
    }
    let Ok(attempt_id) = notice.out_trade_no.parse::<Uuid>() else {
        return (StatusCode::BAD_REQUEST, "unknown out_trade_no\n");
    };
    if notice.channel != channel {
        return refuse(
            &channel,
            payment_id,
            attempt_id,
            StatusCode::CONFLICT,
            "the notice names another channel\n",
        );
    }
    // The attempt as we committed it; one the notice overtook is held to
    // the payment's route here, and to its own row by callback.
    let owner = sqlx::query_as::<_, Owner>(
        "SELECT p.channel, a.payment_id, a.channel
         FROM payments p LEFT JOIN payment_attempts a ON a.id = $2 WHERE p.id = $1",
    )
    .bind(payment_id)
    .bind(attempt_id)
    .fetch_optional(&shared.pool)
    .await;
    let refusal = match owner {
        Err(error) => {
            tracing::warn!(%error, "webhook ingress: database unavailable");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
        }
        Ok(None) => Some((StatusCode::NOT_FOUND, "unknown payment\n")),
        Ok(Some((_, Some(owner), _))) if owner != payment_id => Some((
            StatusCode::CONFLICT,
            "the attempt belongs to another payment\n",
        )),
        Ok(Some((_, Some(_), at))) if at.as_deref() != Some(channel.as_str()) => {
            Some((StatusCode::CONFLICT, "the attempt is at another channel\n"))
        }
        Ok(Some((routed, None, _))) if routed.as_deref() != Some(channel.as_str()) => {
            Some((StatusCode::CONFLICT, "the payment is at another channel\n"))
        }
        Ok(Some(_)) => None,
    };
    if let Some((status, why)) = refusal {
        return refuse(&channel, payment_id, attempt_id, status, why);
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
    .bind(header(TIMESTAMP_HEADER))
    .bind(header(SIGNATURE_HEADER))
    .execute(&shared.pool)
    .await;
    if logged.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
    }
    let status = match notice.status {
        TradeStatus::Succeeded => ChannelStatus::Succeeded,
        TradeStatus::Failed | TradeStatus::Closed => ChannelStatus::Failed,
        TradeStatus::Pending => return (StatusCode::OK, "noted\n"),
    };
    let result = ChannelResult {
        schema_version: SCHEMA_VERSION,
        payment_id,
        attempt_id,
        channel: channel.clone(),
        status,
        amount: notice.amount,
        currency: notice.currency.clone(),
        channel_reference: Some(notice.trade_no.clone()),
        reason: notice.reason.clone(),
        reported_at: notice.occurred_at,
    };
    let Ok(body) = serde_json::to_vec(&result) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding\n");
    };
    // One id per channel notice: a duplicate webhook is the same message.
    let message_id = payfleet_common::messages::stable_id(&[
        "webhook",
        &channel,
        &notice.trade_no,
        &format!("{:?}", notice.status),
    ]);
    let message = Outgoing {
        exchange: shared.topology.exchanges().stages.clone(),
        routing_key: crate::domain::handoff::CALLBACK.to_owned(),
        body,
        properties: broker::properties(
            &message_id.to_string(),
            Some(&payment_id.to_string()),
            Some(kind::CHANNEL_RESULT),
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
    payment_id: Uuid,
    attempt_id: Uuid,
    status: StatusCode,
    why: &'static str,
) -> (StatusCode, &'static str) {
    metrics::counter!("payfleet_webhooks_in_total", "result" => "refused").increment(1);
    tracing::warn!(
        channel,
        %payment_id,
        %attempt_id,
        why = why.trim_end(),
        "webhook refused"
    );
    (status, why)
}
