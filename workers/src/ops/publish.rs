//! `payfleet publish`: puts a payment request from a JSON file on the ingress
//! exchange with a publisher confirm, as an upstream system would; with
//! `--sign`, signs it with the merchant's key from the database.

use payfleet_common::{
    CancellationToken, Settings, Topology,
    broker::{self, Outgoing, Publisher},
    messages,
};
use serde_json::Value;
use sqlx::PgPool;

use super::{Error, Result, error::Doing};

pub async fn publish(
    settings: &Settings,
    pool: Option<&PgPool>,
    body: Vec<u8>,
    sign: bool,
) -> Result<String> {
    let value: Value = serde_json::from_slice(&body).doing("the file is not JSON")?;
    let merchant = value
        .get("merchant_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::refused("the request has no merchant_id"))?;
    let message_id = uuid::Uuid::now_v7().to_string();
    let mut properties =
        broker::properties(&message_id, None, Some(messages::kind::PAYMENT_REQUESTED));
    if sign {
        let pool = pool.ok_or_else(|| Error::refused("--sign needs the database"))?;
        let key: Option<String> =
            sqlx::query_scalar("SELECT signing_key FROM merchants WHERE id = $1")
                .bind(merchant)
                .fetch_optional(pool)
                .await?;
        let Some(key) = key else {
            return Err(Error::not_found(format!(
                "--sign: no merchant `{merchant}` in the database"
            )));
        };
        let mut headers = lapin::types::FieldTable::default();
        broker::set_header(
            &mut headers,
            messages::SIGNATURE_HEADER,
            messages::sign(&key, &body),
        );
        properties = properties.with_headers(headers);
    }
    let topology = Topology::from_settings(settings)?;
    let publisher = Publisher::new(
        broker::Endpoint::from_settings(settings)?,
        "payfleet-publish",
        CancellationToken::new(),
    );
    let message = Outgoing {
        exchange: topology.exchanges().ingress.clone(),
        routing_key: messages::kind::PAYMENT_REQUESTED.to_owned(),
        body,
        properties,
    };
    let published = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        publisher.publish(&message),
    )
    .await;
    publisher.close().await;
    match published {
        Ok(Ok(())) => Ok(message_id),
        Ok(Err(broker::PublishError::Nacked { .. })) => Err(Error::refused(
            "the broker refused the request (the ingress queue is full): publish again later",
        )),
        Ok(Err(error)) => Err(error).doing("publishing the request"),
        Err(_) => Err(Error::told("no confirm from the broker within 30 s")),
    }
}
