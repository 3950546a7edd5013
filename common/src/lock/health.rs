//! Whether Redis answers, and whether some process leases instead: shared
//! by every user of [`super::Locks`] in a process.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{DEGRADED_GAUGE, LockError, PROBE_EVERY};

/// Whether Redis answered last time, and when it was last tried.
#[derive(Debug)]
pub(super) struct RedisHealth {
    pub(super) degraded: AtomicBool,
    started: Instant,
    last_probe_ms: AtomicU64,
    /// When Redis last came back; `u64::MAX` when it never went away.
    recovered_ms: AtomicU64,
    /// This process's id in the lease table's signal rows.
    pub(super) process: uuid::Uuid,
    /// Until when some lease (ours or another process's) was last read live.
    leases_live_until_ms: AtomicU64,
    /// From when this degraded process may lease: `u64::MAX` until its
    /// signal is up and every process has had time to see it.
    fence_ms: AtomicU64,
    /// The first read of the lease table, before this process's first lock.
    pub(super) reader: tokio::sync::OnceCell<()>,
}

impl Default for RedisHealth {
    fn default() -> Self {
        Self {
            degraded: AtomicBool::new(false),
            started: Instant::now(),
            last_probe_ms: AtomicU64::new(0),
            recovered_ms: AtomicU64::new(u64::MAX),
            process: uuid::Uuid::new_v4(),
            leases_live_until_ms: AtomicU64::new(0),
            fence_ms: AtomicU64::new(u64::MAX),
            reader: tokio::sync::OnceCell::new(),
        }
    }
}

impl RedisHealth {
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Degraded and tried less than [`PROBE_EVERY`] ago: go straight to the stand-in.
    pub(super) fn skip_redis(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
            && self.now_ms()
                < self.last_probe_ms.load(Ordering::Relaxed) + PROBE_EVERY.as_millis() as u64
    }

    /// Within `window` of Redis coming back: leases taken while it was away may still be held.
    pub(super) fn recently_recovered(&self, window: Duration) -> bool {
        let recovered = self.recovered_ms.load(Ordering::Relaxed);
        recovered != u64::MAX && self.now_ms() < recovered.saturating_add(window.as_millis() as u64)
    }

    /// Whether a lease may be live somewhere: read live lately, or Redis
    /// came back to this process less than `window` ago.
    pub(super) fn leases_may_be_live(&self, window: Duration) -> bool {
        self.now_ms() < self.leases_live_until_ms.load(Ordering::Relaxed)
            || self.recently_recovered(window)
    }

    /// What the lease table said: the latest live lease runs `for_` longer.
    pub(super) fn leases_live_for(&self, for_: Duration) {
        let until = if for_.is_zero() {
            0
        } else {
            self.now_ms() + for_.as_millis() as u64
        };
        self.leases_live_until_ms.store(until, Ordering::Relaxed);
    }

    /// This process's signal is up: it may lease once `after` has passed.
    pub(super) fn signal_up(&self, after: Duration) {
        let fence = self.now_ms() + after.as_millis() as u64;
        let _ =
            self.fence_ms
                .compare_exchange(u64::MAX, fence, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether this degraded process's fence has passed.
    pub(super) fn may_lease(&self) -> bool {
        self.now_ms() >= self.fence_ms.load(Ordering::Relaxed)
    }

    pub(super) fn redis_answered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.recovered_ms.store(self.now_ms(), Ordering::Relaxed);
            tracing::warn!("Redis answers again: the fleet is no longer degraded");
            metrics::gauge!(DEGRADED_GAUGE).set(0.0);
        }
    }

    /// Records a failure; `true` when it is the one that made the fleet degraded.
    pub(super) fn redis_failed(&self, error: &LockError) -> bool {
        self.last_probe_ms.store(self.now_ms(), Ordering::Relaxed);
        let newly = !self.degraded.swap(true, Ordering::Relaxed);
        if newly {
            // No lease until a new signal is up and seen.
            self.fence_ms.store(u64::MAX, Ordering::Relaxed);
            tracing::warn!(
                %error,
                "Redis does not answer: the fleet is degraded (locks are leases in PostgreSQL, \
                 the risk velocity and the circuit breaker run in their degraded modes)"
            );
            metrics::gauge!(DEGRADED_GAUGE).set(1.0);
        }
        newly
    }
}
