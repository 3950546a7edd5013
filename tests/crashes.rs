//! Real crashes of a worker process (the probe worker): aborts inside a
//! handler, kills placed precisely by fault injection, SIGKILL and SIGTERM in
//! the middle of a stream. After each, a restart finishes the work and
//! nothing is lost or applied twice.

use std::time::{Duration, Instant};

use payfleet_common::{Topology, fault};
use payfleet_tests::{Behaviour, TRANSFER_STAGE, TestEnv, Worker, transfer, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_probe-worker");
const WAIT: Duration = Duration::from_secs(60);

async fn receipted(env: &TestEnv) -> anyhow::Result<i64> {
    env.scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
        .await
}

async fn publish_transfers(
    env: &TestEnv,
    count: usize,
    behaviour: Behaviour,
) -> anyhow::Result<()> {
    for i in 0..count {
        let mut t = transfer("acct", "1.00");
        t.behaviour = behaviour.clone();
        env.publish_transfer(&t, &format!("t-{i}")).await?;
    }
    Ok(())
}

/// Waits for a worker that is expected to abort itself.
async fn expect_abort(mut worker: Worker) -> anyhow::Result<()> {
    let status = worker.wait_exit(WAIT).await?;
    assert!(
        !status.success(),
        "the worker was expected to abort, it exited with {status}"
    );
    Ok(())
}

/// Runs a fault-free worker until `done`, then stops it with SIGTERM.
async fn finish_with_fresh_worker(env: &TestEnv, what: &str, done: i64) -> anyhow::Result<()> {
    let mut worker = env.spawn_worker(WORKER, &[])?;
    wait_until(WAIT, what, || async { Ok(receipted(env).await? == done) }).await?;
    env.wait_drained(WAIT).await?;
    worker.terminate()?;
    assert!(worker.wait_exit(Duration::from_secs(15)).await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_process_is_dead_lettered_as_crash_loop() -> anyhow::Result<()> {
    let env = TestEnv::with("crashloop", |s| s.crash_loop_limit = 3).await?;
    env.add_account("acct").await?;
    publish_transfers(&env, 5, Behaviour::default()).await?;
    let mut killer = transfer("acct", "9.99");
    killer.behaviour = Behaviour {
        abort: true,
        ..Behaviour::default()
    };
    env.publish_transfer(&killer, "killer").await?;
    for i in 0..5 {
        env.publish_transfer(&transfer("acct", "1.00"), &format!("after-{i}"))
            .await?;
    }

    // A supervisor: restart the worker whenever it dies, as systemd or Kubernetes would.
    let deadline = Instant::now() + WAIT;
    let mut restarts = 0;
    let mut worker = env.spawn_worker(WORKER, &[])?;
    loop {
        let dead_lettered = env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE error_kind = 'crash-loop'")
            .await?;
        if dead_lettered == 1 && receipted(&env).await? == 10 {
            break;
        }
        if let Ok(Some(_)) = worker.child.try_wait() {
            restarts += 1;
            assert!(restarts <= 10, "the worker keeps dying");
            worker = env.spawn_worker(WORKER, &[])?;
        }
        assert!(Instant::now() < deadline, "the crash loop was not broken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_drained(WAIT).await?;
    worker.terminate()?;
    assert!(worker.wait_exit(Duration::from_secs(15)).await?.success());

    assert_eq!(restarts, 3, "one death per delivery up to crash_loop_limit");
    let letters = env.dead_letters().await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, "killer");
    assert_eq!(letters[0].error_kind, "crash-loop");
    assert_eq!(letters[0].body, serde_json::to_vec(&killer)?);
    let handled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM probe_attempts WHERE transfer_id = $1")
            .bind(killer.transfer_id)
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(
        handled, 3,
        "handled on each of its 3 deliveries, then dead-lettered unhandled"
    );
    assert_eq!(
        env.assert_quiet_invariants().await?,
        10,
        "the other messages flowed"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM delivery_counts")
            .await?,
        0,
        "counts cleared"
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_commit_before_ack_nothing_is_lost_or_doubled() -> anyhow::Result<()> {
    let env = TestEnv::new("killack").await?;
    env.add_account("acct").await?;
    publish_transfers(&env, 30, Behaviour::default()).await?;
    let fault = format!("{}@5", fault::AFTER_COMMIT_BEFORE_ACK);
    expect_abort(env.spawn_worker(WORKER, &[("PAYFLEET_FAULT", &fault)])?).await?;
    let committed = env.scalar_i64("SELECT count(*) FROM inbox").await?;
    assert!(
        committed >= 5,
        "the fifth commit happened before the kill ({committed} in the inbox)"
    );

    finish_with_fresh_worker(&env, "all 30 transfers after the restart", 30).await?;
    assert_eq!(env.assert_quiet_invariants().await?, 30);
    assert!(env.dead_letters().await?.is_empty());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_handing_committed_rows_to_its_relay_they_are_published_once_the_lease_ends()
-> anyhow::Result<()> {
    let env = TestEnv::new("killhandoff").await?;
    env.add_account("acct").await?;
    publish_transfers(&env, 30, Behaviour::default()).await?;
    // (the transfers arrive together: one batch may commit them all)
    let fault = format!("{}@1", fault::AFTER_COMMIT_BEFORE_HANDOFF);
    expect_abort(env.spawn_worker(WORKER, &[("PAYFLEET_FAULT", &fault)])?).await?;
    // The first commit's rows are its dead relay's for the lease: claimed,
    // their first attempt counted, never published.
    let stranded = env
        .scalar_i64(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND publish_attempts = 1 AND claimed_until IS NOT NULL",
        )
        .await?;
    assert!(stranded >= 1, "the killed process left claimed rows unsent");

    finish_with_fresh_worker(&env, "all 30 transfers after the restart", 30).await?;
    assert!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE publish_attempts >= 2")
            .await?
            >= stranded,
        "a pass of the fresh relay took the stranded rows once their lease ran out"
    );
    assert_eq!(env.assert_quiet_invariants().await?, 30);
    assert!(env.dead_letters().await?.is_empty());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_publish_and_marking_sent_the_republish_is_recognised() -> anyhow::Result<()>
{
    let env = TestEnv::with("killrelay", |s| {
        s.outbox_lease = std::time::Duration::from_millis(1_000);
        s.outbox_batch_size = 2;
    })
    .await?;
    env.add_account("acct").await?;
    publish_transfers(&env, 30, Behaviour::default()).await?;
    // The first publish with rows in it: batches and the handoff may put
    // all thirty into one or two, so a later one may never come.
    let fault = format!("{}@1", fault::AFTER_PUBLISH_BEFORE_MARK_SENT);
    expect_abort(env.spawn_worker(WORKER, &[("PAYFLEET_FAULT", &fault)])?).await?;
    let unmarked = env
        .scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND publish_attempts = 1")
        .await?;
    assert!(
        unmarked >= 1,
        "the crashed pass left published rows unmarked"
    );

    finish_with_fresh_worker(&env, "all 30 transfers after the restart", 30).await?;
    let republished = env
        .scalar_i64("SELECT count(*) FROM outbox WHERE publish_attempts >= 2")
        .await?;
    assert!(republished >= 1, "the unmarked rows were published again");
    assert_eq!(
        env.assert_quiet_invariants().await?,
        30,
        "the republished receipts applied once"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM inbox WHERE stage = 'probe-receipt'")
            .await?,
        30
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_finishes_everything() -> anyhow::Result<()> {
    let env = TestEnv::new("sigkill").await?;
    env.add_account("acct").await?;
    publish_transfers(
        &env,
        200,
        Behaviour {
            slow_ms: 10,
            ..Behaviour::default()
        },
    )
    .await?;
    let worker = env.spawn_worker(WORKER, &[])?;
    wait_until(WAIT, "some progress before the kill", || async {
        Ok(receipted(&env).await? >= 40)
    })
    .await?;
    worker.kill().await;
    let at_kill = receipted(&env).await?;
    assert!(at_kill < 200, "killed mid-stream");

    finish_with_fresh_worker(&env, "all 200 transfers after the restart", 200).await?;
    assert_eq!(env.assert_quiet_invariants().await?, 200);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_within_the_bound_and_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new("sigterm").await?;
    env.add_account("acct").await?;
    publish_transfers(
        &env,
        200,
        Behaviour {
            slow_ms: 10,
            ..Behaviour::default()
        },
    )
    .await?;
    let mut worker = env.spawn_worker(WORKER, &[])?;
    wait_until(WAIT, "some progress before SIGTERM", || async {
        Ok(receipted(&env).await? >= 40)
    })
    .await?;
    let asked = Instant::now();
    worker.terminate()?;
    // shutdown_timeout (5 s) for in-flight work plus the outbox flush bound (5 s)
    let status = worker.wait_exit(Duration::from_secs(12)).await?;
    let took = asked.elapsed();
    assert!(status.success(), "a graceful stop exits 0, got {status}");
    assert!(took < Duration::from_secs(11), "stopped in {took:?}");
    let stopped_at = receipted(&env).await?;
    assert!(stopped_at < 200, "stopped mid-stream");
    // A graceful stop leaves nothing half-done: every applied transfer was handed on.
    let unsent = env
        .scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .await?;
    assert_eq!(unsent, 0, "the outbox was flushed before exit");

    finish_with_fresh_worker(&env, "all 200 transfers after the restart", 200).await?;
    assert_eq!(env.assert_quiet_invariants().await?, 200);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_killed_between_commit_and_ack_stores_one_row() -> anyhow::Result<()> {
    let env = TestEnv::new("keeper").await?;
    env.add_account("acct").await?;
    let poison = b"\xff\xfe not a transfer".to_vec();
    env.publish_to_stage(TRANSFER_STAGE, "poison", &poison)
        .await?;
    let fault = format!("{}@1", fault::KEEPER_AFTER_COMMIT);
    expect_abort(env.spawn_worker(WORKER, &[("PAYFLEET_FAULT", &fault)])?).await?;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters").await?,
        1,
        "committed before the kill"
    );
    let dlq = Topology::dead_letter_queue(TRANSFER_STAGE);

    let mut worker = env.spawn_worker(WORKER, &[])?;
    wait_until(WAIT, "the DLQ drained after the restart", || async {
        Ok(env.queue_depth(&dlq).await? == 0)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    worker.terminate()?;
    assert!(worker.wait_exit(Duration::from_secs(15)).await?.success());

    let letters = env.dead_letters().await?;
    assert_eq!(
        letters.len(),
        1,
        "the redelivered dead letter was recognised"
    );
    assert_eq!(letters[0].body, poison, "bytes intact");
    assert_eq!(letters[0].error_kind, "poison");
    assert_eq!(letters[0].headers["x-payfleet-stage"], TRANSFER_STAGE);
    env.teardown().await
}
