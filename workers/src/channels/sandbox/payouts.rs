//! A sandbox channel's payouts: `POST /payouts` to pay a payee out,
//! `GET /payouts/{payout_no}` for what became of one, and the signed notice
//! the gateway posts when a paid payout is sent back by the payee's bank.
//! The notice is read into the shape of a query's answer, so a stage reads
//! one and the other alike.

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{PayoutNotice, PayoutRequest, RefundError, SandboxChannel, WebhookRefusal, read_money};

/// Asks the channel to pay `request` out; its `payout_no` is the channel's
/// idempotency key, so a re-send answers what the first ask decided.
pub(super) async fn pay(
    channel: &SandboxChannel,
    request: &PayoutRequest,
) -> Result<Value, RefundError> {
    let body = json!({
        "payout_no": request.payout_no.to_string(),
        "amount": request.amount.to_string(),
        "currency": request.currency,
        "account": request.payee_account,
        "notify_url": request.notify_url,
    });
    channel.give_back("/payouts", body).await
}

/// What the channel says of a payout asked before.
pub(super) async fn query(channel: &SandboxChannel, payout_no: Uuid) -> Result<Value, RefundError> {
    channel
        .ask_about("payout", format!("/payouts/{payout_no}"), payout_no)
        .await
}

/// A payout's webhook body, as the gateway documents it. The amount and
/// the currency are read apart (see [`read_money`]): a notice without them
/// is unreadable money, not an unreadable notice.
#[derive(Debug, Deserialize)]
struct NoticeBody {
    channel: String,
    payout_no: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    /// The channel's fee, when the notice states it.
    #[serde(default)]
    fee: Option<String>,
}

/// A fee as a channel states it: a decimal string, zero or more, with at
/// most two decimal places.
fn read_fee(fee: &str) -> Option<Decimal> {
    let fee = fee.trim().parse::<Decimal>().ok()?;
    (fee >= Decimal::ZERO && fee.scale() <= payfleet_common::money::MINOR_DIGITS).then_some(fee)
}

/// Reads a payout's webhook whose signature held: for a payout of ours (a
/// `payout_no` that is a withdrawal id), of a readable amount and currency.
pub(super) fn read_notice(
    body: &[u8],
    signed_timestamp: String,
    signature: String,
) -> Result<PayoutNotice, WebhookRefusal> {
    let raw: Value = serde_json::from_slice(body).map_err(|_| WebhookRefusal::Unreadable)?;
    let notice = NoticeBody::deserialize(&raw).map_err(|_| WebhookRefusal::Unreadable)?;
    let payout_no = notice
        .payout_no
        .parse::<Uuid>()
        .map_err(|_| WebhookRefusal::Unreadable)?;
    let (amount, currency) = read_money(&raw).ok_or(WebhookRefusal::UnreadableMoney)?;
    let fee = match notice.fee.as_deref() {
        Some(fee) => Some(read_fee(fee).ok_or(WebhookRefusal::UnreadableMoney)?),
        None => None,
    };
    let mut answer = json!({
        "payout_no": payout_no.to_string(),
        "amount": amount.to_string(),
        "currency": currency,
        "status": notice.status,
    });
    if let Some(reason) = notice.reason {
        answer["reason"] = json!(reason);
    }
    if let Some(fee) = fee {
        answer["fee"] = json!(fee.to_string());
    }
    Ok(PayoutNotice {
        payout_no,
        channel: notice.channel,
        answer,
        signed_timestamp,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use hmac::{Hmac, Mac};
    use reqwest::header::HeaderMap;
    use sha2::Sha256;

    use super::*;
    use crate::channels::ChannelAdapter;

    const SECRET: &str = "card-secret";
    const TOLERANCE: Duration = Duration::from_secs(300);
    const PAYOUT_NO: &str = "0b7e4c52-8f0e-4a53-9d64-3f2c1a9e7d10";

    fn channel() -> SandboxChannel {
        SandboxChannel::new(
            "sandbox-card",
            "http://127.0.0.1:1",
            Some(SECRET),
            Duration::from_secs(1),
        )
        .expect("a client")
    }

    /// The headers the gateway sends with `body`, signed `age_s` ago with `secret`.
    fn signed(secret: &str, age_s: i64, body: &[u8]) -> HeaderMap {
        let timestamp = Utc::now().timestamp() - age_s;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        let mut headers = HeaderMap::new();
        headers.insert(
            super::super::TIMESTAMP_HEADER,
            timestamp.to_string().parse().expect("a header"),
        );
        headers.insert(
            super::super::SIGNATURE_HEADER,
            hex::encode(mac.finalize().into_bytes())
                .parse()
                .expect("a header"),
        );
        headers
    }

    /// The gateway's notice of a returned payout.
    fn notice() -> Value {
        json!({
            "channel": "sandbox-card", "payout_no": PAYOUT_NO, "status": "RETURNED",
            "amount": "250.00", "currency": "CNY", "reason": "account_closed",
            "occurred_at": "2026-12-14T08:00:00Z"
        })
    }

    /// [`notice`] with `changes` made, as sent.
    fn sent(changes: &[(&str, Value)]) -> Vec<u8> {
        let mut notice = notice();
        for (field, value) in changes {
            notice[*field] = value.clone();
        }
        serde_json::to_vec(&notice).expect("JSON")
    }

    fn verify(headers: &HeaderMap, body: &[u8]) -> Result<PayoutNotice, WebhookRefusal> {
        channel().verify_payout_notice(headers, body, TOLERANCE)
    }

    #[test]
    fn a_returned_payouts_notice_reads_as_a_query_answer() {
        let body = sent(&[]);
        let headers = signed(SECRET, 5, &body);
        let notice = verify(&headers, &body).expect("a good notice");
        assert_eq!(notice.payout_no.to_string(), PAYOUT_NO);
        assert_eq!(notice.channel, "sandbox-card");
        assert_eq!(
            notice.answer,
            json!({"payout_no": PAYOUT_NO, "amount": "250.00", "currency": "CNY",
                   "status": "RETURNED", "reason": "account_closed"})
        );
        assert_eq!(
            Some(notice.signed_timestamp.as_str()),
            headers[super::super::TIMESTAMP_HEADER].to_str().ok()
        );
        assert_eq!(
            Some(notice.signature.as_str()),
            headers[super::super::SIGNATURE_HEADER].to_str().ok()
        );
    }

    #[test]
    fn a_stated_fee_is_kept_in_the_answer() {
        let body = sent(&[
            ("status", json!("SUCCEEDED")),
            ("fee", json!("3.00")),
            ("reason", Value::Null),
        ]);
        let notice = verify(&signed(SECRET, 0, &body), &body).expect("a good notice");
        assert_eq!(
            notice.answer,
            json!({"payout_no": PAYOUT_NO, "amount": "250.00", "currency": "CNY",
                   "status": "SUCCEEDED", "fee": "3.00"})
        );
    }

    #[test]
    fn a_notice_signed_with_another_secret_or_altered_is_refused() {
        let body = sent(&[]);
        assert_eq!(
            verify(&signed("wallet-secret", 0, &body), &body).err(),
            Some(WebhookRefusal::BadSignature)
        );
        let other = sent(&[("amount", json!("2500.00"))]);
        assert_eq!(
            verify(&signed(SECRET, 0, &body), &other).err(),
            Some(WebhookRefusal::BadSignature)
        );
        assert_eq!(
            verify(&HeaderMap::new(), &body).err(),
            Some(WebhookRefusal::BadSignature)
        );
        let unsigned = SandboxChannel::new("sandbox-card", "http://127.0.0.1:1", None, TOLERANCE)
            .expect("a client");
        assert_eq!(
            unsigned
                .verify_payout_notice(&signed(SECRET, 0, &body), &body, TOLERANCE)
                .err(),
            Some(WebhookRefusal::NotTaken)
        );
    }

    #[test]
    fn a_notice_signed_outside_the_tolerance_is_stale() {
        let body = sent(&[]);
        // Well outside, not one second: a loaded machine may take a second
        // between signing and checking, and a notice from the future grows
        // younger meanwhile.
        for age_s in [310, -310] {
            assert_eq!(
                verify(&signed(SECRET, age_s, &body), &body).err(),
                Some(WebhookRefusal::Stale),
                "signed {age_s}s ago"
            );
        }
    }

    #[test]
    fn a_notice_without_a_readable_amount_or_currency_is_unreadable_money() {
        for (amount, currency) in [
            (Value::Null, json!("CNY")),
            (json!(250.0), json!("CNY")),
            (json!("eighty"), json!("CNY")),
            (json!("249.999"), json!("CNY")),
            (json!("0.00"), json!("CNY")),
            (json!("-5.00"), json!("CNY")),
            (json!("250.00"), Value::Null),
            (json!("250.00"), json!("cny")),
            (json!("250.00"), json!("YUAN")),
        ] {
            let body = sent(&[("amount", amount.clone()), ("currency", currency.clone())]);
            assert_eq!(
                verify(&signed(SECRET, 0, &body), &body).err(),
                Some(WebhookRefusal::UnreadableMoney),
                "{amount} {currency}"
            );
        }
        let body = sent(&[("fee", json!("-1.00"))]);
        assert_eq!(
            verify(&signed(SECRET, 0, &body), &body).err(),
            Some(WebhookRefusal::UnreadableMoney),
            "a negative fee"
        );
    }

    #[test]
    fn a_notice_for_no_payout_of_ours_is_unreadable() {
        let not_ours = sent(&[("payout_no", json!("p-1"))]);
        let bodies: [&[u8]; 3] = [&not_ours, b"not json", br#"{"channel": "sandbox-card"}"#];
        for body in bodies {
            assert_eq!(
                verify(&signed(SECRET, 0, body), body).err(),
                Some(WebhookRefusal::Unreadable),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
