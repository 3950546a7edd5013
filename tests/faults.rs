//! Faults of the services themselves while a stream is in flight: the broker
//! dropping every connection, and Redis losing every lock.

use std::time::Duration;

use payfleet_tests::{Behaviour, TestEnv, transfer, wait_until};

const WAIT: Duration = Duration::from_secs(60);

async fn receipted(env: &TestEnv) -> anyhow::Result<i64> {
    env.scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_dropping_connections_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new("dropconn").await?;
    env.add_account("acct").await?;
    for i in 0..300 {
        let mut t = transfer("acct", "0.01");
        t.behaviour = Behaviour {
            slow_ms: 5,
            ..Behaviour::default()
        };
        env.publish_transfer(&t, &format!("t-{i}")).await?;
    }
    let fleet = env.start_fleet().await?;
    let mut drops = 0;
    for threshold in [60, 160] {
        wait_until(WAIT, "progress before dropping connections", || async {
            Ok(receipted(&env).await? >= threshold)
        })
        .await?;
        let closed = env.close_broker_connections().await?;
        assert!(
            closed >= 2,
            "consumer and publisher connections were dropped ({closed})"
        );
        drops += 1;
    }
    wait_until(WAIT, "all 300 transfers after reconnecting", || async {
        Ok(receipted(&env).await? == 300)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    assert_eq!(drops, 2);
    assert_eq!(env.assert_quiet_invariants().await?, 300);
    assert!(env.dead_letters().await?.is_empty());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_while_messages_are_in_flight_doubles_nothing() -> anyhow::Result<()> {
    // Its own Redis database, so flushing it touches no other test.
    let env = TestEnv::with("flush", |s| {
        s.redis_url = "redis://127.0.0.1:6379/15".into()
    })
    .await?;
    env.add_account("acct").await?;
    // Each transfer published twice with the same id, slow enough to overlap.
    for i in 0..150 {
        let mut t = transfer("acct", "1.00");
        t.behaviour = Behaviour {
            slow_ms: 15,
            ..Behaviour::default()
        };
        env.publish_transfer(&t, &format!("t-{i}")).await?;
        env.publish_transfer(&t, &format!("t-{i}")).await?;
    }
    let first = env.start_fleet().await?;
    let second = env.start_fleet().await?;
    let client = redis::Client::open(env.settings.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let mut flushes = 0;
    while receipted(&env).await? < 150 && flushes < 400 {
        let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await?;
        flushes += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_until(WAIT, "all 150 transfers", || async {
        Ok(receipted(&env).await? == 150)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    first.stop().await;
    second.stop().await;
    assert!(
        flushes >= 5,
        "Redis was flushed while work was in flight ({flushes})"
    );
    assert_eq!(env.assert_quiet_invariants().await?, 150);
    env.teardown().await
}
