//! What pages the on-call engineer: the fleet's figures read from RabbitMQ
//! (AMQP passive declares: no management plugin), PostgreSQL (cheap,
//! indexed counts) and Redis (breakers, degradation). One reading,
//! [`collect`], feeds both the gauges a collector in the fleet refreshes
//! ([`collector`]) and `payfleet status`, so the two never disagree.
//! Outcomes and end-to-end latency are observed where the final event is
//! emitted ([`outcomes`]).

pub mod collector;
pub mod outcomes;
mod queues;

use std::collections::BTreeMap;

use chrono::Duration;
use payfleet_common::{PaymentId, Topology, lock::Locks};
use serde::Serialize;
use sqlx::PgPool;

pub use queues::{QueueFigures, QueueKind, read_queues};

/// The statuses of a payment still under way.
pub const OPEN_STATUSES: [&str; 3] = ["validated", "frozen", "paid"];
/// The error kinds of a dead letter (`dead_letters.error_kind`).
pub const ERROR_KINDS: [&str; 5] = ["poison", "permanent", "exhausted", "crash-loop", "broker"];

#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error("reading PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("reading queue depths from RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
}

/// Open payments of one status.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct OpenFigures {
    pub count: i64,
    /// Open longer than the stuck threshold.
    pub stuck: i64,
    pub oldest_seconds: Option<f64>,
}

/// The payment open longest.
#[derive(Debug, Clone, Serialize)]
pub struct OpenPayment {
    pub age_seconds: f64,
    pub payment_id: PaymentId,
    pub status: String,
}

/// Everything the gauges show and `payfleet status` judges.
#[derive(Debug, Clone, Serialize)]
pub struct Signals {
    /// Every queue of the chain: per stage its work queue, delay levels and
    /// DLQ, the ingress queue and the status-requests queue.
    pub queues: Vec<QueueFigures>,
    pub outbox_unsent: i64,
    /// Age of the oldest unsent outbox row (none when all are sent).
    pub outbox_oldest_seconds: Option<f64>,
    /// Parked dead letters by stage and error kind (only those with some).
    pub dead_letters_parked: BTreeMap<String, BTreeMap<String, i64>>,
    /// Open payments by status (every open status, zero included).
    pub payments_open: BTreeMap<String, OpenFigures>,
    pub oldest_open_payment: Option<OpenPayment>,
    /// How long a payment may stay open before it counts as stuck.
    pub stuck_after_seconds: i64,
    /// Payments held in `exception` for ops.
    pub payments_in_exception: i64,
    /// Merchants' refunds whose status queries ran out: reserved, for ops.
    pub refunds_in_exception: i64,
    /// Withdrawals whose payout's status queries ran out: still frozen, for ops.
    pub withdrawals_in_exception: i64,
    /// Transfers accepted but not finished (requested, or frozen on the
    /// payer's wallet) for longer than the stuck threshold: a transfer has
    /// no channel to wait for, so one this old waits on a stage or a dead
    /// letter, with the payer's money possibly frozen.
    pub transfers_stuck: i64,
    /// Late successes owed back to the payer; the fleet refunds them.
    pub refunds_owed: i64,
    /// Per active third-party channel: whether its circuit breaker is open.
    pub breakers_open: BTreeMap<String, bool>,
    /// Redis does not answer: locks are PostgreSQL leases.
    pub redis_degraded: bool,
}

impl Signals {
    /// The stages (and the status-requests consumer) whose input queues no
    /// consumer reads, in chain order.
    pub fn stages_without_consumers(&self) -> Vec<String> {
        let mut consumers: Vec<(&str, i64)> = Vec::new();
        for q in self
            .queues
            .iter()
            .filter(|q| matches!(q.kind, QueueKind::Work | QueueKind::Ingress))
        {
            match consumers.iter_mut().find(|(stage, _)| *stage == q.stage) {
                Some((_, n)) => *n += q.consumers,
                None => consumers.push((&q.stage, q.consumers)),
            }
        }
        consumers
            .into_iter()
            .filter(|(_, n)| *n == 0)
            .map(|(stage, _)| stage.to_owned())
            .collect()
    }

    pub fn parked_total(&self) -> i64 {
        self.dead_letters_parked
            .values()
            .flat_map(BTreeMap::values)
            .sum()
    }

    pub fn stuck_total(&self) -> i64 {
        self.payments_open.values().map(|o| o.stuck).sum()
    }

    /// The queue of `stage` of `kind` (level for delay queues).
    pub fn queue(
        &self,
        stage: &str,
        kind: QueueKind,
        level: Option<usize>,
    ) -> Option<&QueueFigures> {
        self.queues
            .iter()
            .find(|q| q.stage == stage && q.kind == kind && q.level == level)
    }
}

/// Reads every figure once. `connection` is a broker connection of the
/// caller's (the collector keeps one open); `stuck_after` is the stuck
/// threshold (`stuck_payment_after_ms`, or `payfleet status --stuck-after`).
pub async fn collect(
    topology: &Topology,
    pool: &PgPool,
    connection: &lapin::Connection,
    locks: &Locks,
    redis_prefix: &str,
    stuck_after: Duration,
) -> Result<Signals, SignalsError> {
    let queues = read_queues(connection, topology).await?;
    let (outbox_unsent, outbox_oldest_seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let parked: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT stage, error_kind, count(*) FROM dead_letters WHERE status = 'parked'
         GROUP BY stage, error_kind",
    )
    .fetch_all(pool)
    .await?;
    let mut dead_letters_parked: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (stage, kind, n) in parked {
        dead_letters_parked
            .entry(stage)
            .or_default()
            .insert(kind, n);
    }
    let stuck_seconds = stuck_after.num_seconds();
    let (payments_open, oldest_open_payment) = open_payments(pool, stuck_seconds).await?;
    let held: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payments WHERE status = 'exception'),
                (SELECT count(*) FROM refunds WHERE status = 'exception'),
                (SELECT count(*) FROM refunds WHERE status = 'owed'),
                (SELECT count(*) FROM withdrawals WHERE status = 'exception'),
                (SELECT count(*) FROM transfers WHERE status IN ('requested', 'frozen')
                  AND created_at < now() - make_interval(secs => $1))",
    )
    .bind(stuck_seconds as f64)
    .fetch_one(pool)
    .await?;
    let (
        payments_in_exception,
        refunds_in_exception,
        refunds_owed,
        withdrawals_in_exception,
        transfers_stuck,
    ) = held;
    let breakers_open = breakers(pool, locks, redis_prefix).await?;
    Ok(Signals {
        queues,
        outbox_unsent,
        outbox_oldest_seconds,
        dead_letters_parked,
        payments_open,
        oldest_open_payment,
        stuck_after_seconds: stuck_seconds,
        payments_in_exception,
        refunds_in_exception,
        withdrawals_in_exception,
        transfers_stuck,
        refunds_owed,
        breakers_open,
        redis_degraded: redis_degraded(locks).await,
    })
}

/// Open payments per status and the one open longest (the partial index
/// `payments_open_by_age` holds only open payments).
async fn open_payments(
    pool: &PgPool,
    stuck_seconds: i64,
) -> Result<(BTreeMap<String, OpenFigures>, Option<OpenPayment>), SignalsError> {
    let rows: Vec<(String, i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT status, count(*),
                count(*) FILTER (WHERE created_at < now() - make_interval(secs => $1)),
                extract(epoch FROM now() - min(created_at))::float8
         FROM payments WHERE status IN ('validated', 'frozen', 'paid') GROUP BY status",
    )
    .bind(stuck_seconds as f64)
    .fetch_all(pool)
    .await?;
    let mut open: BTreeMap<String, OpenFigures> = OPEN_STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), OpenFigures::default()))
        .collect();
    for (status, count, stuck, oldest_seconds) in rows {
        open.insert(
            status,
            OpenFigures {
                count,
                stuck,
                oldest_seconds,
            },
        );
    }
    let oldest: Option<(PaymentId, String, f64)> = sqlx::query_as(
        "SELECT id, status, extract(epoch FROM now() - created_at)::float8 FROM payments
         WHERE status IN ('validated', 'frozen', 'paid') ORDER BY created_at LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let oldest = oldest.map(|(payment_id, status, age_seconds)| OpenPayment {
        age_seconds,
        payment_id,
        status,
    });
    Ok((open, oldest))
}

/// Whether each active third-party channel's breaker is open, as routing
/// would judge it now (closed while Redis does not answer).
async fn breakers(
    pool: &PgPool,
    locks: &Locks,
    prefix: &str,
) -> Result<BTreeMap<String, bool>, SignalsError> {
    let channels: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM channels WHERE status = 'active' AND name <> $1 ORDER BY name",
    )
    .bind(crate::channels::BALANCE)
    .fetch_all(pool)
    .await?;
    let mut open = BTreeMap::new();
    for channel in channels {
        let healthy = crate::channels::routing::healthy(locks, prefix, &channel).await;
        open.insert(channel, !healthy);
    }
    Ok(open)
}

/// Asks Redis (a PING through the locks' own client): not answering marks
/// the locks degraded, as any lock call would.
async fn redis_degraded(locks: &Locks) -> bool {
    let mut ping = redis::pipe();
    ping.cmd("PING");
    locks.query::<(String,)>(&ping).await.is_err() || locks.degraded()
}
