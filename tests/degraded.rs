//! Redis goes away in the middle of a load and comes back: the fleet keeps
//! settling on lease rows in PostgreSQL, says it is degraded, applies
//! nothing twice, and returns to Redis by itself.

use std::time::Duration;

use payfleet_common::{lock::DEGRADED_GAUGE, telemetry};
use payfleet_tests::{TestEnv, free_port, services::OwnRedis, wait_until};

/// The degraded gauge as the fleet's own `/metrics` renders it.
fn degraded_gauge() -> Option<f64> {
    telemetry::metrics_handle()
        .render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(&format!("{DEGRADED_GAUGE} "))?
                .trim()
                .parse()
                .ok()
        })
}

async fn settled(env: &TestEnv) -> anyhow::Result<i64> {
    env.scalar_i64("SELECT count(*) FROM payments WHERE status = 'settled'")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_keep_settling_while_redis_is_down_and_nothing_applies_twice() -> anyhow::Result<()>
{
    let mut redis = OwnRedis::start(None).await?;
    let redis_port = redis.port;
    let http_port = free_port();
    let env = TestEnv::with("degraded", |s| {
        s.redis_url = format!("redis://127.0.0.1:{redis_port}/0");
        s.http_addr = format!("127.0.0.1:{http_port}");
    })
    .await?;

    // The demo load, checked at the end: every payment terminal, every
    // invariant holding, the books agreeing with the sandbox's own store
    // (nothing charged or settled twice), one webhook id per payment.
    let load = tokio::spawn(payfleet_workers::demo::carry(
        env.settings.clone(),
        800,
        |_| {},
    ));
    wait_until(
        Duration::from_secs(120),
        "the first payments settled",
        || async { Ok(settled(&env).await? >= 60) },
    )
    .await?;

    redis.stop().await;
    let before_outage = settled(&env).await?;
    wait_until(
        Duration::from_secs(180),
        "payments settling without Redis",
        || async { Ok(settled(&env).await? >= before_outage + 100) },
    )
    .await?;
    assert_eq!(
        degraded_gauge(),
        Some(1.0),
        "the gauge says the fleet is degraded"
    );
    let leases_used = env.scalar_i64("SELECT count(*) FROM lock_leases").await?;
    let during_outage = settled(&env).await? - before_outage;

    redis.start_again().await?;
    wait_until(
        Duration::from_secs(30),
        "the fleet back on Redis",
        || async { Ok(degraded_gauge() == Some(0.0)) },
    )
    .await?;
    let (finished, verdict) = load.await??;
    println!("{}", verdict.summary);
    assert!(finished, "every payment terminal within the deadline");
    assert!(
        verdict.invariants.ok(),
        "invariants: {}",
        verdict.invariants.failures().join("; ")
    );
    assert_eq!(
        verdict.webhook_ids as i64,
        verdict.payments
            + verdict.refunds
            + verdict.withdrawal_events
            + verdict.top_up_events
            + verdict.transfer_events,
        "each payment, refund, withdrawal, top-up and transfer event notified, under one webhook id"
    );

    let unexpected = env.unexpected_dead_letters().await?;
    assert!(
        unexpected.is_empty(),
        "only the demo's deliberate poison is dead-lettered: {unexpected:?}"
    );
    let degraded_challenges = env
        .scalar_i64(
            "SELECT count(*) FROM payments WHERE status = 'challenged'
               AND risk_reasons::text LIKE '%velocity_unavailable%'",
        )
        .await?;
    println!(
        "settled while Redis was down: {during_outage}; lease rows held at that moment: {leases_used}; \
         challenged for want of the velocity: {degraded_challenges}"
    );
    drop(redis);
    env.teardown().await
}

#[tokio::test]
async fn while_redis_is_away_leases_exclude_each_other_and_expire() -> anyhow::Result<()> {
    let env = TestEnv::new("leases").await?;
    let ttl = Duration::from_millis(600);
    // Nothing listens on port 1: every lock is a lease in PostgreSQL.
    let locks = |prefix: &str| {
        payfleet_common::lock::Locks::new("redis://127.0.0.1:1/0", prefix, ttl)
            .map(|l| l.with_fallback(env.pool.clone()))
    };
    let (one, other) = (locks("one")?, locks("other")?);
    // The first lease waits until every process could see that this one
    // leases (payfleet_common::lock::lease): a short fence.
    let mut held = None;
    for _ in 0..40 {
        held = one.try_acquire("settlement", "p-1").await?;
        if held.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held.is_some(), "a free key is leased");
    assert!(one.degraded(), "Redis refused: degraded");
    assert!(
        other.try_acquire("settlement", "p-1").await?.is_none(),
        "a leased key is busy for another process"
    );
    assert!(
        other.try_acquire("fund-freeze", "p-1").await?.is_some(),
        "the same key in another stage is its own lease"
    );
    // renewed while held: still busy well past one TTL
    tokio::time::sleep(ttl * 2).await;
    assert!(other.try_acquire("settlement", "p-1").await?.is_none());
    held.expect("held").release().await;
    let again = other.try_acquire("settlement", "p-1").await?;
    assert!(again.is_some(), "released by compare-and-delete");
    again.expect("held").release().await;
    // a holder that died (no renewal, no release) stops holding at its expiry
    sqlx::query(
        "INSERT INTO lock_leases (stage, business_key, token, expires_at)
         VALUES ('settlement', 'p-1', gen_random_uuid(), now() + interval '300 milliseconds')",
    )
    .execute(&env.pool)
    .await?;
    assert!(one.try_acquire("settlement", "p-1").await?.is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(one.try_acquire("settlement", "p-1").await?.is_some());
    env.teardown().await
}

/// A process with no traffic learns that Redis is back on its own: the
/// degraded state (and its gauge) does not wait for the next lock.
#[tokio::test]
async fn an_idle_process_sees_redis_return_without_taking_a_lock() -> anyhow::Result<()> {
    let env = TestEnv::new("idleprobe").await?;
    let mut redis = OwnRedis::start(None).await?;
    let locks = payfleet_common::lock::Locks::new(
        &format!("redis://127.0.0.1:{}/0", redis.port),
        "idle",
        Duration::from_secs(5),
    )?
    .with_fallback(env.pool.clone());
    redis.stop().await;
    drop(locks.try_acquire("settlement", "p-1").await?);
    assert!(locks.degraded(), "Redis refused: degraded");
    redis.start_again().await?;
    // No call at all from here on: the probe alone must notice.
    tokio::time::sleep(payfleet_common::lock::PROBE_EVERY * 2 + Duration::from_millis(500)).await;
    assert!(
        !locks.degraded(),
        "Redis answers again and nobody had to ask"
    );
    drop(redis);
    env.teardown().await
}

/// Redis is away for one process only (a partition, or the first to
/// notice an outage): the process that still reaches Redis and the one
/// that leases in PostgreSQL never hold the same key at once, whichever
/// took it first.
#[tokio::test]
async fn a_process_cut_off_from_redis_never_shares_a_key_with_one_that_reaches_it()
-> anyhow::Result<()> {
    let env = TestEnv::new("splitlock").await?;
    let ttl = Duration::from_millis(900);
    let locks = |url: &str| {
        payfleet_common::lock::Locks::new(url, &env.name, ttl)
            .map(|l| l.with_fallback(env.pool.clone()))
    };
    let reaching = locks("redis://127.0.0.1:6379/0")?;
    // Nothing listens on port 1: this one sees no Redis at all.
    let cut_off = locks("redis://127.0.0.1:1/0")?;
    let key = ("settlement", "p-1");
    let tries = 12;

    // Held in Redis first: the cut-off process must not lease it.
    let held = reaching.try_acquire(key.0, key.1).await?;
    assert!(held.is_some(), "a free key is locked in Redis");
    for _ in 0..tries {
        assert!(
            cut_off.try_acquire(key.0, key.1).await?.is_none(),
            "the cut-off process leased a key held in Redis"
        );
        tokio::time::sleep(ttl / 3).await;
    }
    assert!(cut_off.degraded(), "Redis refused: degraded");
    held.expect("held").release().await;

    // Released: the cut-off process takes it, as a lease.
    let mut leased = None;
    for _ in 0..60 {
        leased = cut_off.try_acquire(key.0, key.1).await?;
        if leased.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        leased.is_some(),
        "the cut-off process leases the released key"
    );

    // Leased first: the process that reaches Redis must not lock it there.
    for _ in 0..tries {
        assert!(
            reaching.try_acquire(key.0, key.1).await?.is_none(),
            "a key leased in PostgreSQL was locked in Redis too"
        );
        tokio::time::sleep(ttl / 3).await;
    }
    leased.expect("leased").release().await;
    let again = reaching.try_acquire(key.0, key.1).await?;
    assert!(again.is_some(), "free again once the lease is released");
    again.expect("held").release().await;
    env.teardown().await
}
