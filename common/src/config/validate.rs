//! The checks of settings that relate several values to each other.

use std::{net::SocketAddr, str::FromStr};

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
        for (name, map) in [
            ("risk_block_amount", &self.risk_block_amount),
            ("risk_challenge_amount", &self.risk_challenge_amount),
        ] {
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
        for currency in self.risk_block_amount.keys() {
            if !self.risk_challenge_amount.contains_key(currency) {
                return Err(invalid(
                    "risk_challenge_amount",
                    format!("has no {currency} entry, but risk_block_amount has"),
                ));
            }
        }
        for (currency, challenge) in &self.risk_challenge_amount {
            match self.risk_block_amount.get(currency) {
                None => {
                    return Err(invalid(
                        "risk_block_amount",
                        format!("has no {currency} entry, but risk_challenge_amount has"),
                    ));
                }
                Some(block) if challenge > block => {
                    return Err(invalid(
                        "risk_challenge_amount",
                        format!("{currency}: {challenge} exceeds risk_block_amount's {block}"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
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
