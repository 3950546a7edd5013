//! The rule-based risk decision: block lists and amount limits, and a
//! per-user velocity kept in Redis as a set of payment ids (a redelivery adds
//! the same member again, so it never counts twice). The decision is stored
//! with the payment and never recomputed.

use deadpool_redis::Pool;
use rust_decimal::Decimal;
use uuid::Uuid;

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

#[derive(Debug, Clone)]
pub struct RiskRules {
    pub block_amount: Decimal,
    pub challenge_amount: Decimal,
    pub velocity_limit: u32,
    pub velocity_window_ms: u64,
    pub key_prefix: String,
}

/// The decision and the rules that fired.
pub async fn decide(
    rules: &RiskRules,
    redis: &Pool,
    user_id: &str,
    user_blocked: bool,
    payment_id: Uuid,
    amount: Decimal,
) -> Result<(Decision, Vec<String>), String> {
    let mut reasons = Vec::new();
    if user_blocked {
        reasons.push("user_on_block_list".to_owned());
    }
    if amount >= rules.block_amount {
        reasons.push(format!("amount_at_least_{}", rules.block_amount));
    }
    if !reasons.is_empty() {
        return Ok((Decision::Block, reasons));
    }
    if amount >= rules.challenge_amount {
        reasons.push(format!("amount_at_least_{}", rules.challenge_amount));
    }
    let window = (chrono::Utc::now().timestamp_millis().max(0) as u64) / rules.velocity_window_ms;
    let key = format!("{}:risk:velocity:{user_id}:{window}", rules.key_prefix);
    let mut conn = redis
        .get()
        .await
        .map_err(|e| format!("Redis unavailable: {e}"))?;
    let (_, count, _): (i64, i64, i64) = redis::pipe()
        .atomic()
        .cmd("SADD")
        .arg(&key)
        .arg(payment_id.to_string())
        .cmd("SCARD")
        .arg(&key)
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(rules.velocity_window_ms * 2)
        .query_async(&mut *conn)
        .await
        .map_err(|e| format!("Redis unavailable: {e}"))?;
    if count > i64::from(rules.velocity_limit) {
        reasons.push(format!(
            "more_than_{}_payments_per_window",
            rules.velocity_limit
        ));
    }
    if reasons.is_empty() {
        Ok((Decision::Allow, reasons))
    } else {
        Ok((Decision::Challenge, reasons))
    }
}
