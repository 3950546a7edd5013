//! The defaults every setting falls back to: the local services, and
//! limits a careful platform starts with.

use std::{collections::BTreeMap, time::Duration};

use super::*;

impl Default for Settings {
    fn default() -> Self {
        Self {
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            // Loopback, like the broker's and Redis's defaults: plaintext.
            // Without `sslmode` PostgreSQL's client would negotiate TLS the
            // server offers (`prefer`, unverified), which over loopback
            // protects nothing and costs about a fifth of the database's
            // CPU per payment (BENCHMARKS.md).
            database_url: "postgres://postgres@127.0.0.1:5432/payfleet?sslmode=disable".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_key_prefix: "payfleet".into(),
            db_max_connections: 16,
            prefetch: 32,
            max_in_flight: 16,
            batch_size: per_stage(&[
                ("order-validation", 32),
                ("fund-freeze", 32),
                ("channel-call", 32),
                ("callback", 32),
                ("settlement", 32),
                ("notification", 32),
            ]),
            batch_lock_timeout_ms: 50,
            batch_wait_ms: per_stage(&[
                ("order-validation", 2),
                ("fund-freeze", 2),
                ("channel-call", 2),
                ("callback", 2),
                ("settlement", 2),
                ("notification", 2),
            ]),
            queue_type: QueueType::Classic,
            quorum_delivery_limit: 20,
            retry_delays: millis(&[1_000, 5_000, 30_000, 120_000, 600_000]),
            max_attempts: 8,
            crash_loop_limit: 5,
            lock_ttl: Duration::from_millis(15_000),
            ingress_max_length: 100_000,
            ingress_max_body_bytes: 131_072,
            outbox_batch_size: 256,
            outbox_lease: Duration::from_millis(10_000),
            outbox_poll: Duration::from_millis(1_000),
            shutdown_timeout: Duration::from_millis(20_000),
            http_addr: "127.0.0.1:9464".into(),
            ingress_addr: "127.0.0.1:9465".into(),
            log_format: LogFormat::Text,
            log_filter: "info,sqlx=warn,lapin=warn,lapin::channel=off".into(),
            payment_ttl: Duration::from_millis(900_000),
            // About the same value in every currency: 50,000 / 20,000 CNY.
            risk_block_amount: per_currency(&[
                ("CNY", 50_000),
                ("USD", 7_000),
                ("EUR", 6_500),
                ("GBP", 5_500),
                ("HKD", 55_000),
                ("SGD", 9_500),
            ]),
            risk_challenge_amount: per_currency(&[
                ("CNY", 20_000),
                ("USD", 2_800),
                ("EUR", 2_600),
                ("GBP", 2_200),
                ("HKD", 22_000),
                ("SGD", 3_800),
            ]),
            withdrawal_fee_basis_points: 10,
            withdrawal_limit_per_withdrawal: per_currency(&[
                ("CNY", 50_000),
                ("USD", 7_000),
                ("EUR", 6_500),
                ("GBP", 5_500),
                ("HKD", 55_000),
                ("SGD", 9_500),
            ]),
            transfer_limit_per_transfer: per_currency(&[
                ("CNY", 50_000),
                ("USD", 7_000),
                ("EUR", 6_500),
                ("GBP", 5_500),
                ("HKD", 55_000),
                ("SGD", 9_500),
            ]),
            transfer_limit_per_day: per_currency(&[
                ("CNY", 200_000),
                ("USD", 28_000),
                ("EUR", 26_000),
                ("GBP", 22_000),
                ("HKD", 220_000),
                ("SGD", 38_000),
            ]),
            merchant_payout_minimum: per_currency(&[
                ("CNY", 100),
                ("USD", 15),
                ("EUR", 15),
                ("GBP", 12),
                ("HKD", 120),
                ("SGD", 20),
            ]),
            merchant_payout_holdback_basis_points: 1_000,
            withdrawal_limit_per_day: per_currency(&[
                ("CNY", 200_000),
                ("USD", 28_000),
                ("EUR", 26_000),
                ("GBP", 22_000),
                ("HKD", 220_000),
                ("SGD", 38_000),
            ]),
            risk_velocity_limit: 20,
            risk_velocity_window: Duration::from_millis(3_600_000),
            // 10 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h, 12 h: about a day in all
            webhook_delays: millis(&[
                10_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 10_800_000, 21_600_000,
                43_200_000,
            ]),
            webhook_timeout: Duration::from_millis(5_000),
            webhook_allow_loopback: false,
            sweep_interval: Duration::from_millis(5_000),
            rollup_interval: Duration::from_millis(1_000),
            channel_timeout: Duration::from_millis(5_000),
            status_query_delays: millis(&[5_000, 30_000, 120_000, 600_000]),
            callback_base_url: "http://127.0.0.1:9465".into(),
            callback_tolerance: Duration::from_millis(300_000),
            signals_interval: Duration::from_millis(15_000),
            stuck_payment_after: Duration::from_millis(1_800_000),
            dead_letter_retention_days: 90,
            inbox_retention_days: 30,
            request_max_age: Duration::from_millis(3_600_000),
            tls_ca_file: None,
            business_time_zone: "UTC".into(),
        }
    }
}

fn per_stage<T: Copy>(entries: &[(&str, T)]) -> BTreeMap<String, T> {
    entries
        .iter()
        .map(|(stage, value)| ((*stage).to_owned(), *value))
        .collect()
}

fn per_currency(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries
        .iter()
        .map(|(currency, amount)| ((*currency).to_owned(), *amount))
        .collect()
}
