//! What a stage implements. A stage decodes its message, names the business
//! key it locks, and does its work inside the transaction the runtime hands
//! it; the runtime does acks, retries, dead letters, locks, the inbox and the
//! outbox.

use std::future::Future;

use lapin::types::FieldTable;
use sqlx::PgPool;

use super::transaction::StageTx;

/// A delivery as a handler sees it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The stage handling it.
    pub stage: String,
    /// AMQP message id; derived from the body's hash when the publisher set none.
    pub message_id: String,
    /// The payment id (AMQP correlation id), when the message carries one.
    pub correlation_id: Option<String>,
    /// AMQP `type` property.
    pub message_type: Option<String>,
    /// Failed handling attempts before this one.
    pub attempt: u32,
    /// Whether the broker flagged this as a redelivery.
    pub redelivered: bool,
    /// Whether this message may have ended a process: a redelivery, or a copy
    /// of one sent round a delay level. Suspects are counted and handled alone.
    pub suspect: bool,
    pub routing_key: String,
    pub headers: FieldTable,
    pub body: Vec<u8>,
}

/// Why a body cannot be read: the message is poison, and goes to its
/// stage's dead-letter queue at once with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    /// Not the JSON of what the stage reads.
    #[error("undecodable {kind} for {stage}: {source}")]
    Json {
        kind: String,
        stage: String,
        #[source]
        source: serde_json::Error,
    },
    /// Larger than the stage reads at all.
    #[error("{kind} body of {bytes} bytes is larger than {setting} ({limit}); not read")]
    TooLarge {
        kind: &'static str,
        bytes: usize,
        setting: &'static str,
        limit: usize,
    },
    /// JSON, but without a field it must carry to be answered at all.
    #[error("{kind} has no usable `{field}`")]
    MissingField { kind: &'static str, field: String },
}

impl Undecodable {
    /// A JSON error on `inbound`, named by its message type (or `fallback`).
    pub fn json(inbound: &Inbound, fallback: &str, source: serde_json::Error) -> Self {
        Undecodable::Json {
            kind: inbound
                .message_type
                .clone()
                .unwrap_or_else(|| fallback.to_owned()),
            stage: inbound.stage.clone(),
            source,
        }
    }
}

/// Decodes a JSON body; the error names the message type, for the dead letter.
pub fn decode_json<T: serde::de::DeserializeOwned>(inbound: &Inbound) -> Result<T, Undecodable> {
    serde_json::from_slice(&inbound.body).map_err(|e| Undecodable::json(inbound, "message", e))
}

/// The result of handling one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Effects and emitted messages committed.
    Applied,
    /// The state is already past this step (a stale duplicate): acked, and
    /// nothing the handler wrote or emitted is committed; the inbox alone
    /// records the message.
    Stale { reason: String },
    /// The message arrived before the state it needs: rolled back, retried.
    NotYet { reason: String },
    /// A conflicting final state: whatever the stage recorded for review is
    /// committed, and the message is acked.
    Exception { reason: String },
}

/// A failure while handling; the class decides where the message goes.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Worth retrying: a service unavailable, a serialization conflict.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help: dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// A deadlock or serialization failure: PostgreSQL aborted the whole
    /// transaction, whatever savepoint was open. Retried like a transient
    /// failure; a batch that meets one is re-run one message at a time.
    #[error("contention: {0}")]
    Contention(String),
    /// A row lock not granted within `lock_timeout` (set on batches): only
    /// the statement failed. A batched message steps out of its batch and
    /// runs alone; otherwise retried like a transient failure.
    #[error("lock wait: {0}")]
    LockWait(String),
}

impl StageError {
    pub fn transient(error: impl std::fmt::Display) -> Self {
        StageError::Transient(error.to_string())
    }
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        StageError::Permanent(error.to_string())
    }
}

impl From<sqlx::Error> for StageError {
    /// Integrity, data, syntax and trigger errors (SQLSTATE classes 22, 23,
    /// 42, P0) will fail the same way again; deadlocks and serialization
    /// failures are contention; everything else (connections, pool
    /// timeouts) is transient.
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            if let Some(code) = db.code() {
                if code == "40P01" || code == "40001" {
                    return StageError::Contention(error.to_string());
                }
                if code == "55P03" {
                    return StageError::LockWait(error.to_string());
                }
                // P0: a check raised by a trigger (an unbalanced journal entry)
                if matches!(&code[..2], "22" | "23" | "42" | "P0") {
                    return StageError::Permanent(error.to_string());
                }
            }
        }
        if matches!(
            error,
            sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::TypeNotFound { .. }
        ) {
            return StageError::Permanent(error.to_string());
        }
        StageError::Transient(error.to_string())
    }
}

/// A stage whose work is one PostgreSQL transaction:
/// decode → guard → effects + outbox rows → commit.
pub trait Stage: Send + Sync + 'static {
    type Message: Send + Sync + 'static;

    /// The stage's name in the topology.
    fn name(&self) -> &str;

    /// Parses the body; an error sends the message to the DLQ at once.
    fn decode(&self, inbound: &Inbound) -> Result<Self::Message, Undecodable>;

    /// The business key two workers must not work on at once (the payment id).
    fn lock_key(&self, message: &Self::Message) -> Option<String>;

    /// Work committed on its own before the stage's transaction begins, so
    /// that neither a rollback nor a retry undoes it (order-validation notes
    /// when it first received a request): for every message of a batch at
    /// once, or for one. Nothing by default.
    fn before_transaction(
        &self,
        _pool: &PgPool,
        _items: &[(&Inbound, &Self::Message)],
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Whether `message` may be handled set-based with others of its batch
    /// ([`Stage::handle_together`]). None by default.
    fn together(&self, _message: &Self::Message) -> bool {
        false
    }

    /// Handles several messages of a batch at once, with a few statements
    /// for all of them instead of a few for each: called once per batch
    /// with the fresh messages [`Stage::together`] admits (their inbox rows
    /// claimed, sorted by lock key), inside a savepoint of their own.
    /// Returns, per message, whether it was applied here (its emitted
    /// messages set with `tx.set_correlation_id` first); one that was not
    /// is handled alone afterwards as usual, so this leaves alone whatever
    /// it does not apply. An error undoes all of it, and every message is
    /// handled alone.
    fn handle_together(
        &self,
        _tx: &mut StageTx,
        items: &[(&Inbound, &Self::Message)],
    ) -> impl Future<Output = Result<Vec<bool>, StageError>> + Send {
        let none = vec![false; items.len()];
        async move { Ok(none) }
    }

    /// Applies the message inside `tx` (a transaction, or a savepoint when the
    /// runtime batches). The inbox row is already claimed; emit the messages
    /// for the next stage with `tx.emit…`.
    fn handle(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &Self::Message,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send;
}

/// What the first transaction of a calling stage decided.
#[derive(Debug)]
pub enum Intent<I> {
    /// The intent is recorded: make the call.
    Call(I),
    /// Nothing to call (already resolved, or not yet possible).
    Finished(Outcome),
}

/// A stage that calls a third party: commit the intent → call outside any
/// transaction → commit the result. No transaction, row lock or pooled
/// connection is held across the call. A call answered inside the process
/// at once (see [`CallingStage::answers_at_once`]) is made inside the
/// intent's transaction instead, and may share a batch.
pub trait CallingStage: Send + Sync + 'static {
    type Message: Send + Sync + 'static;
    type Intent: Send + Sync + 'static;
    type Reply: Send + 'static;

    fn name(&self) -> &str;
    fn decode(&self, inbound: &Inbound) -> Result<Self::Message, Undecodable>;
    fn lock_key(&self, message: &Self::Message) -> Option<String>;

    /// First transaction: record what is about to be sent (e.g. an attempt
    /// as SENDING). Messages emitted here are committed with the intent.
    fn record_intent(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &Self::Message,
    ) -> impl Future<Output = Result<Intent<Self::Intent>, StageError>> + Send;

    /// Whether `intent`'s call is answered inside this process at once
    /// (nobody outside to wait for, nothing to lose in a crash): then the
    /// intent, the call and the result share one transaction.
    fn answers_at_once(&self, _intent: &Self::Intent) -> bool {
        false
    }

    /// Whether `message` is expected to be answered at once, so that it may
    /// share a batch's transaction; one that turns out to need a third
    /// party steps out of the batch and runs alone.
    fn may_batch(&self, _message: &Self::Message) -> bool {
        false
    }

    /// The call, with no transaction open (none but the intent's when it
    /// is answered at once).
    fn call(
        &self,
        message: &Self::Message,
        intent: &Self::Intent,
    ) -> impl Future<Output = Self::Reply> + Send;

    /// Second transaction, with the inbox: record the reply and emit.
    fn record_result(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        message: &Self::Message,
        intent: Self::Intent,
        reply: Self::Reply,
    ) -> impl Future<Output = Result<Outcome, StageError>> + Send;
}
