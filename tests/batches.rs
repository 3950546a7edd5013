//! Batches in the runtime, against the real services: several deliveries in
//! one transaction, each in its own savepoint, acked one by one after the
//! commit. Each test causes one of the pitfalls for real — a mixed batch, a
//! deadlock, suspects and redeliveries, two messages for one key, a lock
//! held elsewhere — and ends with the probe stages' invariants. Which
//! deliveries shared a transaction is read from `probe_attempts.tx_id`.

use std::time::Duration;

use lapin::{
    options::{BasicGetOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use payfleet_common::{Fleet, Topology, broker, runtime::batch::BatchSettings};
use payfleet_tests::{
    Behaviour, ReceiptStage, RunningFleet, TRANSFER_STAGE, TestEnv, Transfer, TransferStage,
    transfer, wait_until,
};

const WAIT: Duration = Duration::from_secs(30);

/// A fleet whose transfer stage batches up to `size` deliveries, waiting
/// `wait_ms` after the first for more.
async fn batched_fleet(env: &TestEnv, size: usize, wait_ms: u64) -> anyhow::Result<RunningFleet> {
    let fleet = Fleet::connect(env.settings.clone(), env.topology.clone()).await?;
    let pool = fleet.shared().pool.clone();
    let fleet = fleet
        .stage_batched(
            TransferStage {
                may_abort: false,
                pool,
            },
            BatchSettings {
                size,
                wait: Duration::from_millis(wait_ms),
            },
        )?
        .stage(ReceiptStage)?
        .with_keeper();
    RunningFleet::start(fleet)
}

/// Runs the fleet until every transfer in `transfers` is receipted.
async fn apply_first(env: &TestEnv, transfers: &[(&Transfer, &str)]) -> anyhow::Result<()> {
    for (t, message_id) in transfers {
        env.publish_transfer(t, message_id).await?;
    }
    let fleet = batched_fleet(env, 16, 0).await?;
    let expected = transfers.len() as i64;
    wait_until(WAIT, "the first transfers receipted", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == expected)
    })
    .await?;
    fleet.stop().await;
    Ok(())
}

/// The transaction ids of a message's handler runs, in order, with their attempts.
async fn runs(env: &TestEnv, message_id: &str) -> anyhow::Result<Vec<(i64, i32)>> {
    Ok(sqlx::query_as(
        "SELECT tx_id, attempt FROM probe_attempts WHERE message_id = $1 ORDER BY id",
    )
    .bind(message_id)
    .fetch_all(&env.pool)
    .await?)
}

/// How many handler runs (of any message) took place in transaction `tx_id`.
async fn runs_in(env: &TestEnv, tx_id: i64) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM probe_attempts WHERE tx_id = $1")
            .bind(tx_id)
            .fetch_one(&env.pool)
            .await?,
    )
}

/// A transaction holding `account`'s row, which waits longest before
/// looking for a deadlock: in a cycle, the fleet's backend is the victim.
async fn hold_as_the_last_to_give_up(
    env: &TestEnv,
    account: &str,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut holder = env.pool.begin().await?;
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *holder)
        .await?;
    sqlx::query("UPDATE probe_accounts SET balance = balance WHERE account = $1")
        .bind(account)
        .execute(&mut *holder)
        .await?;
    Ok(holder)
}

/// Waits until one backend of the test's database waits on a lock.
async fn one_waiting_on_a_lock(env: &TestEnv, what: &str) -> anyhow::Result<()> {
    wait_until(WAIT, what, || async {
        Ok(env
            .scalar_i64(&format!(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = '{}' AND wait_event_type = 'Lock'",
                env.name
            ))
            .await?
            == 1)
    })
    .await
}

async fn inbox_outcome(env: &TestEnv, message_id: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT outcome FROM inbox WHERE stage = 'probe-transfer' AND message_id = $1",
    )
    .bind(message_id)
    .fetch_optional(&env.pool)
    .await?)
}

fn behaving(account: &str, amount: &str, behaviour: Behaviour) -> Transfer {
    Transfer {
        behaviour,
        ..transfer(account, amount)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_gives_each_message_its_own_outcome_and_commits_the_rest()
-> anyhow::Result<()> {
    let env = TestEnv::new("batchmix").await?;
    env.add_account("acc").await?;
    let seed = transfer("acc", "1.00");
    let seed_again = transfer("acc", "2.00");
    apply_first(&env, &[(&seed, "m-seed"), (&seed_again, "m-seed-again")]).await?;

    // One batch: two plain transfers, a poison body, a transient failure, a
    // duplicate delivery, a stale duplicate under a new id, a conflicting
    // final state and a permanent failure.
    let a = transfer("acc", "10.00");
    let b = transfer("acc", "20.00");
    let transient = behaving(
        "acc",
        "30.00",
        Behaviour {
            fail_transient_until_attempt: 1,
            ..Default::default()
        },
    );
    let conflict = behaving(
        "acc",
        "40.00",
        Behaviour {
            conflict: true,
            ..Default::default()
        },
    );
    let permanent = behaving(
        "acc",
        "50.00",
        Behaviour {
            fail_permanent: true,
            ..Default::default()
        },
    );
    env.publish_transfer(&a, "m-a").await?;
    env.publish_to_stage(TRANSFER_STAGE, "m-poison", b"{not json")
        .await?;
    env.publish_transfer(&transient, "m-transient").await?;
    env.publish_transfer(&seed, "m-seed").await?;
    env.publish_transfer(&seed_again, "m-stale").await?;
    env.publish_transfer(&conflict, "m-conflict").await?;
    env.publish_transfer(&permanent, "m-permanent").await?;
    env.publish_transfer(&b, "m-b").await?;

    let fleet = batched_fleet(&env, 16, 1_000).await?;
    // (the retried one waits up to a second for batch company, unseen by
    // the queue depths: wait for its receipt as well)
    wait_until(WAIT, "five receipted transfers", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 5)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    // They were handled together: one transaction for every first run.
    let batch = runs(&env, "m-a").await?[0].0;
    for message_id in ["m-b", "m-transient", "m-stale", "m-conflict", "m-permanent"] {
        assert_eq!(
            runs(&env, message_id).await?[0].0,
            batch,
            "{message_id} was not in the batch"
        );
    }
    assert_eq!(runs_in(&env, batch).await?, 6);

    // Each got its own outcome.
    assert_eq!(
        inbox_outcome(&env, "m-a").await?.as_deref(),
        Some("applied")
    );
    assert_eq!(
        inbox_outcome(&env, "m-b").await?.as_deref(),
        Some("applied")
    );
    let transient_runs = runs(&env, "m-transient").await?;
    assert_eq!(
        transient_runs.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![0, 1],
        "the transient failure is retried once, on its own budget"
    );
    assert_ne!(transient_runs[1].0, batch);
    assert_eq!(
        runs(&env, "m-seed").await?.len(),
        1,
        "the duplicate delivery never reached the handler"
    );
    assert_eq!(
        inbox_outcome(&env, "m-stale").await?.as_deref(),
        Some("stale")
    );
    assert_eq!(
        inbox_outcome(&env, "m-conflict").await?.as_deref(),
        Some("exception")
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM probe_reviews").await?,
        1,
        "the conflict's review record is committed with the batch"
    );
    assert_eq!(inbox_outcome(&env, "m-permanent").await?, None);
    let mut dead: Vec<(String, String)> = env
        .dead_letters()
        .await?
        .into_iter()
        .map(|d| (d.message_id, d.error_kind))
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        vec![
            ("m-permanent".to_owned(), "permanent".to_owned()),
            ("m-poison".to_owned(), "poison".to_owned()),
        ],
        "only the poison and the permanent failure are dead letters"
    );
    // seed, seed_again, a, b, transient; the conflict and the permanent
    // failure applied nothing.
    assert_eq!(env.assert_quiet_invariants().await?, 5);
    let balance: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT balance FROM probe_accounts WHERE account = 'acc'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(balance, "63.00".parse()?);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_batch_is_rolled_back_and_rerun_one_message_at_a_time_without_a_retry()
-> anyhow::Result<()> {
    // No lock timeout of our own: the wait lasts until PostgreSQL finds the deadlock.
    let env = TestEnv::with("batchdead", |s| s.batch_lock_timeout_ms = 0).await?;
    env.add_account("x").await?;
    env.add_account("y").await?;
    // Another transaction holds y, so the batch, after taking x, waits on y.
    let mut blocker = hold_as_the_last_to_give_up(&env, "y").await?;
    // Keys in this order: the batch handles to-x first, then to-y.
    let to_x = transfer("x", "5.00");
    let to_y = transfer("y", "7.00");
    assert!(to_x.transfer_id < to_y.transfer_id);
    env.publish_transfer(&to_y, "m-y").await?;
    env.publish_transfer(&to_x, "m-x").await?;
    let fleet = batched_fleet(&env, 2, 1_000).await?;
    one_waiting_on_a_lock(&env, "the batch waiting on y").await?;
    // Now take x: a deadlock. The batch is aborted as a whole, which frees x.
    sqlx::query("UPDATE probe_accounts SET balance = balance WHERE account = 'x'")
        .execute(&mut *blocker)
        .await?;
    blocker.commit().await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let x_runs = runs(&env, "m-x").await?;
    let y_runs = runs(&env, "m-y").await?;
    assert_eq!(x_runs.len(), 2, "to-x: once in the batch, once alone");
    assert_eq!(y_runs.len(), 2, "to-y: once in the batch, once alone");
    assert_eq!(x_runs[0].0, y_runs[0].0, "both first ran in one batch");
    assert_ne!(x_runs[1].0, y_runs[1].0, "then each in its own transaction");
    assert_eq!(runs_in(&env, x_runs[1].0).await?, 1);
    assert_eq!(runs_in(&env, y_runs[1].0).await?, 1);
    assert!(
        x_runs.iter().chain(&y_runs).all(|run| run.1 == 0),
        "the lost batch spent nobody's retry budget: {x_runs:?} {y_runs:?}"
    );
    assert!(env.dead_letters().await?.is_empty());
    assert_eq!(env.assert_quiet_invariants().await?, 2);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_message_deadlocked_in_its_own_transaction_is_rerun_without_a_retry()
-> anyhow::Result<()> {
    // A batch of one runs as the message's own transaction (no savepoint,
    // no lock timeout); a deadlock there must still cost no attempt.
    let env = TestEnv::new("batchlonedead").await?;
    env.add_account("y").await?;
    let mut blocker = hold_as_the_last_to_give_up(&env, "y").await?;
    let to_y = transfer("y", "7.00");
    env.publish_transfer(&to_y, "m-y").await?;
    let fleet = batched_fleet(&env, 16, 0).await?;
    one_waiting_on_a_lock(&env, "the message waiting on y").await?;
    // The message holds its inbox claim: wanting it closes the cycle. The
    // blocker rolls back, so the claim it won is not kept.
    sqlx::query(
        "INSERT INTO inbox (stage, message_id, outcome) VALUES ('probe-transfer', 'm-y', 'applied')",
    )
    .execute(&mut *blocker)
    .await?;
    blocker.rollback().await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let y_runs = runs(&env, "m-y").await?;
    assert_eq!(y_runs.len(), 2, "once deadlocked, once again: {y_runs:?}");
    assert_ne!(y_runs[0].0, y_runs[1].0);
    assert!(
        y_runs.iter().all(|run| run.1 == 0),
        "the deadlock spent no retry budget: {y_runs:?}"
    );
    assert_eq!(
        inbox_outcome(&env, "m-y").await?.as_deref(),
        Some("applied")
    );
    assert!(env.dead_letters().await?.is_empty());
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspects_and_redeliveries_are_handled_alone_outside_batches() -> anyhow::Result<()> {
    let env = TestEnv::new("batchsolo").await?;
    env.add_account("acc").await?;
    // Two messages the broker redelivers: taken without an ack, then given back.
    let redelivered = [transfer("acc", "1.00"), transfer("acc", "2.00")];
    for (n, t) in redelivered.iter().enumerate() {
        env.publish_transfer(t, &format!("m-redelivered-{n}"))
            .await?;
    }
    {
        let connection = env.amqp().await?;
        let channel = connection.create_channel().await?;
        let mut taken = Vec::new();
        for _ in 0..2 {
            taken.push(
                channel
                    .basic_get(
                        Topology::work_queue(TRANSFER_STAGE).as_str().into(),
                        BasicGetOptions { no_ack: false },
                    )
                    .await?
                    .expect("a message to take"),
            );
        }
        for got in taken {
            got.delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await?;
        }
        let _ = connection.close(200, "given back".into()).await;
    }
    // Three copies sent round a delay level after a crash: marked suspect.
    let suspects = [
        transfer("acc", "3.00"),
        transfer("acc", "4.00"),
        transfer("acc", "5.00"),
    ];
    for (n, t) in suspects.iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert(broker::header::SUSPECT.into(), AMQPValue::LongLongInt(1));
        let props = broker::properties(&format!("m-suspect-{n}"), None, Some("probe.transfer"))
            .with_headers(headers);
        env.publish_raw(
            &env.topology.exchanges().stages.clone(),
            TRANSFER_STAGE,
            &serde_json::to_vec(t)?,
            props,
        )
        .await?;
    }
    let plain = [
        transfer("acc", "6.00"),
        transfer("acc", "7.00"),
        transfer("acc", "8.00"),
    ];
    for (n, t) in plain.iter().enumerate() {
        env.publish_transfer(t, &format!("m-plain-{n}")).await?;
    }
    let fleet = batched_fleet(&env, 16, 1_000).await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    for message_id in [
        "m-redelivered-0",
        "m-redelivered-1",
        "m-suspect-0",
        "m-suspect-1",
        "m-suspect-2",
    ] {
        let handled = runs(&env, message_id).await?;
        assert_eq!(handled.len(), 1, "{message_id} handled once");
        assert_eq!(
            runs_in(&env, handled[0].0).await?,
            1,
            "{message_id} shared its transaction"
        );
    }
    let batch = runs(&env, "m-plain-0").await?[0].0;
    assert_eq!(runs(&env, "m-plain-1").await?[0].0, batch);
    assert_eq!(runs(&env, "m-plain-2").await?[0].0, batch);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM delivery_counts")
            .await?,
        0,
        "every suspect's count is forgotten once it finished"
    );
    assert!(env.dead_letters().await?.is_empty());
    assert_eq!(env.assert_quiet_invariants().await?, 8);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_for_one_key_never_share_a_batch() -> anyhow::Result<()> {
    let env = TestEnv::new("batchkey").await?;
    env.add_account("acc").await?;
    let twice = transfer("acc", "9.00");
    env.publish_transfer(&transfer("acc", "1.00"), "m-other-0")
        .await?;
    env.publish_transfer(&twice, "m-first").await?;
    env.publish_transfer(&twice, "m-second").await?;
    env.publish_transfer(&transfer("acc", "2.00"), "m-other-1")
        .await?;
    let fleet = batched_fleet(&env, 16, 500).await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let first = runs(&env, "m-first").await?;
    let second = runs(&env, "m-second").await?;
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_ne!(first[0].0, second[0].0, "one key, two transactions");
    let mut outcomes = vec![
        inbox_outcome(&env, "m-first").await?,
        inbox_outcome(&env, "m-second").await?,
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![Some("applied".to_owned()), Some("stale".to_owned())]
    );
    assert!(env.dead_letters().await?.is_empty());
    assert_eq!(env.assert_quiet_invariants().await?, 3);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_locked_elsewhere_bounces_only_its_own_message() -> anyhow::Result<()> {
    let env = TestEnv::new("batchlock").await?;
    env.add_account("acc").await?;
    let held = transfer("acc", "4.00");
    // Another worker holds this key's lock for 1.5 s.
    let redis = redis::Client::open(env.settings.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let key = format!(
        "{}:lock:{TRANSFER_STAGE}:{}",
        env.settings.redis_key_prefix, held.transfer_id
    );
    redis::cmd("SET")
        .arg(&key)
        .arg("another-worker")
        .arg("PX")
        .arg(1_500)
        .query_async::<()>(&mut conn)
        .await?;
    let others = [transfer("acc", "1.00"), transfer("acc", "2.00")];
    env.publish_transfer(&others[0], "m-other-0").await?;
    env.publish_transfer(&held, "m-held").await?;
    env.publish_transfer(&others[1], "m-other-1").await?;
    let fleet = batched_fleet(&env, 16, 500).await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let batch = runs(&env, "m-other-0").await?;
    assert_eq!(runs(&env, "m-other-1").await?[0].0, batch[0].0);
    let held_runs = runs(&env, "m-held").await?;
    assert_eq!(held_runs.len(), 1, "the held key's message ran once, later");
    assert_ne!(held_runs[0].0, batch[0].0);
    assert_eq!(held_runs[0].1, 0, "a busy lock spends no attempt");
    assert!(env.dead_letters().await?.is_empty());
    assert_eq!(env.assert_quiet_invariants().await?, 3);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_on_a_row_lock_steps_out_of_its_batch_and_runs_alone()
-> anyhow::Result<()> {
    let env = TestEnv::new("batchstep").await?;
    env.add_account("free").await?;
    env.add_account("held").await?;
    // Another transaction holds the account row of one transfer.
    let mut holder = env.pool.begin().await?;
    sqlx::query("UPDATE probe_accounts SET balance = balance WHERE account = 'held'")
        .execute(&mut *holder)
        .await?;
    let stuck = transfer("held", "3.00");
    let others = [transfer("free", "1.00"), transfer("free", "2.00")];
    env.publish_transfer(&others[0], "m-free-0").await?;
    env.publish_transfer(&stuck, "m-stuck").await?;
    env.publish_transfer(&others[1], "m-free-1").await?;
    let fleet = batched_fleet(&env, 16, 500).await?;
    // The batch commits without it: the other two are applied while the
    // row is still held.
    wait_until(WAIT, "the other two applied", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE account = 'free'")
            .await?
            == 2)
    })
    .await?;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM probe_transfers WHERE account = 'held'")
            .await?,
        0
    );
    holder.commit().await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let batch = runs(&env, "m-free-0").await?[0].0;
    assert_eq!(runs(&env, "m-free-1").await?[0].0, batch);
    let stuck_runs = runs(&env, "m-stuck").await?;
    assert_eq!(
        stuck_runs.len(),
        2,
        "in the batch, then alone: {stuck_runs:?}"
    );
    assert_eq!(stuck_runs[0].0, batch);
    assert_eq!(runs_in(&env, stuck_runs[1].0).await?, 1);
    assert!(
        stuck_runs.iter().all(|run| run.1 == 0),
        "stepping out spends no attempt"
    );
    assert!(env.dead_letters().await?.is_empty());
    assert_eq!(env.assert_quiet_invariants().await?, 3);
    env.teardown().await
}
