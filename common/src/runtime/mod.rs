//! The consumer runtime every stage runs on, written once: a stage
//! implements [`Stage`] (or [`CallingStage`]) and returns an [`Outcome`];
//! the runtime does acks, retries through delay queues, dead letters, the
//! crash-loop guard, Redis locks, the inbox, the outbox, spans and metrics.

pub mod batch;
pub mod consumer;
pub mod dead_letter;
pub mod handler;
pub mod handling;
pub mod inbound;
pub mod stage;
pub mod transaction;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;

pub use stage::{
    CallingStage, Inbound, Intent, Outcome, Stage, StageError, Undecodable, decode_json,
};
pub use transaction::StageTx;

use crate::{broker::Publisher, config::Settings, lock::Locks, topology::Topology};

/// What every consumer of one process shares.
pub struct Shared {
    pub settings: Settings,
    pub topology: Topology,
    pub pool: PgPool,
    pub locks: Locks,
    /// The CA of `tls_ca_file`, read once at start, for every TLS client.
    pub extra_ca: crate::tls::ExtraCa,
    /// The publishing connection (separate from every consuming one).
    pub publisher: Publisher,
    /// Starts a relay pass, after a commit that wrote outbox rows without
    /// the handoff.
    pub outbox_wake: Arc<Notify>,
    /// Hands a stage's committed outbox rows to this process's relay.
    pub outbox: crate::outbox::Handoff,
}
