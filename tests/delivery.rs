//! The consumer runtime against real RabbitMQ, PostgreSQL and Redis, with
//! fleets running in the test process: duplicates, retries, dead letters,
//! poison messages, locks and unroutable outbox messages.

use std::time::Duration;

use lapin::{options::QueueBindOptions, types::FieldTable};
use payfleet_common::{Topology, broker::header, retention};
use payfleet_tests::{Behaviour, RECEIPT_STAGE, TRANSFER_STAGE, TestEnv, transfer, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_flows_through_both_stages() -> anyhow::Result<()> {
    let env = TestEnv::new("flow").await?;
    env.add_account("alice").await?;
    let fleet = env.start_fleet().await?;
    for i in 0..20 {
        env.publish_transfer(&transfer("alice", "1.25"), &format!("m-{i}"))
            .await?;
    }
    wait_until(WAIT, "20 receipted transfers", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 20)
    })
    .await?;
    fleet.stop().await;
    assert_eq!(env.assert_quiet_invariants().await?, 20);
    let balance: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT balance FROM probe_accounts WHERE account = 'alice'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(balance, "25.00".parse()?);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_applies_once() -> anyhow::Result<()> {
    let env = TestEnv::new("twice").await?;
    env.add_account("bob").await?;
    let t = transfer("bob", "10.00");
    env.publish_transfer(&t, "dup-1").await?;
    env.publish_transfer(&t, "dup-1").await?;
    let fleet = env.start_fleet().await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM inbox WHERE stage = 'probe-transfer'")
            .await?,
        1
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM inbox WHERE stage = 'probe-receipt'")
            .await?,
        1
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_duplicates_on_two_consumers_apply_once() -> anyhow::Result<()> {
    let env = TestEnv::new("hundred").await?;
    env.add_account("carol").await?;
    // Two workers, each with its own connections, competing on the same queues.
    let first = env.start_fleet().await?;
    let second = env.start_fleet().await?;
    let t = transfer("carol", "3.33");
    let body = serde_json::to_vec(&t)?;
    let publishes = (0..100).map(|_| env.publish_to_stage(TRANSFER_STAGE, "the-one", &body));
    for result in futures_util::future::join_all(publishes).await {
        result?;
    }
    env.wait_drained(WAIT).await?;
    first.stop().await;
    second.stop().await;

    assert_eq!(env.assert_quiet_invariants().await?, 1);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM probe_postings")
            .await?,
        1
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox").await?,
        1,
        "one hand-off emitted"
    );
    // Downstream applied the one message, under the id the outbox row kept.
    let (receipt_id, outbox_id): (String, String) = sqlx::query_as(
        "SELECT (SELECT message_id FROM probe_receipts), (SELECT message_id FROM outbox)",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(receipt_id, outbox_id);
    assert!(env.dead_letters().await?.is_empty());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_through_increasing_delays() -> anyhow::Result<()> {
    let env = TestEnv::new("retry").await?;
    env.add_account("dan").await?;
    let fleet = env.start_fleet().await?;
    let mut t = transfer("dan", "7.00");
    t.behaviour = Behaviour {
        fail_transient_until_attempt: 3,
        ..Behaviour::default()
    };
    env.publish_transfer(&t, "flaky").await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let attempts: Vec<(i32, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT attempt, at FROM probe_attempts ORDER BY id")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(
        attempts.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).num_milliseconds())
        .collect();
    // delay levels 200, 400, 800 ms
    for (gap, level) in gaps.iter().zip([200, 400, 800]) {
        assert!(
            *gap >= level,
            "gap {gap} ms shorter than its delay level {level} ms ({gaps:?})"
        );
    }
    // Each wait is at least its own, growing, level; how much longer a wait
    // took depends on the machine's load, so the gaps are not compared.
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    assert!(env.dead_letters().await?.is_empty());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_dead_lettered_with_its_story() -> anyhow::Result<()> {
    let env = TestEnv::new("exhaust").await?;
    env.add_account("erin").await?;
    let fleet = env.start_fleet().await?;
    let mut failing = transfer("erin", "1.00");
    failing.behaviour = Behaviour {
        fail_always: true,
        ..Behaviour::default()
    };
    let failing_body = serde_json::to_vec(&failing)?;
    env.publish_to_stage(TRANSFER_STAGE, "always-fails", &failing_body)
        .await?;
    let mut refused = transfer("erin", "2.00");
    refused.behaviour = Behaviour {
        fail_permanent: true,
        ..Behaviour::default()
    };
    let refused_body = serde_json::to_vec(&refused)?;
    env.publish_to_stage(TRANSFER_STAGE, "refused", &refused_body)
        .await?;
    wait_until(WAIT, "two dead letters in the store", || async {
        Ok(env.scalar_i64("SELECT count(*) FROM dead_letters").await? == 2)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let letters = env.dead_letters().await?;
    let exhausted = letters
        .iter()
        .find(|l| l.message_id == "always-fails")
        .expect("exhausted letter");
    assert_eq!(exhausted.stage, TRANSFER_STAGE);
    assert_eq!(exhausted.error_kind, "exhausted");
    assert_eq!(exhausted.attempts, 4, "max_attempts handling attempts");
    assert!(
        exhausted.error_message.contains("ledger unavailable"),
        "{}",
        exhausted.error_message
    );
    assert_eq!(exhausted.body, failing_body, "body kept byte for byte");
    assert!(exhausted.first_failed_at < exhausted.last_failed_at);
    for key in [
        header::STAGE,
        header::ERROR_KIND,
        header::ERROR_MESSAGE,
        header::ATTEMPTS,
        header::FIRST_FAILURE_AT,
        header::LAST_FAILURE_AT,
    ] {
        assert!(
            exhausted.headers.get(key).is_some(),
            "dead letter header {key} missing: {}",
            exhausted.headers
        );
    }
    assert_eq!(exhausted.headers[header::ERROR_KIND], "exhausted");
    assert_eq!(exhausted.status, "parked");

    let permanent = letters
        .iter()
        .find(|l| l.message_id == "refused")
        .expect("permanent letter");
    assert_eq!(permanent.error_kind, "permanent");
    assert_eq!(permanent.attempts, 1, "a permanent failure is not retried");
    assert_eq!(permanent.body, refused_body);

    let tried: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT transfer_id, count(*) FROM probe_attempts GROUP BY transfer_id")
            .fetch_all(&env.pool)
            .await?;
    assert!(tried.contains(&(failing.transfer_id, 4)), "{tried:?}");
    assert!(tried.contains(&(refused.transfer_id, 1)), "{tried:?}");
    assert_eq!(env.assert_quiet_invariants().await?, 0, "nothing applied");
    assert_eq!(
        env.queue_depth(&Topology::dead_letter_queue(TRANSFER_STAGE))
            .await?,
        0,
        "the keeper drained the DLQ"
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_contention_alone_never_dead_letters() -> anyhow::Result<()> {
    // Two attempts allowed, but the lock stays busy for many retry rounds.
    let env = TestEnv::with("lock", |s| s.max_attempts = 2).await?;
    env.add_account("fay").await?;
    let t = transfer("fay", "4.00");
    let locks = payfleet_common::lock::Locks::new(
        &env.settings.redis_url,
        &env.settings.redis_key_prefix,
        env.settings.lock_ttl,
    )?;
    let key = locks.key(TRANSFER_STAGE, &t.transfer_id.to_string());
    let client = redis::Client::open(env.settings.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("another-worker")
        .arg("PX")
        .arg(2_500)
        .query_async(&mut redis)
        .await?;

    let fleet = env.start_fleet().await?;
    env.publish_transfer(&t, "contended").await?;
    wait_until(
        WAIT,
        "the transfer applied once the lock expired",
        || async {
            Ok(env
                .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
                .await?
                == 1)
        },
    )
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    assert!(
        env.dead_letters().await?.is_empty(),
        "lock waits do not use the retry budget"
    );
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempt FROM probe_attempts")
        .fetch_all(&env.pool)
        .await?;
    assert_eq!(
        attempts,
        vec![0],
        "the handler ran once, on its first attempt"
    );
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_is_dead_lettered_at_once_and_the_rest_flow() -> anyhow::Result<()> {
    let env = TestEnv::with("poison", |s| {
        s.prefetch = 1;
        s.max_in_flight = 1;
    })
    .await?;
    env.add_account("gus").await?;
    let poison = b"{\"transfer_id\": not json".to_vec();
    env.publish_to_stage(TRANSFER_STAGE, "poison-1", &poison)
        .await?;
    for i in 0..10 {
        env.publish_transfer(&transfer("gus", "0.10"), &format!("after-{i}"))
            .await?;
    }
    let fleet = env.start_fleet().await?;
    wait_until(WAIT, "10 transfers behind the poison message", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 10)
    })
    .await?;
    wait_until(WAIT, "the poison message in the store", || async {
        Ok(env.scalar_i64("SELECT count(*) FROM dead_letters").await? == 1)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    let letters = env.dead_letters().await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_kind, "poison");
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(letters[0].body, poison);
    assert!(
        letters[0].error_message.contains("undecodable"),
        "{}",
        letters[0].error_message
    );
    assert_eq!(env.assert_quiet_invariants().await?, 10);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_outbox_message_waits_for_its_binding() -> anyhow::Result<()> {
    let env = TestEnv::new("unroutable").await?;
    env.add_account("hal").await?;
    let stages_exchange = env.topology.exchanges().stages.clone();
    let receipt_queue = Topology::work_queue(RECEIPT_STAGE);
    let connection = env.amqp().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_unbind(
            receipt_queue.as_str().into(),
            stages_exchange.as_str().into(),
            RECEIPT_STAGE.into(),
            FieldTable::default(),
        )
        .await?;

    let fleet = env.start_fleet().await?;
    env.publish_transfer(&transfer("hal", "5.00"), "orphan")
        .await?;
    wait_until(WAIT, "the relay to see the message returned", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND publish_attempts >= 2 AND last_error LIKE '%returned%'")
            .await?
            == 1)
    })
    .await?;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'applied'")
            .await?,
        1
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM probe_receipts")
            .await?,
        0,
        "nothing reached the next stage"
    );

    channel
        .queue_bind(
            receipt_queue.as_str().into(),
            stages_exchange.as_str().into(),
            RECEIPT_STAGE.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    wait_until(WAIT, "the receipt once the binding is back", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 1)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox").await?,
        1,
        "the same row was delivered, not a copy"
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let env = TestEnv::with("http", |s| s.http_addr = format!("127.0.0.1:{port}")).await?;
    env.add_account("ivy").await?;
    let fleet = payfleet_tests::RunningFleet::start(env.fleet().await?.with_http())?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until(WAIT, "/readyz once every consumer is connected", || async {
        Ok(http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false))
    })
    .await?;
    assert_eq!(
        http.get(format!("{base}/healthz")).send().await?.status(),
        200
    );
    for i in 0..3 {
        env.publish_transfer(&transfer("ivy", "1.00"), &format!("m-{i}"))
            .await?;
    }
    let mut poison_body = b"garbage".to_vec();
    poison_body.push(0);
    env.publish_to_stage(TRANSFER_STAGE, "garbage", &poison_body)
        .await?;
    env.wait_drained(WAIT).await?;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"payfleet_messages_total{stage="probe-transfer",result="applied"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"payfleet_messages_total{stage="probe-receipt",result="applied"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"payfleet_dead_lettered_total{stage="probe-transfer",kind="poison"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("payfleet_handle_seconds_bucket"),
        "{metrics}"
    );
    fleet.stop().await;
    assert_eq!(env.assert_quiet_invariants().await?, 3);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_their_retention_are_pruned_in_batches_and_everything_else_kept()
-> anyhow::Result<()> {
    let env = TestEnv::new("retention").await?;
    let old = 2 * retention::BATCH + 17;
    sqlx::raw_sql(&format!(
        "INSERT INTO inbox (stage, message_id, outcome, processed_at)
           SELECT 'probe-transfer', 'old-' || n, 'applied', now() - interval '40 days'
           FROM generate_series(1, {old}) n;
         INSERT INTO inbox (stage, message_id, outcome, processed_at) VALUES
           ('probe-transfer', 'recent', 'applied', now() - interval '29 days');
         INSERT INTO outbox (message_id, exchange, routing_key, body, created_at, sent_at)
           SELECT 'sent-' || n, 'x', 'k', '\\x7b7d', now() - interval '3 days', now() - interval '2 days'
           FROM generate_series(1, {old}) n;
         INSERT INTO outbox (message_id, exchange, routing_key, body, created_at, sent_at) VALUES
           ('sent-recently', 'x', 'k', '\\x7b7d', now() - interval '2 hours', now() - interval '1 hour'),
           ('never-sent', 'x', 'k', '\\x7b7d', now() - interval '3 days', NULL);
         INSERT INTO delivery_counts (stage, message_id, deliveries, first_seen_at, last_seen_at) VALUES
           ('probe-transfer', 'gone', 2, now() - interval '3 days', now() - interval '2 days'),
           ('probe-transfer', 'looping', 2, now() - interval '5 minutes', now());"
    ))
    .execute(&env.pool)
    .await?;
    let started = std::time::Instant::now();
    let pruned = retention::prune(&env.pool, &env.settings).await?;
    println!(
        "pruned {} inbox and {} outbox rows in {:.2} s",
        pruned.inbox,
        pruned.outbox,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        pruned,
        retention::Pruned {
            inbox: old as u64,
            outbox: old as u64,
            delivery_counts: 1
        }
    );
    let left = |table: &str| {
        format!("SELECT string_agg(message_id, ',' ORDER BY message_id) FROM {table}")
    };
    let inbox: String = sqlx::query_scalar(&left("inbox"))
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(inbox, "recent");
    let outbox: String = sqlx::query_scalar(&left("outbox"))
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(
        outbox, "never-sent,sent-recently",
        "an unsent row is never pruned"
    );
    let counts: String = sqlx::query_scalar(&left("delivery_counts"))
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(counts, "looping");
    assert_eq!(
        retention::prune(&env.pool, &env.settings).await?,
        retention::Pruned::default()
    );
    env.teardown().await
}

/// A relay's passes (rows no stage handed over: jobs', ops commands', a dead
/// process's) still run while stages hand it rows faster than it publishes
/// them: the poll tick is not postponed by the handoffs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_flooded_with_handed_rows_still_passes_over_the_table() -> anyhow::Result<()> {
    use payfleet_common::outbox::{self, OutboxMessage};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let env = TestEnv::new("relaypass").await?;
    let (handoff, stop, relay) =
        start_relay(&env, Duration::from_secs(10), Duration::from_millis(100))?;
    let exchange = env.topology.exchanges().stages.clone();
    let message = move |n: u64| {
        OutboxMessage::json(&exchange, TRANSFER_STAGE, "flood", None, &n).expect("a number is JSON")
    };
    // Four stages committing and handing rows over as fast as they can.
    let flooding = Arc::new(AtomicBool::new(true));
    let mut feeders = Vec::new();
    for feeder in 0..4u64 {
        let (pool, handoff, flooding) = (env.pool.clone(), handoff.clone(), flooding.clone());
        let message = message.clone();
        feeders.push(tokio::spawn(async move {
            let mut n = feeder << 32;
            while flooding.load(Ordering::Relaxed) {
                n += 1;
                commit_and_hand_over(&pool, &handoff, vec![message(n)]).await?;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A row written without a handoff and without a wake: only a pass finds it.
    let mut tx = env.pool.begin().await?;
    let lone = message(u64::MAX);
    outbox::insert(&mut tx, std::slice::from_ref(&lone)).await?;
    tx.commit().await?;
    let found = wait_until(
        Duration::from_secs(5),
        "the lone row published by a pass",
        || marked_sent(&env.pool, &lone.message_id),
    )
    .await;
    let handed_over = env
        .scalar_i64(
            "SELECT count(*) FROM outbox WHERE publish_attempts = 1 AND message_type = 'flood'",
        )
        .await?;
    flooding.store(false, Ordering::Relaxed);
    for feeder in feeders {
        feeder.await??;
    }
    stop.cancel();
    relay.await?;
    found?;
    assert!(
        handed_over > 100,
        "the relay was flooded ({handed_over} rows handed over)"
    );
    env.teardown().await
}

/// The relay gathers the sent marks of handed-over rows and writes them
/// together; a lone row, with nothing after it and no pass due, is still
/// marked within moments, and published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_handed_row_is_marked_sent_without_waiting_for_more() -> anyhow::Result<()> {
    use payfleet_common::outbox::OutboxMessage;

    let env = TestEnv::new("relaymark").await?;
    // no pass within the test: only the handoff publishes and marks
    let (handoff, stop, relay) =
        start_relay(&env, Duration::from_secs(60), Duration::from_secs(3600))?;
    let exchange = env.topology.exchanges().stages.clone();
    // The first pass runs at start, on an empty table.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for rows in [1u64, 3] {
        let messages = (0..rows)
            .map(|n| OutboxMessage::json(&exchange, TRANSFER_STAGE, "lone", None, &(rows * 10 + n)))
            .collect::<Result<Vec<_>, _>>()?;
        commit_and_hand_over(&env.pool, &handoff, messages).await?;
        wait_until(Duration::from_secs(2), "the handed rows marked sent", || async {
            Ok(env
                .scalar_i64("SELECT count(*) FROM outbox WHERE message_type = 'lone' AND sent_at IS NULL")
                .await?
                == 0)
        })
        .await?;
    }
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM outbox WHERE message_type = 'lone' AND publish_attempts = 1"
        )
        .await?,
        4,
        "each row published once, by the handoff"
    );
    stop.cancel();
    relay.await?;
    env.teardown().await
}

/// A review found that a confirmed row's sent mark could wait for the
/// relay's next publish, which waits on the broker for as long as the
/// broker is silent: past the row's lease, a pass would publish the row
/// again. Here the broker stops answering the relay right after one row's
/// confirm, while the next row is published: the first row is marked sent
/// all the same, and each row is published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_row_is_marked_sent_while_the_next_publish_waits_on_a_silent_broker()
-> anyhow::Result<()> {
    use payfleet_common::{broker::Endpoint, outbox::OutboxMessage};
    use payfleet_tests::broker_proxy::BrokerProxy;

    let env = TestEnv::new("relaysilent").await?;
    let proxy = BrokerProxy::start("127.0.0.1:5672".parse()?).await?;
    let endpoint = Endpoint::plain(&proxy.amqp_url(&env.settings.amqp_url)?);
    // no pass within the test: only the handoff publishes and marks
    let (handoff, stop, relay) = start_relay_at(
        &env,
        endpoint,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )?;
    let exchange = env.topology.exchanges().stages.clone();
    let first = OutboxMessage::json(&exchange, TRANSFER_STAGE, "silent", None, &1)?;
    let second = OutboxMessage::json(&exchange, TRANSFER_STAGE, "silent", None, &2)?;
    // The first pass runs at start, on an empty table.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.hold_after_next_confirm();
    commit_and_hand_over(&env.pool, &handoff, vec![first.clone()]).await?;
    proxy.holding(Duration::from_secs(10)).await?;
    // The first row's confirm is in; from here the broker says nothing.
    commit_and_hand_over(&env.pool, &handoff, vec![second.clone()]).await?;
    wait_until(
        Duration::from_secs(2),
        "the confirmed row marked sent",
        || marked_sent(&env.pool, &first.message_id),
    )
    .await?;
    assert!(
        !marked_sent(&env.pool, &second.message_id).await?,
        "the second row's publish is not confirmed while the broker is silent"
    );
    proxy.release();
    wait_until(
        Duration::from_secs(10),
        "the second row marked sent",
        || marked_sent(&env.pool, &second.message_id),
    )
    .await?;
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM outbox WHERE message_type = 'silent' AND publish_attempts = 1"
        )
        .await?,
        2,
        "each row published once, by the handoff"
    );
    stop.cancel();
    relay.await?;
    env.teardown().await
}

/// Commits `messages` as a stage does: inserted for `handoff`'s relay, and
/// handed to it once committed.
async fn commit_and_hand_over(
    pool: &sqlx::PgPool,
    handoff: &payfleet_common::outbox::Handoff,
    messages: Vec<payfleet_common::outbox::OutboxMessage>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let inserted = handoff.insert(&mut tx, messages).await?;
    tx.commit().await?;
    handoff.hand_over(inserted);
    Ok(())
}

/// Whether the outbox row of `message_id` is marked sent.
async fn marked_sent(pool: &sqlx::PgPool, message_id: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT sent_at IS NOT NULL FROM outbox WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(pool)
            .await?,
    )
}

type Relay = (
    payfleet_common::outbox::Handoff,
    payfleet_common::CancellationToken,
    tokio::task::JoinHandle<()>,
);

/// A relay of its own on `env`'s database and broker, with `lease` and
/// `poll`: the handoff that feeds it, and what stops it.
fn start_relay(env: &TestEnv, lease: Duration, poll: Duration) -> anyhow::Result<Relay> {
    let endpoint = payfleet_common::broker::Endpoint::from_settings(&env.settings)?;
    start_relay_at(env, endpoint, lease, poll)
}

/// [`start_relay`], publishing to the broker at `endpoint`.
fn start_relay_at(
    env: &TestEnv,
    endpoint: payfleet_common::broker::Endpoint,
    lease: Duration,
    poll: Duration,
) -> anyhow::Result<Relay> {
    use payfleet_common::{
        CancellationToken, broker,
        outbox::{self, Handoff, RelayConfig},
    };
    let stop = CancellationToken::new();
    let publisher = broker::Publisher::new(endpoint, "relay-test", stop.clone());
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let (handoff, handed) = Handoff::new(lease, wake.clone());
    let relay = tokio::spawn(outbox::run_relay(
        env.pool.clone(),
        publisher,
        wake,
        handed,
        RelayConfig {
            batch_size: 256,
            lease,
            poll,
            flush_timeout: Duration::from_secs(2),
        },
        stop.clone(),
    ));
    Ok((handoff, stop, relay))
}
