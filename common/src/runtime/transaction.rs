//! The stage transaction: the inbox claim, the handler's effects and the
//! outbox rows commit together or not at all.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::stage::{Inbound, Outcome, StageError};
use crate::outbox::{self, OutboxMessage};
use crate::topology::ExchangeNames;

/// The transaction a handler works in, and the messages it emits.
pub struct StageTx {
    tx: Transaction<'static, Postgres>,
    /// For the inbox row of a stale message, written after its effects rolled back.
    pool: PgPool,
    emitted: Vec<OutboxMessage>,
    exchanges: ExchangeNames,
    correlation_id: Option<String>,
}

impl std::fmt::Debug for StageTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageTx")
            .field("emitted", &self.emitted.len())
            .finish()
    }
}

impl StageTx {
    /// The connection to run the stage's SQL on.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Emits a JSON message to `stage`'s work queue once this commits. The
    /// payment id (correlation id) of the input travels with it.
    pub fn emit_to_stage(
        &mut self,
        stage: &str,
        message_type: &str,
        body: &impl Serialize,
    ) -> Result<(), StageError> {
        let message = OutboxMessage::json(
            &self.exchanges.stages,
            stage,
            message_type,
            self.correlation_id.as_deref(),
            body,
        )
        .map_err(StageError::permanent)?;
        self.emitted.push(message);
        Ok(())
    }

    /// Emits a domain event to the events exchange once this commits.
    pub fn emit_event(
        &mut self,
        routing_key: &str,
        body: &impl Serialize,
    ) -> Result<(), StageError> {
        let message = OutboxMessage::json(
            &self.exchanges.events,
            routing_key,
            routing_key,
            self.correlation_id.as_deref(),
            body,
        )
        .map_err(StageError::permanent)?;
        self.emitted.push(message);
        Ok(())
    }

    /// Emits a prepared message once this commits.
    pub fn emit(&mut self, message: OutboxMessage) {
        self.emitted.push(message);
    }

    /// Sets the payment id that emitted messages carry (when the input had none).
    pub fn set_correlation_id(&mut self, correlation_id: &str) {
        self.correlation_id = Some(correlation_id.to_owned());
    }

    pub fn emitted(&self) -> &[OutboxMessage] {
        &self.emitted
    }
}

/// How a delivery's transaction began.
pub enum Begun {
    Fresh(Box<StageTx>),
    /// The inbox already holds this (stage, message id): ack without effect.
    AlreadyProcessed,
}

/// Whether the inbox already holds this message (a read, no claim).
pub async fn already_processed(pool: &PgPool, inbound: &Inbound) -> Result<bool, StageError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM inbox WHERE stage = $1 AND message_id = $2)",
    )
    .bind(&inbound.stage)
    .bind(&inbound.message_id)
    .fetch_one(pool)
    .await?)
}

/// A transaction without an inbox claim (a calling stage's intent).
pub async fn begin_plain(
    pool: &PgPool,
    exchanges: &ExchangeNames,
    inbound: &Inbound,
) -> Result<StageTx, StageError> {
    Ok(StageTx {
        tx: pool.begin().await?,
        pool: pool.clone(),
        emitted: Vec::new(),
        exchanges: exchanges.clone(),
        correlation_id: inbound.correlation_id.clone(),
    })
}

/// Begins the transaction and claims the inbox row. A concurrent handler of
/// the same message waits here until the other commits, then sees the row.
pub async fn begin(
    pool: &PgPool,
    exchanges: &ExchangeNames,
    inbound: &Inbound,
) -> Result<Begun, StageError> {
    let mut cx = begin_plain(pool, exchanges, inbound).await?;
    if claim_inbox(&mut cx, inbound).await? {
        Ok(Begun::Fresh(Box::new(cx)))
    } else {
        cx.tx.rollback().await?;
        Ok(Begun::AlreadyProcessed)
    }
}

/// Claims (stage, message id) in the inbox; false when it is already there.
pub async fn claim_inbox(cx: &mut StageTx, inbound: &Inbound) -> Result<bool, StageError> {
    let claimed = sqlx::query(
        "INSERT INTO inbox (stage, message_id, outcome) VALUES ($1, $2, 'applied') ON CONFLICT DO NOTHING",
    )
    .bind(&inbound.stage)
    .bind(&inbound.message_id)
    .execute(&mut *cx.tx)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Commits or rolls back according to the handler's result. Returns the
/// number of outbox rows committed (the relay is woken when non-zero).
pub async fn complete(
    mut cx: StageTx,
    inbound: &Inbound,
    result: &Result<Outcome, StageError>,
) -> Result<usize, StageError> {
    let inbox_outcome = match result {
        Ok(Outcome::Applied) => "applied",
        Ok(Outcome::Stale { .. }) => return complete_stale(cx, inbound).await,
        Ok(Outcome::Exception { .. }) => "exception",
        Ok(Outcome::NotYet { .. }) | Err(_) => {
            cx.tx.rollback().await?;
            return Ok(0);
        }
    };
    if inbox_outcome != "applied" {
        sqlx::query("UPDATE inbox SET outcome = $3 WHERE stage = $1 AND message_id = $2")
            .bind(&inbound.stage)
            .bind(&inbound.message_id)
            .bind(inbox_outcome)
            .execute(&mut *cx.tx)
            .await?;
    }
    let emitted = std::mem::take(&mut cx.emitted);
    outbox::insert(&mut cx.tx, &emitted).await?;
    if inbound.suspect {
        clear_delivery_count(&mut *cx.tx, inbound).await?;
    }
    cx.tx.commit().await?;
    Ok(emitted.len())
}

/// A stale message changes nothing, whatever the handler wrote or buffered
/// before it knew (a row updated ahead of the status check): its transaction
/// rolls back, and only the inbox remembers the message, in a transaction of
/// its own.
async fn complete_stale(cx: StageTx, inbound: &Inbound) -> Result<usize, StageError> {
    let StageTx { tx, pool, .. } = cx;
    tx.rollback().await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO inbox (stage, message_id, outcome) VALUES ($1, $2, 'stale') ON CONFLICT DO NOTHING",
    )
    .bind(&inbound.stage)
    .bind(&inbound.message_id)
    .execute(&mut *tx)
    .await?;
    if inbound.suspect {
        clear_delivery_count(&mut *tx, inbound).await?;
    }
    tx.commit().await?;
    Ok(0)
}

/// Commits a calling stage's intent with what it emitted.
pub async fn commit_plain(mut cx: StageTx) -> Result<usize, StageError> {
    let emitted = std::mem::take(&mut cx.emitted);
    outbox::insert(&mut cx.tx, &emitted).await?;
    cx.tx.commit().await?;
    Ok(emitted.len())
}

/// Forgets a suspect's delivery count once a delivery finished without a crash.
pub async fn clear_delivery_count(
    conn: impl sqlx::PgExecutor<'_>,
    inbound: &Inbound,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM delivery_counts WHERE stage = $1 AND message_id = $2")
        .bind(&inbound.stage)
        .bind(&inbound.message_id)
        .execute(conn)
        .await?;
    Ok(())
}
