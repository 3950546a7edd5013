//! Locks of a whole batch: taken and released in one pipelined round trip
//! to Redis while it answers and no process leases, one by one otherwise.

use super::{Holding, LockError, LockGuard, Locks, RELEASE, lease, lock_holding};

impl Locks {
    /// [`Locks::try_acquire`] for several keys of one stage: while Redis
    /// answers and no process leases, every `SET NX` goes in one pipelined
    /// round trip; otherwise the keys are taken one by one, as
    /// `try_acquire` takes them. Each lock still guards only its own key:
    /// `None` where another worker holds it.
    pub async fn try_acquire_many(
        &self,
        stage: &str,
        business_keys: &[&str],
    ) -> Result<Vec<Option<LockGuard>>, LockError> {
        if let Some(fallback) = &self.fallback {
            self.read_leases(fallback).await;
        }
        let pipelined = !self.degraded()
            && (self.fallback.is_none() || !self.health.leases_may_be_live(self.ttl));
        if pipelined && business_keys.len() > 1 {
            let mut set = redis::pipe();
            let mut held = Vec::with_capacity(business_keys.len());
            for business_key in business_keys {
                held.push(self.push_set_nx(&mut set, stage, business_key));
            }
            if let Ok(answers) = self.query::<Vec<Option<String>>>(&set).await {
                return Ok(business_keys
                    .iter()
                    .zip(held)
                    .zip(answers)
                    .map(|((business_key, redis), answer)| {
                        answer.map(|_| {
                            self.guard(Holding {
                                stage: stage.to_owned(),
                                business_key: (*business_key).to_owned(),
                                redis: Some(redis),
                                lease: None,
                            })
                        })
                    })
                    .collect());
            }
            // Redis did not answer: one by one, which enters degraded mode.
        }
        let mut guards = Vec::with_capacity(business_keys.len());
        for business_key in business_keys {
            guards.push(self.try_acquire(stage, business_key).await?);
        }
        Ok(guards)
    }

    /// Releases several locks, the Redis ones in one pipelined round trip.
    pub async fn release_many(&self, guards: Vec<LockGuard>) {
        let mut release = redis::pipe();
        let mut in_redis = 0;
        for mut guard in guards {
            if let Some(renewal) = guard.renewal.take() {
                renewal.abort();
            }
            let held = lock_holding(&guard.holding).clone();
            if let Some((key, token)) = &held.redis {
                // EVAL, not EVALSHA: a restarted Redis has no scripts loaded,
                // and a pipeline cannot fall back per command.
                release.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(token);
                in_redis += 1;
            }
            if let (Some(pool), Some(token)) = (&self.fallback, held.lease) {
                lease::release(pool, &held.stage, &held.business_key, token).await;
            }
        }
        if in_redis > 0 {
            if let Err(error) = self.query::<redis::Value>(&release).await {
                tracing::debug!(%error, locks = in_redis, "lock release failed; they expire by themselves");
            }
        }
    }

    /// Adds `SET key token NX PX ttl` for a fresh token to `pipe`; returns
    /// the key and the token.
    pub(super) fn push_set_nx(
        &self,
        pipe: &mut redis::Pipeline,
        stage: &str,
        business_key: &str,
    ) -> (String, String) {
        let key = self.key(stage, business_key);
        let token = uuid::Uuid::new_v4().to_string();
        pipe.cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64);
        (key, token)
    }
}
