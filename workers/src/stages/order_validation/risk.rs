//! The rule-based risk decision: block lists, amount limits per currency,
//! and a per-user velocity kept in Redis as a set of payment ids (a
//! redelivery adds the same member again, so it never counts twice). The
//! decision is stored with the payment and never recomputed.
//!
//! While Redis does not answer the velocity cannot be counted, and the
//! decision degrades to a stricter amount rule instead: a payment of at least
//! a tenth of its currency's challenge amount is challenged, with the reason
//! `velocity_unavailable_…`; smaller ones are allowed.

use std::collections::HashMap;

use payfleet_common::{PaymentId, lock::Locks};
use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Challenge,
    Block,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Challenge => "challenge",
            Decision::Block => "block",
        }
    }
}

/// An amount limit in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub block: Decimal,
    pub challenge: Decimal,
}

#[derive(Debug, Clone)]
pub struct RiskRules {
    /// Per currency: an amount means nothing without its currency.
    pub thresholds: HashMap<String, Thresholds>,
    pub velocity_limit: u32,
    pub velocity_window_ms: u64,
    pub key_prefix: String,
}

impl RiskRules {
    pub fn new(settings: &payfleet_common::Settings) -> Self {
        // Validated at start: both maps name the same currencies.
        let thresholds = settings
            .risk_block_amount
            .iter()
            .filter_map(|(currency, block)| {
                let challenge = settings.risk_challenge_amount.get(currency)?;
                Some((
                    currency.clone(),
                    Thresholds {
                        block: Decimal::from(*block),
                        challenge: Decimal::from(*challenge),
                    },
                ))
            })
            .collect();
        Self {
            thresholds,
            velocity_limit: settings.risk_velocity_limit,
            velocity_window_ms: u64::try_from(settings.risk_velocity_window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            key_prefix: settings.redis_key_prefix.clone(),
        }
    }

    /// The limits of `currency`; `None` when none are configured, and then
    /// order-validation takes no payment in it.
    pub fn thresholds(&self, currency: &str) -> Option<Thresholds> {
        self.thresholds.get(currency).copied()
    }
}

/// The amount rule alone: `Block` or `Challenge` with the rule that fired, or
/// `None`. A currency without limits is blocked, never let through unchecked.
pub fn amount_rule(
    rules: &RiskRules,
    currency: &str,
    amount: Decimal,
) -> Option<(Decision, String)> {
    let Some(limits) = rules.thresholds(currency) else {
        return Some((
            Decision::Block,
            format!("no_risk_thresholds_for_{currency}"),
        ));
    };
    if amount >= limits.block {
        Some((
            Decision::Block,
            format!("amount_at_least_{}_{currency}", limits.block),
        ))
    } else if amount >= limits.challenge {
        Some((
            Decision::Challenge,
            format!("amount_at_least_{}_{currency}", limits.challenge),
        ))
    } else {
        None
    }
}

/// Without the velocity, payments from this fraction of the challenge amount are challenged.
pub const DEGRADED_CHALLENGE_DIVISOR: u32 = 10;

/// The decision and the rules that fired.
pub async fn decide(
    rules: &RiskRules,
    redis: &Locks,
    user_id: &str,
    user_blocked: bool,
    payment_id: PaymentId,
    amount: Decimal,
    currency: &str,
) -> (Decision, Vec<String>) {
    let mut reasons = Vec::new();
    if user_blocked {
        reasons.push("user_on_block_list".to_owned());
    }
    let by_amount = amount_rule(rules, currency, amount);
    if let Some((Decision::Block, reason)) = &by_amount {
        reasons.push(reason.clone());
    }
    if !reasons.is_empty() {
        return (Decision::Block, reasons);
    }
    if let Some((_, reason)) = by_amount {
        reasons.push(reason);
    }
    let window = (chrono::Utc::now().timestamp_millis().max(0) as u64) / rules.velocity_window_ms;
    let key = format!("{}:risk:velocity:{user_id}:{window}", rules.key_prefix);
    let mut velocity = redis::pipe();
    velocity
        .atomic()
        .cmd("SADD")
        .arg(&key)
        .arg(payment_id.to_string())
        .cmd("SCARD")
        .arg(&key)
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(rules.velocity_window_ms * 2);
    match redis.query::<(i64, i64, i64)>(&velocity).await {
        Ok((_, count, _)) => {
            if count > i64::from(rules.velocity_limit) {
                reasons.push(format!(
                    "more_than_{}_payments_per_window",
                    rules.velocity_limit
                ));
            }
        }
        Err(error) => {
            tracing::debug!(%error, "risk velocity not counted: Redis does not answer");
            if let Some(reason) = degraded_amount_rule(rules, currency, amount)
                && reasons.is_empty()
            {
                reasons.push(reason);
            }
        }
    }
    if reasons.is_empty() {
        (Decision::Allow, reasons)
    } else {
        (Decision::Challenge, reasons)
    }
}

/// The stricter amount rule that stands in for the velocity while it cannot be counted.
pub fn degraded_amount_rule(rules: &RiskRules, currency: &str, amount: Decimal) -> Option<String> {
    let limits = rules.thresholds(currency)?;
    let floor = limits.challenge / Decimal::from(DEGRADED_CHALLENGE_DIVISOR);
    (amount >= floor).then(|| format!("velocity_unavailable_amount_at_least_{floor}_{currency}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RiskRules {
        RiskRules::new(&payfleet_common::Settings::default())
    }

    fn d(text: &str) -> Decimal {
        text.parse().expect("decimal literal")
    }

    #[test]
    fn the_same_number_is_judged_in_its_own_currency() {
        let rules = rules();
        assert_eq!(amount_rule(&rules, "CNY", d("3000.00")), None);
        assert_eq!(
            amount_rule(&rules, "USD", d("3000.00")),
            Some((Decision::Challenge, "amount_at_least_2800_USD".into()))
        );
        assert_eq!(
            amount_rule(&rules, "USD", d("7000.00")),
            Some((Decision::Block, "amount_at_least_7000_USD".into()))
        );
        assert_eq!(
            amount_rule(&rules, "CNY", d("49999.99")),
            Some((Decision::Challenge, "amount_at_least_20000_CNY".into()))
        );
    }

    #[test]
    fn a_currency_without_thresholds_is_blocked() {
        let mut rules = rules();
        rules.thresholds.remove("SGD");
        assert_eq!(rules.thresholds("SGD"), None);
        assert_eq!(
            amount_rule(&rules, "SGD", d("0.01")),
            Some((Decision::Block, "no_risk_thresholds_for_SGD".into()))
        );
    }

    /// Locks on a port where nothing listens: Redis refuses at once.
    fn unreachable_redis() -> Locks {
        Locks::new(
            "redis://127.0.0.1:1/0",
            "risk-test",
            std::time::Duration::from_secs(5),
        )
        .expect("a valid URL")
    }

    #[tokio::test]
    async fn without_redis_a_tenth_of_the_challenge_amount_is_challenged() {
        let rules = rules();
        let redis = unreachable_redis();
        let (decision, reasons) = decide(
            &rules,
            &redis,
            "u1",
            false,
            PaymentId::new(),
            d("2000.00"),
            "CNY",
        )
        .await;
        assert_eq!(decision, Decision::Challenge);
        assert_eq!(
            reasons,
            vec!["velocity_unavailable_amount_at_least_2000_CNY".to_owned()]
        );
        let (decision, reasons) = decide(
            &rules,
            &redis,
            "u1",
            false,
            PaymentId::new(),
            d("1999.99"),
            "CNY",
        )
        .await;
        assert_eq!((decision, reasons), (Decision::Allow, vec![]));
        // the amount and block rules still apply as they are
        let (decision, _) = decide(
            &rules,
            &redis,
            "u1",
            true,
            PaymentId::new(),
            d("1.00"),
            "CNY",
        )
        .await;
        assert_eq!(decision, Decision::Block);
    }
}
