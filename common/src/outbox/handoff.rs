//! The handoff: a stage's outbox rows are inserted already claimed by its
//! own process's relay (for the relay's lease) and handed to it in memory
//! once they commit, so the relay publishes them at once without claiming
//! or reading them back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::PgConnection;
use tokio::sync::{Notify, mpsc};

use super::{OutboxMessage, Row, insert_rows};

/// Rows handed over and not yet taken by the relay, at most: beyond, rows
/// are written for a pass instead, so a stalled broker (a memory alarm
/// blocks publishers) cannot pile bodies up in memory.
const MOST_HANDED_ROWS: usize = 16_384;

/// One commit's rows, and until when they are the relay's alone.
#[derive(Debug)]
pub(super) struct Handed {
    rows: Vec<Row>,
    lease_ends: Instant,
}

/// A committed transaction's rows on their way to the relay.
#[derive(Debug)]
pub struct HandedRows {
    pub(super) receiver: mpsc::UnboundedReceiver<Handed>,
    queued: Arc<AtomicUsize>,
}

impl HandedRows {
    /// What was handed over next (waiting for it).
    pub(super) async fn recv(&mut self) -> Option<Handed> {
        let handed = self.receiver.recv().await?;
        self.queued.fetch_sub(handed.rows.len(), Ordering::Relaxed);
        Some(handed)
    }

    /// What was handed over next, if anything is waiting.
    fn try_recv(&mut self) -> Option<Handed> {
        let handed = self.receiver.try_recv().ok()?;
        self.queued.fetch_sub(handed.rows.len(), Ordering::Relaxed);
        Some(handed)
    }

    /// `first` and what else is waiting, up to about `batch_size` rows;
    /// rows whose lease has ended are left to a pass (another relay may
    /// have claimed them).
    pub(super) fn take(&mut self, first: Handed, batch_size: u32) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut next = Some(first);
        while let Some(handed) = next {
            if handed.lease_ends > Instant::now() {
                rows.extend(handed.rows);
            }
            if rows.len() >= batch_size as usize {
                break;
            }
            next = self.try_recv();
        }
        rows
    }
}

/// Where a committing transaction's outbox rows go: to this process's relay
/// in memory when it runs one, otherwise to the table alone (any relay's
/// pass takes them).
#[derive(Debug, Clone)]
pub struct Handoff {
    sender: mpsc::UnboundedSender<Handed>,
    queued: Arc<AtomicUsize>,
    /// How long rows handed over are the relay's alone.
    lease: Duration,
    wake: Arc<Notify>,
}

/// Rows inserted in a transaction not yet committed.
#[derive(Debug)]
#[must_use = "hand the rows over once the transaction commits"]
pub struct Inserted {
    rows: Vec<Row>,
    /// Until when they are this relay's, when claimed for it.
    lease_ends: Option<Instant>,
}

impl Inserted {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Handoff {
    /// A handoff to the relay that reads the receiver; `wake` starts a pass
    /// of it for rows written without a handoff.
    pub fn new(lease: Duration, wake: Arc<Notify>) -> (Self, HandedRows) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Self {
                sender,
                queued: queued.clone(),
                lease,
                wake,
            },
            HandedRows { receiver, queued },
        )
    }

    /// Inserts the messages in the caller's transaction (one statement),
    /// claimed by this process's relay while it runs and has room.
    pub async fn insert(
        &self,
        conn: &mut PgConnection,
        messages: Vec<OutboxMessage>,
    ) -> Result<Inserted, sqlx::Error> {
        let claim = !self.sender.is_closed()
            && self.queued.load(Ordering::Relaxed) + messages.len() <= MOST_HANDED_ROWS;
        let lease = claim.then_some(self.lease);
        // Taken before the insert, the deadline is never later than the row's.
        let lease_ends = lease.map(|lease| Instant::now() + lease);
        let rows = insert_rows(conn, messages, lease).await?;
        Ok(Inserted { rows, lease_ends })
    }

    /// After the commit: the relay publishes the rows now.
    pub fn hand_over(&self, inserted: Inserted) {
        if inserted.rows.is_empty() {
            return;
        }
        let handed = match inserted.lease_ends {
            Some(lease_ends) => {
                let count = inserted.rows.len();
                self.queued.fetch_add(count, Ordering::Relaxed);
                let sent = self.sender.send(Handed {
                    rows: inserted.rows,
                    lease_ends,
                });
                if sent.is_err() {
                    self.queued.fetch_sub(count, Ordering::Relaxed);
                }
                sent.is_ok()
            }
            None => false,
        };
        // Unclaimed, or the relay is gone: the next pass takes them (a
        // claimed row once its lease ends).
        if !handed {
            self.wake.notify_one();
        }
    }
}
