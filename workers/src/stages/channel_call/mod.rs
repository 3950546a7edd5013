//! channel-call: asks the payment's channel to take the money, asks again
//! what became of an attempt with no final answer, and closes a trade before
//! anything is released. Every call follows intent → call → result: the
//! attempt is committed first (our attempt id is the channel's idempotency
//! key, `out_trade_no`), the call is made with no transaction open, and the
//! request, the response and the result are committed to the integration
//! log. A timeout, connection error or 5xx is UNKNOWN — never failed, never a
//! blind second charge: status queries through the delay levels decide, and
//! when they run out the trade is closed (or the payment is paid after all).
//! Refunds go back through the payment's channel the same way ([`refund`]),
//! and withdrawals are paid out through their payout channel ([`payout`]).

mod intent;
pub(crate) mod payout;
mod refund;
mod result;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use payfleet_common::lock::Locks;
use payfleet_common::{
    AttemptId, PaymentId, Topology,
    messages::{
        FundsFrozen, RefundStep, SCHEMA_VERSION, StatusQuery, TradeClose, WithdrawalStep, kind,
    },
    outbox::OutboxMessage,
    runtime::{CallingStage, Inbound, Intent, Outcome, StageError, StageTx, Undecodable},
    transition::{self, Status},
};

use crate::channels::BALANCE;
use crate::{
    channels::{Adapters, ChannelAdapter, ChannelReply, ChargeRequest, CloseReply},
    domain::payment::{self, PaymentStatus},
};

pub const NAME: &str = crate::domain::handoff::CHANNEL_CALL;

/// The kinds of work, told apart by the AMQP `type`.
#[derive(Debug)]
pub enum Work {
    Charge(FundsFrozen),
    Query(StatusQuery),
    Close(TradeClose),
    /// A reserved refund to send back through the payment's channel.
    Refund(RefundStep),
    /// What became of a refund with no final answer.
    RefundQuery(RefundStep),
    /// A frozen withdrawal to pay out (or to send again, same id).
    Payout(WithdrawalStep),
    /// What became of a payout with no final answer.
    PayoutQuery(WithdrawalStep),
}

impl Work {
    /// The key of the lock the work runs under: its payment's, or its withdrawal's.
    fn lock_key(&self) -> String {
        let payment_id = match self {
            Work::Charge(m) => m.payment_id,
            Work::Query(m) => m.payment_id,
            Work::Close(m) => m.payment_id,
            Work::Refund(m) | Work::RefundQuery(m) => m.payment_id,
            Work::Payout(m) | Work::PayoutQuery(m) => {
                return crate::domain::withdrawal::lock_key(m.withdrawal_id);
            }
        };
        payment_id.to_string()
    }
}

pub struct ChannelCall {
    /// Built on demand: a channel added while the fleet runs is served.
    adapters: Adapters,
    topology: Topology,
    redis: Locks,
    redis_prefix: String,
    callback_base_url: String,
    query_delays: Vec<Duration>,
}

impl ChannelCall {
    pub fn new(settings: &payfleet_common::Settings, topology: Topology, redis: Locks) -> Self {
        Self {
            adapters: Adapters::new(settings.channel_timeout),
            topology,
            redis,
            redis_prefix: settings.redis_key_prefix.clone(),
            callback_base_url: settings.callback_base_url.trim_end_matches('/').to_owned(),
            query_delays: settings.status_query_delays.clone(),
        }
    }

    /// Hands `body`, of AMQP type `next`, back to channel-call through the
    /// delay level of step `number` (1-based) of the status-query
    /// schedule; false, and nothing sent, when the schedule has run out.
    fn schedule_step(
        &self,
        tx: &mut StageTx,
        next: &str,
        number: u32,
        correlation_id: &str,
        body: &impl serde::Serialize,
    ) -> Result<bool, StageError> {
        let Some(delay) = self.query_delays.get(number as usize - 1) else {
            return Ok(false);
        };
        let level = self.topology.level_for_delay(*delay);
        let message = OutboxMessage::json(
            &self.topology.exchanges().retry,
            &Topology::retry_routing_key(NAME, level),
            next,
            Some(correlation_id),
            body,
        )
        .map_err(StageError::permanent)?;
        tx.emit(message);
        Ok(true)
    }

    /// Schedules status query `number` (1-based) through a delay level, or
    /// asks for the trade to be closed when the schedule has run out.
    fn next_query(
        &self,
        tx: &mut StageTx,
        payment_id: PaymentId,
        attempt_id: AttemptId,
        number: u32,
    ) -> Result<(), StageError> {
        let query = StatusQuery {
            schema_version: SCHEMA_VERSION,
            payment_id,
            attempt_id,
            query_number: number,
            scheduled_at: Utc::now(),
        };
        let scheduled = self.schedule_step(
            tx,
            kind::STATUS_QUERY,
            number,
            &payment_id.to_string(),
            &query,
        )?;
        match scheduled {
            true => Ok(()),
            false => tx.emit_to_stage(
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

    /// First transaction of a call about the payment itself: only a
    /// frozen payment is charged, asked about or closed.
    async fn intend_on_payment(
        &self,
        tx: &mut StageTx,
        payment_id: PaymentId,
        work: OnPayment<'_>,
    ) -> Result<Intent<Call>, StageError> {
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
        let channel = p.channel.clone().unwrap_or_else(|| BALANCE.to_owned());
        let adapter = self.adapters.get(tx.conn(), &channel).await?;
        let latest = intent::latest_attempt(tx, p.id).await?;
        match work {
            OnPayment::Charge => self.intend_charge(tx, &p, &channel, adapter, latest).await,
            OnPayment::Query(q) => intent::intend_query(tx, &p, &channel, adapter, latest, q).await,
            OnPayment::Close(c) => intent::intend_close(tx, &p, &channel, adapter, latest, c).await,
        }
    }
}

/// The work of channel-call on a payment's own charge.
enum OnPayment<'a> {
    Charge,
    Query(&'a StatusQuery),
    Close(&'a TradeClose),
}

/// What the first transaction decided to call.
pub enum Call {
    Charge {
        request: ChargeRequest,
        adapter: Arc<dyn ChannelAdapter>,
    },
    Query {
        payment_id: PaymentId,
        attempt_id: AttemptId,
        number: u32,
        adapter: Arc<dyn ChannelAdapter>,
    },
    Close {
        payment_id: PaymentId,
        attempt_id: AttemptId,
        reason: String,
        adapter: Arc<dyn ChannelAdapter>,
    },
    Refund(refund::RefundCall),
    Payout(payout::PayoutCall),
}

pub enum Answer {
    Channel(ChannelReply),
    Close(CloseReply),
    /// A refund's or a payout's answer.
    Refund(Result<serde_json::Value, crate::channels::RefundError>),
}

impl CallingStage for ChannelCall {
    type Message = Work;
    type Intent = Call;
    type Reply = Answer;

    fn name(&self) -> &str {
        NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<Work, Undecodable> {
        let body = &inbound.body;
        match inbound.message_type.as_deref() {
            Some(kind::STATUS_QUERY) => serde_json::from_slice(body).map(Work::Query),
            Some(kind::TRADE_CLOSE) => serde_json::from_slice(body).map(Work::Close),
            Some(kind::REFUND_RESERVED) => serde_json::from_slice(body).map(Work::Refund),
            Some(kind::REFUND_QUERY) => serde_json::from_slice(body).map(Work::RefundQuery),
            Some(kind::WITHDRAWAL_FROZEN) => serde_json::from_slice(body).map(Work::Payout),
            Some(kind::WITHDRAWAL_QUERY) => serde_json::from_slice(body).map(Work::PayoutQuery),
            _ => serde_json::from_slice(body).map(Work::Charge),
        }
        .map_err(|e| Undecodable::json(inbound, "channel-call", e))
    }

    fn lock_key(&self, m: &Work) -> Option<String> {
        Some(m.lock_key())
    }

    /// A charge, query or close at an in-house channel (the wallet, the
    /// deposit channel): intent, answer and result in one transaction.
    fn answers_at_once(&self, call: &Call) -> bool {
        match call {
            Call::Charge { adapter, .. }
            | Call::Query { adapter, .. }
            | Call::Close { adapter, .. } => adapter.answers_at_once(),
            Call::Refund(_) | Call::Payout(_) => false,
        }
    }

    /// A wallet payment's (or an attested deposit's) charge shares a batch.
    fn may_batch(&self, work: &Work) -> bool {
        matches!(work, Work::Charge(m) if crate::channels::in_house::is_in_house(&m.channel))
    }

    async fn record_intent(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        work: &Work,
    ) -> Result<Intent<Call>, StageError> {
        match work {
            Work::Refund(m) => self.intend_refund(tx, m, false).await,
            Work::RefundQuery(m) => self.intend_refund(tx, m, true).await,
            Work::Payout(m) => self.intend_payout(tx, m, false).await,
            Work::PayoutQuery(m) => self.intend_payout(tx, m, true).await,
            Work::Charge(m) => {
                self.intend_on_payment(tx, m.payment_id, OnPayment::Charge)
                    .await
            }
            Work::Query(q) => {
                self.intend_on_payment(tx, q.payment_id, OnPayment::Query(q))
                    .await
            }
            Work::Close(c) => {
                self.intend_on_payment(tx, c.payment_id, OnPayment::Close(c))
                    .await
            }
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
            Call::Refund(refund) => Answer::Refund(refund.call().await),
            Call::Payout(payout) => Answer::Refund(payout.call().await),
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
        let (call, answer) = match (call, answer) {
            (Call::Refund(refund), Answer::Refund(answer)) => {
                return self.record_refund(tx, refund, answer).await;
            }
            (Call::Payout(payout), Answer::Refund(answer)) => {
                return self.record_payout(tx, payout, answer).await;
            }
            (Call::Refund(_) | Call::Payout(_), _) => {
                return Err(StageError::permanent(
                    "another answer to a refund or payout call",
                ));
            }
            other => other,
        };
        let Some((payment_id, attempt_id, channel)) = call.ids() else {
            return Err(StageError::permanent(
                "a refund or payout call without its answer",
            ));
        };
        tx.set_correlation_id(&payment_id.to_string());
        self.count_call(&call, &answer, attempt_id, &channel)
            .await?;
        match (call, answer) {
            (Call::Close { reason, .. }, Answer::Close(reply)) => {
                result::record_close(tx, payment_id, attempt_id, &channel, &reason, reply).await
            }
            (call, Answer::Channel(reply)) => {
                let number = match &call {
                    Call::Query { number, .. } => *number,
                    _ => 0,
                };
                self.record_reply(tx, (payment_id, attempt_id), &channel, number, reply)
                    .await
            }
            (_, Answer::Close(_)) => Err(StageError::permanent("a close answer to another call")),
            (_, Answer::Refund(_)) => Err(StageError::permanent("a refund answer to another call")),
        }
    }
}
