//! The first transaction of a call: what to ask the channel, committed
//! before the call (a new attempt is `sending` before the channel hears of
//! it), or the outcome when there is nothing to ask.

use std::sync::Arc;

use payfleet_common::{
    AttemptId, PaymentId,
    messages::{StatusQuery, TradeClose},
    runtime::{Intent, Outcome, StageError, StageTx},
};
use serde_json::json;

use super::{
    Call, ChannelCall,
    result::{log, resolve_failed},
};
use crate::{
    channels::BALANCE,
    channels::{ChannelAdapter, ChargeRequest},
    domain::{attempt::AttemptStatus, payment::Payment},
};

/// The payment's latest attempt and its status.
pub(super) async fn latest_attempt(
    tx: &mut StageTx,
    payment_id: PaymentId,
) -> Result<Option<(AttemptId, AttemptStatus)>, StageError> {
    let latest: Option<(AttemptId, String)> =
        sqlx::query_as("SELECT id, status FROM payment_attempts WHERE payment_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(payment_id)
            .fetch_optional(tx.conn())
            .await?;
    match latest {
        Some((id, s)) => Ok(Some((id, AttemptStatus::parse(&s)?))),
        None => Ok(None),
    }
}

impl ChannelCall {
    /// A charge: under the open attempt's id when there is one (after a
    /// crash; the channel deduplicates it), else under a new attempt.
    pub(super) async fn intend_charge(
        &self,
        tx: &mut StageTx,
        p: &Payment,
        channel: &str,
        adapter: Arc<dyn ChannelAdapter>,
        latest: Option<(AttemptId, AttemptStatus)>,
    ) -> Result<Intent<Call>, StageError> {
        let closing = p.close_requested_at.is_some();
        if closing {
            return Ok(Intent::Finished(Outcome::Stale {
                reason: format!("payment {} is being closed: no charge", p.id),
            }));
        }
        // An attempt found open after a crash is asked again under the
        // same id, which the channel deduplicates; a resolved one is done.
        let (attempt_id, new_attempt) = match latest {
            Some((id, s)) if s.is_open() => (id, false),
            Some((id, s)) => {
                return Ok(Intent::Finished(Outcome::Stale {
                    reason: format!("attempt {id} already {s}"),
                }));
            }
            // The wallet is never disabled: no query on its hot path.
            None if channel != BALANCE && channel_disabled(tx, channel).await? => {
                // Taken out of routing by hand (an incident) after this
                // payment was routed to it: nothing is sent there; the
                // payment fails and its reservations are released.
                insert_finished_attempt(tx, p, channel, AttemptStatus::Failed).await?;
                let reason = format!(
                    "channel_disabled: {channel} was taken out of routing before the charge was sent"
                );
                resolve_failed(tx, p.id, &reason)?;
                return Ok(Intent::Finished(Outcome::Applied));
            }
            None => (AttemptId::new(), true),
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
        let logged = json!({
            "call": "charge", "out_trade_no": attempt_id, "amount": p.amount.to_string(), "currency": p.currency,
            "notify_url": request.notify_url,
        });
        if new_attempt {
            // The new attempt, `sending`, and the request's log in one statement.
            sqlx::query(
                "WITH attempt AS (
                     INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status)
                     VALUES ($1, $2, $3, $4, $5, 'sending')
                 )
                 INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload)
                 VALUES ($2, $1, $3, 'request', $6)",
            )
            .bind(attempt_id)
            .bind(p.id)
            .bind(channel)
            .bind(p.amount)
            .bind(&p.currency)
            .bind(logged)
            .execute(tx.conn())
            .await?;
        } else {
            log(tx, p.id, Some(attempt_id), channel, "request", logged).await?;
        }
        Ok(Intent::Call(Call::Charge { request, adapter }))
    }
}

/// A status query, while the attempt it asks about is the open one.
pub(super) async fn intend_query(
    tx: &mut StageTx,
    p: &Payment,
    channel: &str,
    adapter: Arc<dyn ChannelAdapter>,
    latest: Option<(AttemptId, AttemptStatus)>,
    q: &StatusQuery,
) -> Result<Intent<Call>, StageError> {
    match latest {
        Some((id, s)) if id == q.attempt_id && s.is_open() => {
            log(
                tx,
                p.id,
                Some(id),
                channel,
                "query",
                json!({"call": "query", "out_trade_no": id, "query_number": q.query_number}),
            )
            .await?;
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
    }
}

/// A close of the open attempt's trade; with none open, nothing can be paid.
pub(super) async fn intend_close(
    tx: &mut StageTx,
    p: &Payment,
    channel: &str,
    adapter: Arc<dyn ChannelAdapter>,
    latest: Option<(AttemptId, AttemptStatus)>,
    c: &TradeClose,
) -> Result<Intent<Call>, StageError> {
    match latest {
        Some((id, s)) if s.is_open() => {
            log(
                tx,
                p.id,
                Some(id),
                channel,
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
                insert_finished_attempt(tx, p, channel, AttemptStatus::Closed).await?;
            }
            resolve_failed(tx, p.id, &c.reason)?;
            Ok(Intent::Finished(Outcome::Applied))
        }
    }
}

/// Records an attempt that never reached the channel, already `status`
/// (closed before any charge, or failed because the channel was disabled).
async fn insert_finished_attempt(
    tx: &mut StageTx,
    p: &Payment,
    channel: &str,
    status: AttemptStatus,
) -> Result<(), StageError> {
    sqlx::query(
        "INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status, resolved_at)
         VALUES ($1, $2, $3, $4, $5, $6, now())",
    )
    .bind(AttemptId::new())
    .bind(p.id)
    .bind(channel)
    .bind(p.amount)
    .bind(&p.currency)
    .bind(status.as_str())
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Whether ops took `channel` out of routing (`payfleet channel disable`).
async fn channel_disabled(tx: &mut StageTx, channel: &str) -> Result<bool, StageError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM channels WHERE name = $1 AND status = 'disabled')",
    )
    .bind(channel)
    .fetch_one(tx.conn())
    .await?)
}
