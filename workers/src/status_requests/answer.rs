//! One status request read and answered: who asks (the signature, as for a
//! payment request), whether the body keeps the committed schema and is
//! fresh, then the payment or refund from PostgreSQL. Every refusal is an
//! error reply, never data.

use crate::domain::merchant::RequestKeys;
use std::{sync::LazyLock, time::Duration};

use chrono::Utc;
use jsonschema::Validator;
use lapin::types::FieldTable;
use payfleet_common::{
    broker,
    messages::{self, SCHEMA_VERSION, StatusErrorCode as Code, StatusReply, StatusRequest},
};
use serde_json::Value;
use sqlx::PgPool;

use super::lookup;
use crate::stages::order_validation::{freshness, schema};

/// The committed schema, as the binary was built with it.
pub const SCHEMA: &str = include_str!("../../../contracts/v1/status.request.schema.json");
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| schema::compile(SCHEMA));

/// Largest body read: a valid request, with every id at its longest, is
/// under 1 KiB.
const MAX_BODY_BYTES: usize = 8 * 1024;
/// Bound on the database part of one answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The reply to one request: data, or why not.
pub async fn answer(
    pool: &PgPool,
    body: &[u8],
    headers: Option<&FieldTable>,
    max_age: chrono::Duration,
) -> StatusReply {
    let answered = tokio::time::timeout(LOOKUP_TIMEOUT, async {
        let request = match read(pool, body, headers, max_age).await? {
            Ok(request) => request,
            Err(refusal) => return Ok(refusal),
        };
        lookup::standing(pool, &request).await
    })
    .await;
    match answered {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => {
            tracing::warn!(%error, "status request not looked up");
            StatusReply::refused(
                Code::Unavailable,
                "payfleet cannot look it up just now; ask again",
            )
        }
        Err(_) => StatusReply::refused(
            Code::Unavailable,
            format!("no answer within {LOOKUP_TIMEOUT:?}; ask again"),
        ),
    }
}

/// The merchant a body names, for the log of a request nobody can be told about.
pub fn merchant_named(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body.get(..MAX_BODY_BYTES)?).ok()?;
    value
        .get("merchant_id")
        .and_then(Value::as_str)
        .map(schema::printable)
}

/// The request, once its sender, its shape and its age are checked;
/// otherwise the refusal to send back.
async fn read(
    pool: &PgPool,
    body: &[u8],
    headers: Option<&FieldTable>,
    max_age: chrono::Duration,
) -> Result<Result<StatusRequest, StatusReply>, sqlx::Error> {
    let refuse = |code, message: String| Ok(Err(StatusReply::refused(code, message)));
    if body.len() > MAX_BODY_BYTES {
        let message = format!("body of {} bytes, over {MAX_BODY_BYTES}", body.len());
        return refuse(Code::InvalidRequest, message);
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            let message = format!("not JSON: {}", schema::printable(&error.to_string()));
            return refuse(Code::InvalidRequest, message);
        }
    };
    let Some(merchant_id) = value
        .get("merchant_id")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 128 && !m.chars().any(char::is_control))
    else {
        let message = "at /merchant_id: missing, not a string, empty, over 128 bytes or holding a control character";
        return refuse(Code::InvalidRequest, message.to_owned());
    };
    let keys = {
        let mut conn = pool.acquire().await?;
        RequestKeys::load(&mut conn, merchant_id).await?
    };
    let Some(keys) = keys else {
        return refuse(Code::UnknownMerchant, "no such merchant".to_owned());
    };
    let signature = broker::header_str(headers, messages::SIGNATURE_HEADER);
    if !signature.as_deref().is_some_and(|s| keys.verify(body, s)) {
        let message = match signature {
            Some(_) => "signature does not match the body",
            None => "no signature header",
        };
        return refuse(Code::BadSignature, message.to_owned());
    }
    let request = match checked(value) {
        Ok(request) => request,
        Err((code, message)) => return refuse(code, message),
    };
    if let Some((reason, detail)) = freshness(request.requested_at, Utc::now(), max_age) {
        let code = if reason == "request_expired" {
            Code::RequestExpired
        } else {
            Code::InvalidRequestedAt
        };
        return refuse(code, detail);
    }
    Ok(Ok(request))
}

/// The body against the committed schema (the version first), then as the
/// Rust type.
fn checked(value: Value) -> Result<StatusRequest, (Code, String)> {
    if value.get("schema_version") != Some(&Value::from(SCHEMA_VERSION)) {
        let given = value
            .get("schema_version")
            .map_or_else(|| "missing".to_owned(), Value::to_string);
        return Err((
            Code::UnsupportedSchemaVersion,
            format!(
                "at /schema_version: {} (this fleet speaks {SCHEMA_VERSION})",
                schema::printable(&given)
            ),
        ));
    }
    if let Some(violation) = schema::first_violation_of(&VALIDATOR, &value) {
        return Err((Code::InvalidRequest, violation.to_string()));
    }
    serde_json::from_value(value).map_err(|e| {
        (
            Code::InvalidRequest,
            format!("at : {}", schema::printable(&e.to_string())),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schemas_examples_pass_and_violations_are_pointed_at() {
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        for example in schema["examples"].as_array().unwrap() {
            let request = checked(example.clone()).expect("an example is valid");
            assert!(request.lookup().is_some());
        }
        let example = schema["examples"][0].clone();
        let mut two = example.clone();
        two["payment_id"] = json!("b942a61c-37b0-88f7-af96-85f022daf950");
        assert_eq!(checked(two).unwrap_err().0, Code::InvalidRequest);
        let mut unknown = example.clone();
        unknown["amount"] = json!("1.00");
        let (code, message) = checked(unknown).unwrap_err();
        assert_eq!(code, Code::InvalidRequest);
        assert!(message.starts_with("at /amount"), "{message}");
        let mut version = example;
        version["schema_version"] = json!(2);
        assert_eq!(
            checked(version).unwrap_err().0,
            Code::UnsupportedSchemaVersion
        );
    }
}
