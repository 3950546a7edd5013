//! RabbitMQ connections: reconnecting with exponential backoff and jitter,
//! a publisher on its own connection (a broker memory or disk alarm blocks
//! publishers, and must not stall consumers) with confirms and `mandatory`,
//! and helpers for our headers.

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Our own headers (never `x-death`, which the broker rewrites).
pub mod header {
    /// Every internal header starts so; the ingress strips them from what
    /// upstream publishes (all but the request's signature).
    pub const INTERNAL_PREFIX: &str = "x-payfleet-";
    /// Failed handling attempts so far; 0 on a first delivery.
    pub const ATTEMPT: &str = "x-payfleet-attempt";
    /// Times the message waited for a busy lock (does not use the retry budget).
    pub const LOCK_WAITS: &str = "x-payfleet-lock-waits";
    /// The stage that failed or dead-lettered it.
    pub const STAGE: &str = "x-payfleet-stage";
    /// poison / permanent / exhausted / crash-loop.
    pub const ERROR_KIND: &str = "x-payfleet-error-kind";
    pub const ERROR_MESSAGE: &str = "x-payfleet-error-message";
    /// Attempts made when the message was dead-lettered.
    pub const ATTEMPTS: &str = "x-payfleet-attempts";
    /// RFC 3339 times of the first and the last failure.
    pub const FIRST_FAILURE_AT: &str = "x-payfleet-first-failure-at";
    pub const LAST_FAILURE_AT: &str = "x-payfleet-last-failure-at";
    /// Unique per dead-lettering: the keeper stores each once.
    pub const DEAD_LETTER_ID: &str = "x-payfleet-dead-letter-id";
    /// Set on the delayed copy of a message suspected of ending a process.
    pub const SUSPECT: &str = "x-payfleet-suspect";
    /// Set on a message put back from the dead-letter store.
    pub const REPLAYED_FROM: &str = "x-payfleet-replayed-from";
    /// Milliseconds since the Unix epoch when the outbox relay published the
    /// message: the next stage measures how long it waited in its queue.
    pub const RELAYED_AT_MS: &str = "x-payfleet-relayed-at-ms";
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(
        "returned unroutable by the broker ({code} {text}): exchange `{exchange}`, routing key `{routing_key}`"
    )]
    Returned {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
    },
    #[error(
        "negatively confirmed by the broker: exchange `{exchange}`, routing key `{routing_key}`"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error("shutting down")]
    ShuttingDown,
}

/// The backoff every reconnect uses: exponential with jitter, capped.
pub fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The largest AMQP frame a connection proposes unless its URL says
/// otherwise. lapin keeps room for 32 frames to read and 32 to write on
/// every connection, so the broker's default of 128 KiB costs 8 MiB a
/// connection (a fleet opens more than ten); our messages take a few KiB,
/// and a larger body travels in several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Where RabbitMQ is and how to trust it: `amqps://` URLs verify the
/// broker against the platform's roots and the CA of `tls_ca_file`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    pub tls: crate::tls::ExtraCa,
}

impl Endpoint {
    /// `amqp_url` with the CA of `tls_ca_file`.
    pub fn from_settings(
        settings: &crate::config::Settings,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            url: settings.amqp_url.clone(),
            tls: settings.extra_ca()?,
        })
    }

    /// A URL trusted through the platform's roots alone.
    pub fn plain(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            tls: crate::tls::ExtraCa::default(),
        }
    }

    async fn open(&self, name: &str) -> Result<Connection, lapin::Error> {
        crate::tls::install_crypto_provider();
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        Connection::connect_uri_with_config(
            self.uri()?,
            props,
            self.tls.amqp(),
            lapin::runtime::default_runtime()?,
        )
        .await
    }

    /// The URL, with frames of [`FRAME_MAX`] unless it names `frame_max`.
    fn uri(&self) -> Result<AMQPUri, lapin::Error> {
        let mut uri = AMQPUri::from_str(&self.url).map_err(|reason| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`amqp_url` is not an AMQP URL: {reason}"),
            ))
        })?;
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        Ok(uri)
    }
}

/// Connects, retrying with backoff until it succeeds or `cancel` fires.
pub async fn connect(
    endpoint: &Endpoint,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Connection, PublishError> {
    let attempt = || endpoint.open(name);
    tokio::select! {
        result = attempt
            .retry(reconnect_backoff())
            .notify(|error, delay| tracing::warn!(%error, ?delay, connection = name, "RabbitMQ unreachable; retrying")) => {
            Ok(result?)
        }
        _ = cancel.cancelled() => Err(PublishError::ShuttingDown),
    }
}

/// One connection attempt, for commands that should fail fast.
pub async fn connect_once(endpoint: &Endpoint, name: &str) -> Result<Connection, lapin::Error> {
    tokio::time::timeout(Duration::from_secs(10), endpoint.open(name))
        .await
        .unwrap_or_else(|_| {
            Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting timed out after 10 s",
            )))
        })
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// A publishing connection with one confirm-mode channel, re-opened on failure.
/// Cloning shares the connection.
#[derive(Clone)]
pub struct Publisher {
    endpoint: Arc<Endpoint>,
    name: Arc<str>,
    cancel: CancellationToken,
    state: Arc<Mutex<Option<(Connection, Channel)>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .finish()
    }
}

impl Publisher {
    pub fn new(endpoint: Endpoint, name: &str, cancel: CancellationToken) -> Self {
        Self {
            endpoint: Arc::new(endpoint),
            name: name.into(),
            cancel,
            state: Arc::new(Mutex::new(None)),
        }
    }

    /// The current channel, reconnecting when the old one is gone.
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        let mut state = self.state.lock().await;
        if let Some((connection, channel)) = state.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        if let Some((connection, _)) = state.take() {
            let _ = connection.close(200, "reconnecting".into()).await;
        }
        let connection = connect(&self.endpoint, &self.name, &self.cancel).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *state = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Starts a mandatory publish; await the returned confirm with [`confirmed`].
    /// Many may be in flight at once (pipelined confirms).
    pub async fn start(&self, message: &Outgoing) -> Result<PublisherConfirm, PublishError> {
        let channel = self.channel().await?;
        let confirm = channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await;
        match confirm {
            Ok(confirm) => Ok(confirm),
            Err(error) => {
                self.forget().await;
                Err(error.into())
            }
        }
    }

    /// Publishes and waits for the broker's confirm; a returned or nacked
    /// message is an error.
    pub async fn publish(&self, message: &Outgoing) -> Result<(), PublishError> {
        let confirm = self.start(message).await?;
        confirmed(confirm, message).await
    }

    /// Drops the channel so the next publish reconnects.
    pub async fn forget(&self) {
        let mut state = self.state.lock().await;
        if let Some((connection, _)) = state.take() {
            let _ = connection.close(200, "reconnecting".into()).await;
        }
    }

    pub async fn close(&self) {
        let mut state = self.state.lock().await;
        if let Some((connection, _)) = state.take() {
            let _ = connection.close(200, "shutdown".into()).await;
        }
    }
}

/// Waits for one confirm: only an ack without a returned message counts as
/// delivered to a queue.
pub async fn confirmed(confirm: PublisherConfirm, message: &Outgoing) -> Result<(), PublishError> {
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishError::Returned {
                code: returned.reply_code,
                text: returned.reply_text.to_string(),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            })
        }
        Confirmation::Nack(None) => Err(PublishError::Nacked {
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        }),
    }
}

/// Persistent JSON message properties with the ids every message carries.
pub fn properties(
    message_id: &str,
    correlation_id: Option<&str>,
    message_type: Option<&str>,
) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    if let Some(correlation_id) = correlation_id {
        props = props.with_correlation_id(ShortString::from(correlation_id));
    }
    if let Some(message_type) = message_type {
        props = props.with_type(ShortString::from(message_type));
    }
    props
}

pub fn header_i64(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    let value = headers?.inner().get(key)?;
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

pub fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => header_i64(headers, key)
            .map(|v| v.to_string())
            .or_else(|| Some(format!("{other:?}"))),
    }
}

pub fn set_header(headers: &mut FieldTable, key: &str, value: impl Into<HeaderValue>) {
    headers.insert(key.into(), value.into().0);
}

/// A header value we write.
pub struct HeaderValue(AMQPValue);

impl From<i64> for HeaderValue {
    fn from(v: i64) -> Self {
        HeaderValue(AMQPValue::LongLongInt(v))
    }
}
impl From<&str> for HeaderValue {
    fn from(v: &str) -> Self {
        HeaderValue(AMQPValue::LongString(LongString::from(v)))
    }
}
impl From<String> for HeaderValue {
    fn from(v: String) -> Self {
        HeaderValue(AMQPValue::LongString(LongString::from(v)))
    }
}

/// Headers as JSON for storage and display; byte strings that are not UTF-8
/// become `{"bytes_hex": …}` so nothing is lost.
pub fn headers_to_json(headers: Option<&FieldTable>) -> Value {
    match headers {
        Some(table) => table_to_json(table),
        None => json!({}),
    }
}

fn table_to_json(table: &FieldTable) -> Value {
    let map: serde_json::Map<String, Value> = table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
        .collect();
    Value::Object(map)
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => json!(v),
        AMQPValue::ShortShortInt(v) => json!(v),
        AMQPValue::ShortShortUInt(v) => json!(v),
        AMQPValue::ShortInt(v) => json!(v),
        AMQPValue::ShortUInt(v) => json!(v),
        AMQPValue::LongInt(v) => json!(v),
        AMQPValue::LongUInt(v) => json!(v),
        AMQPValue::LongLongInt(v) => json!(v),
        AMQPValue::Float(v) => json!(v),
        AMQPValue::Double(v) => json!(v),
        AMQPValue::DecimalValue(v) => json!({"decimal": format!("{v:?}")}),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => json!(text),
            Err(_) => json!({"bytes_hex": hex::encode(s.as_bytes())}),
        },
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::Timestamp(t) => json!({"timestamp": t}),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => json!({"bytes_hex": hex::encode(b.as_slice())}),
        AMQPValue::Void => Value::Null,
    }
}

/// JSON (as written by [`headers_to_json`] or by hand) back into headers, for
/// outbox rows and replays.
pub fn headers_from_json(value: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Value::Object(map) = value {
        for (key, value) in map {
            if let Some(v) = json_to_value(value) {
                table.insert(key.as_str().into(), v);
            }
        }
    }
    table
}

fn json_to_value(value: &Value) -> Option<AMQPValue> {
    Some(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64()?),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut array = lapin::types::FieldArray::default();
            for item in items {
                array.push(json_to_value(item)?);
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => {
            if let (1, Some(Value::String(h))) = (map.len(), map.get("bytes_hex")) {
                return hex::decode(h)
                    .ok()
                    .map(|b| AMQPValue::LongString(LongString::from(b)));
            }
            if let (1, Some(t)) = (map.len(), map.get("timestamp").and_then(Value::as_u64)) {
                return Some(AMQPValue::Timestamp(t));
            }
            AMQPValue::FieldTable(headers_from_json(value))
        }
    })
}

/// The properties worth keeping with a dead letter, as JSON.
pub fn properties_to_json(props: &BasicProperties) -> Value {
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    let mut map = BTreeMap::new();
    map.insert("message_id", json!(s(props.message_id())));
    map.insert("correlation_id", json!(s(props.correlation_id())));
    map.insert("content_type", json!(s(props.content_type())));
    map.insert("content_encoding", json!(s(props.content_encoding())));
    map.insert("type", json!(s(props.kind())));
    map.insert("app_id", json!(s(props.app_id())));
    map.insert("timestamp", json!(props.timestamp()));
    map.insert("delivery_mode", json!(props.delivery_mode()));
    json!(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_proposes_small_frames_unless_its_url_names_a_size() {
        let plain = Endpoint::plain("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(plain.uri().expect("valid").query.frame_max, Some(FRAME_MAX));
        let named = Endpoint::plain("amqp://127.0.0.1/v?frame_max=131072&heartbeat=30");
        let uri = named.uri().expect("valid");
        assert_eq!(uri.query.frame_max, Some(131_072));
        assert_eq!(uri.query.heartbeat, Some(30));
        assert_eq!(uri.vhost, "v");
        let err = Endpoint::plain("http://nope")
            .uri()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`amqp_url`"), "{err}");
    }

    #[test]
    fn headers_survive_a_json_round_trip() {
        let mut table = FieldTable::default();
        set_header(&mut table, header::ATTEMPT, 3);
        set_header(&mut table, header::ERROR_MESSAGE, "db down");
        table.insert(
            "raw".into(),
            AMQPValue::LongString(LongString::from(vec![0xff_u8, 0x00])),
        );
        let json = headers_to_json(Some(&table));
        let back = headers_from_json(&json);
        assert_eq!(header_i64(Some(&back), header::ATTEMPT), Some(3));
        assert_eq!(
            header_str(Some(&back), header::ERROR_MESSAGE).as_deref(),
            Some("db down")
        );
        assert_eq!(back.inner().get("raw"), table.inner().get("raw"));
    }
}
