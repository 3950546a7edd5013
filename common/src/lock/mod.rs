//! The Redis lock per stage and business key: `SET key token NX PX ttl`,
//! renewed while the handler runs, released by compare-and-delete. It only
//! keeps two workers off the same payment at once; PostgreSQL decides what
//! is applied, so a lost lock (Redis flushed or restarted) never doubles an effect.
//!
//! When Redis is unreachable or does not answer within
//! [`REDIS_ANSWER_WITHIN`], the fleet is *degraded*, not stopped: a lease
//! row in PostgreSQL (`lock_leases`) stands in for the lock, taken and
//! released by compare-and-set, so no pooled connection is held across the
//! handler. While degraded, Redis is tried again every [`PROBE_EVERY`] (other
//! calls fail fast) and used as soon as it answers; for one lock TTL after
//! that, a key whose lease is still live counts as held, so a handler that
//! took its lease while Redis was away is not joined by one that took the
//! Redis lock. Other users of Redis (the risk velocity, the circuit
//! breaker) go through [`Locks::query`] and share this state.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use sqlx::PgPool;

use deadpool_redis::{Config as PoolConfig, Pool, Runtime};

use crate::tls::ExtraCa;
use redis::Script;
use tokio::task::JoinHandle;

mod health;
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
    held: Held,
    renewal: Option<JoinHandle<()>>,
}

/// Where a lock is held: a Redis key, or a lease row while degraded.
#[derive(Clone, Debug)]
enum Held {
    Redis {
        key: String,
        token: String,
    },
    Lease {
        stage: String,
        business_key: String,
        token: uuid::Uuid,
    },
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
        let Some(fallback) = &self.fallback else {
            return self.try_redis(stage, business_key).await;
        };
        match self.try_redis(stage, business_key).await {
            Ok(Some(guard)) if self.health.recently_recovered(self.ttl) => {
                if self.lease_live(fallback, stage, business_key).await? {
                    guard.release().await;
                    return Ok(None);
                }
                Ok(Some(guard))
            }
            Ok(guard) => Ok(guard),
            Err(_) => self.try_lease(fallback, stage, business_key).await,
        }
    }

    async fn try_redis(
        &self,
        stage: &str,
        business_key: &str,
    ) -> Result<Option<LockGuard>, LockError> {
        let key = self.key(stage, business_key);
        let token = uuid::Uuid::new_v4().to_string();
        let mut set = redis::pipe();
        set.cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64);
        let (set,): (Option<String>,) = self.query(&set).await?;
        if set.is_none() {
            return Ok(None);
        }
        Ok(Some(self.guard(Held::Redis { key, token })))
    }

    /// Whether a lease taken while Redis was away still holds this key.
    async fn lease_live(
        &self,
        pool: &PgPool,
        stage: &str,
        business_key: &str,
    ) -> Result<bool, LockError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM lock_leases
                             WHERE stage = $1 AND business_key = $2 AND expires_at > now())",
        )
        .bind(stage)
        .bind(business_key)
        .fetch_one(pool)
        .await
        .map_err(|e| LockError::Unavailable(format!("the lease table: {e}")))
    }

    /// The stand-in: a lease row taken when free or expired.
    async fn try_lease(
        &self,
        pool: &PgPool,
        stage: &str,
        business_key: &str,
    ) -> Result<Option<LockGuard>, LockError> {
        let token = uuid::Uuid::new_v4();
        let taken: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO lock_leases (stage, business_key, token, expires_at)
             VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
             ON CONFLICT (stage, business_key) DO UPDATE
                SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
              WHERE lock_leases.expires_at < now()
             RETURNING token",
        )
        .bind(stage)
        .bind(business_key)
        .bind(token)
        .bind(self.ttl.as_millis() as i64)
        .fetch_optional(pool)
        .await
        .map_err(|e| LockError::Unavailable(format!("Redis and the lease table: {e}")))?;
        Ok(taken.map(|token| {
            self.guard(Held::Lease {
                stage: stage.to_owned(),
                business_key: business_key.to_owned(),
                token,
            })
        }))
    }

    fn guard(&self, held: Held) -> LockGuard {
        let renewal = tokio::spawn(renew_loop(self.clone(), held.clone()));
        LockGuard {
            locks: self.clone(),
            held,
            renewal: Some(renewal),
        }
    }

    /// Extends a held lock; `Ok(false)` when it was lost.
    async fn renew(&self, held: &Held) -> Result<bool, String> {
        match held {
            Held::Redis { key, token } => {
                let renewed: i64 = self
                    .redis(async |conn| {
                        self.renew
                            .key(key)
                            .arg(token)
                            .arg(self.ttl.as_millis() as u64)
                            .invoke_async(conn)
                            .await
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(renewed == 1)
            }
            Held::Lease {
                stage,
                business_key,
                token,
            } => {
                let Some(pool) = &self.fallback else {
                    return Ok(false);
                };
                let renewed = sqlx::query(
                    "UPDATE lock_leases SET expires_at = now() + $4 * interval '1 millisecond'
                     WHERE stage = $1 AND business_key = $2 AND token = $3",
                )
                .bind(stage)
                .bind(business_key)
                .bind(token)
                .bind(self.ttl.as_millis() as i64)
                .execute(pool)
                .await
                .map_err(|e| e.to_string())?;
                Ok(renewed.rows_affected() == 1)
            }
        }
    }

    async fn release_held(&self, held: &Held) {
        match held {
            Held::Redis { key, token } => self.release_token(key, token).await,
            Held::Lease {
                stage,
                business_key,
                token,
            } => {
                if let Some(pool) = &self.fallback {
                    let released = sqlx::query(
                        "DELETE FROM lock_leases WHERE stage = $1 AND business_key = $2 AND token = $3",
                    )
                    .bind(stage)
                    .bind(business_key)
                    .bind(token)
                    .execute(pool)
                    .await;
                    if let Err(error) = released {
                        tracing::debug!(%error, stage, business_key, "lease release failed; it expires by itself");
                    }
                }
            }
        }
    }

    async fn release_token(&self, key: &str, token: &str) {
        let released: Result<i64, _> = self
            .redis(async |conn| self.release.key(key).arg(token).invoke_async(conn).await)
            .await;
        if let Err(error) = released {
            tracing::debug!(%error, key, "lock release failed; it expires by itself");
        }
    }
}

/// While degraded, asks Redis every [`PROBE_EVERY`] until it answers, so the
/// degraded state (and its gauge) clears without waiting for the next lock.
async fn probe_until_answered(locks: Locks) {
    while locks.degraded() {
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

async fn renew_loop(locks: Locks, held: Held) {
    let every = locks.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        match locks.renew(&held).await {
            Ok(true) => {}
            Ok(false) => {
                // Lost (expired or Redis flushed): PostgreSQL still guards the effects.
                tracing::warn!(
                    ?held,
                    "lock lost while working; PostgreSQL guards the effects"
                );
                return;
            }
            Err(error) => tracing::warn!(%error, ?held, "lock renewal failed"),
        }
    }
}

impl LockGuard {
    pub async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        self.locks.release_held(&self.held).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
            let locks = self.locks.clone();
            let held = self.held.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { locks.release_held(&held).await });
            }
        }
    }
}
