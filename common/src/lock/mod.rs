//! The Redis lock per stage and business key: `SET key token NX PX ttl`,
//! renewed while the handler runs, released by compare-and-delete. It only
//! keeps two workers off the same payment at once; PostgreSQL decides what
//! is applied, so a lost lock (Redis flushed or restarted) never doubles an effect.
//!
//! When Redis is unreachable or does not answer within
//! [`REDIS_ANSWER_WITHIN`], the process is *degraded*, not stopped: a lease
//! row in PostgreSQL stands in for the lock ([`lease`]), and processes that
//! still reach Redis lease too while any lease is live, so the two kinds of
//! lock never let two processes hold one key. While degraded, Redis is tried
//! again every [`PROBE_EVERY`] (other calls fail fast) and used as soon as it
//! answers. Other users of Redis (the risk velocity, the circuit breaker) go
//! through [`Locks::query`] and share this state.

use std::{
    sync::{Arc, Mutex, Weak, atomic::Ordering},
    time::Duration,
};

use sqlx::PgPool;

use deadpool_redis::{Config as PoolConfig, Pool, Runtime};

use crate::tls::ExtraCa;
use redis::Script;
use tokio::task::JoinHandle;

mod health;
pub mod lease;
mod many;
use health::RedisHealth;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("redis_url: {0}")]
    Config(String),
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// How often a degraded fleet tries Redis again.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A Redis call (connection included) that takes longer counts as Redis not answering.
pub const REDIS_ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The gauge that says Redis is not answering (1: locks are leases in
/// PostgreSQL, velocity and breaker in their degraded modes) or is (0).
pub const DEGRADED_GAUGE: &str = "payfleet_redis_degraded";

/// Takes and releases locks; cheap to clone.
#[derive(Clone)]
pub struct Locks {
    pool: Pool,
    prefix: Arc<str>,
    ttl: Duration,
    renew: Arc<Script>,
    release: Arc<Script>,
    fallback: Option<PgPool>,
    health: Arc<RedisHealth>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A held lock. Dropping it stops renewal and releases it in the background;
/// [`LockGuard::release`] releases it and waits.
pub struct LockGuard {
    locks: Locks,
    holding: Arc<Mutex<Holding>>,
    renewal: Option<JoinHandle<()>>,
}

/// Where a lock is held: in Redis, as a lease row, or both (while some
/// process leases).
#[derive(Clone, Debug)]
struct Holding {
    stage: String,
    business_key: String,
    /// The Redis key and our token in it.
    redis: Option<(String, String)>,
    /// Our lease row's token.
    lease: Option<uuid::Uuid>,
}

impl Locks {
    pub fn new(redis_url: &str, prefix: &str, ttl: Duration) -> Result<Self, LockError> {
        Self::with_extra_ca(redis_url, prefix, ttl, &ExtraCa::default())
    }

    /// [`Locks::new`] for a `rediss://` Redis whose certificate comes from
    /// the CA of `tls_ca_file`. The Redis client takes one trust store, so
    /// when that CA is set it replaces the platform's roots for Redis.
    pub fn with_extra_ca(
        redis_url: &str,
        prefix: &str,
        ttl: Duration,
        extra_ca: &ExtraCa,
    ) -> Result<Self, LockError> {
        crate::tls::install_crypto_provider();
        let pool = match extra_ca.pem() {
            Some(pem) if redis_url.starts_with("rediss://") => {
                let client = redis::Client::build_with_tls(
                    redis_url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.as_bytes().to_vec()),
                    },
                )
                .map_err(|e| LockError::Config(e.to_string()))?;
                // The manager keeps the TLS parameters of the connection
                // info (deadpool's own Config would drop them).
                let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
                    .map_err(|e| LockError::Config(e.to_string()))?;
                Pool::builder(manager)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| LockError::Config(e.to_string()))?
            }
            _ => PoolConfig::from_url(redis_url)
                .create_pool(Some(Runtime::Tokio1))
                .map_err(|e| LockError::Config(e.to_string()))?,
        };
        Ok(Self {
            pool,
            prefix: prefix.into(),
            ttl,
            renew: Arc::new(Script::new(RENEW)),
            release: Arc::new(Script::new(RELEASE)),
            fallback: None,
            health: Arc::default(),
        })
    }

    /// Leases in this database stand in for the lock while Redis is unreachable.
    pub fn with_fallback(mut self, pool: PgPool) -> Self {
        metrics::gauge!(DEGRADED_GAUGE).set(0.0);
        self.fallback = Some(pool);
        self
    }

    /// True while locks are leases in PostgreSQL because Redis did not answer.
    pub fn degraded(&self) -> bool {
        self.health.degraded.load(Ordering::Relaxed)
    }

    /// The Redis key of a lock (exposed so tests can hold one by hand).
    pub fn key(&self, stage: &str, business_key: &str) -> String {
        format!("{}:lock:{stage}:{business_key}", self.prefix)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `pipe` on Redis within [`REDIS_ANSWER_WITHIN`]. While Redis is
    /// known not to answer and no probe is due, fails at once; every outcome
    /// updates the shared degraded state.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, LockError> {
        self.redis(async |conn| pipe.query_async(conn).await).await
    }

    async fn redis<T>(
        &self,
        call: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, LockError> {
        if self.health.skip_redis() {
            return Err(LockError::Unavailable(
                "not answering (the fleet is degraded; it is tried again shortly)".into(),
            ));
        }
        let answer = self.timed(call).await;
        match &answer {
            Ok(_) => self.health.redis_answered(),
            Err(error) => {
                if self.health.redis_failed(error) {
                    // A process with no traffic must still see Redis return.
                    tokio::spawn(probe_until_answered(self.clone()));
                }
            }
        }
        answer
    }

    /// One Redis call (connection included) within [`REDIS_ANSWER_WITHIN`].
    async fn timed<T>(
        &self,
        call: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, LockError> {
        tokio::time::timeout(REDIS_ANSWER_WITHIN, async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| LockError::Unavailable(e.to_string()))?;
            call(&mut conn)
                .await
                .map_err(|e| LockError::Unavailable(e.to_string()))
        })
        .await
        .unwrap_or_else(|_| {
            Err(LockError::Unavailable(format!(
                "no answer within {} ms",
                REDIS_ANSWER_WITHIN.as_millis()
            )))
        })
    }

    /// `Ok(None)` when another worker holds it.
    pub async fn try_acquire(
        &self,
        stage: &str,
        business_key: &str,
    ) -> Result<Option<LockGuard>, LockError> {
        let mut holding = Holding {
            stage: stage.to_owned(),
            business_key: business_key.to_owned(),
            redis: None,
            lease: None,
        };
        let Some(fallback) = &self.fallback else {
            holding.redis = self.try_redis(stage, business_key).await?;
            return Ok(holding.redis.is_some().then(|| self.guard(holding)));
        };
        self.read_leases(fallback).await;
        match self.try_redis(stage, business_key).await {
            Ok(None) => Ok(None),
            Ok(Some(redis)) => {
                holding.redis = Some(redis);
                if self.health.leases_may_be_live(self.ttl) {
                    // Some process may lease: the key must be free there too.
                    match lease::take(fallback, stage, business_key, self.ttl).await {
                        Ok(Some(token)) => holding.lease = Some(token),
                        taken_or_failed => {
                            self.release_holding(&holding).await;
                            return taken_or_failed.map(|_| None);
                        }
                    }
                }
                Ok(Some(self.guard(holding)))
            }
            Err(error) => {
                // Just degraded: wait (holding the delivery, so that nothing
                // is reordered) until every process can have seen our signal.
                if !self.fenced().await {
                    return Err(error);
                }
                holding.lease = lease::take(fallback, stage, business_key, self.ttl).await?;
                Ok(holding.lease.is_some().then(|| self.guard(holding)))
            }
        }
    }

    /// Waits until this degraded process may lease; false when its signal
    /// could not be put up in time.
    async fn fenced(&self) -> bool {
        let give_up = tokio::time::Instant::now() + self.fence() + REDIS_ANSWER_WITHIN;
        while !self.health.may_lease() {
            if tokio::time::Instant::now() > give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// How long a degraded process waits before its first lease: one read
    /// of the lease table by every process, one renewal of every lock they
    /// hold, and a margin.
    fn fence(&self) -> Duration {
        lease::READ_EVERY + self.ttl / 3 + Duration::from_millis(250)
    }

    /// Reads the lease table once before this process's first lock, then
    /// every [`lease::READ_EVERY`] in the background.
    async fn read_leases(&self, pool: &PgPool) {
        self.health
            .reader
            .get_or_init(|| async {
                if let Ok(live) = lease::live_for(pool, true).await {
                    self.health.leases_live_for(live);
                }
                tokio::spawn(keep_reading_leases(
                    Arc::downgrade(&self.health),
                    pool.clone(),
                ));
            })
            .await;
    }

    /// Our Redis key and token, or `None` when another worker holds it.
    async fn try_redis(
        &self,
        stage: &str,
        business_key: &str,
    ) -> Result<Option<(String, String)>, LockError> {
        let mut set = redis::pipe();
        let (key, token) = self.push_set_nx(&mut set, stage, business_key);
        let (set,): (Option<String>,) = self.query(&set).await?;
        Ok(set.map(|_| (key, token)))
    }

    fn guard(&self, holding: Holding) -> LockGuard {
        let holding = Arc::new(Mutex::new(holding));
        let renewal = tokio::spawn(renew_loop(self.clone(), holding.clone()));
        LockGuard {
            locks: self.clone(),
            holding,
            renewal: Some(renewal),
        }
    }

    /// Extends a held lock; `Ok(false)` when it was lost. A Redis lock taken
    /// before some process began to lease is leased too, here.
    async fn renew(&self, holding: &Mutex<Holding>) -> Result<bool, LockError> {
        let held = lock_holding(holding).clone();
        if let (Some(pool), None) = (&self.fallback, held.lease)
            && self.health.leases_may_be_live(self.ttl)
        {
            let taken = lease::take(pool, &held.stage, &held.business_key, self.ttl).await?;
            match taken {
                Some(token) => lock_holding(holding).lease = Some(token),
                None => tracing::warn!(
                    ?held,
                    "another process leases a key held here in Redis; PostgreSQL guards the effects"
                ),
            }
        }
        let mut kept = true;
        if let Some((key, token)) = &held.redis {
            let renewed: i64 = self
                .redis(async |conn| {
                    self.renew
                        .key(key)
                        .arg(token)
                        .arg(self.ttl.as_millis() as u64)
                        .invoke_async(conn)
                        .await
                })
                .await?;
            kept &= renewed == 1;
        }
        let lease_token = lock_holding(holding).lease;
        if let (Some(pool), Some(token)) = (&self.fallback, lease_token) {
            kept &= lease::renew(pool, &held.stage, &held.business_key, token, self.ttl).await?;
            if held.redis.is_none() {
                // Held instead of a Redis lock: others must keep leasing too.
                lease::signal(pool, self.health.process, self.signal_lasts()).await?;
            }
        }
        Ok(kept)
    }

    async fn release_holding(&self, held: &Holding) {
        if let Some((key, token)) = &held.redis {
            let released: Result<i64, _> = self
                .redis(async |conn| self.release.key(key).arg(token).invoke_async(conn).await)
                .await;
            if let Err(error) = released {
                tracing::debug!(%error, key, "lock release failed; it expires by itself");
            }
        }
        if let (Some(pool), Some(token)) = (&self.fallback, held.lease) {
            lease::release(pool, &held.stage, &held.business_key, token).await;
        }
    }
}

fn lock_holding(holding: &Mutex<Holding>) -> std::sync::MutexGuard<'_, Holding> {
    holding
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Locks {
    /// How long a signal lasts: past its next refresh (a probe, or a
    /// renewal of a lease held instead of a Redis lock), with a margin.
    fn signal_lasts(&self) -> Duration {
        (2 * PROBE_EVERY + REDIS_ANSWER_WITHIN).max(self.ttl)
    }
}

/// While degraded: keeps this process's signal up, and asks Redis every
/// [`PROBE_EVERY`] until it answers, so the degraded state (and its gauge)
/// clears without waiting for the next lock.
async fn probe_until_answered(locks: Locks) {
    let fence = locks.fence();
    while locks.degraded() {
        if let Some(pool) = &locks.fallback {
            match lease::signal(pool, locks.health.process, locks.signal_lasts()).await {
                Ok(()) => locks.health.signal_up(fence),
                Err(error) => tracing::warn!(%error, "cannot signal that this process leases"),
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
        let ping = locks
            .timed(async |conn| redis::cmd("PING").query_async::<String>(conn).await)
            .await;
        match ping {
            Ok(_) => locks.health.redis_answered(),
            Err(error) => {
                locks.health.redis_failed(&error);
            }
        }
    }
}

/// Reads every [`lease::READ_EVERY`] whether any lease is live, for as long
/// as this process's locks exist; sweeps long-expired rows now and then.
async fn keep_reading_leases(health: Weak<RedisHealth>, pool: PgPool) {
    for read in 1_u64.. {
        tokio::time::sleep(lease::READ_EVERY).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        match lease::live_for(&pool, read % 120 == 0).await {
            Ok(live) => health.leases_live_for(live),
            Err(error) => tracing::debug!(%error, "cannot read the lease table"),
        }
    }
}

async fn renew_loop(locks: Locks, holding: Arc<Mutex<Holding>>) {
    let every = locks.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        match locks.renew(&holding).await {
            Ok(true) => {}
            Ok(false) => {
                // Lost (expired or Redis flushed): PostgreSQL still guards the effects.
                let held = lock_holding(&holding).clone();
                tracing::warn!(
                    ?held,
                    "lock lost while working; PostgreSQL guards the effects"
                );
                return;
            }
            Err(error) => {
                let held = lock_holding(&holding).clone();
                tracing::warn!(%error, ?held, "lock renewal failed");
            }
        }
    }
}

impl LockGuard {
    pub async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let held = lock_holding(&self.holding).clone();
        self.locks.release_holding(&held).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
            let locks = self.locks.clone();
            let held = lock_holding(&self.holding).clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { locks.release_holding(&held).await });
            }
        }
    }
}
