//! Whether Redis answers: shared by every user of [`super::Locks`] in a process.

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
}

impl Default for RedisHealth {
    fn default() -> Self {
        Self {
            degraded: AtomicBool::new(false),
            started: Instant::now(),
            last_probe_ms: AtomicU64::new(0),
            recovered_ms: AtomicU64::new(u64::MAX),
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
