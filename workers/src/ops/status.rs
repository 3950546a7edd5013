//! `payfleet status`: the fleet at a glance, from the very reading the
//! fleet's gauges come from ([`crate::signals::collect`]), and what in it
//! needs attention — the conditions the alert rules page on — so that a
//! non-zero exit can drive an alert where no Prometheus runs.

use std::collections::BTreeMap;

use payfleet_common::{Settings, Topology, lock::Locks};
use serde::Serialize;
use sqlx::PgPool;

use super::Result;
use crate::signals::{self, QueueKind, Signals};

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub vhost: String,
    /// The figures of the gauges, read by the same code.
    #[serde(flatten)]
    pub signals: Signals,
    /// Every payment by status (shown only here: a full count).
    pub payments_by_status: BTreeMap<String, i64>,
    /// What needs attention, one line each; empty when nothing does.
    pub attention: Vec<String>,
}

pub struct Thresholds {
    pub outbox_lag: chrono::Duration,
    pub stuck: chrono::Duration,
}

pub async fn collect(
    settings: &Settings,
    pool: &PgPool,
    thresholds: &Thresholds,
) -> Result<FleetStatus> {
    let topology = Topology::from_settings(settings)?;
    let locks = Locks::with_extra_ca(
        &settings.redis_url,
        &settings.redis_key_prefix,
        settings.lock_ttl,
        &settings.extra_ca()?,
    )?;
    let connection = crate::connect_broker(settings, "payfleet-status").await?;
    let read = signals::collect(
        &topology,
        pool,
        &connection,
        &locks,
        &settings.redis_key_prefix,
        thresholds.stuck,
    )
    .await;
    let _ = connection.close(200, "status read".into()).await;
    let signals = read?;
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM payments GROUP BY status")
            .fetch_all(pool)
            .await?;
    Ok(FleetStatus {
        vhost: settings.amqp_vhost(),
        attention: attention(&signals, thresholds),
        signals,
        payments_by_status: by_status.into_iter().collect(),
    })
}

/// The conditions the alert rules page on (ops/prometheus/payfleet.rules.yml)
/// that one reading can show, each said with what to run next.
pub fn attention(s: &Signals, thresholds: &Thresholds) -> Vec<String> {
    let mut lines = Vec::new();
    for stage in s.stages_without_consumers() {
        lines.push(format!(
            "no consumer reads {stage}'s queue (start `payfleet worker {stage}` or `payfleet run`)"
        ));
    }
    let parked = s.parked_total();
    if parked > 0 {
        lines.push(format!(
            "{parked} dead letter(s) parked (payfleet dlq list)"
        ));
    }
    if let Some(age) = s
        .outbox_oldest_seconds
        .filter(|age| *age > thresholds.outbox_lag.num_seconds() as f64)
    {
        lines.push(format!(
            "outbox lagging: oldest unsent row is {age:.0} s old"
        ));
    }
    let stuck = s.stuck_total();
    if stuck > 0 {
        let oldest = s
            .oldest_open_payment
            .as_ref()
            .map(|p| {
                format!(
                    "; oldest {} in {} for {:.0} s",
                    p.payment_id, p.status, p.age_seconds
                )
            })
            .unwrap_or_default();
        lines.push(format!(
            "{stuck} payment(s) open longer than {} s{oldest} (payfleet payment show)",
            s.stuck_after_seconds
        ));
    }
    if s.payments_in_exception > 0 {
        lines.push(format!(
            "{} payment(s) in exception, held for review (payfleet payment show / resolve)",
            s.payments_in_exception
        ));
    }
    if s.refunds_owed > 0 {
        lines.push(format!(
            "{} refund(s) owed after a late success",
            s.refunds_owed
        ));
    }
    if s.refunds_in_exception > 0 {
        lines.push(format!(
            "{} refund(s) unresolved at their channel, still reserved (payfleet refund list --status exception)",
            s.refunds_in_exception
        ));
    }
    if s.withdrawals_in_exception > 0 {
        lines.push(format!(
            "{} withdrawal(s) whose payout the channel never answered, still frozen: ask the channel by withdrawal id (payfleet reconcile lists what it paid)",
            s.withdrawals_in_exception
        ));
    }
    if s.transfers_stuck > 0 {
        lines.push(format!(
            "{} transfer(s) accepted but unfinished longer than {} s, the payer's money possibly frozen: is fund-freeze or settlement running? (payfleet dlq list)",
            s.transfers_stuck, s.stuck_after_seconds
        ));
    }
    for (channel, _) in s.breakers_open.iter().filter(|(_, open)| **open) {
        lines.push(format!(
            "channel {channel}'s circuit breaker is open: payments are routed elsewhere or refused"
        ));
    }
    if s.redis_degraded {
        lines.push("Redis does not answer: the fleet runs degraded on PostgreSQL leases".into());
    }
    lines
}

/// A stage's row in the table: its work queue, delay levels and DLQ.
pub struct StageRow {
    pub stage: String,
    pub ready: i64,
    pub consumers: i64,
    pub retrying: Vec<i64>,
    pub dlq_ready: i64,
    pub parked: i64,
}

impl FleetStatus {
    /// One row per stage (and the status-requests consumer), in chain order.
    pub fn stage_rows(&self) -> Vec<StageRow> {
        let s = &self.signals;
        s.queues
            .iter()
            .filter(|q| q.kind == QueueKind::Work)
            .map(|work| {
                let of = |kind| {
                    s.queues
                        .iter()
                        .filter(move |q| q.stage == work.stage && q.kind == kind)
                };
                StageRow {
                    stage: work.stage.clone(),
                    ready: work.messages,
                    consumers: work.consumers,
                    retrying: of(QueueKind::Retry).map(|q| q.messages).collect(),
                    dlq_ready: of(QueueKind::Dlq).map(|q| q.messages).sum(),
                    parked: s
                        .dead_letters_parked
                        .get(&work.stage)
                        .map_or(0, |p| p.values().sum()),
                }
            })
            .collect()
    }

    pub fn ingress_ready(&self) -> i64 {
        self.signals
            .queues
            .iter()
            .filter(|q| q.kind == QueueKind::Ingress)
            .map(|q| q.messages)
            .sum()
    }
}
