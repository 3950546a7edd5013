//! The checks of settings that relate several values to each other.

use std::{collections::BTreeMap, net::SocketAddr, str::FromStr, time::Duration};

use super::{ConfigError, Settings, invalid};

impl Settings {
    /// The batch maps name stages of the topology, with sizes of at least
    /// one and waits of at most a second.
    pub(super) fn validate_batches(&self) -> Result<(), ConfigError> {
        let spec = crate::topology::TopologySpec::parse(crate::topology::TOPOLOGY_TOML)
            .map_err(|e| invalid("batch_size", e.to_string()))?;
        let known = |name: &'static str, stage: &String| {
            if spec.stages.contains(stage) {
                Ok(())
            } else {
                Err(invalid(
                    name,
                    format!("`{stage}` is not a stage ({})", spec.stages.join(", ")),
                ))
            }
        };
        for (stage, size) in &self.batch_size {
            known("batch_size", stage)?;
            if *size == 0 {
                return Err(invalid(
                    "batch_size",
                    format!("{stage}: must be at least 1"),
                ));
            }
        }
        for (stage, wait) in &self.batch_wait_ms {
            known("batch_wait_ms", stage)?;
            if *wait > 1_000 {
                return Err(invalid(
                    "batch_wait_ms",
                    format!("{stage}: {wait} ms; at most 1000"),
                ));
            }
        }
        Ok(())
    }

    /// Both threshold maps name the same accepted currencies, with positive
    /// amounts, and no challenge threshold above its block threshold.
    pub(super) fn validate_risk_thresholds(&self) -> Result<(), ConfigError> {
        per_currency_pair(
            ("risk_challenge_amount", &self.risk_challenge_amount),
            ("risk_block_amount", &self.risk_block_amount),
        )
    }

    /// The retry, request, webhook and status-query schedules, and the
    /// business day's zone.
    pub(super) fn validate_schedules(&self) -> Result<(), ConfigError> {
        if self.retry_delays.is_empty() {
            return Err(invalid("retry_delays_ms", "needs at least one delay level"));
        }
        if self.retry_delays.windows(2).any(|w| w[0] >= w[1]) || self.retry_delays[0].is_zero() {
            return Err(invalid(
                "retry_delays_ms",
                "delays must be positive and strictly increasing",
            ));
        }
        let schedule = self.retry_schedule();
        if self.request_max_age <= schedule {
            return Err(invalid(
                "request_max_age_ms",
                format!(
                    "must be longer than the whole retry schedule: {} ms ({} retries over retry_delays_ms)",
                    schedule.as_millis(),
                    self.max_attempts.saturating_sub(1)
                ),
            ));
        }
        if let Err(reason) = self.business_time_zone.parse::<chrono_tz::Tz>() {
            return Err(invalid(
                "business_time_zone",
                format!("{reason}: use an IANA zone name such as UTC or Asia/Shanghai"),
            ));
        }
        if self.webhook_delays.is_empty() || self.webhook_delays.iter().any(Duration::is_zero) {
            return Err(invalid(
                "webhook_delays_ms",
                "needs at least one positive delay",
            ));
        }
        if self.status_query_delays.is_empty() {
            return Err(invalid(
                "status_query_delays_ms",
                "needs at least one delay",
            ));
        }
        Ok(())
    }

    /// The withdrawal limits name the same accepted currencies, with
    /// positive amounts, and no per-withdrawal limit above the daily one.
    pub(super) fn validate_withdrawal_limits(&self) -> Result<(), ConfigError> {
        if self.withdrawal_fee_basis_points >= 10_000 {
            return Err(invalid(
                "withdrawal_fee_basis_points",
                format!(
                    "{} would take the whole withdrawal: at most 9999",
                    self.withdrawal_fee_basis_points
                ),
            ));
        }
        if self.merchant_payout_holdback_basis_points >= 10_000 {
            return Err(invalid(
                "merchant_payout_holdback_basis_points",
                format!(
                    "{} would keep back the whole balance: at most 9999",
                    self.merchant_payout_holdback_basis_points
                ),
            ));
        }
        if let Some((currency, _)) = self
            .merchant_payout_minimum
            .iter()
            .find(|(currency, minimum)| crate::money::currency(currency).is_err() || **minimum == 0)
        {
            return Err(invalid(
                "merchant_payout_minimum",
                format!("{currency}: a supported currency with a minimum of at least 1"),
            ));
        }
        per_currency_pair(
            (
                "withdrawal_limit_per_withdrawal",
                &self.withdrawal_limit_per_withdrawal,
            ),
            ("withdrawal_limit_per_day", &self.withdrawal_limit_per_day),
        )?;
        per_currency_pair(
            (
                "transfer_limit_per_transfer",
                &self.transfer_limit_per_transfer,
            ),
            ("transfer_limit_per_day", &self.transfer_limit_per_day),
        )
    }

    /// The operators' endpoints and the public webhook ingress listen on
    /// two addresses (a port of 0 lets the system pick, so two may be 0);
    /// a stuck payment is one open for some time.
    pub(super) fn validate_listeners(&self) -> Result<(), ConfigError> {
        let parse = |name: &'static str, value: &str| {
            SocketAddr::from_str(value)
                .map_err(|e| invalid(name, format!("{e}: expected host:port")))
        };
        let http = parse("http_addr", &self.http_addr)?;
        let ingress = parse("ingress_addr", &self.ingress_addr)?;
        if http.port() != 0 && http == ingress {
            return Err(invalid(
                "ingress_addr",
                format!(
                    "must differ from http_addr ({http}): the webhook ingress listens apart from /metrics"
                ),
            ));
        }
        if self.stuck_payment_after.is_zero() {
            return Err(invalid(
                "stuck_payment_after_ms",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Two per-currency maps of whole units (a lower and a higher threshold):
/// the same accepted currencies in both, each amount positive, and none of
/// the lower above its higher.
fn per_currency_pair(
    (low_name, low): (&'static str, &BTreeMap<String, u64>),
    (high_name, high): (&'static str, &BTreeMap<String, u64>),
) -> Result<(), ConfigError> {
    for (name, map) in [(low_name, low), (high_name, high)] {
        for (currency, amount) in map {
            if crate::money::currency(currency).is_err() {
                return Err(invalid(
                    name,
                    format!(
                        "`{currency}` is not an accepted currency ({})",
                        crate::money::CURRENCIES.join(", ")
                    ),
                ));
            }
            if *amount == 0 {
                return Err(invalid(
                    name,
                    format!("{currency}: must be greater than zero"),
                ));
            }
        }
    }
    for currency in high.keys() {
        if !low.contains_key(currency) {
            return Err(invalid(
                low_name,
                format!("has no {currency} entry, but {high_name} has"),
            ));
        }
    }
    for (currency, lower) in low {
        match high.get(currency) {
            None => {
                return Err(invalid(
                    high_name,
                    format!("has no {currency} entry, but {low_name} has"),
                ));
            }
            Some(higher) if lower > higher => {
                return Err(invalid(
                    low_name,
                    format!("{currency}: {lower} exceeds {high_name}'s {higher}"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
