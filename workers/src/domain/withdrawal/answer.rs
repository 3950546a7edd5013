//! What a payout channel's answer says — its reply to a payout or a status
//! query, or its webhook notice, all in one shape. One reading serves
//! channel-call and the webhook ingress, so a notice is held to the same
//! amount, currency and fee rules as a reply.

use payfleet_common::{messages::WithdrawalResult, money};
use rust_decimal::Decimal;
use serde_json::Value;

use super::Withdrawal;

/// What a channel's payout answer says.
#[derive(Debug, PartialEq)]
pub enum Reading {
    /// How it ended, why (a refusal), and the channel's fee as it stated it.
    Final(WithdrawalResult, Option<String>, Option<Decimal>),
    /// Processing, another amount or currency, a paid payout without its
    /// fee, or no answer at all.
    Unknown(String),
    /// The channel has no payout of this id: the send never reached it.
    NeverReceived,
}

/// Reads a payout answer about `w`. Only an answer naming exactly the
/// amount the payee was to receive, in the withdrawal's currency, with the
/// channel's fee, is a payout of it; a refusal moves no money and is taken
/// as it is.
pub fn read_answer(raw: &Value, w: &Withdrawal) -> Reading {
    let stated = |field: &str| raw[field].as_str().and_then(|a| a.parse::<Decimal>().ok());
    let ours = stated("amount") == Some(w.payout_amount())
        && raw["currency"].as_str() == Some(w.currency.as_str());
    match raw["status"].as_str() {
        Some(status @ ("SUCCEEDED" | "RETURNED")) if ours => {
            let result = if status == "SUCCEEDED" {
                WithdrawalResult::Succeeded
            } else {
                WithdrawalResult::Returned
            };
            let reason = raw["reason"].as_str().map(str::to_owned);
            // The channel's fee on money that left is part of the answer:
            // the books charge it to the platform. In cents, never
            // negative nor more than the payout; without one a query gets
            // the whole answer — unless the fee is known already (kept
            // with the payout's success): a bank's return need not repeat it.
            let readable = stated("fee").filter(|f| {
                !f.is_sign_negative()
                    && f.normalize().scale() <= money::MINOR_DIGITS
                    && *f <= w.payout_amount()
            });
            let stated_none = matches!(raw.get("fee"), None | Some(Value::Null));
            match readable {
                Some(fee) => Reading::Final(result, reason, Some(fee)),
                None if stated_none && w.channel_fee.is_some() => {
                    Reading::Final(result, reason, None)
                }
                None => Reading::Unknown(format!("no readable fee: {raw}")),
            }
        }
        Some("SUCCEEDED" | "RETURNED") => Reading::Unknown(format!(
            "not a payout of {} {}: {raw}",
            w.payout_amount(),
            w.currency
        )),
        Some("FAILED") => Reading::Final(
            WithdrawalResult::Failed,
            Some(match raw["reason"].as_str() {
                Some(reason) => format!("payout_declined: {reason}"),
                None => "payout_declined: refused by the channel".to_owned(),
            }),
            None,
        ),
        _ => Reading::Unknown(format!("no final answer: {raw}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A withdrawal of 252.75 CNY with a 3.00 fee: the payee is to receive 249.75.
    pub(crate) fn withdrawal() -> Withdrawal {
        Withdrawal {
            id: uuid::Uuid::nil(),
            requester_id: "m-1".into(),
            request_id: "w-1".into(),
            owner_kind: "user".into(),
            user_id: "u-1".into(),
            account_id: Some(1),
            amount: "252.75".parse().unwrap(),
            fee: "3.00".parse().unwrap(),
            currency: "CNY".into(),
            payee_account: "acct_success".into(),
            channel: Some("card".into()),
            channel_fee: None,
            status: "sending".into(),
            detail: None,
            booked_at: None,
            returned_booked_at: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn only_a_payout_of_the_amount_and_currency_with_its_fee_or_a_refusal_is_final() {
        let ok = |raw: Value| read_answer(&raw, &withdrawal());
        assert_eq!(
            ok(
                json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY", "fee": "3.00"})
            ),
            Reading::Final(
                WithdrawalResult::Succeeded,
                None,
                Some("3.00".parse().unwrap())
            )
        );
        assert!(matches!(
            ok(
                json!({"status": "RETURNED", "amount": "249.75", "currency": "CNY", "fee": "3.00", "reason": "account_closed"})
            ),
            Reading::Final(WithdrawalResult::Returned, Some(_), Some(_))
        ));
        assert!(matches!(
            ok(json!({"status": "FAILED", "reason": "account_invalid"})),
            Reading::Final(WithdrawalResult::Failed, Some(reason), None) if reason == "payout_declined: account_invalid"
        ));
        // A return of a payout whose fee is known already need not repeat it
        // (a garbled one is still no answer).
        let paid = Withdrawal {
            channel_fee: Some("2.50".parse().unwrap()),
            status: "succeeded".into(),
            ..withdrawal()
        };
        let back = json!({"status": "RETURNED", "amount": "249.75", "currency": "CNY", "reason": "account_closed"});
        assert!(matches!(
            read_answer(&back, &paid),
            Reading::Final(WithdrawalResult::Returned, Some(_), None)
        ));
        let garbled =
            json!({"status": "RETURNED", "amount": "249.75", "currency": "CNY", "fee": "-1"});
        assert!(matches!(read_answer(&garbled, &paid), Reading::Unknown(_)));
        for raw in [
            json!({"status": "SUCCEEDED", "amount": "250.00", "currency": "CNY"}),
            json!({"status": "RETURNED", "amount": "100.00", "currency": "CNY"}),
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "USD"}),
            json!({"status": "SUCCEEDED", "amount": "249.75"}),
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY"}),
            json!({"status": "RETURNED", "amount": "249.75", "currency": "CNY", "fee": null}),
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY", "fee": "-1.00"}),
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY", "fee": "2.997"}),
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY", "fee": "1e30"}),
            json!({"status": "SUCCEEDED", "amount": "249.75", "currency": "CNY", "fee": "249.76"}),
            json!({"status": "PROCESSING", "amount": "249.75", "currency": "CNY"}),
            json!({}),
        ] {
            assert!(matches!(ok(raw.clone()), Reading::Unknown(_)), "{raw}");
        }
    }
}
