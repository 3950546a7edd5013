//! Reading a request (a payment, a refund, a withdrawal, a top-up, a transfer) before any database lookup: the ids it
//! must carry to be answered, the committed schema, and how fresh it is.

use chrono::{DateTime, Utc};
use payfleet_common::{
    messages::{
        PaymentRequested, PaymentReverse, RefundRequested, SCHEMA_VERSION, WithdrawalRequested,
    },
    runtime::Undecodable,
};
use serde_json::Value;

use super::schema;

/// Whether `text` may be an id upstream sends or an operator gives (a
/// merchant, an order, a user): 1 to 128 bytes, no control characters.
pub fn is_usable_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= 128 && !text.chars().any(char::is_control)
}

/// A usable merchant or merchant order id: 1 to 128 bytes, no control
/// characters. Without both, a request cannot be answered.
pub(super) fn usable_id(
    value: &Value,
    kind: &'static str,
    name: &str,
) -> Result<String, Undecodable> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| is_usable_id(s))
        .map(str::to_owned)
        .ok_or_else(|| Undecodable::MissingField {
            kind,
            field: name.to_owned(),
        })
}

/// Reads a JSON body as a `payment.requested`: a missing `schema_version`, or
/// one other than this fleet's, is `unsupported_schema_version`; anything else the committed
/// schema refuses is `invalid_request`, with the pointer of the first violation.
pub fn read_request(value: Value) -> Result<PaymentRequested, (&'static str, String)> {
    read_checked(value, schema::first_violation)
}

/// Reads a JSON body as a `refund.requested`, as [`read_request`] does.
pub fn read_refund_request(value: Value) -> Result<RefundRequested, (&'static str, String)> {
    read_checked(value, schema::first_refund_violation)
}

/// Reads a JSON body as a `payment.reverse`, as [`read_request`] does.
pub fn read_reversal_request(value: Value) -> Result<PaymentReverse, (&'static str, String)> {
    read_checked(value, schema::first_reversal_violation)
}

/// Reads a JSON body as a `withdrawal.requested`, as [`read_request`] does.
pub fn read_withdrawal_request(
    value: Value,
) -> Result<WithdrawalRequested, (&'static str, String)> {
    read_checked(value, schema::first_withdrawal_violation)
}

/// Reads a JSON body as a `topup.requested`, as [`read_request`] does.
pub fn read_top_up_request(
    value: Value,
) -> Result<payfleet_common::messages::TopUpRequested, (&'static str, String)> {
    read_checked(value, schema::first_top_up_violation)
}

/// Reads a JSON body as a `transfer.requested`, as [`read_request`] does.
pub fn read_transfer_request(
    value: Value,
) -> Result<payfleet_common::messages::TransferRequested, (&'static str, String)> {
    read_checked(value, schema::first_transfer_violation)
}

/// Reads a JSON body as a `payout.requested`, as [`read_request`] does.
pub fn read_payout_request(
    value: Value,
) -> Result<payfleet_common::messages::PayoutRequested, (&'static str, String)> {
    read_checked(value, schema::first_payout_violation)
}

fn read_checked<T: serde::de::DeserializeOwned>(
    value: Value,
    first_violation: fn(&Value) -> Option<schema::Violation>,
) -> Result<T, (&'static str, String)> {
    match value.get("schema_version") {
        Some(version) if version == &Value::from(SCHEMA_VERSION) => {}
        version => {
            let given = version.map_or_else(|| "missing".to_owned(), Value::to_string);
            return Err((
                "unsupported_schema_version",
                format!(
                    "at /schema_version: {} (this fleet speaks {SCHEMA_VERSION})",
                    schema::printable(&given)
                ),
            ));
        }
    }
    if let Some(violation) = first_violation(&value) {
        return Err(("invalid_request", violation.to_string()));
    }
    // What the schema lets through and the type cannot hold (an amount past
    // Decimal's range, say) is refused the same way.
    serde_json::from_value(value).map_err(|e| {
        (
            "invalid_request",
            format!("at : {}", schema::printable(&e.to_string())),
        )
    })
}

/// Judges a request's `requested_at` against its first receipt: the refusal
/// reason and detail when it is too old (or too far ahead), `None` when fresh.
pub fn freshness(
    requested_at: DateTime<Utc>,
    first_received_at: DateTime<Utc>,
    max_age: chrono::Duration,
) -> Option<(&'static str, String)> {
    let limit_ms = max_age.num_milliseconds();
    if first_received_at - requested_at > max_age {
        return Some((
            "request_expired",
            format!(
                "requested at {requested_at}, first received at {first_received_at}: older than request_max_age_ms ({limit_ms} ms); send a new request"
            ),
        ));
    }
    if requested_at - first_received_at > max_age {
        return Some((
            "invalid_requested_at",
            format!(
                "requested at {requested_at}, first received at {first_received_at}: later by more than request_max_age_ms ({limit_ms} ms); check the sender's clock"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_judged_by_its_first_receipt_either_way() {
        let hour = chrono::Duration::hours(1);
        let first = Utc::now();
        assert_eq!(freshness(first - hour, first, hour), None, "at the limit");
        assert_eq!(freshness(first + hour, first, hour), None);
        let (reason, detail) = freshness(
            first - hour - chrono::Duration::milliseconds(1),
            first,
            hour,
        )
        .expect("too old");
        assert_eq!(reason, "request_expired");
        assert!(
            detail.contains("request_max_age_ms (3600000 ms)"),
            "{detail}"
        );
        let (reason, _) =
            freshness(first + hour + chrono::Duration::seconds(1), first, hour).expect("ahead");
        assert_eq!(reason, "invalid_requested_at");
    }
}
