//! Settings for every payfleet process: environment variables (`PAYFLEET_*`)
//! over an optional TOML file over defaults that point at the local services.
//! A wrong value fails at start with a message that names the setting.

mod defaults;
mod load;
mod redact;
mod validate;

pub use redact::{REDACTED, redact};

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, serde_as};

/// Environment variable that names the optional TOML file.
pub const CONFIG_FILE_ENV: &str = "PAYFLEET_CONFIG";
/// Environment variables under our prefix that are not settings.
const NOT_SETTINGS: &[&str] = &["config", "fault"];

/// How stage queues are declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic durable queues: one RabbitMQ node.
    Classic,
    /// Quorum queues with a delivery limit and at-least-once dead-lettering: a cluster.
    Quorum,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Whole milliseconds of a duration setting (for the zero checks).
fn millis_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Delays given in milliseconds, as the `_ms` list settings are written.
pub fn millis(values: &[u64]) -> Vec<Duration> {
    values.iter().copied().map(Duration::from_millis).collect()
}

/// Every setting, with its default. Field names are the TOML keys; the
/// environment variable is `PAYFLEET_` followed by the name in capitals.
/// Shown (`payfleet config`, `{:?}`) only through [`Settings::redacted`]:
/// the password of every URL and every secret-named value is replaced.
#[serde_as]
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// RabbitMQ URL; its vhost is where the topology lives.
    pub amqp_url: String,
    /// PostgreSQL URL; the database is created when missing.
    pub database_url: String,
    /// Redis URL (locks, velocity sets). Redis keeps nothing we cannot lose.
    pub redis_url: String,
    /// Prefix of every Redis key we write.
    pub redis_key_prefix: String,
    /// Maximum connections in the PostgreSQL pool of one process.
    pub db_max_connections: u32,
    /// Unacknowledged deliveries the broker may push to one stage consumer.
    pub prefetch: u16,
    /// Deliveries one stage consumer handles at the same time (a batching
    /// stage takes at least two batches' worth, and prefetches as many).
    pub max_in_flight: usize,
    /// Per stage: most deliveries handled in one PostgreSQL transaction, each
    /// in its own savepoint (1: one transaction per delivery). A stage not
    /// named takes 1; channel-call, which calls a third party between its
    /// two transactions, always takes one delivery at a time.
    pub batch_size: BTreeMap<String, u32>,
    /// Per stage: how long a batch waits for more deliveries after its
    /// first, in milliseconds (0: only what is already there). A stage not
    /// named takes 0.
    pub batch_wait_ms: BTreeMap<String, u64>,
    /// How long a batched message waits for a row lock before it steps out
    /// of its batch (rolled back to its savepoint, then handled alone after
    /// the batch commits), in milliseconds. Bounds how long batches that
    /// share rows wait for each other, well below PostgreSQL's
    /// `deadlock_timeout`. 0: no bound of our own.
    pub batch_lock_timeout_ms: u64,
    /// Classic (one node) or quorum (cluster) queues.
    pub queue_type: QueueType,
    /// Quorum queues only: deliveries before the broker itself dead-letters.
    pub quorum_delivery_limit: u32,
    /// Retry delay levels in milliseconds, one delay queue per level.
    #[serde(rename = "retry_delays_ms")]
    #[serde_as(as = "Vec<DurationMilliSeconds<u64>>")]
    pub retry_delays: Vec<Duration>,
    /// Handling attempts before a failing message is dead-lettered as exhausted.
    pub max_attempts: u32,
    /// Deliveries of one message that crash the process before it is
    /// dead-lettered as crash-loop.
    pub crash_loop_limit: u32,
    /// Redis lock lifetime; renewed every third of it while a handler runs.
    #[serde(rename = "lock_ttl_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub lock_ttl: Duration,
    /// Maximum length of the ingress queue; past it publishes are rejected.
    pub ingress_max_length: u32,
    /// Largest request body the ingress stage reads, in bytes; a larger one
    /// is dead-lettered unread. A compact UTF-8 body the schema allows is under 60 KiB.
    pub ingress_max_body_bytes: u32,
    /// Outbox rows one relay pass claims and publishes with pipelined confirms.
    pub outbox_batch_size: u32,
    /// How long outbox rows are reserved for the relay that claimed them, or
    /// to which a stage of its process handed them: after a crash, rows
    /// committed but not yet published wait this long for another relay.
    #[serde(rename = "outbox_lease_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub outbox_lease: Duration,
    /// Fallback poll interval of the outbox relay (it also wakes on commit).
    #[serde(rename = "outbox_poll_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub outbox_poll: Duration,
    /// Bound on a graceful shutdown.
    #[serde(rename = "shutdown_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub shutdown_timeout: Duration,
    /// Address of `/metrics`, `/healthz` and `/readyz` (the operators' side).
    pub http_addr: String,
    /// Address of the public webhook ingress (`/callbacks/…`), apart from
    /// the operators' endpoints so that only it need face the channels.
    pub ingress_addr: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log_filter: String,
    /// How long a payment may stay unpaid before the sweeper cancels it.
    #[serde(rename = "payment_ttl_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub payment_ttl: Duration,
    /// Risk: per currency, payments of at least this many whole units are
    /// blocked. A currency with no entry takes no payments (`unsupported_currency`).
    pub risk_block_amount: BTreeMap<String, u64>,
    /// Risk: per currency, payments of at least this many whole units are
    /// challenged. Names the same currencies as `risk_block_amount`.
    pub risk_challenge_amount: BTreeMap<String, u64>,
    /// Risk: more payments than this by one user within the window are challenged.
    pub risk_velocity_limit: u32,
    /// Risk: the velocity window.
    #[serde(rename = "risk_velocity_window_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub risk_velocity_window: Duration,
    /// Withdrawals: the platform's fee, in basis points of what leaves the
    /// wallet (10 = 0.1 %), rounded to the cent; the payee receives the rest.
    pub withdrawal_fee_basis_points: u32,
    /// Withdrawals: per currency, the most one withdrawal may take, in whole
    /// units. A currency with no entry takes no withdrawals (`unsupported_currency`).
    pub withdrawal_limit_per_withdrawal: BTreeMap<String, u64>,
    /// Withdrawals: per currency, the most one user may withdraw in a business
    /// day (of `business_time_zone`), in whole units; the same currencies as
    /// `withdrawal_limit_per_withdrawal`, none below it.
    pub withdrawal_limit_per_day: BTreeMap<String, u64>,
    /// Transfers: per currency, the most one transfer between wallets may
    /// move, in whole units. A currency with no entry takes no transfers
    /// (`unsupported_currency`).
    pub transfer_limit_per_transfer: BTreeMap<String, u64>,
    /// Transfers: per currency, the most one user may transfer out in a
    /// business day (of `business_time_zone`), in whole units; the same
    /// currencies as `transfer_limit_per_transfer`, none below it.
    pub transfer_limit_per_day: BTreeMap<String, u64>,
    /// Merchant payouts: per currency, the least a settlement payout may be,
    /// in whole units. A currency with no entry takes no payouts (`unsupported_currency`).
    pub merchant_payout_minimum: BTreeMap<String, u64>,
    /// Merchant payouts: the share of a merchant's sales of the last 30 days
    /// its payouts must leave on its account, in basis points (1000 = 10 %):
    /// what refunds and chargebacks may still take.
    pub merchant_payout_holdback_basis_points: u32,
    /// Merchant webhook retry schedule (delay before each retry).
    #[serde(rename = "webhook_delays_ms")]
    #[serde_as(as = "Vec<DurationMilliSeconds<u64>>")]
    pub webhook_delays: Vec<Duration>,
    /// Timeout of one webhook request.
    #[serde(rename = "webhook_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub webhook_timeout: Duration,
    /// Lets merchant webhooks go to loopback addresses (127.0.0.0/8, ::1).
    /// For the demo and tests only, whose receivers listen on 127.0.0.1;
    /// private, link-local and unique-local addresses are refused regardless.
    pub webhook_allow_loopback: bool,
    /// How often the expiry sweeper looks for payments past their expiry.
    #[serde(rename = "sweep_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub sweep_interval: Duration,
    /// How often merchant and fee balances are rolled up from the journal.
    #[serde(rename = "rollup_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub rollup_interval: Duration,
    /// Timeout of one call to a payment channel.
    #[serde(rename = "channel_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub channel_timeout: Duration,
    /// When to ask a channel about an attempt with no final answer: each
    /// delay is served by the shortest delay level at least that long.
    #[serde(rename = "status_query_delays_ms")]
    #[serde_as(as = "Vec<DurationMilliSeconds<u64>>")]
    pub status_query_delays: Vec<Duration>,
    /// The base URL channels post their webhooks to (`/callbacks/<channel>/<payment>`).
    pub callback_base_url: String,
    /// Accepted age of a channel webhook's timestamp, either way.
    #[serde(rename = "callback_tolerance_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub callback_tolerance: Duration,
    /// How often this process refreshes the gauges read from PostgreSQL,
    /// RabbitMQ and Redis (queue depths, outbox lag, …); 0: not here.
    #[serde(rename = "signals_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub signals_interval: Duration,
    /// A payment open (validated, frozen, paid) longer than this is stuck.
    #[serde(rename = "stuck_payment_after_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub stuck_payment_after: Duration,
    /// Purged dead letters are deleted after this many days (`payfleet dlq purge --delete-expired`).
    pub dead_letter_retention_days: u32,
    /// Inbox rows (processed message ids) are kept this many days: the
    /// window in which a redelivered or replayed message is recognised.
    pub inbox_retention_days: u32,
    /// How much older than its first receipt a request's `requested_at` may
    /// be (either way); longer than the whole retry schedule.
    #[serde(rename = "request_max_age_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub request_max_age: Duration,
    /// A PEM file of CA certificates trusted, beside the platform's roots,
    /// for every TLS connection: `postgres://…?sslmode=verify-full`,
    /// `rediss://`, `amqps://` and https merchant webhooks.
    pub tls_ca_file: Option<String>,
    /// The one time zone the fleet's business day is kept in (an IANA name):
    /// same-day reversal cut-offs, `payfleet reconcile --date` and the
    /// sandbox gateway's statements all count days in it.
    pub business_time_zone: String,
}

/// A setting that could not be read or is out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting `{name}` (env PAYFLEET_{env}): {reason}")]
    Invalid {
        name: &'static str,
        env: String,
        reason: String,
    },
    #[error("configuration: {0}")]
    Unreadable(String),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

fn invalid(name: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        name,
        env: name.to_uppercase(),
        reason: redact(&reason.to_string()),
    }
}

impl Settings {
    /// Checks every value that can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        lapin::uri::AMQPUri::from_str(&self.amqp_url).map_err(|e| invalid("amqp_url", e))?;
        sqlx::postgres::PgConnectOptions::from_str(&self.database_url)
            .map_err(|e| invalid("database_url", e.to_string()))?;
        if database_name(&self.database_url).is_none() {
            return Err(invalid("database_url", "the URL names no database"));
        }
        redis::Client::open(self.redis_url.as_str())
            .map_err(|e| invalid("redis_url", e.to_string()))?;
        self.extra_ca()?;
        self.validate_listeners()?;
        let positive = [
            ("db_max_connections", u64::from(self.db_max_connections)),
            ("prefetch", u64::from(self.prefetch)),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_attempts", u64::from(self.max_attempts)),
            ("crash_loop_limit", u64::from(self.crash_loop_limit)),
            ("lock_ttl_ms", millis_of(self.lock_ttl)),
            ("ingress_max_length", u64::from(self.ingress_max_length)),
            (
                "ingress_max_body_bytes",
                u64::from(self.ingress_max_body_bytes),
            ),
            ("outbox_batch_size", u64::from(self.outbox_batch_size)),
            ("outbox_lease_ms", millis_of(self.outbox_lease)),
            ("outbox_poll_ms", millis_of(self.outbox_poll)),
            ("shutdown_timeout_ms", millis_of(self.shutdown_timeout)),
            (
                "quorum_delivery_limit",
                u64::from(self.quorum_delivery_limit),
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be greater than zero"));
            }
        }
        self.validate_schedules()?;
        if !(self.callback_base_url.starts_with("http://")
            || self.callback_base_url.starts_with("https://"))
        {
            return Err(invalid("callback_base_url", "must be an http(s) URL"));
        }
        self.validate_risk_thresholds()?;
        self.validate_withdrawal_limits()?;
        self.validate_batches()?;
        if self.lock_ttl < Duration::from_millis(300) {
            return Err(invalid("lock_ttl_ms", "must be at least 300 ms"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter)
            .map_err(|e| invalid("log_filter", e.to_string()))?;
        Ok(())
    }

    /// How long a message can spend in delay queues before it is
    /// dead-lettered as exhausted: the delays of its `max_attempts - 1`
    /// retries (each on the level of its attempt count, the last repeated).
    pub fn retry_schedule(&self) -> Duration {
        let Some(last) = self.retry_delays.len().checked_sub(1) else {
            return Duration::ZERO;
        };
        (1..self.max_attempts)
            .map(|failures| self.retry_delays[(failures as usize - 1).min(last)])
            .fold(Duration::ZERO, Duration::saturating_add)
    }

    /// How `stage` batches: `batch_size` and `batch_wait_ms`.
    pub fn batch_for(&self, stage: &str) -> crate::runtime::batch::BatchSettings {
        crate::runtime::batch::BatchSettings {
            size: self.batch_size.get(stage).copied().unwrap_or(1).max(1) as usize,
            wait: Duration::from_millis(self.batch_wait_ms.get(stage).copied().unwrap_or(0)),
        }
    }

    /// `batch_lock_timeout_ms`, when there is one.
    pub fn batch_lock_timeout(&self) -> Option<Duration> {
        (self.batch_lock_timeout_ms > 0).then(|| Duration::from_millis(self.batch_lock_timeout_ms))
    }

    /// The CA of `tls_ca_file`, read and checked (empty when not set).
    pub fn extra_ca(&self) -> Result<crate::tls::ExtraCa, ConfigError> {
        crate::tls::ExtraCa::load(self.tls_ca_file.as_deref().map(std::path::Path::new))
            .map_err(|e| invalid("tls_ca_file", e.to_string()))
    }

    pub fn http_socket_addr(&self) -> SocketAddr {
        // validated in `validate`
        SocketAddr::from_str(&self.http_addr).unwrap_or_else(|_| ([127, 0, 0, 1], 9464).into())
    }

    pub fn ingress_socket_addr(&self) -> SocketAddr {
        // validated in `validate`
        SocketAddr::from_str(&self.ingress_addr).unwrap_or_else(|_| ([127, 0, 0, 1], 9465).into())
    }

    /// The business day's zone (`business_time_zone`, checked by
    /// [`Settings::validate`]; UTC if it was never validated).
    pub fn business_zone(&self) -> chrono_tz::Tz {
        self.business_time_zone
            .parse()
            .unwrap_or(chrono_tz::Tz::UTC)
    }

    /// The RabbitMQ vhost named by `amqp_url`.
    pub fn amqp_vhost(&self) -> String {
        lapin::uri::AMQPUri::from_str(&self.amqp_url)
            .map(|uri| uri.vhost)
            .unwrap_or_else(|_| "/".into())
    }
}

/// The database named in a PostgreSQL URL.
pub fn database_name(url: &str) -> Option<String> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).ok()?;
    options.get_database().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use figment::{
        Figment,
        providers::{Format, Serialized, Toml},
    };

    use super::*;

    fn with(toml: &str) -> Result<Settings, ConfigError> {
        Settings::from_figment(
            Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(toml)),
        )
    }

    #[test]
    fn the_business_day_zone_is_an_iana_name() {
        assert_eq!(with("").unwrap().business_zone(), chrono_tz::Tz::UTC);
        let s = with("business_time_zone = \"Asia/Shanghai\"").unwrap();
        assert_eq!(s.business_zone(), chrono_tz::Tz::Asia__Shanghai);
        let err = with("business_time_zone = \"Mars/Olympus\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`business_time_zone`"), "{err}");
    }

    #[test]
    fn defaults_point_at_local_services() {
        let s = with("").expect("defaults are valid");
        assert_eq!(s.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.amqp_vhost(), "/");
        assert_eq!(database_name(&s.database_url).as_deref(), Some("payfleet"));
    }

    #[test]
    fn batches_name_known_stages_and_sensible_values() {
        let s = with("batch_size = { fund-freeze = 8 }").expect("valid");
        assert_eq!(s.batch_for("fund-freeze").size, 8);
        // a named stage keeps the other stages' defaults
        assert_eq!(s.batch_for("settlement").size, 32);
        assert_eq!(s.batch_for("channel-call").size, 32);
        let s = with("batch_size = { channel-call = 1 }").expect("valid");
        assert_eq!(s.batch_for("channel-call").size, 1);
        let err = with("batch_size = { fund-freezer = 8 }")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`batch_size`") && err.contains("fund-freezer"),
            "{err}"
        );
        let err = with("batch_size = { settlement = 0 }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`batch_size`"), "{err}");
        let err = with("batch_wait_ms = { callback = 5000 }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`batch_wait_ms`"), "{err}");
    }

    #[test]
    fn the_webhook_ingress_listens_apart_from_the_operators_endpoints() {
        let s = with("").expect("defaults are valid");
        assert_ne!(s.http_socket_addr(), s.ingress_socket_addr());
        assert!(s.callback_base_url.ends_with(&s.ingress_addr));
        let err = with("ingress_addr = \"127.0.0.1:9464\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`ingress_addr`"), "{err}");
        let err = with("ingress_addr = \"everywhere\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`ingress_addr`") && err.contains("PAYFLEET_INGRESS_ADDR"),
            "{err}"
        );
        // two ports the system picks
        with("http_addr = \"127.0.0.1:0\"\ningress_addr = \"127.0.0.1:0\"").expect("valid");
        let err = with("stuck_payment_after_ms = 0").unwrap_err().to_string();
        assert!(err.contains("`stuck_payment_after_ms`"), "{err}");
    }

    #[test]
    fn a_wrong_value_names_its_setting() {
        let err = with("prefetch = \"lots\"").unwrap_err().to_string();
        assert!(
            err.contains("`prefetch`") && err.contains("PAYFLEET_PREFETCH"),
            "{err}"
        );
        let err = with("amqp_url = \"http://nope\"").unwrap_err().to_string();
        assert!(err.contains("`amqp_url`"), "{err}");
        let err = with("retry_delays_ms = [5000, 1000]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`retry_delays_ms`"), "{err}");
        let err = with("queue_type = \"stream\"").unwrap_err().to_string();
        assert!(err.contains("`queue_type`"), "{err}");
        let err = with("max_in_flight = 0").unwrap_err().to_string();
        assert!(err.contains("`max_in_flight`"), "{err}");
    }

    #[test]
    fn a_tls_ca_file_must_be_readable_and_hold_certificates() {
        let err = with("tls_ca_file = \"/nonexistent/ca.pem\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tls_ca_file`") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let empty = std::env::temp_dir().join(format!("payfleet-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").expect("temp file");
        let err = with(&format!("tls_ca_file = {:?}", empty.display().to_string()))
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&empty);
        assert!(
            err.contains("`tls_ca_file`") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn risk_thresholds_are_per_currency_and_a_bad_one_names_its_setting() {
        let s = with("").expect("defaults are valid");
        for currency in crate::money::CURRENCIES {
            assert!(s.risk_block_amount.contains_key(*currency), "{currency}");
            assert!(
                s.risk_challenge_amount.contains_key(*currency),
                "{currency}"
            );
        }
        // An entry replaces that currency's default and keeps the others.
        let s = with("risk_block_amount = { USD = 9000 }").expect("valid");
        assert_eq!(s.risk_block_amount["USD"], 9_000);
        assert_eq!(s.risk_block_amount["CNY"], 50_000);

        let cases = [
            ("risk_block_amount = 50000", "`risk_block_amount`"),
            (
                "risk_block_amount = { USD = \"lots\" }",
                "`risk_block_amount`",
            ),
            ("risk_block_amount = { XYZ = 100 }", "`risk_block_amount`"),
            (
                "risk_challenge_amount = { EUR = 0 }",
                "`risk_challenge_amount`",
            ),
            (
                "risk_challenge_amount = { USD = 8000 }",
                "`risk_challenge_amount`",
            ),
        ];
        for (toml, named) in cases {
            let err = with(toml).unwrap_err().to_string();
            assert!(err.contains(named), "{toml}: {err}");
        }
    }

    #[test]
    fn withdrawal_limits_are_per_currency_and_a_bad_one_names_its_setting() {
        let s = with("").expect("defaults are valid");
        for currency in crate::money::CURRENCIES {
            assert!(
                s.withdrawal_limit_per_withdrawal.contains_key(*currency)
                    && s.withdrawal_limit_per_day.contains_key(*currency),
                "{currency}"
            );
        }
        let cases = [
            (
                "withdrawal_fee_basis_points = 10000",
                "`withdrawal_fee_basis_points`",
            ),
            (
                "withdrawal_fee_basis_points = -1",
                "`withdrawal_fee_basis_points`",
            ),
            (
                "withdrawal_limit_per_withdrawal = { CNY = 300000 }",
                "`withdrawal_limit_per_withdrawal`",
            ),
            (
                "withdrawal_limit_per_day = { XYZ = 10 }",
                "`withdrawal_limit_per_day`",
            ),
            (
                "withdrawal_limit_per_day = { USD = 0 }",
                "`withdrawal_limit_per_day`",
            ),
            (
                "transfer_limit_per_transfer = { CNY = 300000 }",
                "`transfer_limit_per_transfer`",
            ),
            (
                "transfer_limit_per_day = { XYZ = 10 }",
                "`transfer_limit_per_day`",
            ),
        ];
        for (toml, named) in cases {
            let err = with(toml).unwrap_err().to_string();
            assert!(err.contains(named), "{toml}: {err}");
        }
    }

    #[test]
    fn the_request_window_outlasts_the_retry_schedule() {
        let s = with("").expect("defaults are valid");
        // 1 s + 5 s + 30 s + 120 s + 3 x 600 s: seven retries
        assert_eq!(s.retry_schedule(), Duration::from_millis(1_956_000));
        assert!(s.request_max_age > s.retry_schedule());
        let err = with("request_max_age_ms = 1956000")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`request_max_age_ms`") && err.contains("1956000 ms"),
            "{err}"
        );
        let err = with("retry_delays_ms = [1000, 7200000]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`request_max_age_ms`"), "{err}");
        assert!(with("retry_delays_ms = [1000, 7200000]\nrequest_max_age_ms = 86400000").is_ok());
    }

    #[test]
    fn passwords_are_redacted_and_the_rest_of_each_url_kept() {
        let cases = [
            ("amqp://u:p%40ss@h:5672/%2f", "amqp://u:***@h:5672/%2f"),
            (
                "redis://:pw@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("postgres://postgres@h/db", "postgres://postgres@h/db"),
            (
                "postgres://a:b@c@h/db?sslmode=require",
                "postgres://a:***@h/db?sslmode=require",
            ),
            (
                "postgres://h/db?user=a&password=b&x=1",
                "postgres://h/db?user=a&password=***&x=1",
            ),
            (
                "connecting to \"amqp://g:s@h\" failed",
                "connecting to \"amqp://g:***@h\" failed",
            ),
            ("no url here", "no url here"),
        ];
        for (given, shown) in cases {
            assert_eq!(redact(given), shown, "{given}");
        }
        let s = with("amqp_url = \"amqp://u:hidden@h/v\"").expect("valid");
        assert!(!format!("{s:?}").contains("hidden"));
        assert!(!s.redacted().to_string().contains("hidden"));
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = with("prefech = 3").unwrap_err().to_string();
        assert!(err.contains("prefech"), "{err}");
    }
}
