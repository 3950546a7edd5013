//! The stage transaction: the inbox claim, the handler's effects and the
//! outbox rows commit together or not at all.

use std::collections::HashSet;

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::Shared;
use super::stage::{Inbound, Outcome, StageError};
use crate::outbox::{Handoff, OutboxMessage};
use crate::topology::ExchangeNames;

/// The transaction a handler works in, and the messages it emits.
pub struct StageTx {
    tx: Transaction<'static, Postgres>,
    /// For the inbox row of a stale message, written after its effects rolled back.
    pool: PgPool,
    emitted: Vec<OutboxMessage>,
    exchanges: ExchangeNames,
    correlation_id: Option<String>,
    /// Where the outbox rows go once this commits.
    handoff: Handoff,
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
pub async fn begin_plain(shared: &Shared, inbound: &Inbound) -> Result<StageTx, StageError> {
    let mut cx = StageTx::begin(shared).await?;
    cx.correlation_id = inbound.correlation_id.clone();
    Ok(cx)
}

impl StageTx {
    async fn begin(shared: &Shared) -> Result<Self, StageError> {
        Self::begin_with(shared, None).await
    }

    /// Begins with `statement` (a `BEGIN` and what goes with it, in one
    /// round trip) or a plain `BEGIN`.
    async fn begin_with(shared: &Shared, statement: Option<String>) -> Result<Self, StageError> {
        let tx = match statement {
            Some(statement) => shared.pool.begin_with(statement).await?,
            None => shared.pool.begin().await?,
        };
        Ok(Self {
            tx,
            pool: shared.pool.clone(),
            emitted: Vec::new(),
            exchanges: shared.topology.exchanges().clone(),
            correlation_id: None,
            handoff: shared.outbox.clone(),
        })
    }

    /// Writes the emitted messages' outbox rows (one statement), commits and
    /// hands the rows to the relay.
    async fn commit_with(mut self, emitted: Vec<OutboxMessage>) -> Result<(), StageError> {
        let inserted = self.handoff.insert(&mut self.tx, emitted).await?;
        self.tx.commit().await?;
        if !inserted.is_empty() {
            crate::fault::point(crate::fault::AFTER_COMMIT_BEFORE_HANDOFF);
        }
        self.handoff.hand_over(inserted);
        Ok(())
    }
}

/// Begins the transaction and claims the inbox row. A concurrent handler of
/// the same message waits here until the other commits, then sees the row.
pub async fn begin(shared: &Shared, inbound: &Inbound) -> Result<Begun, StageError> {
    let mut cx = begin_plain(shared, inbound).await?;
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

/// Commits or rolls back according to the handler's result, and hands the
/// outbox rows to the relay.
pub async fn complete(
    mut cx: StageTx,
    inbound: &Inbound,
    result: &Result<Outcome, StageError>,
) -> Result<(), StageError> {
    let inbox_outcome = match result {
        Ok(Outcome::Applied) => "applied",
        Ok(Outcome::Stale { .. }) => return complete_stale(cx, inbound).await,
        Ok(Outcome::Exception { .. }) => "exception",
        Ok(Outcome::NotYet { .. }) | Err(_) => {
            cx.tx.rollback().await?;
            return Ok(());
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
    if inbound.suspect {
        clear_delivery_count(&mut *cx.tx, inbound).await?;
    }
    let emitted = std::mem::take(&mut cx.emitted);
    cx.commit_with(emitted).await
}

/// A stale message changes nothing, whatever the handler wrote or buffered
/// before it knew (a row updated ahead of the status check): its transaction
/// rolls back, and only the inbox remembers the message, in a transaction of
/// its own.
async fn complete_stale(cx: StageTx, inbound: &Inbound) -> Result<(), StageError> {
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
    Ok(())
}

/// Commits a calling stage's intent with what it emitted.
pub async fn commit_plain(mut cx: StageTx) -> Result<(), StageError> {
    let emitted = std::mem::take(&mut cx.emitted);
    cx.commit_with(emitted).await
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

/// What a batched message left in its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Its result stands, with the messages it emitted.
    Stands,
    /// It waited too long for a row lock: nothing of it is kept, and it
    /// runs alone once the batch has committed.
    SteppedOut,
}

/// One transaction for a batch of deliveries, each inside its own savepoint:
/// a message whose handler fails, is stale or is not yet due rolls back to
/// its savepoint and takes nothing else with it. The inbox rows of the
/// whole batch are claimed with one statement before the first savepoint,
/// so a message that rolls back gives its claim back explicitly. The
/// emitted messages of every kept message are written with one statement
/// at commit.
///
/// A batch holds every row lock it takes until it commits, so two batches
/// (of one stage or of two) that share rows in different orders could
/// deadlock. With a lock timeout, a message that waits that long for a row
/// lock steps out instead: its savepoint is rolled back (which releases
/// what it locked and ends its wait) and it runs alone after the commit.
pub struct BatchTx {
    cx: StageTx,
    emitted: Vec<OutboxMessage>,
    /// A savepoint is open (released lazily, with the next one's start).
    open: bool,
}

impl BatchTx {
    /// Begins the batch; `lock_timeout`, when set, bounds every row-lock
    /// wait of its statements.
    pub async fn begin(
        shared: &Shared,
        lock_timeout: Option<std::time::Duration>,
    ) -> Result<Self, StageError> {
        // The timeout travels with the BEGIN: one round trip, not two.
        let begin = lock_timeout.map(|timeout| {
            format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                timeout.as_millis().max(1)
            )
        });
        let cx = StageTx::begin_with(shared, begin).await?;
        Ok(Self {
            cx,
            emitted: Vec::new(),
            open: false,
        })
    }

    /// Claims the inbox rows of `stage`'s messages `message_ids` (a batch is
    /// of one stage) with one statement: for each, in order, whether it is
    /// fresh (false: the inbox already holds it, or an earlier delivery of
    /// the batch has the same id). A claim another transaction is writing
    /// waits for it (at most the batch's lock timeout). Rows are inserted in
    /// id order, as two batches sharing ids must not deadlock. An error here
    /// means the batch's transaction is lost.
    pub async fn claim_inboxes(
        &mut self,
        stage: &str,
        message_ids: &[&str],
    ) -> Result<Vec<bool>, StageError> {
        let claimed: Vec<String> = sqlx::query_scalar(
            "INSERT INTO inbox (stage, message_id, outcome) \
             SELECT $1, message_id, 'applied' FROM UNNEST($2::text[]) AS message_id \
             ORDER BY message_id \
             ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .bind(stage)
        .bind(message_ids)
        .fetch_all(&mut *self.cx.tx)
        .await?;
        let mut claimed: HashSet<String> = claimed.into_iter().collect();
        Ok(message_ids.iter().map(|id| claimed.remove(*id)).collect())
    }

    /// Opens the next message's savepoint (its inbox row already claimed by
    /// [`Self::claim_inboxes`]). An error here means the batch's
    /// transaction is lost.
    pub async fn start(&mut self, inbound: &Inbound) -> Result<(), StageError> {
        let savepoint = if self.open {
            "RELEASE SAVEPOINT message; SAVEPOINT message"
        } else {
            "SAVEPOINT message"
        };
        sqlx::Executor::execute(&mut *self.cx.tx, savepoint).await?;
        self.open = true;
        self.cx.correlation_id = inbound.correlation_id.clone();
        self.cx.emitted.clear();
        Ok(())
    }

    /// Opens the savepoint of the batch's set-based work (before any
    /// message's own savepoint).
    pub async fn start_together(&mut self) -> Result<(), StageError> {
        sqlx::Executor::execute(&mut *self.cx.tx, "SAVEPOINT together").await?;
        self.cx.correlation_id = None;
        self.cx.emitted.clear();
        Ok(())
    }

    /// Keeps the set-based work and what it emitted.
    pub fn keep_together(&mut self) {
        self.emitted.append(&mut self.cx.emitted);
    }

    /// Drops the set-based work and what it emitted; its messages are
    /// then handled one by one.
    pub async fn undo_together(&mut self) -> Result<(), StageError> {
        self.cx.emitted.clear();
        sqlx::Executor::execute(&mut *self.cx.tx, "ROLLBACK TO SAVEPOINT together").await?;
        Ok(())
    }

    /// The current message's transaction, for its handler.
    pub fn tx(&mut self) -> &mut StageTx {
        &mut self.cx
    }

    /// Ends the current message according to its handler's result, as
    /// [`complete`] does for a transaction of its own: applied and exception
    /// keep their effects and emitted messages; stale rolls back to the
    /// savepoint and records only the inbox row; not-yet and errors roll
    /// back to the savepoint, as does a lock wait, after which the message
    /// steps out. An error here, or a handler's [`StageError::Contention`],
    /// means the batch is lost.
    pub async fn finish(
        &mut self,
        inbound: &Inbound,
        result: &Result<Outcome, StageError>,
    ) -> Result<Kept, StageError> {
        match result {
            Err(StageError::Contention(reason)) => {
                return Err(StageError::Contention(reason.clone()));
            }
            Err(StageError::LockWait(_)) => {
                self.step_out(inbound).await?;
                return Ok(Kept::SteppedOut);
            }
            Ok(Outcome::Applied) => {}
            Ok(Outcome::Exception { .. }) => {
                sqlx::query(
                    "UPDATE inbox SET outcome = 'exception' WHERE stage = $1 AND message_id = $2",
                )
                .bind(&inbound.stage)
                .bind(&inbound.message_id)
                .execute(&mut *self.cx.tx)
                .await?;
            }
            Ok(Outcome::Stale { .. }) => {
                self.roll_back_message().await?;
                sqlx::query(
                    "UPDATE inbox SET outcome = 'stale' WHERE stage = $1 AND message_id = $2",
                )
                .bind(&inbound.stage)
                .bind(&inbound.message_id)
                .execute(&mut *self.cx.tx)
                .await?;
                return Ok(Kept::Stands);
            }
            Ok(Outcome::NotYet { .. }) | Err(_) => {
                self.roll_back_message().await?;
                self.give_back_claim(inbound).await?;
                return Ok(Kept::Stands);
            }
        }
        self.emitted.append(&mut self.cx.emitted);
        Ok(Kept::Stands)
    }

    /// Undoes the current message (it cannot be handled in a batch): it
    /// runs alone once the batch has committed, its inbox row unclaimed.
    pub async fn step_out(&mut self, inbound: &Inbound) -> Result<(), StageError> {
        self.roll_back_message().await?;
        self.give_back_claim(inbound).await
    }

    /// Drops what the current message did and emitted since its savepoint.
    async fn roll_back_message(&mut self) -> Result<(), StageError> {
        self.cx.emitted.clear();
        sqlx::Executor::execute(&mut *self.cx.tx, "ROLLBACK TO SAVEPOINT message").await?;
        Ok(())
    }

    /// Deletes the batch's claim of a message that kept nothing, so that
    /// its next delivery, or its run alone, is handled.
    async fn give_back_claim(&mut self, inbound: &Inbound) -> Result<(), StageError> {
        sqlx::query("DELETE FROM inbox WHERE stage = $1 AND message_id = $2")
            .bind(&inbound.stage)
            .bind(&inbound.message_id)
            .execute(&mut *self.cx.tx)
            .await?;
        Ok(())
    }

    /// Writes every kept message's outbox rows in one statement and commits.
    pub async fn commit(self) -> Result<(), StageError> {
        self.cx.commit_with(self.emitted).await
    }
}
