//! Loading the settings: defaults, then the TOML file, then `PAYFLEET_*`
//! environment variables; validated.

use std::path::PathBuf;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};

use super::{CONFIG_FILE_ENV, ConfigError, NOT_SETTINGS, Settings, redact};

impl Settings {
    /// Defaults, then the TOML file (`file`, else `PAYFLEET_CONFIG` if set),
    /// then `PAYFLEET_*` environment variables; validated.
    pub fn load(file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let file = file.or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("PAYFLEET_").ignore(NOT_SETTINGS));
        Self::from_figment(figment)
    }

    pub(super) fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(|error| {
            // figment names the key in `path`; make it the setting's name.
            match error.path.first() {
                Some(key) => ConfigError::Invalid {
                    name: leak_name(key),
                    env: key.to_uppercase(),
                    reason: redact(&error.kind.to_string()),
                },
                None => ConfigError::Unreadable(redact(&error.to_string())),
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }
}

/// Setting names are few and static; map figment's owned key back to one.
fn leak_name(key: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "amqp_url",
        "database_url",
        "redis_url",
        "redis_key_prefix",
        "db_max_connections",
        "prefetch",
        "max_in_flight",
        "batch_size",
        "batch_wait_ms",
        "batch_lock_timeout_ms",
        "queue_type",
        "quorum_delivery_limit",
        "retry_delays_ms",
        "max_attempts",
        "crash_loop_limit",
        "lock_ttl_ms",
        "ingress_max_length",
        "ingress_max_body_bytes",
        "outbox_batch_size",
        "outbox_lease_ms",
        "outbox_poll_ms",
        "shutdown_timeout_ms",
        "http_addr",
        "ingress_addr",
        "log_format",
        "log_filter",
        "payment_ttl_ms",
        "risk_block_amount",
        "risk_challenge_amount",
        "risk_velocity_limit",
        "risk_velocity_window_ms",
        "withdrawal_fee_basis_points",
        "withdrawal_limit_per_withdrawal",
        "withdrawal_limit_per_day",
        "transfer_limit_per_transfer",
        "transfer_limit_per_day",
        "merchant_payout_minimum",
        "merchant_payout_holdback_basis_points",
        "webhook_delays_ms",
        "webhook_timeout_ms",
        "webhook_allow_loopback",
        "sweep_interval_ms",
        "rollup_interval_ms",
        "channel_timeout_ms",
        "status_query_delays_ms",
        "callback_base_url",
        "callback_tolerance_ms",
        "signals_interval_ms",
        "stuck_payment_after_ms",
        "dead_letter_retention_days",
        "inbox_retention_days",
        "request_max_age_ms",
        "tls_ca_file",
    ];
    NAMES
        .iter()
        .find(|name| name.eq_ignore_ascii_case(key))
        .copied()
        .unwrap_or("(unknown setting)")
}
