//! Message contract v1: the hand-written JSON Schemas in `contracts/v1/`
//! against the Rust types in `payfleet_common::messages`. A field renamed,
//! added or dropped on either side, an enum variant or a wire format that
//! changes, fails here. Plain unit tests: no services needed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use jsonschema::Validator;
use payfleet_common::messages::{
    self, AttemptId, ChannelResult, ChannelStatus, EventSubOrder, FundsFrozen, OrderValidated,
    Outcome, PaymentEvent, PaymentId, PaymentOutcome, PaymentRequested, PaymentResolved,
    PaymentReverse, PayoutEvent, PayoutRequested, RefundEvent, RefundRequested, RefundResult,
    RefundStep, RequestedItem, Resolution, ReversalEvent, SCHEMA_VERSION, StatusQuery, TopUpEvent,
    TopUpRequested, TradeClose, TransferEvent, TransferRequested, TransferResult, TransferStep,
    WithdrawalEvent, WithdrawalRequested, WithdrawalResult, WithdrawalStep, event, kind,
};
use payfleet_common::messages::{
    PaymentStanding, RefundStanding, StatusErrorCode, StatusLookup, StatusReply, StatusRequest,
};
use rust_decimal::Decimal;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use uuid::Uuid;

/// Every message of contract v1, by schema name.
const MESSAGES: [&str; 26] = [
    kind::PAYMENT_REQUESTED,
    kind::ORDER_VALIDATED,
    kind::FUNDS_FROZEN,
    kind::CHANNEL_RESULT,
    kind::PAYMENT_RESOLVED,
    kind::PAYMENT_OUTCOME,
    kind::STATUS_QUERY,
    kind::TRADE_CLOSE,
    "payment.event",
    kind::REFUND_REQUESTED,
    "refund.step",
    "refund.event",
    kind::PAYMENT_REVERSE,
    "reversal.event",
    kind::STATUS_REQUEST,
    kind::STATUS_REPLY,
    kind::WITHDRAWAL_REQUESTED,
    "withdrawal.step",
    "withdrawal.event",
    kind::TOPUP_REQUESTED,
    "topup.event",
    kind::PAYOUT_REQUESTED,
    "payout.event",
    kind::TRANSFER_REQUESTED,
    "transfer.step",
    "transfer.event",
];

const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const AMOUNT_PATTERN: &str = r"^-?[0-9]+(\.[0-9]{1,2})?$";
const NON_NEGATIVE_AMOUNT_PATTERN: &str = r"^[0-9]+(\.[0-9]{1,2})?$";
const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

/// The worked signature example of `contracts/README.md`.
const README_SIGNING_KEY: &str = "demo-shop-signing-key";
const README_BODY: &str = r#"{"schema_version":1,"merchant_id":"demo-shop","merchant_order_id":"DS-20261202-000043","user_id":"user-1002","currency":"CNY","items":[{"sku":"demo-silk","quantity":1}],"payment_method":"balance","expected_amount":"89.00","requested_at":"2026-12-02T09:31:05Z"}"#;
const README_SIGNATURE: &str = "44030f1a10422f4f3c9e171441634f8d924ee3212b3ffcc5c8ea90a351444283";
/// The card request of `contracts/README.md` (the third `payment.requested` example).
const README_CARD_BODY: &str = r#"{"schema_version":1,"merchant_id":"demo-shop","merchant_order_id":"DS-20261202-000044","user_id":"user-1003","currency":"CNY","items":[{"sku":"demo-tea","quantity":1}],"payment_method":"card","payer_token":"tok_success","expected_amount":"39.90","notify_url":"https://shop.example/payfleet/webhooks","requested_at":"2026-12-02T09:33:40Z"}"#;

/// Where order-validation lists the payment methods it takes (`METHODS`):
/// payfleet-tests does not depend on the workers crate, so it is read as text.
const METHODS_SOURCE: &str = "../workers/src/stages/order_validation/mod.rs";

/// The payment methods order-validation takes: the strings of its
/// `pub const METHODS: [&str; N] = [...];`.
fn accepted_methods() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(METHODS_SOURCE);
    let source =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (_, declaration) = source
        .split_once("pub const METHODS")
        .unwrap_or_else(|| panic!("{}: no `pub const METHODS`", path.display()));
    // The value: from `=` to the `;` that ends it (the type has one too).
    let list = declaration
        .split_once('=')
        .and_then(|(_, value)| value.split_once(';'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("{}: `METHODS` has no value", path.display()));
    let methods: BTreeSet<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(
        !methods.is_empty(),
        "{}: no methods in `METHODS`",
        path.display()
    );
    methods
}

fn contracts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts")
}

fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn schema(name: &str) -> Value {
    read_json(&contracts_dir().join(format!("v1/{name}.schema.json")))
}

fn example_file(name: &str) -> Value {
    read_json(&contracts_dir().join(format!("v1/examples/{name}.json")))
}

fn embedded_examples(name: &str) -> Vec<Value> {
    let examples = schema(name)["examples"].as_array().cloned();
    let examples = examples.unwrap_or_else(|| panic!("{name}.schema.json has no `examples`"));
    assert!(!examples.is_empty(), "{name}.schema.json has no examples");
    examples
}

/// A validator for a schema that is itself a valid draft 2020-12 schema,
/// with `format` asserted (2020-12 treats it as an annotation by default).
fn validator_for(name: &str) -> Validator {
    let schema = schema(name);
    if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("{name}.schema.json is not a valid draft 2020-12 schema: {error}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name}.schema.json does not compile: {e}"))
}

fn assert_valid(name: &str, validator: &Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match {name}.schema.json:\n  {}\n{instance:#}",
        errors.join("\n  ")
    );
}

fn assert_invalid(name: &str, validator: &Validator, instance: &Value, what: &str) {
    assert!(
        !validator.is_valid(instance),
        "{name}.schema.json accepts {what}:\n{instance:#}"
    );
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v}"))
                .to_owned()
        })
        .collect()
}

/// An object schema's fields match what serde writes: every field with its
/// options set, and only the required ones with its options unset.
fn assert_fields(object_schema: &Value, full: &Value, minimal: &Value, what: &str) {
    let properties = keys(&object_schema["properties"]);
    let required = strings(&object_schema["required"]);
    assert_eq!(
        keys(full),
        properties,
        "{what}: the Rust fields (left, every option set) differ from the schema's properties (right)"
    );
    assert_eq!(
        keys(minimal),
        required,
        "{what}: the non-Option Rust fields (left) differ from the schema's `required` (right)"
    );
}

fn d(text: &str) -> Decimal {
    text.parse()
        .unwrap_or_else(|e| panic!("bad decimal {text}: {e}"))
}

fn t(text: &str) -> DateTime<Utc> {
    text.parse()
        .unwrap_or_else(|e| panic!("bad time {text}: {e}"))
}

fn id(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap_or_else(|e| panic!("bad uuid {text}: {e}"))
}

fn to_json<T: Serialize>(message: &T) -> Value {
    serde_json::to_value(message).unwrap_or_else(|e| panic!("cannot serialize: {e}"))
}

/// Validates a full and a minimal value of one message type and compares
/// their fields with the schema's. Returns the two serialized values.
fn check_message<T: Serialize>(name: &str, full: &T, minimal: &T) -> (Value, Value) {
    let validator = validator_for(name);
    let (full, minimal) = (to_json(full), to_json(minimal));
    assert_valid(
        name,
        &validator,
        &full,
        "the Rust value with every option set",
    );
    assert_valid(
        name,
        &validator,
        &minimal,
        "the Rust value with every option unset",
    );
    assert_fields(&schema(name), &full, &minimal, name);
    (full, minimal)
}

/// Deserializes `value` into `T` and serializes it back unchanged.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str, value: &Value, what: &str) {
    let message: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what} does not deserialize into the {name} type: {e}"));
    assert_eq!(
        &to_json(&message),
        value,
        "{what} changes when it goes through the {name} type"
    );
}

fn round_trip_as(name: &str, value: &Value, what: &str) {
    match name {
        kind::PAYMENT_REQUESTED => round_trip::<PaymentRequested>(name, value, what),
        kind::ORDER_VALIDATED => round_trip::<OrderValidated>(name, value, what),
        kind::FUNDS_FROZEN => round_trip::<FundsFrozen>(name, value, what),
        kind::CHANNEL_RESULT => round_trip::<ChannelResult>(name, value, what),
        kind::PAYMENT_RESOLVED => round_trip::<PaymentResolved>(name, value, what),
        kind::PAYMENT_OUTCOME => round_trip::<PaymentOutcome>(name, value, what),
        kind::STATUS_QUERY => round_trip::<StatusQuery>(name, value, what),
        kind::TRADE_CLOSE => round_trip::<TradeClose>(name, value, what),
        "payment.event" => round_trip::<PaymentEvent>(name, value, what),
        kind::REFUND_REQUESTED => round_trip::<RefundRequested>(name, value, what),
        "refund.step" => round_trip::<RefundStep>(name, value, what),
        "refund.event" => round_trip::<RefundEvent>(name, value, what),
        kind::PAYMENT_REVERSE => round_trip::<PaymentReverse>(name, value, what),
        "reversal.event" => round_trip::<ReversalEvent>(name, value, what),
        kind::STATUS_REQUEST => round_trip::<StatusRequest>(name, value, what),
        kind::STATUS_REPLY => round_trip::<StatusReply>(name, value, what),
        kind::WITHDRAWAL_REQUESTED => round_trip::<WithdrawalRequested>(name, value, what),
        "withdrawal.step" => round_trip::<WithdrawalStep>(name, value, what),
        "withdrawal.event" => round_trip::<WithdrawalEvent>(name, value, what),
        kind::TOPUP_REQUESTED => round_trip::<TopUpRequested>(name, value, what),
        "topup.event" => round_trip::<TopUpEvent>(name, value, what),
        kind::PAYOUT_REQUESTED => round_trip::<PayoutRequested>(name, value, what),
        "payout.event" => round_trip::<PayoutEvent>(name, value, what),
        kind::TRANSFER_REQUESTED => round_trip::<TransferRequested>(name, value, what),
        "transfer.step" => round_trip::<TransferStep>(name, value, what),
        "transfer.event" => round_trip::<TransferEvent>(name, value, what),
        other => panic!("no Rust type for {other}"),
    }
}

/// The `enum` of a property, as a set.
fn schema_enum(schema: &Value, property: &str) -> BTreeSet<String> {
    strings(&schema["properties"][property]["enum"])
}

fn wire_names<T: Serialize>(variants: &[T]) -> BTreeSet<String> {
    variants
        .iter()
        .map(|v| to_json(v).as_str().expect("unit variant").to_owned())
        .collect()
}

// Exhaustive matches: a new variant does not compile until it is listed here
// (and then the enum comparison asks for it in the schema).
fn all_channel_statuses() -> Vec<ChannelStatus> {
    let all = [ChannelStatus::Succeeded, ChannelStatus::Failed];
    for v in all {
        match v {
            ChannelStatus::Succeeded | ChannelStatus::Failed => {}
        }
    }
    all.to_vec()
}

fn all_resolutions() -> Vec<Resolution> {
    let all = [Resolution::Paid, Resolution::Failed];
    for v in all {
        match v {
            Resolution::Paid | Resolution::Failed => {}
        }
    }
    all.to_vec()
}

fn all_withdrawal_results() -> Vec<WithdrawalResult> {
    let all = [
        WithdrawalResult::Succeeded,
        WithdrawalResult::Failed,
        WithdrawalResult::Returned,
    ];
    for v in all {
        match v {
            WithdrawalResult::Succeeded | WithdrawalResult::Failed | WithdrawalResult::Returned => {
            }
        }
    }
    all.to_vec()
}

fn all_transfer_results() -> Vec<TransferResult> {
    let all = [TransferResult::Succeeded, TransferResult::Failed];
    for v in all {
        match v {
            TransferResult::Succeeded | TransferResult::Failed => {}
        }
    }
    all.to_vec()
}

fn all_outcomes() -> Vec<Outcome> {
    let all = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Rejected,
        Outcome::Exception,
    ];
    for v in all {
        match v {
            Outcome::Succeeded | Outcome::Failed | Outcome::Rejected | Outcome::Exception => {}
        }
    }
    all.to_vec()
}

/// Checks the v1 conventions on every property of an object schema (and
/// the object schemas in its `$defs`).
fn assert_conventions(name: &str, object_schema: &Value, path: &str) {
    assert_eq!(object_schema["type"], "object", "{name}{path}: type");
    assert_eq!(
        object_schema["additionalProperties"], false,
        "{name}{path}: additionalProperties must be false"
    );
    let properties = object_schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name}{path}: no properties"));
    for field in strings(&object_schema["required"]) {
        assert!(
            properties.contains_key(&field),
            "{name}{path}: `{field}` is required but not a property"
        );
    }
    for (field, property) in properties {
        let at = format!("{name}{path}.{field}");
        let has_description = property["description"]
            .as_str()
            .is_some_and(|s| !s.is_empty());
        assert!(has_description, "{at}: no description");
        if field == "schema_version" {
            assert_eq!(property["const"], json!(SCHEMA_VERSION), "{at}: const");
        } else if property["format"] == "uuid" || field == "id" || field.ends_with("_id") {
            let is_uuid = property["format"] == "uuid";
            // Ids chosen by merchants, requesters and users are plain strings.
            let plain = [
                "merchant_id",
                "merchant_order_id",
                "merchant_refund_id",
                "merchant_reversal_id",
                "requester_id",
                "request_id",
                "user_id",
                "payer_user_id",
                "payee_user_id",
                "seller_id",
            ];
            assert!(is_uuid != plain.contains(&field.as_str()), "{at}: format");
            if is_uuid {
                assert_eq!(property["type"], "string", "{at}: type");
                assert_eq!(property["pattern"], UUID_PATTERN, "{at}: uuid pattern");
            }
        } else if field.ends_with("_at") {
            assert_eq!(property["type"], "string", "{at}: type");
            assert_eq!(property["format"], "date-time", "{at}: format");
        } else if field == "currency" {
            assert_eq!(property["type"], "string", "{at}: type");
            assert_eq!(property["pattern"], CURRENCY_PATTERN, "{at}: pattern");
        } else if ["amount", "fee", "expected_amount"].contains(&field.as_str()) {
            let pattern = if field == "expected_amount" {
                NON_NEGATIVE_AMOUNT_PATTERN
            } else {
                AMOUNT_PATTERN
            };
            assert_eq!(property["type"], "string", "{at}: type");
            assert_eq!(property["pattern"], pattern, "{at}: pattern");
        }
    }
    if let Some(defs) = object_schema["$defs"].as_object() {
        for (def, def_schema) in defs {
            assert_conventions(name, def_schema, &format!("{path}.$defs.{def}"));
        }
    }
}

#[test]
fn every_schema_is_draft_2020_12_and_follows_the_v1_conventions() {
    for name in MESSAGES {
        let schema = schema(name);
        let _ = validator_for(name);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}: $schema"
        );
        let id = schema["$id"].as_str().unwrap_or_default();
        assert!(
            id.ends_with(&format!("/contracts/v1/{name}.schema.json")),
            "{name}: $id `{id}`"
        );
        assert_eq!(schema["title"], name, "{name}: title");
        assert!(
            schema["description"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: no description"
        );
        assert_conventions(name, &schema, "");
    }
}

#[test]
fn every_example_matches_its_schema_and_every_message_has_one() {
    let dir = contracts_dir().join("v1/examples");
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        let name = file
            .strip_suffix(".json")
            .and_then(|stem| MESSAGES.into_iter().find(|n| *n == stem))
            .unwrap_or_else(|| panic!("{}: not <message>.json for a v1 message", path.display()));
        let example = read_json(&path);
        assert_valid(
            name,
            &validator_for(name),
            &example,
            &format!("examples/{file}"),
        );
        assert!(
            embedded_examples(name).contains(&example),
            "examples/{file} is not one of the `examples` in {name}.schema.json"
        );
        seen.insert(name);
    }
    for name in MESSAGES {
        assert!(seen.contains(name), "no examples/{name}.json");
        let validator = validator_for(name);
        for (index, example) in embedded_examples(name).iter().enumerate() {
            let what = format!("{name}.schema.json examples[{index}]");
            assert_valid(name, &validator, example, &what);
        }
    }
}

#[test]
fn every_example_deserializes_into_its_rust_type_and_back() {
    for name in MESSAGES {
        round_trip_as(name, &example_file(name), &format!("examples/{name}.json"));
        for (index, example) in embedded_examples(name).iter().enumerate() {
            round_trip_as(
                name,
                example,
                &format!("{name}.schema.json examples[{index}]"),
            );
        }
    }
}

#[test]
fn every_rust_message_matches_its_schema() {
    let payment = PaymentId::from(id("b942a61c-37b0-88f7-af96-85f022daf950"));
    let attempt = AttemptId::from(id("01a23617-172f-7a4c-b8e1-52d09c6f3e17"));
    let now = t("2026-12-02T09:30:12.204518391Z");

    let item = RequestedItem {
        sku: "demo-pot".into(),
        quantity: 1,
    };
    let requested = PaymentRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: "demo-shop".into(),
        merchant_order_id: "DS-20261202-000042".into(),
        user_id: "user-1001".into(),
        currency: "CNY".into(),
        items: vec![item.clone()],
        coupon_code: Some("DEMO-100-15".into()),
        payment_method: "card".into(),
        payer_token: Some("tok_success".into()),
        expected_amount: d("113.00"),
        notify_url: Some("https://shop.example/payfleet/webhooks".into()),
        requested_at: t("2026-12-02T17:30:11+08:00"),
    };
    let (full, minimal) = check_message(
        kind::PAYMENT_REQUESTED,
        &requested,
        &PaymentRequested {
            coupon_code: None,
            payer_token: None,
            notify_url: None,
            ..requested.clone()
        },
    );
    let validator = validator_for(kind::PAYMENT_REQUESTED);
    for method in accepted_methods() {
        let value = to_json(&PaymentRequested {
            payment_method: method,
            ..requested.clone()
        });
        assert_valid(
            kind::PAYMENT_REQUESTED,
            &validator,
            &value,
            "every payment method",
        );
    }
    let item_schema = &schema(kind::PAYMENT_REQUESTED)["$defs"]["requested_item"];
    assert_fields(
        item_schema,
        &full["items"][0],
        &minimal["items"][0],
        "payment.requested items[]",
    );

    let validated = OrderValidated {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        amount: d("135"),
        currency: "CNY".into(),
        validated_at: now,
    };
    check_message(kind::ORDER_VALIDATED, &validated, &validated);

    let frozen = FundsFrozen {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        amount: d("135.00"),
        currency: "CNY".into(),
        channel: "balance".into(),
        expires_at: t("2026-12-02T09:45:12.198734Z"),
        frozen_at: now,
    };
    check_message(kind::FUNDS_FROZEN, &frozen, &frozen);

    let result = ChannelResult {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        attempt_id: attempt,
        channel: "balance".into(),
        status: ChannelStatus::Succeeded,
        amount: d("135.00"),
        currency: "CNY".into(),
        channel_reference: Some(format!("balance:{attempt}")),
        reason: Some("declined".into()),
        reported_at: now,
    };
    check_message(
        kind::CHANNEL_RESULT,
        &result,
        &ChannelResult {
            channel_reference: None,
            reason: None,
            ..result.clone()
        },
    );
    let validator = validator_for(kind::CHANNEL_RESULT);
    for status in all_channel_statuses() {
        let value = to_json(&ChannelResult {
            status,
            ..result.clone()
        });
        assert_valid(kind::CHANNEL_RESULT, &validator, &value, "every status");
    }

    let resolved = PaymentResolved {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        resolution: Resolution::Failed,
        reason: Some("declined".into()),
        resolved_at: now,
    };
    check_message(
        kind::PAYMENT_RESOLVED,
        &resolved,
        &PaymentResolved {
            reason: None,
            ..resolved.clone()
        },
    );

    let outcome = PaymentOutcome {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        outcome: Outcome::Failed,
        reason: Some("insufficient_balance".into()),
        decided_at: now,
    };
    check_message(
        kind::PAYMENT_OUTCOME,
        &outcome,
        &PaymentOutcome {
            reason: None,
            ..outcome.clone()
        },
    );

    let query = StatusQuery {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        attempt_id: attempt,
        query_number: 1,
        scheduled_at: now,
    };
    check_message(kind::STATUS_QUERY, &query, &query);

    let close = TradeClose {
        schema_version: SCHEMA_VERSION,
        payment_id: payment,
        reason: "unresolved: no final answer after 4 status queries".into(),
        requested_at: now,
    };
    check_message(kind::TRADE_CLOSE, &close, &close);

    let payment_event = PaymentEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &payment.to_string(), event::SUCCEEDED]),
        event_type: Outcome::Succeeded.event_type().into(),
        payment_id: payment,
        merchant_id: "demo-shop".into(),
        merchant_order_id: "DS-20261202-000042".into(),
        user_id: "user-1001".into(),
        status: "settled".into(),
        amount: d("135.00"),
        currency: "CNY".into(),
        reason: Some("price_mismatch: expected 130.00 CNY, the catalogue says 135.00".into()),
        sub_orders: vec![EventSubOrder {
            sub_order_id: messages::stable_id(&["sub-order", &payment.to_string(), "seller-a"]),
            seller_id: "seller-a".into(),
            amount: d("135.00"),
            fee: d("0.81"),
        }],
        occurred_at: now,
    };
    let (full, minimal) = check_message(
        "payment.event",
        &payment_event,
        &PaymentEvent {
            reason: None,
            ..payment_event.clone()
        },
    );
    let sub_order_schema = &schema("payment.event")["$defs"]["sub_order"];
    assert_fields(
        sub_order_schema,
        &full["sub_orders"][0],
        &minimal["sub_orders"][0],
        "payment.event sub_orders[]",
    );
    let validator = validator_for("payment.event");
    for outcome in all_outcomes() {
        let value = to_json(&PaymentEvent {
            event_type: outcome.event_type().into(),
            sub_orders: Vec::new(),
            ..payment_event.clone()
        });
        assert_valid("payment.event", &validator, &value, "every event type");
    }

    let refund_requested = RefundRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: "demo-shop".into(),
        merchant_refund_id: "DS-RF-1".into(),
        merchant_order_id: Some("DS-20261202-000042".into()),
        payment_id: Some(payment),
        amount: d("20.00"),
        currency: "CNY".into(),
        reason: "customer_returned_goods".into(),
        return_stock: true,
        requested_at: now,
    };
    check_message(
        kind::REFUND_REQUESTED,
        &refund_requested,
        &RefundRequested {
            merchant_order_id: None,
            payment_id: None,
            return_stock: false,
            ..refund_requested.clone()
        },
    );
    let refund_id = id("5d3e0a7c-2f1b-8e4d-9c6a-0b1f2e3d4c5b");
    let step = RefundStep {
        result: Some(RefundResult::Failed),
        reason: Some("refund_declined: refused".into()),
        query_number: Some(2),
        ..RefundStep::new(refund_id, payment)
    };
    check_message("refund.step", &step, &RefundStep::new(refund_id, payment));
    let refund_event = RefundEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &refund_id.to_string(), event::REFUND_SUCCEEDED]),
        event_type: event::REFUND_SUCCEEDED.into(),
        refund_id,
        merchant_id: "demo-shop".into(),
        merchant_refund_id: "DS-RF-1".into(),
        payment_id: Some(payment),
        merchant_order_id: Some("DS-20261202-000042".into()),
        status: "succeeded".into(),
        amount: d("20.00"),
        currency: "CNY".into(),
        refunded_total: d("20.00"),
        reason: Some("refund_declined: refused".into()),
        occurred_at: now,
    };
    check_message(
        "refund.event",
        &refund_event,
        &RefundEvent {
            payment_id: None,
            merchant_order_id: None,
            reason: None,
            ..refund_event.clone()
        },
    );

    let reverse = PaymentReverse {
        schema_version: SCHEMA_VERSION,
        merchant_id: "demo-shop".into(),
        merchant_reversal_id: "DS-RV-1".into(),
        merchant_order_id: Some("DS-20261202-000042".into()),
        payment_id: Some(payment),
        reason: "order_cancelled_by_customer".into(),
        requested_at: now,
    };
    check_message(
        kind::PAYMENT_REVERSE,
        &reverse,
        &PaymentReverse {
            merchant_order_id: None,
            payment_id: None,
            ..reverse.clone()
        },
    );
    let reversal_event = ReversalEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &refund_id.to_string(), event::REVERSED]),
        event_type: event::REVERSED.into(),
        reversal_id: refund_id,
        merchant_id: "demo-shop".into(),
        merchant_reversal_id: "DS-RV-1".into(),
        payment_id: Some(payment),
        merchant_order_id: Some("DS-20261202-000042".into()),
        status: "succeeded".into(),
        amount: d("80.00"),
        currency: "CNY".into(),
        reason: Some("reversal_window_closed: settled".into()),
        occurred_at: now,
    };
    check_message(
        "reversal.event",
        &reversal_event,
        &ReversalEvent {
            payment_id: None,
            merchant_order_id: None,
            reason: None,
            ..reversal_event.clone()
        },
    );

    let withdrawal_requested = WithdrawalRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: "demo-shop".into(),
        request_id: "DS-WD-1".into(),
        user_id: "user-1002".into(),
        amount: d("250.00"),
        currency: "CNY".into(),
        payee_account: "acct_success".into(),
        notify_url: Some("https://shop.example/payfleet/webhooks".into()),
        requested_at: now,
    };
    check_message(
        kind::WITHDRAWAL_REQUESTED,
        &withdrawal_requested,
        &WithdrawalRequested {
            notify_url: None,
            ..withdrawal_requested.clone()
        },
    );
    let withdrawal_id = id("2b03a531-9cbd-81ff-897f-05f70ba8fd60");
    let withdrawal_step = WithdrawalStep {
        result: Some(WithdrawalResult::Succeeded),
        reason: Some("account_closed".into()),
        channel_fee: Some(d("2.00")),
        query_number: Some(2),
        ..WithdrawalStep::new(withdrawal_id)
    };
    check_message(
        "withdrawal.step",
        &withdrawal_step,
        &WithdrawalStep::new(withdrawal_id),
    );
    let validator = validator_for("withdrawal.step");
    for result in all_withdrawal_results() {
        let value = to_json(&WithdrawalStep {
            result: Some(result),
            ..withdrawal_step.clone()
        });
        assert_valid("withdrawal.step", &validator, &value, "every result");
    }
    let withdrawal_event = WithdrawalEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&[
            "event",
            &withdrawal_id.to_string(),
            event::WITHDRAWAL_RETURNED,
        ]),
        event_type: event::WITHDRAWAL_RETURNED.into(),
        withdrawal_id,
        requester_id: "demo-shop".into(),
        request_id: "DS-WD-1".into(),
        user_id: "user-1002".into(),
        status: "returned".into(),
        amount: d("250.00"),
        fee: d("0.25"),
        currency: "CNY".into(),
        reason: Some("account_closed".into()),
        occurred_at: now,
    };
    check_message(
        "withdrawal.event",
        &withdrawal_event,
        &WithdrawalEvent {
            reason: None,
            ..withdrawal_event.clone()
        },
    );
    let transfer_requested = TransferRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: "payfleet-wallet-app".into(),
        request_id: "WA-TR-1".into(),
        payer_user_id: "user-1001".into(),
        payee_user_id: "user-1002".into(),
        amount: d("88.00"),
        currency: "CNY".into(),
        memo: Some("dinner".into()),
        notify_url: Some("https://wallet.example/payfleet/webhooks".into()),
        requested_at: now,
    };
    check_message(
        kind::TRANSFER_REQUESTED,
        &transfer_requested,
        &TransferRequested {
            memo: None,
            notify_url: None,
            ..transfer_requested.clone()
        },
    );
    let transfer_id = id("5b0e6c1a-57d2-8a4e-9f0b-2f3c1d7e8a90");
    let transfer_step = TransferStep {
        result: Some(TransferResult::Failed),
        reason: Some("insufficient_balance".into()),
        ..TransferStep::new(transfer_id)
    };
    check_message(
        "transfer.step",
        &transfer_step,
        &TransferStep::new(transfer_id),
    );
    let transfer_event = TransferEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &transfer_id.to_string(), event::TRANSFER_FAILED]),
        event_type: event::TRANSFER_FAILED.into(),
        transfer_id,
        requester_id: "payfleet-wallet-app".into(),
        request_id: "WA-TR-1".into(),
        payer_user_id: "user-1001".into(),
        payee_user_id: "user-1002".into(),
        status: "failed".into(),
        amount: d("88.00"),
        currency: "CNY".into(),
        memo: Some("dinner".into()),
        reason: Some("payee_wallet_not_active: user-1002's CNY wallet is frozen".into()),
        occurred_at: now,
    };
    check_message(
        "transfer.event",
        &transfer_event,
        &TransferEvent {
            memo: None,
            reason: None,
            ..transfer_event.clone()
        },
    );
    let top_up_requested = TopUpRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: "demo-wallet-app".into(),
        request_id: "WA-TU-1".into(),
        user_id: "user-1002".into(),
        amount: d("200.00"),
        currency: "CNY".into(),
        payment_method: "card".into(),
        payer_token: Some("tok_success".into()),
        notify_url: Some("https://wallet.example/payfleet/webhooks".into()),
        requested_at: now,
    };
    check_message(
        kind::TOPUP_REQUESTED,
        &top_up_requested,
        &TopUpRequested {
            payer_token: None,
            notify_url: None,
            ..top_up_requested.clone()
        },
    );
    let payout_requested = PayoutRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: "seller-a".into(),
        request_id: "SA-PO-1".into(),
        amount: d("1200.00"),
        currency: "CNY".into(),
        notify_url: Some("https://seller-a.example/payfleet/webhooks".into()),
        requested_at: now,
    };
    check_message(
        kind::PAYOUT_REQUESTED,
        &payout_requested,
        &PayoutRequested {
            notify_url: None,
            ..payout_requested.clone()
        },
    );
    let payout_id = id("8f1a3c5e-7b9d-8f1a-a3c5-e7b9d1f3a5c7");
    let payout_event = PayoutEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &payout_id.to_string(), event::PAYOUT_RETURNED]),
        event_type: event::PAYOUT_RETURNED.into(),
        payout_id,
        merchant_id: "seller-a".into(),
        request_id: "SA-PO-1".into(),
        status: "returned".into(),
        amount: d("1200.00"),
        currency: "CNY".into(),
        reason: Some("account_closed".into()),
        occurred_at: now,
    };
    check_message(
        "payout.event",
        &payout_event,
        &PayoutEvent {
            reason: None,
            ..payout_event.clone()
        },
    );
    let top_up_id = PaymentId::from(id("0b8e2f4a-6c1d-8e5f-a7b9-c3d5e7f9a1b2"));
    let top_up_event = TopUpEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&["event", &top_up_id.to_string(), event::TOPUP_FAILED]),
        event_type: event::TOPUP_FAILED.into(),
        top_up_id,
        requester_id: "demo-wallet-app".into(),
        request_id: "WA-TU-1".into(),
        user_id: "user-1002".into(),
        status: "failed".into(),
        amount: d("200.00"),
        currency: "CNY".into(),
        reason: Some("declined: insufficient_funds".into()),
        occurred_at: now,
    };
    check_message(
        "topup.event",
        &top_up_event,
        &TopUpEvent {
            reason: None,
            ..top_up_event.clone()
        },
    );
    // A refusal that names no withdrawal: what the request had was unusable.
    let refusal = WithdrawalEvent {
        event_type: event::WITHDRAWAL_FAILED.into(),
        user_id: String::new(),
        status: "refused".into(),
        amount: Decimal::ZERO,
        fee: Decimal::ZERO,
        currency: payfleet_common::money::NO_CURRENCY.into(),
        reason: Some("invalid_request: at /amount: 7 is not of type \"string\"".into()),
        ..withdrawal_event.clone()
    };
    let validator = validator_for("withdrawal.event");
    assert_valid(
        "withdrawal.event",
        &validator,
        &to_json(&refusal),
        "a refusal with amount 0, the no-currency code and no user",
    );
}

#[test]
fn the_schema_enums_are_the_rust_enums() {
    assert_eq!(
        schema_enum(&schema(kind::PAYMENT_REQUESTED), "payment_method"),
        accepted_methods(),
        "payment.requested payment_method (order-validation's METHODS)"
    );
    let channel_result = schema(kind::CHANNEL_RESULT);
    assert_eq!(
        schema_enum(&channel_result, "status"),
        wire_names(&all_channel_statuses()),
        "channel.result status"
    );
    let resolved = schema(kind::PAYMENT_RESOLVED);
    assert_eq!(
        schema_enum(&resolved, "resolution"),
        wire_names(&all_resolutions()),
        "payment.resolved resolution"
    );
    let outcome = schema(kind::PAYMENT_OUTCOME);
    assert_eq!(
        schema_enum(&outcome, "outcome"),
        wire_names(&all_outcomes()),
        "payment.outcome outcome"
    );
    let event_types: BTreeSet<String> = all_outcomes()
        .into_iter()
        .map(|o| o.event_type().to_owned())
        .collect();
    let constants: BTreeSet<String> = [
        event::SUCCEEDED,
        event::FAILED,
        event::REJECTED,
        event::EXCEPTION,
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(event_types, constants, "messages::event constants");
    assert_eq!(
        schema_enum(&schema("payment.event"), "event_type"),
        event_types,
        "payment.event event_type"
    );
    let results = [RefundResult::Succeeded, RefundResult::Failed];
    for r in results {
        match r {
            RefundResult::Succeeded | RefundResult::Failed => {}
        }
    }
    assert_eq!(
        schema_enum(&schema("refund.step"), "result"),
        wire_names(&results),
        "refund.step result"
    );
    assert_eq!(
        schema_enum(&schema("refund.event"), "event_type"),
        [event::REFUND_SUCCEEDED, event::REFUND_FAILED]
            .map(str::to_owned)
            .into(),
        "refund.event event_type"
    );
    assert_eq!(
        schema_enum(&schema("reversal.event"), "event_type"),
        [event::REVERSED, event::REVERSAL_FAILED]
            .map(str::to_owned)
            .into(),
        "reversal.event event_type"
    );
    assert_eq!(
        schema_enum(&schema("withdrawal.step"), "result"),
        wire_names(&all_withdrawal_results()),
        "withdrawal.step result"
    );
    assert_eq!(
        schema_enum(&schema("withdrawal.event"), "event_type"),
        [
            event::WITHDRAWAL_SUCCEEDED,
            event::WITHDRAWAL_FAILED,
            event::WITHDRAWAL_RETURNED,
        ]
        .map(str::to_owned)
        .into(),
        "withdrawal.event event_type"
    );
    assert_eq!(
        schema_enum(&schema("transfer.step"), "result"),
        wire_names(&all_transfer_results()),
        "transfer.step result"
    );
    assert_eq!(
        schema_enum(&schema("transfer.event"), "event_type"),
        [event::TRANSFER_SUCCEEDED, event::TRANSFER_FAILED]
            .map(str::to_owned)
            .into(),
        "transfer.event event_type"
    );

    let top_up_event_types: BTreeSet<String> = all_outcomes()
        .into_iter()
        .map(|o| o.top_up_event_type().to_owned())
        .collect();
    assert_eq!(
        top_up_event_types,
        [
            event::TOPUP_SUCCEEDED,
            event::TOPUP_FAILED,
            event::TOPUP_EXCEPTION,
        ]
        .map(str::to_owned)
        .into(),
        "every outcome has a top-up event"
    );
    assert_eq!(
        schema_enum(&schema("topup.event"), "event_type"),
        top_up_event_types,
        "topup.event event_type"
    );
    assert_eq!(
        schema_enum(&schema(kind::TOPUP_REQUESTED), "payment_method"),
        accepted_methods()
            .into_iter()
            .filter(|m| m != "balance")
            .collect(),
        "topup.requested payment_method: every third-party method, never the wallet itself"
    );
    assert_eq!(
        schema_enum(&schema("payout.event"), "event_type"),
        [
            event::PAYOUT_SUCCEEDED,
            event::PAYOUT_FAILED,
            event::PAYOUT_RETURNED,
        ]
        .map(str::to_owned)
        .into(),
        "payout.event event_type"
    );
    assert_eq!(
        schema_enum(&schema("payout.event"), "status"),
        schema_enum(&schema("withdrawal.event"), "status"),
        "a payout has a withdrawal's statuses"
    );
}

/// A step schema names every AMQP type its hand-offs travel as.
#[test]
fn the_step_schemas_name_every_hand_off() {
    for (name, types) in [
        ("refund.step", &kind::REFUND_STEPS[..]),
        ("withdrawal.step", &kind::WITHDRAWAL_STEPS[..]),
        ("transfer.step", &kind::TRANSFER_STEPS[..]),
    ] {
        let description = schema(name)["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for message_type in types {
            assert!(
                description.contains(&format!("`{message_type}`")),
                "{name}.schema.json does not describe the hand-off `{message_type}`"
            );
        }
    }
}

#[test]
fn the_schemas_refuse_what_the_contract_forbids() {
    let name = kind::PAYMENT_REQUESTED;
    let validator = validator_for(name);
    let example = example_file(name);
    let with = |field: &str, value: Value| {
        let mut changed = example.clone();
        changed[field] = value;
        changed
    };
    let cases = [
        (with("surprise", json!(true)), "an unknown field"),
        (with("schema_version", json!(2)), "schema_version 2"),
        (
            with("expected_amount", json!(135.0)),
            "an amount as a number",
        ),
        (with("expected_amount", json!("135.001")), "three decimals"),
        (
            with("expected_amount", json!("-1.00")),
            "a negative expected_amount",
        ),
        (with("expected_amount", json!("1e2")), "an exponent"),
        (with("currency", json!("cny")), "a lower-case currency"),
        (
            with("requested_at", json!("2026-12-02 09:30")),
            "a time that is not RFC 3339",
        ),
        (with("items", json!([])), "no items"),
        (
            with("items", json!([{"sku": "demo-pot", "quantity": 0}])),
            "quantity 0",
        ),
        (
            with("items", json!([{"sku": "demo-pot", "quantity": 1, "x": 1}])),
            "an unknown item field",
        ),
        (
            with("payment_method", json!("cash")),
            "an unknown payment method",
        ),
        (with("payer_token", json!("")), "an empty payer token"),
        (
            with("payer_token", json!("t".repeat(129))),
            "a payer token of 129 characters",
        ),
        (
            with("payer_token", json!(7)),
            "a payer token that is a number",
        ),
        (
            with("notify_url", json!("ftp://shop.example/")),
            "a notify_url that is not http(s)",
        ),
        (
            with("coupon_code", Value::Null),
            "null for an optional field",
        ),
        (with("payer_token", Value::Null), "null for the payer token"),
    ];
    for (instance, what) in &cases {
        assert_invalid(name, &validator, instance, what);
    }
    let mut missing = example.clone();
    missing.as_object_mut().expect("object").remove("user_id");
    assert_invalid(name, &validator, &missing, "a missing required field");

    // What the schema refuses for unknown fields, the Rust type refuses too.
    let unknown = with("surprise", json!(true));
    assert!(serde_json::from_value::<PaymentRequested>(unknown).is_err());
    let longest = with("payer_token", json!("t".repeat(128)));
    assert_valid(
        name,
        &validator,
        &longest,
        "a payer token of 128 characters",
    );

    let name = kind::STATUS_QUERY;
    let validator = validator_for(name);
    let example = example_file(name);
    for (field, value, what) in [
        ("query_number", json!(0), "query number 0"),
        ("query_number", json!(-1), "a negative query number"),
        ("query_number", json!(1.5), "a fractional query number"),
        ("query_number", json!("1"), "a query number as a string"),
        (
            "attempt_id",
            json!("attempt-1"),
            "an attempt id that is not a uuid",
        ),
        (
            "scheduled_at",
            json!("soon"),
            "a time that is not a date-time",
        ),
        ("surprise", json!(true), "an unknown field"),
    ] {
        let mut changed = example.clone();
        changed[field] = value;
        assert_invalid(name, &validator, &changed, what);
    }
    let mut missing = example.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("attempt_id");
    assert_invalid(name, &validator, &missing, "a missing attempt_id");

    let name = kind::TRADE_CLOSE;
    let validator = validator_for(name);
    let example = example_file(name);
    for (field, value, what) in [
        ("reason", json!(""), "an empty reason"),
        ("reason", Value::Null, "a null reason"),
        (
            "payment_id",
            json!("not-a-uuid"),
            "a payment id that is not a uuid",
        ),
        ("surprise", json!(true), "an unknown field"),
    ] {
        let mut changed = example.clone();
        changed[field] = value;
        assert_invalid(name, &validator, &changed, what);
    }
    let mut missing = example.clone();
    missing.as_object_mut().expect("object").remove("reason");
    assert_invalid(name, &validator, &missing, "a missing reason");

    let name = "payment.event";
    let validator = validator_for(name);
    let example = example_file(name);
    for (field, value, what) in [
        (
            "payment_id",
            json!("B942A61C-37B0-88F7-AF96-85F022DAF950"),
            "an upper-case uuid",
        ),
        (
            "payment_id",
            json!("b942a61c37b088f7af9685f022daf950"),
            "a uuid without hyphens",
        ),
        (
            "event_type",
            json!("payment.settled"),
            "an unknown event type",
        ),
        (
            "occurred_at",
            json!("yesterday"),
            "a time that is not a date-time",
        ),
        (
            "sub_orders",
            json!([{"sub_order_id": "x", "seller_id": "s", "amount": "1", "fee": "0"}]),
            "a sub-order id that is not a uuid",
        ),
    ] {
        let mut changed = example.clone();
        changed[field] = value;
        assert_invalid(name, &validator, &changed, what);
    }

    let name = kind::WITHDRAWAL_REQUESTED;
    let validator = validator_for(name);
    let example = example_file(name);
    for (field, value, what) in [
        ("surprise", json!(true), "an unknown field"),
        ("schema_version", json!(2), "schema_version 2"),
        ("amount", json!(250.0), "an amount as a number"),
        ("amount", json!("250.001"), "three decimals"),
        ("amount", json!("2.5e2"), "an exponent"),
        ("currency", json!("cny"), "a lower-case currency"),
        ("request_id", json!(""), "an empty request id"),
        (
            "request_id",
            json!("wd\u{0}1"),
            "a control character in an id",
        ),
        (
            "requester_id",
            json!("r".repeat(129)),
            "a requester id of 129 characters",
        ),
        (
            "user_id",
            json!("u".repeat(129)),
            "a user id of 129 characters",
        ),
        ("payee_account", json!(""), "an empty payee account"),
        (
            "payee_account",
            json!("a".repeat(129)),
            "a payee account of 129 characters",
        ),
        (
            "notify_url",
            json!("ftp://shop.example/"),
            "a notify_url that is not http(s)",
        ),
        (
            "notify_url",
            json!(format!("https://shop.example/{}", "p".repeat(2030))),
            "a notify_url over 2048 characters",
        ),
        ("notify_url", Value::Null, "null for the notify_url"),
        (
            "requested_at",
            json!("2026-12-06 10:02"),
            "a time that is not RFC 3339",
        ),
    ] {
        let mut changed = example.clone();
        changed[field] = value;
        assert_invalid(name, &validator, &changed, what);
    }
    for field in ["user_id", "amount", "currency", "payee_account"] {
        let mut missing = example.clone();
        missing.as_object_mut().expect("object").remove(field);
        assert_invalid(name, &validator, &missing, &format!("no {field}"));
    }
    let mut unknown = example.clone();
    unknown["surprise"] = json!(true);
    assert!(serde_json::from_value::<WithdrawalRequested>(unknown).is_err());
    let mut longest = example.clone();
    longest["payee_account"] = json!("a".repeat(128));
    assert_valid(
        name,
        &validator,
        &longest,
        "a payee account of 128 characters",
    );

    let name = "withdrawal.event";
    let validator = validator_for(name);
    let example = example_file(name);
    for (field, value, what) in [
        (
            "event_type",
            json!("withdrawal.pending"),
            "an unknown event type",
        ),
        ("status", json!("paid"), "an unknown status"),
        (
            "withdrawal_id",
            json!("wd-1"),
            "a withdrawal id that is not a uuid",
        ),
        ("fee", json!(0.25), "a fee as a number"),
        ("surprise", json!(true), "an unknown field"),
    ] {
        let mut changed = example.clone();
        changed[field] = value;
        assert_invalid(name, &validator, &changed, what);
    }
}

#[test]
fn the_readme_signature_example_is_right() {
    assert_eq!(
        messages::sign(README_SIGNING_KEY, README_BODY.as_bytes()),
        README_SIGNATURE
    );
    assert!(messages::verify(
        README_SIGNING_KEY,
        README_BODY.as_bytes(),
        README_SIGNATURE
    ));
    let body: Value = serde_json::from_str(README_BODY).expect("the README body is JSON");
    let name = kind::PAYMENT_REQUESTED;
    assert_valid(
        name,
        &validator_for(name),
        &body,
        "the README's signed body",
    );
    round_trip_as(name, &body, "the README's signed body");
    let card: Value = serde_json::from_str(README_CARD_BODY).expect("the README card body is JSON");
    assert_valid(
        name,
        &validator_for(name),
        &card,
        "the README's card request",
    );
    round_trip_as(name, &card, "the README's card request");
    assert!(
        embedded_examples(name).contains(&card),
        "the README's card request is not one of the `examples` in {name}.schema.json"
    );
    let readme = contracts_dir().join("README.md");
    let readme = fs::read_to_string(&readme)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme.display()));
    for text in [
        README_SIGNING_KEY,
        README_BODY,
        README_SIGNATURE,
        README_CARD_BODY,
    ] {
        assert!(
            readme.contains(text),
            "contracts/README.md does not show `{text}`"
        );
    }
}

#[test]
fn the_readme_lists_every_message_and_payment_method() {
    let readme = contracts_dir().join("README.md");
    let readme = fs::read_to_string(&readme)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme.display()));
    for name in MESSAGES {
        let link = format!("(v1/{name}.schema.json)");
        assert!(
            readme.contains(&link),
            "contracts/README.md does not link {name}.schema.json"
        );
    }
    for method in accepted_methods() {
        assert!(
            readme.contains(&format!("| `{method}` |")),
            "contracts/README.md has no row for the payment method `{method}`"
        );
    }
}

/// A message whose schema asks for one of several shapes (`oneOf`):
/// every shape validates, and together they have the schema's fields,
/// with the ones they all carry its `required`.
fn check_shapes(name: &str, shapes: &[Value]) {
    let validator = validator_for(name);
    for (index, shape) in shapes.iter().enumerate() {
        assert_valid(name, &validator, shape, &format!("{name} shape {index}"));
    }
    assert_shape_fields(&schema(name), shapes, name);
}

/// Together the shapes have the object schema's fields, and the ones they
/// all carry are its `required`.
fn assert_shape_fields(object_schema: &Value, shapes: &[Value], what: &str) {
    let mut all = BTreeSet::new();
    let mut common: Option<BTreeSet<String>> = None;
    for shape in shapes {
        let fields = keys(shape);
        all.extend(fields.iter().cloned());
        common = Some(match common {
            Some(common) => common.intersection(&fields).cloned().collect(),
            None => fields,
        });
    }
    assert_eq!(
        all,
        keys(&object_schema["properties"]),
        "{what}: the Rust fields of every shape (left) differ from the schema's properties (right)"
    );
    assert_eq!(
        common.unwrap_or_default(),
        strings(&object_schema["required"]),
        "{what}: the fields every shape has (left) differ from the schema's `required` (right)"
    );
}

#[test]
fn status_requests_and_replies_match_their_schemas() {
    let payment = PaymentId::from(id("b942a61c-37b0-88f7-af96-85f022daf950"));
    let now = t("2026-12-03T10:10:02.318811Z");
    let lookups = [
        StatusLookup::Payment(payment),
        StatusLookup::MerchantOrder("DS-20261202-000043".into()),
        StatusLookup::MerchantRefund("DS-RF-20261202-000001".into()),
        StatusLookup::MerchantReversal("DS-RV-20261202-000001".into()),
    ];
    let requests: Vec<Value> = lookups
        .iter()
        .map(|lookup| {
            let request = StatusRequest {
                requested_at: now,
                ..StatusRequest::new("demo-shop", lookup.clone())
            };
            assert_eq!(request.lookup().as_ref(), Some(lookup));
            to_json(&request)
        })
        .collect();
    let name = kind::STATUS_REQUEST;
    check_shapes(name, &requests);
    let validator = validator_for(name);
    let mut two = requests[0].clone();
    two["merchant_order_id"] = json!("DS-20261202-000043");
    assert_invalid(name, &validator, &two, "two lookups");
    let mut none = requests[0].clone();
    none.as_object_mut().expect("object").remove("payment_id");
    assert_invalid(name, &validator, &none, "no lookup");
    let mut unknown = requests[1].clone();
    unknown["surprise"] = json!(true);
    assert_invalid(name, &validator, &unknown, "an unknown field");
    assert!(serde_json::from_value::<StatusRequest>(unknown).is_err());

    let refund = RefundStanding {
        refund_id: id("5d3e0a7c-2f1b-8e4d-9c6a-0b1f2e3d4c5b"),
        kind: "refund".into(),
        origin: "upstream".into(),
        merchant_refund_id: Some("DS-RF-20261202-000001".into()),
        amount: d("30.00"),
        currency: "CNY".into(),
        status: "succeeded".into(),
        reason: "customer_returned_goods".into(),
        detail: Some("refund_declined: refused".into()),
        created_at: now,
        updated_at: now,
        refunded_at: Some(now),
    };
    let automatic = RefundStanding {
        origin: "automatic".into(),
        merchant_refund_id: None,
        detail: None,
        refunded_at: None,
        ..refund.clone()
    };
    let standing = PaymentStanding {
        payment_id: payment,
        merchant_order_id: "DS-20261202-000043".into(),
        status: "settled".into(),
        reason: Some("amount_mismatch".into()),
        amount: d("89.00"),
        currency: "CNY".into(),
        payment_method: "card".into(),
        channel: Some("sandbox-card".into()),
        refunded_total: d("30.00"),
        created_at: now,
        updated_at: now,
        finished_at: Some(now),
        refunds: vec![refund.clone(), automatic.clone()],
    };
    let bare = PaymentStanding {
        reason: None,
        channel: None,
        finished_at: None,
        refunds: Vec::new(),
        ..standing.clone()
    };
    let name = kind::STATUS_REPLY;
    let reply_schema = schema(name);
    let found = StatusReply::found(standing.clone(), Some(refund.refund_id));
    let found_bare = StatusReply::found(bare.clone(), None);
    let refused = StatusReply::refused(StatusErrorCode::NotFound, "no such payment");
    check_shapes(
        name,
        &[to_json(&found), to_json(&found_bare), to_json(&refused)],
    );
    assert_shape_fields(
        &reply_schema["$defs"]["payment"],
        &[to_json(&bare), to_json(&standing)],
        "status.reply payment",
    );
    assert_shape_fields(
        &reply_schema["$defs"]["refund"],
        &[to_json(&refund), to_json(&automatic)],
        "status.reply refund",
    );
    let validator = validator_for(name);
    let mut both = to_json(&found);
    both["error"] = to_json(&refused)["error"].clone();
    assert_invalid(name, &validator, &both, "data and an error at once");
    let mut named = to_json(&refused);
    named["refund_id"] = json!(refund.refund_id);
    assert_invalid(name, &validator, &named, "a refund named without data");
    assert_eq!(
        strings(&reply_schema["$defs"]["error"]["properties"]["code"]["enum"]),
        wire_names(&all_status_error_codes()),
        "status.reply error codes"
    );
}

fn all_status_error_codes() -> Vec<StatusErrorCode> {
    for code in StatusErrorCode::ALL {
        match code {
            StatusErrorCode::InvalidRequest
            | StatusErrorCode::UnsupportedSchemaVersion
            | StatusErrorCode::UnknownMerchant
            | StatusErrorCode::BadSignature
            | StatusErrorCode::RequestExpired
            | StatusErrorCode::InvalidRequestedAt
            | StatusErrorCode::NotFound
            | StatusErrorCode::Unavailable => {}
        }
    }
    StatusErrorCode::ALL.to_vec()
}
