//! The Redis lock per stage and business key: `SET key token NX PX ttl`,
//! renewed while the handler runs, released by compare-and-delete. It only
//! keeps two workers off the same payment at once; PostgreSQL decides what
//! is applied, so a lost lock (Redis flushed or restarted) never doubles an effect.

use std::{sync::Arc, time::Duration};

use deadpool_redis::{Config as PoolConfig, Pool, Runtime};

use crate::tls::ExtraCa;
use redis::Script;
use tokio::task::JoinHandle;

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

/// Takes and releases locks; cheap to clone.
#[derive(Clone)]
pub struct Locks {
    pool: Pool,
    prefix: Arc<str>,
    ttl: Duration,
    renew: Arc<Script>,
    release: Arc<Script>,
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
    key: String,
    token: String,
    renewal: Option<JoinHandle<()>>,
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
        })
    }

    /// The Redis key of a lock (exposed so tests can hold one by hand).
    pub fn key(&self, stage: &str, business_key: &str) -> String {
        format!("{}:lock:{stage}:{business_key}", self.prefix)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `Ok(None)` when another worker holds it.
    pub async fn try_acquire(
        &self,
        stage: &str,
        business_key: &str,
    ) -> Result<Option<LockGuard>, LockError> {
        let key = self.key(stage, business_key);
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut *conn)
            .await
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        if set.is_none() {
            return Ok(None);
        }
        let renewal = tokio::spawn(renew_loop(self.clone(), key.clone(), token.clone()));
        Ok(Some(LockGuard {
            locks: self.clone(),
            key,
            token,
            renewal: Some(renewal),
        }))
    }

    async fn release_token(&self, key: &str, token: &str) {
        let Ok(mut conn) = self.pool.get().await else {
            return;
        };
        let released: Result<i64, _> = self
            .release
            .key(key)
            .arg(token)
            .invoke_async(&mut *conn)
            .await;
        if let Err(error) = released {
            tracing::debug!(%error, key, "lock release failed; it expires by itself");
        }
    }
}

async fn renew_loop(locks: Locks, key: String, token: String) {
    let every = locks.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let Ok(mut conn) = locks.pool.get().await else {
            continue;
        };
        let renewed: Result<i64, _> = locks
            .renew
            .key(&key)
            .arg(&token)
            .arg(locks.ttl.as_millis() as u64)
            .invoke_async(&mut *conn)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                // Lost (expired or Redis flushed): PostgreSQL still guards the effects.
                tracing::warn!(
                    key,
                    "lock lost while working; PostgreSQL guards the effects"
                );
                return;
            }
            Err(error) => tracing::warn!(%error, key, "lock renewal failed"),
        }
    }
}

impl LockGuard {
    pub async fn release(mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        self.locks.release_token(&self.key, &self.token).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
            let locks = self.locks.clone();
            let key = std::mem::take(&mut self.key);
            let token = std::mem::take(&mut self.token);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { locks.release_token(&key, &token).await });
            }
        }
    }
}
