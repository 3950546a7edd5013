//! A channel of the sandbox gateway, over HTTP.

use std::time::Duration;

use payfleet_common::messages::ChannelStatus;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Boxed, ChannelAdapter, ChannelReply, ChargeRequest, CloseReply, is_currency_code};

/// A channel of the sandbox gateway, over HTTP.
pub struct SandboxChannel {
    pub name: String,
    pub base_url: String,
    pub http: reqwest::Client,
}

impl SandboxChannel {
    pub fn new(name: &str, base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            name: name.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/channels/{}{path}", self.base_url, self.name)
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
        Some("SUCCEEDED") => ChannelStatus::Succeeded,
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

async fn send(request: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Value), String> {
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("timeout: {e}")
        } else {
            format!("connection: {e}")
        }
    })?;
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
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
                Err(error) => ChannelReply::Unknown { error },
            }
        })
    }
    fn query<'a>(&'a self, attempt_id: Uuid) -> Boxed<'a, ChannelReply> {
        Box::pin(async move {
            match send(self.http.get(self.url(&format!("/payments/{attempt_id}")))).await {
                Ok((status, raw)) if status.is_success() => read_trade(raw),
                // No trade (yet): a create may still be in flight, so this is
                // no answer; when the queries run out, the close decides.
                Ok((status, raw)) => ChannelReply::Unknown {
                    error: format!("HTTP {status}: {raw}"),
                },
                Err(error) => ChannelReply::Unknown { error },
            }
        })
    }
    fn close<'a>(&'a self, attempt_id: Uuid) -> Boxed<'a, CloseReply> {
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
                Err(error) => CloseReply::Unknown { error },
            }
        })
    }
    fn refund<'a>(
        &'a self,
        attempt_id: Uuid,
        refund_id: Uuid,
        amount: Decimal,
    ) -> Boxed<'a, Result<Value, String>> {
        Box::pin(async move {
            let body = json!({"out_trade_no": attempt_id.to_string(), "refund_no": refund_id.to_string(), "amount": amount.to_string()});
            match send(self.http.post(self.url("/refunds")).json(&body)).await {
                Ok((status, raw)) if status.is_success() => Ok(raw),
                Ok((status, raw)) => Err(format!("HTTP {status}: {raw}")),
                Err(error) => Err(error),
            }
        })
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
    fn a_pending_answer_needs_no_amount() {
        assert!(matches!(
            read_trade(json!({"status": "PENDING", "trade_no": "t-1"})),
            ChannelReply::Pending { .. }
        ));
    }
}
