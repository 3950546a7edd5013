//! A channel of the sandbox gateway, over HTTP; its webhooks are signed
//! with the channel's secret in the `x-sandbox-*` headers. Its payouts
//! (asks, queries and their notices) are in [`payouts`].
//!
//! The adapter is a client of the gateway's documented HTTP API and links
//! to none of the gateway's code: it has its own reading of the webhook
//! notice, its own header names and its own signature check, as a real
//! integration implements a provider's protocol. The tests in
//! `tests/channels.rs`, which drive the gateway's server against the
//! fleet, are the contract check between the two implementations.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use payfleet_common::{AttemptId, messages::ChannelStatus};
use reqwest::header::HeaderMap;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use super::{
    Boxed, ChannelAdapter, ChannelReply, ChargeRequest, CloseReply, PayoutNotice, PayoutRequest,
    RefundError, Unreachable, WebhookNotice, WebhookRefusal, is_currency_code,
};

mod payouts;

/// The header a webhook carries its timestamp (Unix seconds) in.
const TIMESTAMP_HEADER: &str = "x-sandbox-timestamp";
/// The header a webhook carries its signature in.
const SIGNATURE_HEADER: &str = "x-sandbox-signature";

/// A trade's status as the gateway states it in a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum TradeStatus {
    Pending,
    Succeeded,
    Failed,
    Closed,
    /// Charged, then cancelled whole by a reversal of ours.
    Reversed,
}

/// A webhook body, as the gateway documents it.
#[derive(Debug, Deserialize)]
struct Notice {
    channel: String,
    out_trade_no: String,
    trade_no: String,
    status: TradeStatus,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency: String,
    reason: Option<String>,
    /// When the gateway decided this status.
    occurred_at: DateTime<Utc>,
}

/// A refund's status as the gateway states it in a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum RefundStatus {
    Processing,
    Succeeded,
    Failed,
}

/// A refund's webhook body, as the gateway documents it (told from a
/// trade's by its `refund_no`).
#[derive(Debug, Deserialize)]
struct RefundNoticeBody {
    channel: String,
    refund_no: String,
    out_trade_no: String,
    status: RefundStatus,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    currency: String,
    reason: Option<String>,
    occurred_at: DateTime<Utc>,
}

/// Reads a refund's webhook.
fn read_refund_notice(
    body: &[u8],
    signed_timestamp: String,
    signature: String,
) -> Result<WebhookNotice, WebhookRefusal> {
    use payfleet_common::messages::RefundResult;
    let notice: RefundNoticeBody =
        serde_json::from_slice(body).map_err(|_| WebhookRefusal::Unreadable)?;
    let attempt_id = notice
        .out_trade_no
        .parse::<AttemptId>()
        .map_err(|_| WebhookRefusal::UnknownAttempt)?;
    let refund_id = notice
        .refund_no
        .parse::<Uuid>()
        .map_err(|_| WebhookRefusal::Unreadable)?;
    if notice.amount.scale() > payfleet_common::money::MINOR_DIGITS
        || notice.amount <= Decimal::ZERO
        || !is_currency_code(&notice.currency)
    {
        return Err(WebhookRefusal::UnreadableMoney);
    }
    let result = match notice.status {
        RefundStatus::Processing => None,
        RefundStatus::Succeeded => Some(RefundResult::Succeeded),
        RefundStatus::Failed => Some(RefundResult::Failed),
    };
    Ok(WebhookNotice {
        attempt_id,
        channel: notice.channel,
        status: None,
        amount: notice.amount,
        currency: notice.currency,
        reference: notice.refund_no,
        event: format!("refund {:?}", notice.status),
        reason: notice.reason,
        occurred_at: notice.occurred_at,
        signed_timestamp,
        signature,
        refund: Some(super::RefundNotice { refund_id, result }),
    })
}

/// Whether `signature` (hex) is HMAC-SHA256(secret, "{timestamp}.{body}"),
/// compared in constant time.
fn signature_holds(secret: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// A channel of the sandbox gateway, over HTTP.
pub struct SandboxChannel {
    pub name: String,
    pub base_url: String,
    /// What its webhooks are signed with; none, and it takes no webhooks.
    pub webhook_secret: Option<String>,
    pub http: reqwest::Client,
}

impl SandboxChannel {
    pub fn new(
        name: &str,
        base_url: &str,
        webhook_secret: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            name: name.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            webhook_secret: webhook_secret.map(str::to_owned),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/channels/{}{path}", self.base_url, self.name)
    }

    /// Asks for money back (a refund or a reversal) or out (a payout):
    /// SUCCEEDED, PROCESSING or FAILED alike come back as the answer, for
    /// the caller to read `status`.
    async fn give_back(&self, path: &str, body: Value) -> Result<Value, RefundError> {
        match send(self.http.post(self.url(path)).json(&body)).await {
            Ok((status, raw)) if status.is_success() => Ok(raw),
            Ok((status, body)) => Err(RefundError::Refused { status, body }),
            Err(error) => Err(error.into()),
        }
    }

    /// The signed timestamp and the signature a webhook carries, once the
    /// signature holds for `body` and was made within `tolerance` of now.
    fn signed(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        tolerance: Duration,
    ) -> Result<(String, String), WebhookRefusal> {
        let Some(secret) = &self.webhook_secret else {
            return Err(WebhookRefusal::NotTaken);
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (signed_timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
        let timestamp: i64 = signed_timestamp.parse().unwrap_or(0);
        let age_ms = (Utc::now().timestamp() - timestamp).abs() * 1000;
        if !signature_holds(secret, timestamp, body, &signature) {
            return Err(WebhookRefusal::BadSignature);
        }
        if age_ms as u64 > u64::try_from(tolerance.as_millis()).unwrap_or(u64::MAX) {
            return Err(WebhookRefusal::Stale);
        }
        Ok((signed_timestamp, signature))
    }

    /// What became of a refund, a reversal or a payout asked before; one the channel
    /// has never heard of is [`RefundError::NotFound`] (safe to ask again).
    async fn ask_about(
        &self,
        what: &'static str,
        path: String,
        id: Uuid,
    ) -> Result<Value, RefundError> {
        match send(self.http.get(self.url(&path))).await {
            Ok((status, raw)) if status.is_success() => Ok(raw),
            Ok((reqwest::StatusCode::NOT_FOUND, _)) => Err(RefundError::NotFound {
                channel: self.name.clone(),
                what,
                id,
            }),
            Ok((status, body)) => Err(RefundError::Refused { status, body }),
            Err(error) => Err(error.into()),
        }
    }
}

/// The amount (a decimal string with at most two decimal places, never a
/// float) and the currency (an ISO 4217 code) a channel states in an
/// answer; `None` when either cannot be read.
fn read_money(raw: &Value) -> Option<(Decimal, String)> {
    let amount = raw
        .get("amount")?
        .as_str()?
        .trim()
        .parse::<Decimal>()
        .ok()?;
    // at most two decimals, and a trade is for something
    if amount.scale() > payfleet_common::money::MINOR_DIGITS || amount <= Decimal::ZERO {
        return None;
    }
    let currency = raw.get("currency")?.as_str()?;
    is_currency_code(currency).then(|| (amount, currency.to_owned()))
}

/// A trade as the gateway reports it, read into a reply. A final status
/// without a readable amount and currency is no answer: a status query
/// decides, so nothing is ever settled on an amount we did not read.
fn read_trade(raw: Value) -> ChannelReply {
    let reference = raw
        .get("trade_no")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let reason = raw.get("reason").and_then(Value::as_str).map(str::to_owned);
    let status = match raw.get("status").and_then(Value::as_str) {
        // a reversed trade was charged: its reversal is an operation of its own
        Some("SUCCEEDED") | Some("REVERSED") => ChannelStatus::Succeeded,
        Some("FAILED") | Some("CLOSED") => ChannelStatus::Failed,
        Some("PENDING") => return ChannelReply::Pending { reference, raw },
        other => {
            return ChannelReply::Unknown {
                error: format!("unreadable trade status {other:?}"),
            };
        }
    };
    match read_money(&raw) {
        Some((amount, currency)) => ChannelReply::Resolved {
            status,
            amount,
            currency,
            reference,
            reason,
            raw,
        },
        None => ChannelReply::Unknown {
            error: format!("a {status:?} answer without a readable amount and currency: {raw}"),
        },
    }
}

async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Value), Unreachable> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Reads a webhook whose signature held: a notice of a readable amount and
/// currency, for an attempt of ours.
fn read_notice(
    body: &[u8],
    signed_timestamp: String,
    signature: String,
) -> Result<WebhookNotice, WebhookRefusal> {
    let is_refund = serde_json::from_slice::<Value>(body)
        .map_err(|_| WebhookRefusal::Unreadable)?
        .get("refund_no")
        .is_some();
    if is_refund {
        return read_refund_notice(body, signed_timestamp, signature);
    }
    let notice = serde_json::from_slice::<Notice>(body).map_err(|_| WebhookRefusal::Unreadable)?;
    if notice.amount.scale() > payfleet_common::money::MINOR_DIGITS
        || notice.amount <= Decimal::ZERO
        || !is_currency_code(&notice.currency)
    {
        return Err(WebhookRefusal::UnreadableMoney);
    }
    let attempt_id = notice
        .out_trade_no
        .parse::<AttemptId>()
        .map_err(|_| WebhookRefusal::UnknownAttempt)?;
    let status = match notice.status {
        // a reversed trade was charged: its reversal is an operation of its own
        TradeStatus::Succeeded | TradeStatus::Reversed => Some(ChannelStatus::Succeeded),
        TradeStatus::Failed | TradeStatus::Closed => Some(ChannelStatus::Failed),
        TradeStatus::Pending => None,
    };
    Ok(WebhookNotice {
        attempt_id,
        channel: notice.channel,
        status,
        amount: notice.amount,
        currency: notice.currency,
        reference: notice.trade_no,
        event: format!("{:?}", notice.status),
        reason: notice.reason,
        occurred_at: notice.occurred_at,
        signed_timestamp,
        signature,
        refund: None,
    })
}

impl ChannelAdapter for SandboxChannel {
    fn name(&self) -> &str {
        &self.name
    }
    fn charge<'a>(&'a self, r: &'a ChargeRequest) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            let body = json!({
                "out_trade_no": r.attempt_id.to_string(),
                "amount": r.amount.to_string(),
                "currency": r.currency,
                "payer_token": r.payer_token,
                "notify_url": r.notify_url,
            });
            match send(self.http.post(self.url("/payments")).json(&body)).await {
                Ok((status, raw)) if status.is_success() => read_trade(raw),
                // Not a result: a 5xx, a 408 or 429, a 409 on a re-sent create
                // of a trade that may be paid. A status query decides.
                Ok((status, raw)) => ChannelReply::Unknown {
                    error: format!("HTTP {status}: {raw}"),
                },
                Err(error) => ChannelReply::Unknown {
                    error: error.to_string(),
                },
            }
        })
    }
    fn query<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            match send(self.http.get(self.url(&format!("/payments/{attempt_id}")))).await {
                Ok((status, raw)) if status.is_success() => read_trade(raw),
                // No trade (yet): a create may still be in flight, so this is
                // no answer; when the queries run out, the close decides.
                Ok((status, raw)) => ChannelReply::Unknown {
                    error: format!("HTTP {status}: {raw}"),
                },
                Err(error) => ChannelReply::Unknown {
                    error: error.to_string(),
                },
            }
        })
    }
    fn close<'a>(&'a self, attempt_id: AttemptId) -> Boxed<'a, CloseReply> {
        Box::pin(async move {
            match send(
                self.http
                    .post(self.url(&format!("/payments/{attempt_id}/close"))),
            )
            .await
            {
                Ok((status, raw)) if status.is_success() => CloseReply::Closed { raw },
                Ok((reqwest::StatusCode::CONFLICT, raw)) => match read_money(&raw) {
                    Some((amount, currency)) => CloseReply::AlreadyPaid {
                        amount,
                        currency,
                        reference: raw
                            .get("trade_no")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        raw,
                    },
                    // Paid, but for what we cannot read: asked again.
                    None => CloseReply::Unknown {
                        error: format!(
                            "already paid, without a readable amount and currency: {raw}"
                        ),
                    },
                },
                Ok((status, raw)) => CloseReply::Unknown {
                    error: format!("HTTP {status}: {raw}"),
                },
                Err(error) => CloseReply::Unknown {
                    error: error.to_string(),
                },
            }
        })
    }
    fn refund<'a>(
        &'a self,
        attempt_id: AttemptId,
        refund_id: Uuid,
        amount: Decimal,
    ) -> Boxed<'a, Result<Value, RefundError>> {
        let body = json!({"out_trade_no": attempt_id.to_string(), "refund_no": refund_id.to_string(), "amount": amount.to_string()});
        Box::pin(self.give_back("/refunds", body))
    }
    fn query_refund(
        &self,
        _attempt_id: AttemptId,
        refund_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        Box::pin(self.ask_about("refund", format!("/refunds/{refund_id}"), refund_id))
    }
    fn reverse(
        &self,
        attempt_id: AttemptId,
        reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        let body =
            json!({"out_trade_no": attempt_id.to_string(), "reversal_no": reversal_id.to_string()});
        Box::pin(self.give_back("/reversals", body))
    }
    fn query_reversal(
        &self,
        _attempt_id: AttemptId,
        reversal_id: Uuid,
    ) -> Boxed<'_, Result<Value, RefundError>> {
        Box::pin(self.ask_about("reversal", format!("/reversals/{reversal_id}"), reversal_id))
    }
    fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        tolerance: Duration,
    ) -> Result<WebhookNotice, WebhookRefusal> {
        let (signed_timestamp, signature) = self.signed(headers, body, tolerance)?;
        read_notice(body, signed_timestamp, signature)
    }
    fn payout<'a>(&'a self, request: &'a PayoutRequest) -> Boxed<'a, Result<Value, RefundError>> {
        Box::pin(payouts::pay(self, request))
    }
    fn query_payout(&self, payout_no: Uuid) -> Boxed<'_, Result<Value, RefundError>> {
        Box::pin(payouts::query(self, payout_no))
    }
    fn verify_payout_notice(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        tolerance: Duration,
    ) -> Result<PayoutNotice, WebhookRefusal> {
        let (signed_timestamp, signature) = self.signed(headers, body, tolerance)?;
        payouts::read_notice(body, signed_timestamp, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(reply: ChannelReply) -> Option<(ChannelStatus, Decimal, String)> {
        match reply {
            ChannelReply::Resolved {
                status,
                amount,
                currency,
                ..
            } => Some((status, amount, currency)),
            _ => None,
        }
    }

    #[test]
    fn a_final_answer_carries_the_channels_amount_and_currency() {
        let reply =
            read_trade(json!({"status": "SUCCEEDED", "amount": "100.00", "currency": "USD"}));
        assert_eq!(
            resolved(reply),
            Some((
                ChannelStatus::Succeeded,
                Decimal::new(10000, 2),
                "USD".into()
            ))
        );
        let reply = read_trade(
            json!({"status": "FAILED", "amount": "5.00", "currency": "CNY", "reason": "card_declined"}),
        );
        assert_eq!(
            resolved(reply),
            Some((ChannelStatus::Failed, Decimal::new(500, 2), "CNY".into()))
        );
    }

    #[test]
    fn a_final_answer_without_a_readable_amount_or_currency_is_unknown() {
        for raw in [
            json!({"status": "SUCCEEDED", "currency": "CNY"}),
            json!({"status": "SUCCEEDED", "amount": "", "currency": "CNY"}),
            json!({"status": "SUCCEEDED", "amount": 80.0, "currency": "CNY"}),
            json!({"status": "SUCCEEDED", "amount": "eighty", "currency": "CNY"}),
            json!({"status": "SUCCEEDED", "amount": "79.999", "currency": "CNY"}),
            json!({"status": "SUCCEEDED", "amount": "80.00"}),
            json!({"status": "SUCCEEDED", "amount": "80.00", "currency": ""}),
            json!({"status": "SUCCEEDED", "amount": "80.00", "currency": "cny"}),
            json!({"status": "FAILED", "amount": "80.00", "currency": "YUAN"}),
        ] {
            assert!(
                matches!(read_trade(raw.clone()), ChannelReply::Unknown { .. }),
                "{raw} must be no answer"
            );
        }
    }

    #[test]
    fn a_success_for_nothing_or_less_is_unknown() {
        for amount in ["0.00", "0", "-5.00"] {
            let raw = json!({"status": "SUCCEEDED", "amount": amount, "currency": "CNY"});
            assert!(
                matches!(read_trade(raw.clone()), ChannelReply::Unknown { .. }),
                "{raw} must be no answer"
            );
        }
    }

    #[test]
    fn a_signature_is_hex_hmac_sha256_of_timestamp_dot_body() {
        // computed apart from both implementations
        let signature = "1adaf11cef45ff74143e01f896abe485e46e5cb6b3f38ca749ebe43c36a46cb0";
        let body = br#"{"a":1}"#;
        assert!(signature_holds(
            "wallet-secret",
            1_700_000_000,
            body,
            signature
        ));
        assert!(signature_holds(
            "wallet-secret",
            1_700_000_000,
            body,
            &format!(" {} ", signature.to_uppercase())
        ));
        assert!(!signature_holds(
            "card-secret",
            1_700_000_000,
            body,
            signature
        ));
        assert!(!signature_holds(
            "wallet-secret",
            1_700_000_001,
            body,
            signature
        ));
        assert!(!signature_holds(
            "wallet-secret",
            1_700_000_000,
            body,
            &signature[..62]
        ));
        assert!(!signature_holds(
            "wallet-secret",
            1_700_000_000,
            body,
            "not hex"
        ));
    }

    #[test]
    fn a_pending_answer_needs_no_amount() {
        assert!(matches!(
            read_trade(json!({"status": "PENDING", "trade_no": "t-1"})),
            ChannelReply::Pending { .. }
        ));
    }
}
