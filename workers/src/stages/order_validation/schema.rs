//! The ingress contract, enforced: a `payment.requested` body is checked
//! against the committed schema (`contracts/v1/payment.requested.schema.json`,
//! compiled into the binary) before it is read into the Rust type, so that
//! exactly what the schema refuses is refused, and the refusal names the JSON
//! pointer of the first violation.
//!
//! Why the schema itself and not a stricter serde decoder: serde cannot say
//! where a value broke the contract (no pointer), knows no lengths, patterns,
//! formats or bounds, and a second hand-written copy of the contract would
//! drift from the committed one. The cost, measured by `validation_cost`
//! below (release build, the shared 2-core test box, the schema's card
//! example, 200 000 rounds, three runs): parsing and decoding with serde
//! alone takes 1.2 to 1.4 µs a request; with the compiled schema checked in
//! between, 1.8 to 2.5 µs, so the check adds about 0.6 to 1 µs (formats and
//! patterns included). A request's own transaction takes milliseconds: the
//! check is noise.

use std::sync::LazyLock;

use jsonschema::{Validator, error::ValidationErrorKind};
use serde_json::Value;

/// The committed schemas, as the binary was built with them.
pub const SCHEMA: &str = include_str!("../../../../contracts/v1/payment.requested.schema.json");
pub const REFUND_SCHEMA: &str =
    include_str!("../../../../contracts/v1/refund.requested.schema.json");

pub fn compile(schema: &str) -> Validator {
    let schema: Value = serde_json::from_str(schema).expect("the committed schema is JSON");
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the committed schema compiles")
}

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(SCHEMA));
pub const REVERSAL_SCHEMA: &str =
    include_str!("../../../../contracts/v1/payment.reverse.schema.json");

pub const WITHDRAWAL_SCHEMA: &str =
    include_str!("../../../../contracts/v1/withdrawal.requested.schema.json");

static REFUND_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(REFUND_SCHEMA));
static WITHDRAWAL_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(WITHDRAWAL_SCHEMA));
pub const PAYOUT_SCHEMA: &str =
    include_str!("../../../../contracts/v1/payout.requested.schema.json");
static PAYOUT_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(PAYOUT_SCHEMA));
pub const TOP_UP_SCHEMA: &str =
    include_str!("../../../../contracts/v1/topup.requested.schema.json");
static TOP_UP_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(TOP_UP_SCHEMA));
pub const TRANSFER_SCHEMA: &str =
    include_str!("../../../../contracts/v1/transfer.requested.schema.json");
static TRANSFER_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(TRANSFER_SCHEMA));
static REVERSAL_VALIDATOR: LazyLock<Validator> = LazyLock::new(|| compile(REVERSAL_SCHEMA));

/// Longest detail kept from a validation message (it quotes the value).
const DETAIL_MAX: usize = 300;

/// A body that breaks the schema: the pointer of the first violation and
/// what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.pointer, self.message)
    }
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Text safe to store and publish: control characters (NUL above all, which
/// PostgreSQL text cannot hold) replaced, and bounded.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(DETAIL_MAX)
        .collect();
    if text.chars().count() > DETAIL_MAX {
        out.push('…');
    }
    out
}

/// The first violation of the `payment.requested` schema in `value`, if any.
pub fn first_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&VALIDATOR, value)
}

/// The first violation of the `payment.reverse` schema in `value`, if any.
pub fn first_reversal_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&REVERSAL_VALIDATOR, value)
}

/// The first violation of the `refund.requested` schema in `value`, if any.
pub fn first_refund_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&REFUND_VALIDATOR, value)
}

/// The first violation of the `payout.requested` schema in `value`, if any.
pub fn first_payout_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&PAYOUT_VALIDATOR, value)
}

/// The first violation of the `topup.requested` schema in `value`, if any.
pub fn first_top_up_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&TOP_UP_VALIDATOR, value)
}

/// The first violation of the `transfer.requested` schema in `value`, if any.
pub fn first_transfer_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&TRANSFER_VALIDATOR, value)
}

/// The first violation of the `withdrawal.requested` schema in `value`, if any.
pub fn first_withdrawal_violation(value: &Value) -> Option<Violation> {
    first_violation_of(&WITHDRAWAL_VALIDATOR, value)
}

pub fn first_violation_of(validator: &Validator, value: &Value) -> Option<Violation> {
    let error = validator.iter_errors(value).next()?;
    let mut pointer = error.instance_path().as_str().to_owned();
    // A missing or unexpected property is pointed at, not its parent.
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            pointer.push('/');
            pointer.push_str(&escape(property.as_str().unwrap_or_default()));
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            if let Some(first) = unexpected.first() {
                pointer.push('/');
                pointer.push_str(&escape(first));
            }
        }
        _ => {}
    }
    Some(Violation {
        pointer,
        message: printable(&error.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Value {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        schema["examples"][2].clone()
    }

    #[test]
    fn the_examples_pass_and_violations_are_pointed_at() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        for example in schema["examples"].as_array().unwrap() {
            assert_eq!(first_violation(example), None);
        }
        let mut body = example();
        body["items"][0]["quantity"] = Value::from(0);
        assert_eq!(first_violation(&body).unwrap().pointer, "/items/0/quantity");
        let mut body = example();
        body.as_object_mut().unwrap().remove("user_id");
        assert_eq!(first_violation(&body).unwrap().pointer, "/user_id");
        let mut body = example();
        body["items"][0]["colour"] = Value::from("red");
        assert_eq!(first_violation(&body).unwrap().pointer, "/items/0/colour");
        let mut body = example();
        body["coupon_code"] = Value::Null;
        assert_eq!(first_violation(&body).unwrap().pointer, "/coupon_code");
        for amount in ["+39.90", "39.900", "0.001"] {
            let mut body = example();
            body["expected_amount"] = Value::from(amount);
            assert_eq!(first_violation(&body).unwrap().pointer, "/expected_amount");
        }
        let mut body = example();
        body["user_id"] = Value::from("a\u{0}b");
        body["payment_method"] = Value::from("x".repeat(1000));
        let violation = first_violation(&body).unwrap();
        assert!(!violation.message.contains('\u{0}'));
        assert!(violation.message.chars().count() <= DETAIL_MAX + 1);
    }

    /// The cost of the check, against decoding alone:
    /// `cargo test --release -p payfleet-workers validation_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn validation_cost() {
        let body = serde_json::to_vec(&example()).unwrap();
        let rounds = 200_000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let value: Value = serde_json::from_slice(std::hint::black_box(&body)).unwrap();
            let parsed: payfleet_common::messages::PaymentRequested =
                serde_json::from_value(value).unwrap();
            std::hint::black_box(parsed);
        }
        let serde_only = started.elapsed();
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let value: Value = serde_json::from_slice(std::hint::black_box(&body)).unwrap();
            assert!(first_violation(&value).is_none());
            let parsed: payfleet_common::messages::PaymentRequested =
                serde_json::from_value(value).unwrap();
            std::hint::black_box(parsed);
        }
        let with_schema = started.elapsed();
        println!(
            "serde alone: {:.2} µs/request; with the schema: {:.2} µs/request",
            serde_only.as_secs_f64() * 1e6 / f64::from(rounds),
            with_schema.as_secs_f64() * 1e6 / f64::from(rounds),
        );
    }
}
