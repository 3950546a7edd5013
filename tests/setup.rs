//! The `payfleet` binary's setup commands against the real services:
//! `migrate`, `topology apply` and `topology export`, each idempotent.

use std::{path::PathBuf, process::Command};

use anyhow::bail;
use payfleet_tests::TestEnv;
use serde_json::Value;

/// The `payfleet` binary, built by cargo for this test.
fn payfleet() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(env!("CARGO_BIN_EXE_payfleet")))
}

fn run(env_vars: &[(String, String)], args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(payfleet()?)
        .args(args)
        .envs(env_vars.iter().cloned())
        .env("RUST_LOG", "warn")
        .output()?;
    if !output.status.success() {
        bail!(
            "payfleet {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn queue_names(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = listing
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_apply_creates_everything_once_and_export_imports() -> anyhow::Result<()> {
    // A fresh vhost without the topology the harness applies for other tests.
    let env = TestEnv::new("topology").await?;
    let vhost = format!("{}_cli", env.name);
    payfleet_tests::create_vhost(&vhost).await?;
    let vars = vec![(
        "PAYFLEET_AMQP_URL".to_owned(),
        format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
    )];

    let first = run(&vars, &["topology", "apply"])?;
    // 6 exchanges; 6 stages x (work + 5 delay levels + DLQ) + ingress +
    // unrouted events + status requests
    assert!(first.contains("51 created, 0 already present"), "{first}");
    for queue in [
        "payfleet.ingress",
        "payfleet.status-requests",
        "payfleet.settlement.retry.4",
        "payfleet.notification.dlq",
    ] {
        assert!(
            first.contains(&format!("created queue {queue}\n")),
            "{queue} missing from:\n{first}"
        );
    }
    let listing = |vhost: String| async move {
        let listed = payfleet_tests::rabbitmqctl(&[
            "list_queues",
            "-p",
            &vhost,
            "name",
            "--formatter",
            "json",
        ])
        .await?;
        anyhow::Ok(serde_json::from_str::<Value>(&listed)?)
    };
    let queues_after_first = queue_names(&listing(vhost.clone()).await?);
    assert_eq!(queues_after_first.len(), 45);

    let second = run(&vars, &["topology", "apply"])?;
    assert!(second.contains("0 created, 51 already present"), "{second}");
    assert_eq!(
        queue_names(&listing(vhost.clone()).await?),
        queues_after_first,
        "a second apply changes nothing"
    );
    let ingress = payfleet_tests::queue_info(&vhost, "payfleet.ingress").await?;
    assert_eq!(ingress["arguments"]["x-overflow"], "reject-publish");
    assert_eq!(ingress["durable"], true);

    // Export for another vhost and import it with rabbitmqctl.
    let imported = format!("{}_import", env.name);
    let file = std::env::temp_dir().join(format!("{imported}.json"));
    run(
        &[],
        &[
            "topology",
            "export",
            "--vhost",
            &imported,
            "--output",
            file.to_str().unwrap(),
        ],
    )?;
    let status = Command::new("rabbitmqctl")
        .arg("import_definitions")
        .arg(&file)
        .output()?;
    assert!(
        status.status.success(),
        "import_definitions: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut imported_queues = Vec::new();
    for _ in 0..50 {
        if let Ok(value) = listing(imported.clone()).await {
            imported_queues = queue_names(&value);
            if imported_queues.len() == queues_after_first.len() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        imported_queues, queues_after_first,
        "the export declares the same queues"
    );
    let _ = std::fs::remove_file(&file);
    for v in [&vhost, &imported] {
        payfleet_tests::delete_vhost(v).await;
    }
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_is_then_a_no_op() -> anyhow::Result<()> {
    let env = TestEnv::new("migrate").await?;
    let database = format!("{}_cli", env.name);
    let vars = vec![(
        "PAYFLEET_DATABASE_URL".to_owned(),
        format!("postgres://postgres@127.0.0.1:5432/{database}"),
    )];
    let first = run(&vars, &["migrate"])?;
    assert!(
        first.contains(&format!("created database {database}")),
        "{first}"
    );
    assert!(first.contains("applied migration"), "{first}");
    let second = run(&vars, &["migrate"])?;
    assert_eq!(second.trim(), format!("database {database} is up to date"));

    let pool =
        sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{database}")).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    for table in [
        "dead_letters",
        "delivery_counts",
        "inbox",
        "outbox",
        "replay_audit",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} missing: {tables:?}"
        );
    }
    pool.close().await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
    .await?;
    sqlx::query(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    env.teardown().await
}

#[test]
fn a_bad_setting_fails_with_its_name_and_a_bad_argument_exits_non_zero() -> anyhow::Result<()> {
    let output = Command::new(payfleet()?)
        .arg("migrate")
        .env("PAYFLEET_PREFETCH", "lots")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("prefetch") && stderr.contains("PAYFLEET_PREFETCH"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let output = Command::new(payfleet()?)
        .arg("topology")
        .arg("destroy")
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unrecognized subcommand"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_topology_is_accepted_by_the_broker() -> anyhow::Result<()> {
    let env = TestEnv::with("quorum", |s| {
        s.queue_type = payfleet_common::config::QueueType::Quorum
    })
    .await?;
    // TestEnv applied the quorum topology; the broker accepted every argument.
    let queue = env.queue_info("payfleet.settlement").await?;
    assert_eq!(queue["type"], "quorum");
    assert_eq!(queue["arguments"]["x-delivery-limit"], 20);
    let delay = env.queue_info("payfleet.settlement.retry.0").await?;
    assert_eq!(delay["type"], "quorum");
    assert_eq!(delay["arguments"]["x-message-ttl"], 200);
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ingress_queue_rejects_publishes_with_a_negative_confirm() -> anyhow::Result<()> {
    let env = TestEnv::with("ingress", |s| s.ingress_max_length = 3).await?;
    let connection = env.amqp().await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let mut outcomes = Vec::new();
    for i in 0..5 {
        let confirm = channel
            .basic_publish(
                "payfleet.ingress".into(),
                "payment.requested".into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("{{\"n\": {i}}}").as_bytes(),
                payfleet_common::broker::properties(
                    &format!("req-{i}"),
                    None,
                    Some("payment.requested"),
                ),
            )
            .await?
            .await?;
        outcomes.push(confirm.is_ack());
    }
    assert_eq!(
        outcomes,
        vec![true, true, true, false, false],
        "past max length upstream gets a nack"
    );
    assert_eq!(env.queue_depth("payfleet.ingress").await?, 3);
    let _ = connection.close(200, "done".into()).await;
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_runs_as_separate_worker_processes() -> anyhow::Result<()> {
    use payfleet_common::{broker, messages};
    use rust_decimal::Decimal;

    let env = TestEnv::new("workers").await?;
    use payfleet_workers::seed;
    seed::Catalogue {
        merchants: vec![
            seed::merchant("shop", "k").name("Shop"),
            seed::merchant("m1", "k1")
                .name("M1")
                .fee_rate(Decimal::new(100, 4)),
        ],
        users: vec![seed::user("alice").name("Alice").wallet(
            "CNY",
            Decimal::new(100_000, 2),
            "seed",
        )],
        products: vec![
            seed::product("tea", "m1", Decimal::new(1_250, 2))
                .name("Tea")
                .stock(100),
        ],
        ..Default::default()
    }
    .seed(&env.pool)
    .await?;

    // Two processes, three stages each: the chain split across the fleet.
    let spawn = |stages: &[&str]| {
        let mut command = tokio::process::Command::new(payfleet().expect("binary"));
        command
            .arg("worker")
            .args(stages)
            .envs(env.worker_env())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        command.stdout(std::process::Stdio::null()).spawn()
    };
    let mut intake = spawn(&["order-validation", "fund-freeze", "channel-call"])?;
    let mut settle = spawn(&["callback", "settlement", "notification"])?;

    for i in 0..20 {
        let request = messages::PaymentRequested {
            schema_version: 1,
            merchant_id: "shop".into(),
            merchant_order_id: format!("w-{i}"),
            user_id: "alice".into(),
            currency: "CNY".into(),
            items: vec![messages::RequestedItem {
                sku: "tea".into(),
                quantity: 2,
            }],
            coupon_code: None,
            payment_method: "balance".into(),
            payer_token: None,
            expected_amount: Decimal::new(2500, 2),
            notify_url: None,
            requested_at: chrono::Utc::now(),
        };
        let body = serde_json::to_vec(&request)?;
        let mut headers = lapin::types::FieldTable::default();
        broker::set_header(
            &mut headers,
            messages::SIGNATURE_HEADER,
            messages::sign("k", &body),
        );
        let props = broker::properties(&format!("req-{i}"), None, Some("payment.requested"))
            .with_headers(headers);
        env.publish_raw("payfleet.ingress", "payment.requested", &body, props)
            .await?;
    }
    payfleet_tests::wait_until(std::time::Duration::from_secs(60), "20 payments settled and notified", || async {
        Ok(env
            .scalar_i64("SELECT count(*) FROM payments p WHERE status = 'settled' AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = p.id)")
            .await?
            == 20)
    })
    .await?;
    for child in [&mut intake, &mut settle] {
        let pid = child.id().expect("running");
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        let status =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await??;
        assert!(status.success(), "a worker stops cleanly on SIGTERM");
    }
    payfleet_workers::domain::ledger::roll_up(&env.pool, 100_000).await?;
    let report = payfleet_workers::invariants::all(&env.pool).await?;
    assert!(report.ok(), "{:?}", report.failures());
    let wallet: Decimal = sqlx::query_scalar("SELECT total FROM accounts WHERE owner_id = 'alice'")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(wallet, Decimal::new(50_000, 2));
    let merchant: Decimal = sqlx::query_scalar("SELECT total FROM accounts WHERE owner_id = 'm1'")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(merchant, Decimal::new(49_500, 2), "500.00 less the 1 % fee");
    env.teardown().await
}

#[test]
fn worker_refuses_an_unknown_stage_in_one_line() -> anyhow::Result<()> {
    let output = Command::new(payfleet()?)
        .args(["worker", "fund-thaw"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value 'fund-thaw'"), "{stderr}");
    Ok(())
}

#[test]
fn every_subcommand_has_help_with_an_example_and_bad_arguments_get_one_line() -> anyhow::Result<()>
{
    let commands: &[&[&str]] = &[
        &[],
        &["migrate"],
        &["topology"],
        &["topology", "apply"],
        &["topology", "export"],
        &["topology", "upstream-user"],
        &["worker"],
        &["run"],
        &["sandbox-gateway"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["dlq", "purge"],
        &["status"],
        &["payment"],
        &["payment", "show"],
        &["payment", "resolve"],
        &["payment", "requery"],
        &["publish"],
        &["reconcile"],
        &["config"],
    ];
    for command in commands {
        let output = Command::new(payfleet()?)
            .args(*command)
            .arg("--help")
            .output()?;
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command:?} --help failed");
        assert!(
            help.contains("Example"),
            "{command:?} --help has no example:\n{help}"
        );
    }
    for bad in [
        &["dlq", "replay", "--id", "forty-two"][..],
        &["status", "--outbox-lag", "soon"],
        &["reconcile", "--date", "yesterday"],
        &["frobnicate"],
    ] {
        let output = Command::new(payfleet()?).args(bad).output()?;
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{bad:?}: one line, got:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_migration_gives_earlier_refunds_their_entries() -> anyhow::Result<()> {
    use std::borrow::Cow;

    use payfleet_common::db;
    use payfleet_workers::{domain::ledger, invariants};
    use rust_decimal::Decimal;
    use sqlx::Connection as _;
    use uuid::Uuid;

    // A database as the fleet left it before the books migration: a late
    // success refunded (owed, and one already sent), neither with an entry.
    let env = TestEnv::new("oldbooks").await?;
    let name = env.name.clone();
    env.teardown().await?;
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    db::ensure_database(&url).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let before_books = sqlx::migrate::Migrator {
        migrations: Cow::Owned(
            db::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 20261206000001)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    before_books.run(&pool).await?;
    sqlx::raw_sql(
        "INSERT INTO merchants (id, name, signing_key) VALUES ('shop', 'Shop', 'k');
         INSERT INTO channels (name, kind, base_url, methods, fee_rate)
           VALUES ('sandbox-card', 'sandbox', 'http://127.0.0.1:9', ARRAY['card'], 0.0120);",
    )
    .execute(&pool)
    .await?;
    let mut refunds = Vec::new();
    for (order, status) in [("owed", "owed"), ("sent", "succeeded")] {
        let payment = Uuid::now_v7();
        let attempt = Uuid::now_v7();
        let refund = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO payments (id, merchant_id, merchant_order_id, request_hash, user_id, method, channel, currency,
                                   amount, status, reason, expires_at, requested_at, channel_fee)
             VALUES ($1, 'shop', $2, 'h', 'alice', 'card', 'sandbox-card', 'CNY', 50.00, 'cancelled', 'expired',
                     now(), now(), 0.60)",
        )
        .bind(payment)
        .bind(order)
        .execute(&pool)
        .await?;
        sqlx::query("INSERT INTO payment_events (event_id, payment_id, event_type) VALUES ($1, $2, 'payment.failed')")
            .bind(Uuid::now_v7())
            .bind(payment)
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status) VALUES ($1, $2, 'sandbox-card', 50.00, 'CNY', 'succeeded')")
            .bind(attempt)
            .bind(payment)
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO refunds (id, payment_id, attempt_id, channel, amount, currency, reason, status) VALUES ($1, $2, $3, 'sandbox-card', 50.00, 'CNY', 'late_success', $4)")
            .bind(refund)
            .bind(payment)
            .bind(attempt)
            .bind(status)
            .execute(&pool)
            .await?;
        refunds.push((refund, attempt));
    }

    // The books migration, then the sender pays the owed refund as it would.
    db::MIGRATOR.run(&pool).await?;
    let (owed, owed_attempt) = refunds[0];
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE refunds SET status = 'succeeded' WHERE id = $1")
        .bind(owed)
        .execute(&mut *tx)
        .await?;
    ledger::refund_sent(
        &mut tx,
        owed,
        owed_attempt.into(),
        "sandbox-card",
        Decimal::new(5000, 2),
        "CNY",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await?;
    ledger::roll_up(&pool, 1_000)
        .await
        .map_err(|e| anyhow::anyhow!("the roll-up must go on: {e}"))?;
    let report = invariants::all(&pool).await?;
    assert!(report.ok(), "invariants broken: {:?}", report.failures());
    // Each charge came in once (less the channel's 0.60) and went back once.
    let clearing: Vec<Decimal> = sqlx::query_scalar(
        "SELECT p.amount FROM postings p JOIN accounts a ON a.id = p.account_id
         WHERE a.owner_id = 'clearing:sandbox-card' ORDER BY p.amount",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        clearing,
        [
            Decimal::new(-4940, 2),
            Decimal::new(-4940, 2),
            Decimal::new(5000, 2),
            Decimal::new(5000, 2)
        ]
    );
    pool.close().await;
    let mut admin =
        sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_user_may_publish_to_the_ingress_only() -> anyhow::Result<()> {
    use lapin::{
        BasicProperties, Connection, ConnectionProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions},
    };
    let env = TestEnv::new("upstreamuser").await?;
    let vars = payfleet_tests::settings_env(&env.settings);
    let user = format!("{}_upstream", env.name);
    // --print shows the rabbitmqctl commands and changes nothing
    let printed = run(
        &vars,
        &[
            "topology",
            "upstream-user",
            "--user",
            &user,
            "--password",
            "upstream-pw",
            "--print",
        ],
    )?;
    assert!(
        printed.contains(&format!("rabbitmqctl add_user '{user}'")),
        "{printed}"
    );
    assert!(
        printed.contains(r"'^$' '^payfleet\.ingress$' '^$'"),
        "{printed}"
    );
    let users = payfleet_tests::rabbitmqctl(&["list_users"]).await?;
    assert!(!users.contains(&user), "--print creates nothing");
    // --create makes it; a second --create is a no-op
    run(
        &vars,
        &[
            "topology",
            "upstream-user",
            "--user",
            &user,
            "--password",
            "upstream-pw",
            "--create",
        ],
    )?;
    run(
        &vars,
        &[
            "topology",
            "upstream-user",
            "--user",
            &user,
            "--password",
            "upstream-pw",
            "--create",
        ],
    )?;
    let vhost = env
        .settings
        .amqp_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let url = format!("amqp://{user}:upstream-pw@127.0.0.1:5672/{vhost}");
    let publish = |exchange: &'static str, key: &'static str| {
        let url = url.clone();
        async move {
            let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default(),
                )
                .await?
                .await?;
            let _ = connection.close(200, "done".into()).await;
            anyhow::Ok(confirm)
        }
    };
    let ingress = publish("payfleet.ingress", "payment.requested").await?;
    assert!(ingress.is_ack(), "{ingress:?}");
    for (exchange, key) in [
        ("payfleet.stages", "fund-freeze"),
        ("payfleet.retry", "order-validation.0"),
        ("payfleet.dlx", "order-validation"),
        ("payfleet.events", "payment.succeeded"),
        ("", "payfleet.settlement"),
    ] {
        let refused = publish(exchange, key).await;
        let text = format!("{refused:?}");
        assert!(
            refused.is_err() && text.contains("ACCESS_REFUSED"),
            "{exchange}: {text}"
        );
    }
    let _ = payfleet_tests::rabbitmqctl(&["delete_user", &user]).await;
    env.teardown().await
}
