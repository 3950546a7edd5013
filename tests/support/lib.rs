//! The test harness: every test stands up its own isolated world on the real
//! services — a fresh PostgreSQL database, a fresh RabbitMQ vhost with the
//! topology applied, its own Redis key prefix — runs fleets in-process or as
//! real worker processes, and checks the invariants at the end.

pub mod broker_proxy;
pub mod probe;
pub mod services;

use std::{
    future::Future,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lapin::{
    BasicProperties, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use payfleet_common::{
    CancellationToken, Fleet, Settings, Topology, broker, db,
    messages::{self, PaymentRequested},
};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use probe::{
    Behaviour, RECEIPT_STAGE, Receipt, ReceiptStage, TRANSFER_STAGE, Transfer, TransferStage,
};

/// The committed topology plus the probe stages.
pub fn probe_topology(settings: &Settings) -> anyhow::Result<Topology> {
    Ok(Topology::from_settings(settings)?
        .with_stage(TRANSFER_STAGE)
        .with_stage(RECEIPT_STAGE))
}

/// One test's isolated services.
pub struct TestEnv {
    pub name: String,
    pub settings: Settings,
    pub pool: PgPool,
    pub topology: Topology,
    torn_down: bool,
}

/// Settings for tests: short delays so retries finish in seconds.
fn test_settings(name: &str) -> Settings {
    Settings {
        amqp_url: format!("amqp://guest:guest@127.0.0.1:5672/{name}"),
        database_url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
        redis_url: "redis://127.0.0.1:6379/0".into(),
        redis_key_prefix: name.to_owned(),
        retry_delays: payfleet_common::config::millis(&[200, 400, 800]),
        max_attempts: 4,
        crash_loop_limit: 3,
        lock_ttl: std::time::Duration::from_millis(3_000),
        shutdown_timeout: std::time::Duration::from_millis(5_000),
        outbox_poll: std::time::Duration::from_millis(250),
        outbox_lease: std::time::Duration::from_millis(2_000),
        prefetch: 16,
        max_in_flight: 8,
        db_max_connections: 10,
        http_addr: "127.0.0.1:0".into(),
        ingress_addr: "127.0.0.1:0".into(),
        // the tests' merchant receivers listen on 127.0.0.1
        webhook_allow_loopback: true,
        ..Settings::default()
    }
}

impl TestEnv {
    pub async fn new(tag: &str) -> anyhow::Result<Self> {
        Self::with(tag, |_| {}).await
    }

    /// A fresh database, vhost and Redis prefix; `adjust` may change settings.
    pub async fn with(tag: &str, adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let name = format!("pft_{tag}_{}", &Uuid::new_v4().simple().to_string()[..10]);
        let mut settings = test_settings(&name);
        adjust(&mut settings);
        settings.validate()?;
        let env_without_pool = |pool| TestEnv {
            name: name.clone(),
            settings: settings.clone(),
            pool,
            topology: probe_topology(&settings).expect("topology"),
            torn_down: false,
        };
        create_vhost(&name).await?;
        db::migrate(&settings)
            .await
            .context("migrating the test database")?;
        let pool = db::connect(&settings).await?;
        sqlx::raw_sql(probe::PROBE_SCHEMA)
            .execute(&pool)
            .await
            .context("probe schema")?;
        let env = env_without_pool(pool);
        let connection = env.amqp().await?;
        env.topology.apply(&connection).await?;
        let _ = connection.close(200, "applied".into()).await;
        Ok(env)
    }

    pub async fn amqp(&self) -> anyhow::Result<Connection> {
        Ok(broker::connect_once(
            &broker::Endpoint::from_settings(&self.settings)?,
            "payfleet-test",
        )
        .await?)
    }

    /// An in-process fleet with both probe stages and the keeper.
    pub async fn fleet(&self) -> anyhow::Result<Fleet> {
        self.fleet_with(self.settings.clone()).await
    }

    pub async fn fleet_with(&self, settings: Settings) -> anyhow::Result<Fleet> {
        let fleet = Fleet::connect(settings, self.topology.clone()).await?;
        let pool = fleet.shared().pool.clone();
        Ok(fleet
            .stage(TransferStage {
                may_abort: false,
                pool,
            })?
            .stage(ReceiptStage)?
            .with_keeper())
    }

    /// Starts an in-process fleet; stop it with [`RunningFleet::stop`].
    pub async fn start_fleet(&self) -> anyhow::Result<RunningFleet> {
        RunningFleet::start(self.fleet().await?)
    }

    pub async fn add_account(&self, account: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO probe_accounts (account) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(account)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Publishes with confirms to a stage's work queue.
    pub async fn publish_to_stage(
        &self,
        stage: &str,
        message_id: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let props = broker::properties(message_id, None, Some("probe.transfer"));
        self.publish_raw(
            &self.topology.exchanges().stages.clone(),
            stage,
            body,
            props,
        )
        .await
    }

    pub async fn publish_transfer(
        &self,
        transfer: &Transfer,
        message_id: &str,
    ) -> anyhow::Result<()> {
        self.publish_to_stage(TRANSFER_STAGE, message_id, &serde_json::to_vec(transfer)?)
            .await
    }

    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> anyhow::Result<()> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        if !matches!(confirm, lapin::Confirmation::Ack(None)) {
            bail!("publish to {exchange}/{routing_key} not delivered: {confirm:?}");
        }
        let _ = connection.close(200, "published".into()).await;
        Ok(())
    }

    /// Publishes `request` to the ingress as its merchant would: signed
    /// with `signing_key`, under a fresh message id.
    pub async fn publish_payment_request(
        &self,
        signing_key: &str,
        request: &PaymentRequested,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(request)?;
        let mut headers = FieldTable::default();
        broker::set_header(
            &mut headers,
            messages::SIGNATURE_HEADER,
            messages::sign(signing_key, &body),
        );
        let props = broker::properties(
            &Uuid::now_v7().to_string(),
            None,
            Some(messages::kind::PAYMENT_REQUESTED),
        )
        .with_headers(headers);
        self.publish_raw(
            "payfleet.ingress",
            messages::kind::PAYMENT_REQUESTED,
            &body,
            props,
        )
        .await
    }

    /// Messages ready in a queue, as the broker counts them now.
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "counted".into()).await;
        Ok(declared.message_count())
    }

    pub async fn scalar_i64(&self, sql: &str) -> anyhow::Result<i64> {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .with_context(|| sql.to_owned())
    }

    /// A queue of this test's vhost (see [`queue_info`]).
    pub async fn queue_info(&self, queue: &str) -> anyhow::Result<Value> {
        queue_info(&self.name, queue).await
    }

    /// Closes every client connection of this vhost (`rabbitmqctl
    /// close_all_connections -p`), as a broker restart would; returns how
    /// many were open.
    pub async fn close_broker_connections(&self) -> anyhow::Result<usize> {
        let listed = tokio::process::Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "--no-table-headers", "vhost"])
            .output()
            .await?;
        let open = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|line| line.trim() == self.name)
            .count();
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args([
                "close_all_connections",
                "-q",
                "-p",
                &self.name,
                "test: broker connection dropped",
            ])
            .output()
            .await?;
        if !closed.status.success() {
            bail!(
                "close_all_connections: {}",
                String::from_utf8_lossy(&closed.stderr)
            );
        }
        Ok(open)
    }

    /// Waits until the work and delay queues of both probe stages stay empty
    /// for longer than the longest delay level, i.e. nothing is queued or waiting.
    pub async fn wait_drained(&self, within: Duration) -> anyhow::Result<()> {
        let mut queues = Vec::new();
        for stage in [TRANSFER_STAGE, RECEIPT_STAGE] {
            queues.push(Topology::work_queue(stage));
            for level in 0..self.settings.retry_delays.len() {
                queues.push(Topology::retry_queue(stage, level));
            }
        }
        let longest = self
            .settings
            .retry_delays
            .last()
            .copied()
            .unwrap_or(Duration::from_secs(1));
        let deadline = Instant::now() + within;
        let mut empty_since: Option<Instant> = None;
        loop {
            let mut total = 0;
            for queue in &queues {
                total += self.queue_depth(queue).await?;
            }
            let unsent = self
                .scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                .await?;
            if total == 0 && unsent == 0 {
                let since = *empty_since.get_or_insert_with(Instant::now);
                // A passive declare counts ready messages only: one a consumer
                // holds (collecting its batch, or in a slow transaction) is
                // invisible to it. The broker's own count includes those.
                if since.elapsed() > longest + Duration::from_millis(500) {
                    if self.messages_held_or_ready(&queues).await? == 0 {
                        return Ok(());
                    }
                    empty_since = None;
                }
            } else {
                empty_since = None;
            }
            if Instant::now() > deadline {
                bail!(
                    "queues not drained after {within:?}: {total} queued, {unsent} outbox rows unsent"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages in `queues` ready or delivered and not yet acked, as
    /// `rabbitmqctl list_queues` counts them.
    async fn messages_held_or_ready(&self, queues: &[String]) -> anyhow::Result<u64> {
        let listed = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.name,
            "name",
            "messages",
            "--formatter",
            "json",
        ])
        .await?;
        let listed: Vec<Value> = serde_json::from_str(&listed)
            .with_context(|| format!("rabbitmqctl list_queues output: {listed}"))?;
        Ok(listed
            .iter()
            .filter(|q| queues.iter().any(|name| q["name"] == name.as_str()))
            .filter_map(|q| q["messages"].as_u64())
            .sum())
    }

    /// Dead letters in the store.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetterRow>> {
        Ok(sqlx::query_as(
            "SELECT stage, message_id, error_kind, error_message, attempts, first_failed_at, last_failed_at,
                    headers, body, status
             FROM dead_letters ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Dead letters other than the deliberate poison (undecodable bodies),
    /// each as "stage kind: message": what a scenario must not produce.
    pub async fn unexpected_dead_letters(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .dead_letters()
            .await?
            .into_iter()
            .filter(|d| d.error_kind != "poison")
            .map(|d| format!("{} {}: {}", d.stage, d.error_kind, d.error_message))
            .collect())
    }

    /// Environment for a worker process with these settings.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        settings_env(&self.settings)
    }

    /// Starts the probe worker process (`bin`: the test's
    /// `env!("CARGO_BIN_EXE_probe-worker")`); `extra` adds environment (e.g. PAYFLEET_FAULT).
    pub fn spawn_worker(&self, bin: &str, extra: &[(&str, &str)]) -> anyhow::Result<Worker> {
        let mut command = tokio::process::Command::new(bin);
        for (key, value) in self.worker_env() {
            command.env(key, value);
        }
        for (key, value) in extra {
            command.env(key, value);
        }
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        Ok(Worker {
            child: command.spawn().context("starting probe-worker")?,
        })
    }

    /// The invariants of the probe stages once the fleet is quiet: each
    /// account's balance is the sum of its postings; each transfer has exactly
    /// one posting and one receipt and is receipted; returns the transfer count.
    pub async fn assert_quiet_invariants(&self) -> anyhow::Result<i64> {
        let wrong_balances = self
            .scalar_i64(
                "SELECT count(*) FROM probe_accounts a
                 WHERE a.balance <> COALESCE((SELECT sum(amount) FROM probe_postings p WHERE p.account = a.account), 0)",
            )
            .await?;
        assert_eq!(
            wrong_balances, 0,
            "an account balance differs from the sum of its postings"
        );
        let double_postings = self
            .scalar_i64("SELECT count(*) FROM (SELECT transfer_id FROM probe_postings GROUP BY transfer_id HAVING count(*) <> 1) d")
            .await?;
        assert_eq!(double_postings, 0, "a transfer was posted more than once");
        let double_receipts = self
            .scalar_i64("SELECT count(*) FROM (SELECT transfer_id FROM probe_receipts GROUP BY transfer_id HAVING count(*) <> 1) d")
            .await?;
        assert_eq!(double_receipts, 0, "a receipt was applied more than once");
        let transfers = self
            .scalar_i64("SELECT count(*) FROM probe_transfers")
            .await?;
        let receipted = self
            .scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'")
            .await?;
        let postings = self
            .scalar_i64("SELECT count(*) FROM probe_postings")
            .await?;
        let receipts = self
            .scalar_i64("SELECT count(*) FROM probe_receipts")
            .await?;
        assert_eq!(
            receipted, transfers,
            "every applied transfer ends receipted"
        );
        assert_eq!(postings, transfers, "one posting per transfer");
        assert_eq!(receipts, transfers, "one receipt per transfer");
        let unsent = self
            .scalar_i64("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .await?;
        assert_eq!(unsent, 0, "the outbox is drained");
        Ok(transfers)
    }

    /// Drops the database, the vhost and the Redis keys.
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        self.torn_down = true;
        self.pool.close().await;
        cleanup(&self.name, &self.settings).await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        // A failed test still leaves nothing behind.
        let name = self.name.clone();
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = runtime.block_on(cleanup(&name, &settings));
            }
        })
        .join();
    }
}

pub use payfleet_common::rabbitmqctl::rabbitmqctl;

/// A queue of `vhost` as `rabbitmqctl list_queues` reports it (name, type,
/// durable, arguments): no management API needed.
pub async fn queue_info(vhost: &str, queue: &str) -> anyhow::Result<Value> {
    let listed = rabbitmqctl(&[
        "list_queues",
        "-p",
        vhost,
        "name",
        "type",
        "durable",
        "arguments",
        "--formatter",
        "json",
    ])
    .await?;
    let queues: Vec<Value> = serde_json::from_str(&listed)
        .with_context(|| format!("rabbitmqctl list_queues output: {listed}"))?;
    let mut found = queues
        .into_iter()
        .find(|q| q["name"] == queue)
        .with_context(|| format!("queue {queue} not found in vhost {vhost}"))?;
    // rabbitmqctl lists arguments as [name, type, value] triples; make them
    // the object the management API shows.
    if let Some(triples) = found["arguments"].as_array() {
        let arguments: serde_json::Map<String, Value> = triples
            .iter()
            .filter_map(|t| Some((t.get(0)?.as_str()?.to_owned(), t.get(2)?.clone())))
            .collect();
        found["arguments"] = Value::Object(arguments);
    }
    Ok(found)
}

/// A vhost of its own for one test, open to the `guest` user.
pub async fn create_vhost(name: &str) -> anyhow::Result<()> {
    rabbitmqctl(&["add_vhost", name]).await?;
    rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]).await?;
    Ok(())
}

/// Deletes a vhost and everything in it; a missing vhost is not an error.
pub async fn delete_vhost(name: &str) {
    let _ = rabbitmqctl(&["delete_vhost", name]).await;
}

async fn cleanup(name: &str, settings: &Settings) -> anyhow::Result<()> {
    delete_vhost(name).await;
    if let Ok(mut admin) =
        sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    if let Ok(client) = redis::Client::open(settings.redis_url.as_str()) {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{name}:*"))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
    }
    Ok(())
}

use sqlx::Connection as _;

/// `PAYFLEET_*` variables that reproduce `settings` in another process.
pub fn settings_env(settings: &Settings) -> Vec<(String, String)> {
    let value = serde_json::to_value(settings).expect("settings serialize");
    let mut env = Vec::new();
    if let Value::Object(map) = value {
        for (key, value) in map {
            let text = match value {
                // an unset optional setting is left out, as a user would
                Value::Null => continue,
                Value::String(s) => s,
                // figment reads a map from the environment as `{key=value,...}`
                Value::Object(entries) => format!(
                    "{{{}}}",
                    entries
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                other => other.to_string(),
            };
            env.push((format!("PAYFLEET_{}", key.to_uppercase()), text));
        }
    }
    env
}

/// A row of the dead-letter store.
#[derive(Debug, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub stage: String,
    pub message_id: String,
    pub error_kind: String,
    pub error_message: String,
    pub attempts: i32,
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
    pub last_failed_at: chrono::DateTime<chrono::Utc>,
    pub headers: Value,
    pub body: Vec<u8>,
    pub status: String,
}

/// A fleet running in this process.
pub struct RunningFleet {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl RunningFleet {
    pub fn start(fleet: Fleet) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = fleet.run(token).await {
                eprintln!("fleet stopped with an error: {error}");
            }
        });
        Ok(Self { stop, handle })
    }

    /// Graceful stop; waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// A worker process.
pub struct Worker {
    pub child: tokio::process::Child,
}

impl Worker {
    /// SIGKILL, and wait for it to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to end by itself.
    pub async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .context("worker did not exit in time")??)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("worker already gone")?;
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }
}

/// A TCP port nothing listens on right now (for a fleet's HTTP address).
///
/// Picked below the kernel's ephemeral range (32768 and up on Linux), so
/// that no outgoing connection of a test running beside this one is given
/// the port between the moment it is chosen and the moment it is bound.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports (as [`free_port`]): each stays bound until all
/// are chosen, so two picks never return the same port.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut held = Vec::with_capacity(N);
    for _ in 0..1_000 {
        let port = fastrand::u16(20_000..32_000);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, listener));
            if held.len() == N {
                return std::array::from_fn(|i| held[i].0);
            }
        }
    }
    panic!("not {N} free ports between 20000 and 32000");
}

/// Polls `check` until it returns true, or fails after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transfer of `amount` to `account` with a fresh id.
pub fn transfer(account: &str, amount: &str) -> Transfer {
    Transfer {
        transfer_id: Uuid::now_v7(),
        account: account.to_owned(),
        amount: amount.parse().expect("decimal literal"),
        behaviour: Behaviour::default(),
    }
}

/// The settings the hot-account benchmarks load the fleet with: a wide
/// prefetch and pool, risk out of the way, quiet logs.
pub fn bench_settings(s: &mut Settings) {
    s.prefetch = 64;
    s.max_in_flight = 32;
    s.db_max_connections = 24;
    s.risk_velocity_limit = 1_000_000;
    s.risk_challenge_amount.insert("CNY".into(), 1_000_000);
    s.risk_block_amount.insert("CNY".into(), 1_000_000);
    s.log_filter = "warn".into();
}

/// Publishes `requests` of message `kind` to the ingress exchange as
/// upstream would: each signed with `key` under a new message id, with
/// publisher confirms awaited two hundred at a time (the benchmarks' load).
pub async fn publish_signed_requests<T: serde::Serialize>(
    publisher: &payfleet_common::broker::Publisher,
    kind: &str,
    key: &str,
    requests: &[T],
) -> anyhow::Result<()> {
    use payfleet_common::{broker, messages};
    for window in requests.chunks(200) {
        let mut confirms = Vec::new();
        for request in window {
            let body = serde_json::to_vec(request)?;
            let mut headers = lapin::types::FieldTable::default();
            broker::set_header(
                &mut headers,
                messages::SIGNATURE_HEADER,
                messages::sign(key, &body),
            );
            let properties = broker::properties(&Uuid::now_v7().to_string(), None, Some(kind))
                .with_headers(headers);
            let message = broker::Outgoing {
                exchange: "payfleet.ingress".into(),
                routing_key: kind.into(),
                body,
                properties,
            };
            let confirm = publisher.start(&message).await?;
            confirms.push((message, confirm));
        }
        for (message, confirm) in confirms {
            broker::confirmed(confirm, &message).await?;
        }
    }
    Ok(())
}
