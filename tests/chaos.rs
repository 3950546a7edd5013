//! The chaos suite: a mixed demo load (balance and sandbox channels, with
//! declines, timeouts, lost and duplicated channel webhooks) carried by
//! worker processes while faults are injected at random moments: workers
//! killed with SIGKILL and restarted, Redis stopped and restarted, the
//! PostgreSQL cluster restarted as after a crash, and every broker
//! connection of the vhost closed. PostgreSQL and Redis are the suite's own
//! (started on free ports), so restarting them disturbs no other test.
//!
//! Afterwards every payment is terminal, the books balance and agree with
//! the sandbox's own store (nothing charged twice), only the deliberate
//! poison is dead-lettered, and each payment was notified under one webhook
//! id. The run prints what it did and found. `CHAOS_SEED` replays a
//! run (the seed is printed); `CHAOS_REQUESTS` sizes the load.

use std::time::{Duration, Instant};

use payfleet_common::lock::DEGRADED_GAUGE;
use payfleet_tests::{
    TestEnv, free_port, free_ports,
    services::{OwnPostgres, OwnRedis},
    settings_env,
};
use payfleet_workers::demo::Load;

/// What the fleet runs as: two processes that split the stages between
/// them, and one that runs every stage and receives the sandbox's webhooks.
const PROCESSES: [&[&str]; 3] = [
    &["order-validation", "fund-freeze", "channel-call"],
    &["callback", "settlement", "notification"],
    &[],
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillWorker,
    StopRedis,
    RestartPostgres,
    CloseBrokerConnections,
}

/// One worker process, restartable.
struct Process {
    stages: &'static [&'static str],
    env: Vec<(String, String)>,
    http_addr: String,
    /// Where its webhook ingress listens (the sandbox's webhooks go to one).
    ingress_addr: String,
    child: Option<tokio::process::Child>,
    /// Retries counted by earlier lives of this process.
    retries_before: u64,
}

impl Process {
    fn start(&mut self) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_payfleet"));
        command.arg("worker");
        if self.stages.is_empty() {
            command.args(payfleet_workers::STAGES);
        } else {
            command.args(self.stages);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PAYFLEET_HTTP_ADDR", &self.http_addr)
            .env("PAYFLEET_INGRESS_ADDR", &self.ingress_addr)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        self.child = Some(command.spawn()?);
        Ok(())
    }

    /// Messages this process sent round a retry level (from its `/metrics`).
    async fn retries(&self) -> u64 {
        let Ok(response) = reqwest::get(format!("http://{}/metrics", self.http_addr)).await else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with("payfleet_messages_total{") && l.contains("result=\"retried\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn kill(&mut self) {
        self.retries_before += self.retries().await;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Its `/readyz` says every consumer is consuming, and its `/metrics`
    /// says it is not degraded.
    async fn recovered(&self) -> bool {
        let ready = reqwest::get(format!("http://{}/readyz", self.http_addr))
            .await
            .is_ok_and(|r| r.status().is_success());
        let degraded = match reqwest::get(format!("http://{}/metrics", self.http_addr)).await {
            Ok(response) => response.text().await.unwrap_or_default().lines().any(|l| {
                l.strip_prefix(&format!("{DEGRADED_GAUGE} "))
                    .is_some_and(|v| v.trim() == "1")
            }),
            Err(_) => true,
        };
        ready && !degraded
    }
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

fn requests() -> usize {
    std::env::var("CHAOS_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500)
}

/// Seconds from the end of a fault until every process is ready and not
/// degraded again, and payments have moved since (or the load is complete).
async fn time_to_recover(load: &Load, processes: &[Process]) -> anyhow::Result<f64> {
    let since = Instant::now();
    let before = load.progress().await?.terminal;
    loop {
        let now = load.progress().await?.terminal;
        let moved = now > before || now >= load.expected_payments();
        let mut all = moved;
        for process in processes {
            all = all && process.recovered().await;
        }
        if all {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("not recovered 120 s after the fault");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_load_survives_random_crashes_and_outages() -> anyhow::Result<()> {
    let seed = seed();
    let requests = requests();
    println!("chaos: seed {seed} (CHAOS_SEED={seed} replays it), {requests} requests");
    let mut rng = fastrand::Rng::with_seed(seed);
    let postgres = OwnPostgres::start(None)?;
    let mut redis = OwnRedis::start(None).await?;
    let (pg_port, redis_port) = (postgres.port, redis.port);
    let env = TestEnv::with("chaos", |s| {
        let database = s
            .database_url
            .rsplit('/')
            .next()
            .unwrap_or("payfleet")
            .to_owned();
        s.database_url = format!("postgres://postgres@127.0.0.1:{pg_port}/{database}");
        s.redis_url = format!("redis://127.0.0.1:{redis_port}/0");
        let [http, ingress] = free_ports::<2>();
        s.http_addr = format!("127.0.0.1:{http}");
        s.ingress_addr = format!("127.0.0.1:{ingress}");
        // four pools share the suite's cluster of 60 connections
        s.db_max_connections = 8;
    })
    .await?;

    let mut load = Load::prepare(env.settings.clone(), requests, seed).await?;
    let worker_env = settings_env(&load.settings);
    let mut processes: Vec<Process> = PROCESSES
        .iter()
        .enumerate()
        .map(|(i, stages)| Process {
            stages,
            env: worker_env.clone(),
            http_addr: if i == PROCESSES.len() - 1 {
                load.settings.http_addr.clone()
            } else {
                format!("127.0.0.1:{}", free_port())
            },
            // the last one listens where the sandbox sends its webhooks
            ingress_addr: if i == PROCESSES.len() - 1 {
                load.settings.ingress_addr.clone()
            } else {
                "127.0.0.1:0".into()
            },
            child: None,
            retries_before: 0,
        })
        .collect();
    for process in &mut processes {
        process.start()?;
    }
    let started = Instant::now();
    let stop_publishing = payfleet_common::CancellationToken::new();
    load.publish(stop_publishing.clone())?.await??;

    // The faults, in a random order at random moments, once the load runs.
    let mut faults = vec![
        Fault::KillWorker,
        Fault::KillWorker,
        Fault::KillWorker,
        Fault::StopRedis,
        Fault::StopRedis,
        Fault::RestartPostgres,
        Fault::CloseBrokerConnections,
        Fault::CloseBrokerConnections,
    ];
    rng.shuffle(&mut faults);
    // Printed as it happens: a run stopped by the harness still shows its faults.
    println!("chaos: faults injected");
    let log = |line: String| println!("  {line}");
    let mut recoveries: Vec<f64> = Vec::new();
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_500..4_000))).await;
        if load.progress().await?.terminal >= load.expected_payments() {
            log(format!("{fault:?}: not injected, the load had finished"));
            continue;
        }
        let at = started.elapsed().as_secs_f64();
        let what = match fault {
            Fault::KillWorker => {
                let index = rng.usize(0..processes.len());
                processes[index].kill().await;
                tokio::time::sleep(Duration::from_millis(rng.u64(300..2_000))).await;
                processes[index].start()?;
                format!(
                    "SIGKILL worker {index} {:?}, restarted",
                    processes[index].stages
                )
            }
            Fault::StopRedis => {
                let down = rng.u64(2_000..5_000);
                redis.stop().await;
                tokio::time::sleep(Duration::from_millis(down)).await;
                redis.start_again().await?;
                format!("Redis stopped for {down} ms, restarted empty")
            }
            Fault::RestartPostgres => {
                postgres.stop()?;
                tokio::time::sleep(Duration::from_millis(rng.u64(500..2_000))).await;
                postgres.start_again()?;
                "PostgreSQL stopped as in a crash (-m immediate), restarted".to_owned()
            }
            Fault::CloseBrokerConnections => {
                let closed = env.close_broker_connections().await?;
                format!("{closed} broker connections of the vhost closed")
            }
        };
        let recovered = time_to_recover(&load, &processes).await?;
        recoveries.push(recovered);
        log(format!(
            "[{at:>6.1}s] {what}; recovered in {recovered:.2} s"
        ));
    }

    // Ends before the harness's six minutes, so a failure prints its summary.
    let within = load
        .deadline()
        .min(Duration::from_secs(300).saturating_sub(started.elapsed()));
    let finished = load.wait(within, |_| {}).await?;
    let elapsed = started.elapsed();
    let mut retries = 0;
    for process in &processes {
        retries += process.retries_before + process.retries().await;
    }
    let dead = env.dead_letters().await?;
    let verdict = load.verify().await?;
    for process in &mut processes {
        process.kill().await;
    }

    println!("{}", verdict.summary);
    println!(
        "chaos: {} payments terminal in {:.1} s · retries {retries} · dead letters {} · \
         webhooks {} delivered under {} ids · recovery after a fault: max {:.2} s, mean {:.2} s",
        verdict.payments,
        elapsed.as_secs_f64(),
        dead.len(),
        verdict.webhooks_received,
        verdict.webhook_ids,
        recoveries.iter().copied().fold(0.0, f64::max),
        recoveries.iter().sum::<f64>() / recoveries.len().max(1) as f64,
    );

    assert!(
        finished,
        "every payment terminal and nothing in flight (seed {seed})"
    );
    assert!(
        verdict.invariants.ok(),
        "invariants (seed {seed}): {}",
        verdict.invariants.failures().join("; ")
    );
    let unexpected = env.unexpected_dead_letters().await?;
    assert!(
        unexpected.is_empty(),
        "only the deliberate poison is dead-lettered (seed {seed}): {unexpected:?}"
    );
    assert_eq!(
        verdict.webhook_ids as i64, verdict.payments,
        "each payment is notified, under one webhook id (seed {seed})"
    );
    let removed = env.teardown().await;
    drop(redis);
    drop(postgres);
    removed
}
