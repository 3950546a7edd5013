//! The ops tooling, run as the `payfleet` binary against the real services:
//! dead letters made by real failures, listed, replayed (one, 500 while the
//! fleet runs, a replay killed mid-way), purged; `status --json` against the
//! broker's own counts; `payment show`; `payment resolve`.

mod fleet;

use std::{process::Stdio, time::Duration};

use fleet::{cli as run, payfleet};
use payfleet_common::retention;
use payfleet_tests::{TestEnv, transfer, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Transfers to an account that does not exist fail for good (a foreign-key
/// violation is permanent) and are dead-lettered; ops fix the cause by
/// creating the account, then replay.
async fn dead_letter_transfers(env: &TestEnv, count: usize) -> anyhow::Result<Vec<uuid::Uuid>> {
    let mut ids = Vec::new();
    for i in 0..count {
        let t = transfer("missing", "1.00");
        ids.push(t.transfer_id);
        env.publish_transfer(&t, &format!("t-{i}")).await?;
    }
    wait_until(
        WAIT,
        &format!("{count} dead letters in the store"),
        || async {
            Ok(env
                .scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
                .await?
                == count as i64)
        },
    )
    .await?;
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_reasons_and_one_replay_reprocesses_exactly_one()
-> anyhow::Result<()> {
    let env = TestEnv::new("dlqone").await?;
    let fleet = env.start_fleet().await?;
    dead_letter_transfers(&env, 3).await?;
    env.publish_to_stage("probe-transfer", "junk", b"not json at all")
        .await?;
    wait_until(WAIT, "the poison message stored", || async {
        Ok(env.scalar_i64("SELECT count(*) FROM dead_letters").await? == 4)
    })
    .await?;

    let (code, out, err) = run(
        &env,
        &["dlq", "list", "--stage", "probe-transfer", "--json"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out)?;
    assert_eq!(rows.len(), 4);
    let kinds: Vec<&str> = rows
        .iter()
        .map(|r| r["error_kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "permanent").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "poison").count(), 1);
    assert!(
        rows.iter().any(|r| r["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("foreign key")),
        "{out}"
    );
    let (code, out, _) = run(&env, &["dlq", "show", "junk"]).await?;
    assert_eq!(code, 0);
    assert!(
        out.contains("not json at all") && out.contains("x-payfleet-error-kind"),
        "{out}"
    );

    env.add_account("missing").await?;
    let first = rows
        .iter()
        .find(|r| r["error_kind"] == "permanent")
        .expect("a permanent one")["id"]
        .as_i64()
        .expect("id");
    let (code, out, err) = run(&env, &["dlq", "replay", "--id", &first.to_string()]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replayed 1 dead letter(s) as oncall-test"),
        "{out}"
    );
    wait_until(WAIT, "the replayed transfer receipted", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 1)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
            .await?,
        3,
        "exactly that one left the store"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'replayed'")
            .await?,
        1
    );
    let (operator, count): (String, i32) =
        sqlx::query_as("SELECT operator, count FROM replay_audit WHERE action = 'replay'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!((operator.as_str(), count), ("oncall-test", 1));

    // purge keeps the rows
    let (code, _, _) = run(
        &env,
        &["dlq", "purge", "--stage", "probe-transfer", "--all"],
    )
    .await?;
    assert_ne!(code, 0, "a purge without --yes is refused");
    let (code, out, err) = run(
        &env,
        &[
            "dlq",
            "purge",
            "--stage",
            "probe-transfer",
            "--all",
            "--yes",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 4"), "{out}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters").await?,
        4,
        "purged rows are kept"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'purged'")
            .await?,
        4
    );
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_500_while_the_fleet_runs_loses_none_and_doubles_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new("dlq500").await?;
    let fleet = env.start_fleet().await?;
    dead_letter_transfers(&env, 500).await?;
    env.add_account("missing").await?;
    // keep the fleet busy with fresh work while the replay runs
    for i in 0..100 {
        env.add_account("busy").await?;
        env.publish_transfer(&transfer("busy", "0.50"), &format!("busy-{i}"))
            .await?;
    }
    let (code, out, err) = run(
        &env,
        &["dlq", "replay", "--stage", "probe-transfer", "--all"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 500"), "{out}");
    wait_until(WAIT, "600 receipted transfers", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 600)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    assert_eq!(env.assert_quiet_invariants().await?, 600);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'replayed'")
            .await?,
        500
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
            .await?,
        0
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_way_and_rerun_processes_every_message_once() -> anyhow::Result<()> {
    let env = TestEnv::new("dlqkill").await?;
    let fleet = env.start_fleet().await?;
    dead_letter_transfers(&env, 300).await?;
    env.add_account("missing").await?;
    let mut replay = payfleet(&env)
        .args(["dlq", "replay", "--stage", "probe-transfer", "--all"])
        .stdout(Stdio::null())
        .spawn()?;
    wait_until(WAIT, "the replay under way", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'replayed'")
            .await?
            >= 30)
    })
    .await?;
    replay.kill().await?;
    let replayed_at_kill = env
        .scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'replayed'")
        .await?;
    assert!(
        replayed_at_kill < 300,
        "killed mid-way ({replayed_at_kill} replayed)"
    );
    let (code, _, err) = run(
        &env,
        &["dlq", "replay", "--stage", "probe-transfer", "--all"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    wait_until(WAIT, "all 300 receipted", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 300)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    assert_eq!(
        env.assert_quiet_invariants().await?,
        300,
        "each processed once"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
            .await?,
        0
    );
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_agrees_with_the_brokers_own_counts() -> anyhow::Result<()> {
    let env = TestEnv::new("status").await?;
    for i in 0..7 {
        env.publish_to_stage("fund-freeze", &format!("m-{i}"), b"{}")
            .await?;
    }
    env.publish_to_stage("settlement", "s-1", b"{}").await?;
    let broker = || async {
        let output = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "-p",
                &env.name,
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ])
            .output()
            .await?;
        let mut counts = std::collections::BTreeMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [name, ready, unacked, consumers] = fields[..] {
                counts.insert(
                    name.to_owned(),
                    (
                        ready.parse::<i64>()?,
                        unacked.parse::<i64>()?,
                        consumers.parse::<i64>()?,
                    ),
                );
            }
        }
        anyhow::Ok(counts)
    };
    // By AMQP passive declares, as the fleet's gauges: no management plugin.
    let mut last = String::new();
    let mut agreed = false;
    for _ in 0..40 {
        let output = payfleet(&env).args(["status", "--json"]).output().await?;
        let code = output.status.code().unwrap_or(-1);
        // nothing consumes here: the stages need attention
        assert_eq!(code, 3, "{}", String::from_utf8_lossy(&output.stderr));
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let status: Value = serde_json::from_str(&out)?;
        let work = |stage: &str| {
            status["queues"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|q| q["stage"] == stage && q["kind"] == "work")
                .cloned()
                .unwrap_or_default()
        };
        let counts = broker().await?;
        agreed = ["fund-freeze", "settlement", "callback"]
            .iter()
            .all(|stage| {
                let mine = work(stage);
                let theirs = counts
                    .get(&format!("payfleet.{stage}"))
                    .copied()
                    .unwrap_or_default();
                (mine["messages"].as_i64(), mine["consumers"].as_i64())
                    == (Some(theirs.0), Some(theirs.2))
            })
            && work("fund-freeze")["messages"] == 7;
        last = out;
        if agreed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(agreed, "status --json never matched rabbitmqctl: {last}");
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_says_and_enforces_that_it_needs_a_stage() -> anyhow::Result<()> {
    let env = TestEnv::new("dlqall").await?;
    let (code, out, err) = run(&env, &["dlq", "replay", "--help"]).await?;
    assert_eq!(code, 0, "{err}");
    let all = out
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("--all"))
        .take_while(|line| !line.trim_start().starts_with("--error-kind"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        all.contains("--stage"),
        "the help of --all names --stage:\n{out}"
    );
    let (code, _, err) = run(&env, &["dlq", "replay", "--all"]).await?;
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("--stage"), "{err}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM replay_audit").await?,
        0
    );
    assert_eq!(env.assert_quiet_invariants().await?, 0);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_shown_and_reported_without_their_passwords() -> anyhow::Result<()> {
    let env = TestEnv::new("redact").await?;
    let secrets = [
        (
            "PAYFLEET_AMQP_URL",
            "amqp://payfleet-ops:amqp-S3cret@127.0.0.1:5672/nowhere",
        ),
        (
            "PAYFLEET_DATABASE_URL",
            "postgres://postgres:pg-S3cret@127.0.0.1:5432/nowhere",
        ),
        (
            "PAYFLEET_REDIS_URL",
            "redis://:redis-S3cret@127.0.0.1:6379/0",
        ),
    ];
    let with_secrets = |args: &[&str], extra: &[(&str, &str)]| {
        let mut command = payfleet(&env);
        command.envs(secrets).envs(extra.iter().copied()).args(args);
        command
    };
    let output = with_secrets(&["config"], &[]).output().await?;
    assert!(output.status.success());
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!shown.contains("S3cret"), "a password shown:\n{shown}");
    assert!(
        shown.contains("amqp://payfleet-ops:***@127.0.0.1:5672/nowhere")
            && shown.contains("postgres://postgres:***@127.0.0.1:5432/nowhere")
            && shown.contains("redis://:***@127.0.0.1:6379/0"),
        "the rest of each URL is shown:\n{shown}"
    );
    // Errors and logs that name a setting or a connection, at the most verbose level.
    let database = format!("postgres://postgres:pg-S3cret@127.0.0.1:5432/{}", env.name);
    for (args, extra) in [
        (
            &["dlq", "list"][..],
            &[
                ("RUST_LOG", "trace"),
                ("PAYFLEET_DATABASE_URL", database.as_str()),
            ][..],
        ),
        (&["status", "--json"][..], &[("RUST_LOG", "debug")][..]),
        (
            &["config"][..],
            &[(
                "PAYFLEET_AMQP_URL",
                "amqp://payfleet-ops:amqp-S3cret@127.0.0.1:notaport/x",
            )][..],
        ),
        (
            &["config"][..],
            &[(
                "PAYFLEET_DATABASE_URL",
                "postgres://postgres:pg-S3cret@127.0.0.1:5432/",
            )][..],
        ),
    ] {
        let output = with_secrets(args, extra).output().await?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !said.contains("S3cret"),
            "{args:?} {extra:?}: a password shown:\n{said}"
        );
    }
    let debugged = format!(
        "{:?}",
        payfleet_common::Settings {
            database_url: "postgres://postgres:pg-S3cret@127.0.0.1:5432/x".into(),
            ..env.settings.clone()
        }
    );
    assert!(!debugged.contains("S3cret"), "{debugged}");
    assert_eq!(env.assert_quiet_invariants().await?, 0);
    env.teardown().await
}

/// Ready messages in the probe transfer stage's work queue.
async fn transfers_queued(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(i64::from(
        env.queue_depth(&payfleet_common::Topology::work_queue(
            payfleet_tests::TRANSFER_STAGE,
        ))
        .await?,
    ))
}

/// Rows marked replayed that no replay audit names, and rows named twice.
async fn unaudited_and_doubly_audited(env: &TestEnv) -> anyhow::Result<(i64, i64)> {
    let unaudited = env
        .scalar_i64(
            "SELECT count(*) FROM dead_letters d WHERE d.status <> 'parked'
               AND NOT EXISTS (SELECT 1 FROM replay_audit a WHERE a.action = 'replay' AND d.id = ANY(a.dead_letter_ids))",
        )
        .await?;
    let doubled = env
        .scalar_i64(
            "SELECT count(*) FROM (SELECT u.dl FROM replay_audit, unnest(dead_letter_ids) AS u(dl)
               WHERE action = 'replay' GROUP BY u.dl HAVING count(*) > 1) d",
        )
        .await?;
    Ok((unaudited, doubled))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replays_started_together_publish_each_row_once_and_every_row_is_audited_as_it_goes()
-> anyhow::Result<()> {
    let env = TestEnv::new("dlqtwo").await?;
    let fleet = env.start_fleet().await?;
    dead_letter_transfers(&env, 300).await?;
    env.add_account("missing").await?;
    // The fleet stopped, whatever a replay publishes stays countable in the queue.
    fleet.stop().await;
    assert_eq!(transfers_queued(&env).await?, 0);

    // A replay killed mid-way has audited every row it marked replayed.
    let mut killed = payfleet(&env)
        .args(["dlq", "replay", "--stage", "probe-transfer", "--all"])
        .stdout(Stdio::null())
        .spawn()?;
    wait_until(WAIT, "the replay under way", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'replayed'")
            .await?
            >= 30)
    })
    .await?;
    killed.kill().await?;
    assert_eq!(
        unaudited_and_doubly_audited(&env).await?,
        (0, 0),
        "each replayed row is audited when it is marked"
    );

    // Two replays of the same rows at the same moment: each row published once.
    let queued_before = transfers_queued(&env).await?;
    let parked = env
        .scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
        .await?;
    let spawn = || {
        payfleet(&env)
            .args(["dlq", "replay", "--stage", "probe-transfer", "--all"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let (first, second) = (spawn()?, spawn()?);
    let (first, second) = tokio::join!(first.wait_with_output(), second.wait_with_output());
    let mut told = 0;
    for output in [first?, second?] {
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        told += out
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("a replay count in {out}"));
    }
    assert_eq!(
        told, parked,
        "between them the two replays replayed each parked row once"
    );
    assert_eq!(
        transfers_queued(&env).await? - queued_before,
        parked,
        "each row published exactly once"
    );
    assert_eq!(unaudited_and_doubly_audited(&env).await?, (0, 0));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
            .await?,
        0
    );

    let fleet = env.start_fleet().await?;
    wait_until(WAIT, "all 300 receipted", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?
            == 300)
    })
    .await?;
    env.wait_drained(WAIT).await?;
    fleet.stop().await;

    // Deleting purged rows past their retention is audited too.
    let (code, _, err) = run(
        &env,
        &[
            "dlq",
            "purge",
            "--stage",
            "probe-transfer",
            "--all",
            "--yes",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    sqlx::query(
        "UPDATE dead_letters SET status_changed_at = now() - interval '100 days' WHERE id IN (SELECT id FROM dead_letters ORDER BY id LIMIT 10)",
    )
    .execute(&env.pool)
    .await?;
    let (code, out, err) = run(&env, &["dlq", "purge", "--delete-expired"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 10"), "{out}");
    let (operator, count, ids): (String, i32, Vec<i64>) = sqlx::query_as(
        "SELECT operator, count, dead_letter_ids FROM replay_audit WHERE action = 'delete'",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(
        (operator.as_str(), count, ids.len()),
        ("oncall-test", 10, 10)
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM dead_letters").await?,
        290
    );
    assert_eq!(
        env.assert_quiet_invariants().await?,
        300,
        "each processed once"
    );
    env.teardown().await
}

/// A message dead-lettered once and applied from a second copy: past the
/// duplicate window, its inbox row stays while the dead letter is parked,
/// so replaying that old dead letter is recognised and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_dead_letter_of_an_applied_message_is_still_recognised_when_replayed()
-> anyhow::Result<()> {
    let env = TestEnv::new("oldreplay").await?;
    let fleet = env.start_fleet().await?;
    let t = transfer("late", "7.00");
    // the first copy finds no account and is dead-lettered
    env.publish_transfer(&t, "m-twice").await?;
    wait_until(WAIT, "the first copy parked", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE status = 'parked'")
            .await?
            == 1)
    })
    .await?;
    // the account appears, and a second copy of the message is applied
    env.add_account("late").await?;
    env.publish_transfer(&t, "m-twice").await?;
    env.wait_drained(WAIT).await?;
    let balance = || async {
        sqlx::query_scalar::<_, rust_decimal::Decimal>(
            "SELECT balance FROM probe_accounts WHERE account = 'late'",
        )
        .fetch_one(&env.pool)
        .await
    };
    assert_eq!(balance().await?, "7.00".parse()?);
    // forty days later, past the inbox's thirty
    sqlx::query("UPDATE inbox SET processed_at = processed_at - interval '40 days'")
        .execute(&env.pool)
        .await?;
    let pruned = retention::prune(&env.pool, &env.settings).await?;
    let kept: Vec<(String, String)> =
        sqlx::query_as("SELECT stage, message_id FROM inbox ORDER BY stage")
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(
        kept,
        vec![("probe-transfer".to_owned(), "m-twice".to_owned())],
        "only the row the parked dead letter needs is kept (pruned {pruned:?})"
    );
    let (code, out, err) = run(
        &env,
        &["dlq", "replay", "--stage", "probe-transfer", "--all"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1"), "{out}");
    env.wait_drained(WAIT).await?;
    fleet.stop().await;
    assert_eq!(
        balance().await?,
        "7.00".parse()?,
        "the replay changed nothing"
    );
    assert_eq!(env.assert_quiet_invariants().await?, 1);
    // replayed, the dead letter no longer holds the row back
    assert_eq!(retention::prune(&env.pool, &env.settings).await?.inbox, 1);
    env.teardown().await
}
