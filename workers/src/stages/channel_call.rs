//! channel-call: asks the payment's channel to take the money, asks again
//! what became of an attempt with no final answer, and closes a trade before
//! anything is released. Every call follows intent → call → result: the
//! attempt is committed first (our attempt id is the channel's idempotency
//! key, `out_trade_no`), the call is made with no transaction open, and the
//! request, the response and the result are committed to the integration
//! log. A timeout, connection error or 5xx is UNKNOWN — never failed, never a
//! blind second charge: status queries through the delay levels decide, and
//! when they run out the trade is closed (or the payment is paid after all).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use payfleet_common::lock::Locks;
use payfleet_common::{
    Topology,
    messages::{
        ChannelResult, ChannelStatus, FundsFrozen, PaymentResolved, Resolution, SCHEMA_VERSION,
        StatusQuery, TradeClose, kind,
    },
    outbox::OutboxMessage,
    runtime::{CallingStage, Inbound, Intent, Outcome, StageError, StageTx},
    transition::{self, Status},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    channels::{Adapters, ChannelAdapter, ChannelReply, ChargeRequest, CloseReply, routing},
    domain::payment::{self, PaymentStatus},
};

pub const NAME: &str = crate::domain::handoff::CHANNEL_CALL;

/// The three kinds of work, told apart by the AMQP `type`.
#[derive(Debug)]
pub enum Work {
    Charge(FundsFrozen),
    Query(StatusQuery),
    Close(TradeClose),
}

impl Work {
    fn payment_id(&self) -> Uuid {
        match self {
            Work::Charge(m) => m.payment_id,
            Work::Query(m) => m.payment_id,
            Work::Close(m) => m.payment_id,
        }
    }
}

pub struct ChannelCall {
    /// Built on demand: a channel added while the fleet runs is served.
    adapters: Adapters,
    topology: Topology,
    redis: Locks,
    redis_prefix: String,
    callback_base_url: String,
    query_delays_ms: Vec<u64>,
}

impl ChannelCall {
    pub fn new(settings: &payfleet_common::Settings, topology: Topology, redis: Locks) -> Self {
        Self {
            adapters: Adapters::new(Duration::from_millis(settings.channel_timeout_ms)),
            topology,
            redis,
            redis_prefix: settings.redis_key_prefix.clone(),
            callback_base_url: settings.callback_base_url.trim_end_matches('/').to_owned(),
            query_delays_ms: settings.status_query_delays_ms.clone(),
        }
    }

    /// Schedules status query `number` (1-based) through a delay level, or
    /// asks for the trade to be closed when the schedule has run out.
    fn next_query(
        &self,
        tx: &mut StageTx,
        payment_id: Uuid,
        attempt_id: Uuid,
        number: u32,
    ) -> Result<(), StageError> {
        match self.query_delays_ms.get(number as usize - 1) {
            Some(delay_ms) => {
                let level = self.topology.level_for_delay(*delay_ms);
                let message = OutboxMessage::json(
                    &self.topology.exchanges().retry,
                    &Topology::retry_routing_key(NAME, level),
                    kind::STATUS_QUERY,
                    Some(&payment_id.to_string()),
                    &StatusQuery {
                        schema_version: SCHEMA_VERSION,
                        payment_id,
                        attempt_id,
                        query_number: number,
                        scheduled_at: Utc::now(),
                    },
                )
                .map_err(StageError::permanent)?;
                tx.emit(message);
                Ok(())
            }
            None => tx.emit_to_stage(
                NAME,
                kind::TRADE_CLOSE,
                &TradeClose {
                    schema_version: SCHEMA_VERSION,
                    payment_id,
                    reason: format!(
                        "unresolved: no final answer after {} status queries",
                        number - 1
                    ),
                    requested_at: Utc::now(),
                },
            ),
        }
    }
}

/// What the first transaction decided to call.
pub enum Call {
    Charge {
        request: ChargeRequest,
        adapter: Arc<dyn ChannelAdapter>,
    },
    Query {
        payment_id: Uuid,
        attempt_id: Uuid,
        number: u32,
        adapter: Arc<dyn ChannelAdapter>,
    },
    Close {
        payment_id: Uuid,
        attempt_id: Uuid,
        reason: String,
        adapter: Arc<dyn ChannelAdapter>,
    },
}

pub enum Answer {
    Channel(ChannelReply),
    Close(CloseReply),
}

impl CallingStage for ChannelCall {
    type Message = Work;
    type Intent = Call;
    type Reply = Answer;

    fn name(&self) -> &str {
        NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<Work, String> {
        let body = &inbound.body;
        match inbound.message_type.as_deref() {
            Some(kind::STATUS_QUERY) => serde_json::from_slice(body).map(Work::Query),
            Some(kind::TRADE_CLOSE) => serde_json::from_slice(body).map(Work::Close),
            _ => serde_json::from_slice(body).map(Work::Charge),
        }
        .map_err(|e| {
            format!(
                "undecodable {} message: {e}",
                inbound.message_type.as_deref().unwrap_or("channel-call")
            )
        })
    }

    fn lock_key(&self, m: &Work) -> Option<String> {
        Some(m.payment_id().to_string())
    }

    async fn record_intent(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        work: &Work,
    ) -> Result<Intent<Call>, StageError> {
        let payment_id = work.payment_id();
        tx.set_correlation_id(&payment_id.to_string());
        let Some(p) = payment::lock(tx.conn(), payment_id).await? else {
            return Ok(Intent::Finished(Outcome::NotYet {
                reason: format!("payment {payment_id} not found"),
            }));
        };
        let status = p.status()?;
        if status != PaymentStatus::Frozen {
            let reason = format!("payment {} is {}", p.id, status.as_str());
            return Ok(Intent::Finished(
                if status.is_terminal() || status == PaymentStatus::Paid {
                    Outcome::Stale { reason }
                } else {
                    transition::classify(Some(status), PaymentStatus::Frozen, PaymentStatus::Paid)
                        .outcome(reason)
                },
            ));
        }
        let channel = p.channel.clone().unwrap_or_else(|| "balance".to_owned());
        let adapter = self.adapters.get(tx.conn(), &channel).await?;
        let latest: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM payment_attempts WHERE payment_id = $1 ORDER BY created_at DESC LIMIT 1")
                .bind(p.id)
                .fetch_optional(tx.conn())
                .await?;
        let open = |s: &str| matches!(s, "sending" | "pending" | "unknown");
        match work {
            Work::Charge(_) => {
                let closing = p.close_requested_at.is_some();
                if closing {
                    return Ok(Intent::Finished(Outcome::Stale {
                        reason: format!("payment {} is being closed: no charge", p.id),
                    }));
                }
                // An attempt found open after a crash is asked again under the
                // same id, which the channel deduplicates; a resolved one is done.
                let attempt_id = match latest {
                    Some((id, s)) if open(&s) => id,
                    Some((id, s)) => {
                        return Ok(Intent::Finished(Outcome::Stale {
                            reason: format!("attempt {id} already {s}"),
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
                    payer_token: p.payer_token.clone(),
                    notify_url: format!("{}/callbacks/{channel}/{}", self.callback_base_url, p.id),
                };
                log(tx, p.id, Some(attempt_id), &channel, "request", json!({
                    "call": "charge", "out_trade_no": attempt_id, "amount": p.amount.to_string(), "currency": p.currency,
                    "notify_url": request.notify_url,
                }))
                .await?;
                Ok(Intent::Call(Call::Charge { request, adapter }))
            }
            Work::Query(q) => match latest {
                Some((id, s)) if id == q.attempt_id && open(&s) => {
                    log(tx, p.id, Some(id), &channel, "query", json!({"call": "query", "out_trade_no": id, "query_number": q.query_number})).await?;
                    Ok(Intent::Call(Call::Query {
                        payment_id: p.id,
                        attempt_id: id,
                        number: q.query_number,
                        adapter,
                    }))
                }
                _ => Ok(Intent::Finished(Outcome::Stale {
                    reason: format!("attempt {} is no longer open", q.attempt_id),
                })),
            },
            Work::Close(c) => match latest {
                Some((id, s)) if open(&s) => {
                    log(
                        tx,
                        p.id,
                        Some(id),
                        &channel,
                        "request",
                        json!({"call": "close", "out_trade_no": id, "reason": c.reason}),
                    )
                    .await?;
                    Ok(Intent::Call(Call::Close {
                        payment_id: p.id,
                        attempt_id: id,
                        reason: c.reason.clone(),
                        adapter,
                    }))
                }
                // No open trade at the channel: nothing can be paid, release now,
                // and leave a closed attempt so a charge arriving late is refused.
                _ => {
                    if latest.is_none() {
                        sqlx::query(
                            "INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status, resolved_at)
                             VALUES ($1, $2, $3, $4, $5, 'closed', now())",
                        )
                        .bind(Uuid::now_v7())
                        .bind(p.id)
                        .bind(&channel)
                        .bind(p.amount)
                        .bind(&p.currency)
                        .execute(tx.conn())
                        .await?;
                    }
                    resolve_failed(tx, p.id, &c.reason)?;
                    Ok(Intent::Finished(Outcome::Applied))
                }
            },
        }
    }

    async fn call(&self, _work: &Work, call: &Call) -> Answer {
        match call {
            Call::Charge { request, adapter } => Answer::Channel(adapter.charge(request).await),
            Call::Query {
                attempt_id,
                adapter,
                ..
            } => Answer::Channel(adapter.query(*attempt_id).await),
            Call::Close {
                attempt_id,
                adapter,
                ..
            } => Answer::Close(adapter.close(*attempt_id).await),
        }
    }

    async fn record_result(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        _work: &Work,
        call: Call,
        answer: Answer,
    ) -> Result<Outcome, StageError> {
        let (payment_id, attempt_id, channel) = match &call {
            Call::Charge { request, adapter } => (
                request.payment_id,
                request.attempt_id,
                adapter.name().to_owned(),
            ),
            Call::Query {
                payment_id,
                attempt_id,
                adapter,
                ..
            }
            | Call::Close {
                payment_id,
                attempt_id,
                adapter,
                ..
            } => (*payment_id, *attempt_id, adapter.name().to_owned()),
        };
        tx.set_correlation_id(&payment_id.to_string());
        let failed_call = matches!(
            answer,
            Answer::Channel(ChannelReply::Unknown { .. })
                | Answer::Close(CloseReply::Unknown { .. })
        );
        if channel != "balance" {
            // Keyed by the call, not this handling of it: written before the
            // commit, it must count once when the message is handled again.
            let call_id = match &call {
                Call::Charge { .. } => format!("{attempt_id}:charge"),
                Call::Query { number, .. } => format!("{attempt_id}:query:{number}"),
                Call::Close { .. } => format!("{attempt_id}:close"),
            };
            routing::record(
                &self.redis,
                &self.redis_prefix,
                &channel,
                &call_id,
                failed_call,
            )
            .await;
        }
        match (call, answer) {
            (Call::Close { reason, .. }, Answer::Close(reply)) => match reply {
                CloseReply::Closed { raw } => {
                    log(tx, payment_id, Some(attempt_id), &channel, "response", raw).await?;
                    set_attempt(tx, attempt_id, "closed", None).await?;
                    resolve_failed(tx, payment_id, &reason)?;
                    Ok(Outcome::Applied)
                }
                CloseReply::AlreadyPaid {
                    amount,
                    currency,
                    reference,
                    raw,
                } => {
                    // Paid after all: the payment goes on to settle, nothing is released.
                    log(tx, payment_id, Some(attempt_id), &channel, "response", raw).await?;
                    report(
                        tx,
                        payment_id,
                        attempt_id,
                        &channel,
                        &currency,
                        ChannelStatus::Succeeded,
                        amount,
                        reference,
                        None,
                    )?;
                    Ok(Outcome::Applied)
                }
                CloseReply::Unknown { error } => Err(StageError::transient(format!(
                    "closing attempt {attempt_id} at {channel}: {error}"
                ))),
            },
            (call, Answer::Channel(reply)) => {
                let number = match &call {
                    Call::Query { number, .. } => *number,
                    _ => 0,
                };
                match reply {
                    ChannelReply::Resolved {
                        status,
                        amount,
                        currency,
                        reference,
                        reason,
                        raw,
                    } => {
                        log(tx, payment_id, Some(attempt_id), &channel, "response", raw).await?;
                        report(
                            tx, payment_id, attempt_id, &channel, &currency, status, amount,
                            reference, reason,
                        )?;
                        Ok(Outcome::Applied)
                    }
                    ChannelReply::Pending { reference, raw } => {
                        log(tx, payment_id, Some(attempt_id), &channel, "response", raw).await?;
                        set_attempt(tx, attempt_id, "pending", reference.as_deref()).await?;
                        // The webhook should come; a query makes sure.
                        self.next_query(tx, payment_id, attempt_id, number + 1)?;
                        Ok(Outcome::Applied)
                    }
                    ChannelReply::Unknown { error } => {
                        log(
                            tx,
                            payment_id,
                            Some(attempt_id),
                            &channel,
                            "response",
                            json!({"unknown": error}),
                        )
                        .await?;
                        set_attempt(tx, attempt_id, "unknown", None).await?;
                        tracing::warn!(%error, %attempt_id, channel, "no final answer from the channel; a status query decides");
                        self.next_query(tx, payment_id, attempt_id, number + 1)?;
                        Ok(Outcome::Applied)
                    }
                }
            }
            (_, Answer::Close(_)) => Err(StageError::permanent("a close answer to another call")),
        }
    }
}

/// Hands a channel's final answer, in the amount and currency the channel
/// stated, to callback (statuses move there; callback compares them).
#[allow(clippy::too_many_arguments)]
fn report(
    tx: &mut StageTx,
    payment_id: Uuid,
    attempt_id: Uuid,
    channel: &str,
    currency: &str,
    status: ChannelStatus,
    amount: Decimal,
    reference: Option<String>,
    reason: Option<String>,
) -> Result<(), StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::CALLBACK,
        kind::CHANNEL_RESULT,
        &ChannelResult {
            schema_version: SCHEMA_VERSION,
            payment_id,
            attempt_id,
            channel: channel.to_owned(),
            status,
            amount,
            currency: currency.to_owned(),
            channel_reference: reference,
            reason,
            reported_at: Utc::now(),
        },
    )
}

fn resolve_failed(tx: &mut StageTx, payment_id: Uuid, reason: &str) -> Result<(), StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::SETTLEMENT,
        kind::PAYMENT_RESOLVED,
        &PaymentResolved {
            schema_version: SCHEMA_VERSION,
            payment_id,
            resolution: Resolution::Failed,
            reason: Some(reason.to_owned()),
            resolved_at: Utc::now(),
        },
    )
}

async fn set_attempt(
    tx: &mut StageTx,
    attempt_id: Uuid,
    status: &str,
    reference: Option<&str>,
) -> Result<(), StageError> {
    sqlx::query(
        "UPDATE payment_attempts SET status = $2, channel_reference = COALESCE($3, channel_reference),
                resolved_at = CASE WHEN $2 IN ('closed') THEN now() ELSE resolved_at END
         WHERE id = $1 AND status IN ('sending', 'pending', 'unknown')",
    )
    .bind(attempt_id)
    .bind(status)
    .bind(reference)
    .execute(tx.conn())
    .await?;
    Ok(())
}

async fn log(
    tx: &mut StageTx,
    payment_id: Uuid,
    attempt_id: Option<Uuid>,
    channel: &str,
    direction: &str,
    payload: Value,
) -> Result<(), StageError> {
    sqlx::query("INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload) VALUES ($1, $2, $3, $4, $5)")
        .bind(payment_id)
        .bind(attempt_id)
        .bind(channel)
        .bind(direction)
        .bind(payload)
        .execute(tx.conn())
        .await?;
    Ok(())
}
