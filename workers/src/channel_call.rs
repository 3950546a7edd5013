//! channel-call: asks the payment's channel to take the money. The attempt
//! is committed as SENDING first (our attempt id is the channel's idempotency
//! key), the call is made with no transaction open, and the request, the
//! response and the result are committed to the integration log. The balance
//! channel resolves inside payfleet, through the same records third-party
//! channels use.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use chrono::Utc;
use payfleet_common::{
    messages::{ChannelResult, ChannelStatus, FundsFrozen, SCHEMA_VERSION, kind},
    runtime::{CallingStage, Inbound, Intent, Outcome, StageError, StageTx},
    transition::{self, Status},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::payment::{self, PaymentStatus};

pub const NAME: &str = "channel-call";

/// What we ask a channel.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub attempt_id: Uuid,
    pub payment_id: Uuid,
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
}

/// What a channel answered.
#[derive(Debug, Clone)]
pub enum ChannelReply {
    /// A final answer in the response.
    Resolved {
        status: ChannelStatus,
        reference: Option<String>,
        reason: Option<String>,
        raw: Value,
    },
    /// No final answer: timeout, connection error, 5xx. Never failed, never re-sent blindly.
    Unknown { error: String },
}

type ReplyFuture<'a> = Pin<Box<dyn Future<Output = ChannelReply> + Send + 'a>>;

/// A payment channel.
pub trait ChannelAdapter: Send + Sync {
    fn name(&self) -> &str;
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> ReplyFuture<'a>;
}

/// The user's wallet: the funds were frozen by Try, so the charge succeeds at
/// once and Confirm moves the frozen money.
pub struct BalanceChannel;

impl ChannelAdapter for BalanceChannel {
    fn name(&self) -> &str {
        "balance"
    }
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> ReplyFuture<'a> {
        Box::pin(async move {
            ChannelReply::Resolved {
                status: ChannelStatus::Succeeded,
                reference: Some(format!("balance:{}", request.attempt_id)),
                reason: None,
                raw: json!({"channel": "balance", "result": "frozen funds captured", "attempt_id": request.attempt_id}),
            }
        })
    }
}

pub struct ChannelCall {
    adapters: HashMap<String, Arc<dyn ChannelAdapter>>,
}

impl ChannelCall {
    pub fn new(adapters: Vec<Arc<dyn ChannelAdapter>>) -> Self {
        Self {
            adapters: adapters
                .into_iter()
                .map(|a| (a.name().to_owned(), a))
                .collect(),
        }
    }
}

pub struct Attempt {
    request: ChargeRequest,
    adapter: Arc<dyn ChannelAdapter>,
}

impl CallingStage for ChannelCall {
    type Message = FundsFrozen;
    type Intent = Attempt;
    type Reply = ChannelReply;

    fn name(&self) -> &str {
        NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<FundsFrozen, String> {
        serde_json::from_slice(&inbound.body).map_err(|e| format!("undecodable funds.frozen: {e}"))
    }

    fn lock_key(&self, m: &FundsFrozen) -> Option<String> {
        Some(m.payment_id.to_string())
    }

    async fn record_intent(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &FundsFrozen,
    ) -> Result<Intent<Attempt>, StageError> {
        tx.set_correlation_id(&m.payment_id.to_string());
        let Some(p) = payment::lock(tx.conn(), m.payment_id).await? else {
            return Ok(Intent::Finished(Outcome::NotYet {
                reason: format!("payment {} not found", m.payment_id),
            }));
        };
        let status = p.status()?;
        if status != PaymentStatus::Frozen {
            let miss =
                transition::classify(Some(status), PaymentStatus::Frozen, PaymentStatus::Paid);
            let reason = format!("payment {} is {}", p.id, status.as_str());
            return Ok(Intent::Finished(match status {
                // cancelled / failed / exception while this waited: nothing to charge
                s if s.is_terminal() => Outcome::Stale { reason },
                _ => miss.outcome(reason),
            }));
        }
        let channel = p.channel.clone().unwrap_or_else(|| "balance".to_owned());
        let Some(adapter) = self.adapters.get(&channel).cloned() else {
            return Err(StageError::permanent(format!(
                "payment {} routed to unknown channel `{channel}`",
                p.id
            )));
        };
        // An open attempt (found SENDING after a crash) is re-asked under the
        // same id, which the channel deduplicates; a resolved one is done.
        let open: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM payment_attempts WHERE payment_id = $1 ORDER BY created_at DESC LIMIT 1")
                .bind(p.id)
                .fetch_optional(tx.conn())
                .await?;
        let attempt_id = match open {
            Some((id, status)) if status == "sending" || status == "unknown" => id,
            Some((id, status)) => {
                return Ok(Intent::Finished(Outcome::Stale {
                    reason: format!("attempt {id} already {status}"),
                }));
            }
            None => {
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status) VALUES ($1, $2, $3, $4, $5, 'sending')",
                )
                .bind(id)
                .bind(p.id)
                .bind(&channel)
                .bind(p.amount)
                .bind(&p.currency)
                .execute(tx.conn())
                .await?;
                id
            }
        };
        let request = ChargeRequest {
            attempt_id,
            payment_id: p.id,
            user_id: p.user_id.clone(),
            amount: p.amount,
            currency: p.currency.clone(),
        };
        log(tx, &request, &channel, "request", json!({
            "attempt_id": attempt_id, "amount": p.amount.to_string(), "currency": p.currency, "user_id": p.user_id,
        }))
        .await?;
        Ok(Intent::Call(Attempt { request, adapter }))
    }

    async fn call(&self, _m: &FundsFrozen, attempt: &Attempt) -> ChannelReply {
        attempt.adapter.charge(&attempt.request).await
    }

    async fn record_result(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &FundsFrozen,
        attempt: Attempt,
        reply: ChannelReply,
    ) -> Result<Outcome, StageError> {
        tx.set_correlation_id(&m.payment_id.to_string());
        let channel = attempt.adapter.name().to_owned();
        let request = &attempt.request;
        match reply {
            ChannelReply::Resolved {
                status,
                reference,
                reason,
                raw,
            } => {
                log(tx, request, &channel, "response", raw).await?;
                let to = match status {
                    ChannelStatus::Succeeded => "succeeded",
                    ChannelStatus::Failed => "failed",
                };
                let moved = sqlx::query(
                    "UPDATE payment_attempts SET status = $2, channel_reference = $3, resolved_at = now()
                     WHERE id = $1 AND status IN ('sending', 'unknown')",
                )
                .bind(request.attempt_id)
                .bind(to)
                .bind(&reference)
                .execute(tx.conn())
                .await?;
                if moved.rows_affected() == 0 {
                    return Ok(Outcome::Stale {
                        reason: format!("attempt {} already resolved", request.attempt_id),
                    });
                }
                tx.emit_to_stage(
                    crate::callback::NAME,
                    kind::CHANNEL_RESULT,
                    &ChannelResult {
                        schema_version: SCHEMA_VERSION,
                        payment_id: request.payment_id,
                        attempt_id: request.attempt_id,
                        channel,
                        status,
                        amount: request.amount,
                        currency: request.currency.clone(),
                        channel_reference: reference,
                        reason,
                        reported_at: Utc::now(),
                    },
                )?;
                Ok(Outcome::Applied)
            }
            ChannelReply::Unknown { error } => {
                // Nothing is known, so nothing is recorded: the attempt stays
                // SENDING and the retry asks again under the same attempt id,
                // which the channel deduplicates. Never a blind second charge.
                Err(StageError::transient(format!(
                    "channel {channel} gave no answer for attempt {}: {error}",
                    request.attempt_id
                )))
            }
        }
    }
}

async fn log(
    tx: &mut StageTx,
    request: &ChargeRequest,
    channel: &str,
    direction: &str,
    payload: Value,
) -> Result<(), StageError> {
    sqlx::query("INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload) VALUES ($1, $2, $3, $4, $5)")
        .bind(request.payment_id)
        .bind(request.attempt_id)
        .bind(channel)
        .bind(direction)
        .bind(payload)
        .execute(tx.conn())
        .await?;
    Ok(())
}
