//! One measured run of the fleet in a fresh shadow environment (its
//! database a copy of the prepared catalogue and history): publish
//! the requests (all before the fleet starts, or at a rate while it runs),
//! time them to their final events, then check the invariants.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::Context;
use payfleet_common::{
    CancellationToken, Settings, Topology,
    broker::{self, Publisher},
    db, telemetry,
};
use sqlx::PgPool;

use super::{Live, Options, final_events::FinalEvents, resources, shadow::Shadow, workload};
use crate::invariants;

/// What one fleet run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetRun {
    pub payments: usize,
    pub settled: i64,
    pub seconds: f64,
    pub per_second: f64,
    /// Publish → final event, milliseconds: p50, p95, p99, max.
    pub latency_ms: [f64; 4],
    /// Mean handling time per stage, milliseconds.
    pub handle_ms: BTreeMap<String, f64>,
    /// Mean time a message relayed to a stage waited in its queue (first
    /// deliveries), milliseconds; the first stage reads what upstream
    /// published, which carries no relay stamp.
    pub queue_wait_ms: BTreeMap<String, f64>,
    /// CPU milliseconds per payment, per process group.
    pub cpu_ms_per_payment: BTreeMap<String, f64>,
    /// Share of one core each group used during the run, percent.
    pub cpu_percent: BTreeMap<String, f64>,
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub commits_per_payment: f64,
    /// From `pg_stat_statements` when the server loads it.
    pub statements_per_payment: Option<f64>,
    /// Invariant checks run, and the ones that broke.
    pub invariant_checks: usize,
    pub invariant_failures: Vec<String>,
}

/// Per-stage (sum, count) of a histogram in seconds, as this process's
/// metrics show it.
type StageSums = BTreeMap<String, (f64, f64)>;

/// The per-stage sums and counts of histogram `metric` in this process.
fn stage_sums(metric: &str) -> StageSums {
    let text = telemetry::metrics_handle().render();
    let (sum_prefix, count_prefix) = (format!("{metric}_sum{{"), format!("{metric}_count{{"));
    let mut out = StageSums::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(rest) = line.strip_prefix(&sum_prefix) {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix(&count_prefix) {
            (false, rest)
        } else {
            continue;
        };
        let Some(stage) = rest
            .split("stage=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let entry = out.entry(stage.to_owned()).or_default();
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    out
}

/// Mean milliseconds per stage between two readings of [`stage_sums`].
fn stage_means(before: &StageSums, after: &StageSums) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(stage, (sum, count))| {
            let (sum0, count0) = before.get(stage).copied().unwrap_or_default();
            let n = count - count0;
            (n > 0.0).then(|| (stage.clone(), (sum - sum0) * 1000.0 / n))
        })
        .collect()
}

const HANDLE_METRIC: &str = "payfleet_handle_seconds";
const QUEUE_WAIT_METRIC: &str = "payfleet_queue_wait_seconds";

async fn counters(pool: &PgPool) -> anyhow::Result<(i64, Option<i64>)> {
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    let statements: Option<i64> = sqlx::query_scalar(
        "SELECT sum(calls)::bigint FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .ok()
    .flatten();
    Ok((commits, statements))
}

/// Payments of this run settled, once the run is over.
async fn settled(pool: &PgPool, like: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE merchant_order_id LIKE $1 AND status = 'settled'",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}

/// Creates shadow database `name` with the benchmark's catalogue and
/// `options.history` payments of history, vacuumed and analyzed: every
/// fleet run starts from a copy of it, so history is loaded once.
pub async fn prepare_catalogue(
    base: &Settings,
    name: &str,
    options: &Options,
) -> anyhow::Result<Shadow> {
    let shadow = Shadow::create(base, name).await?;
    let pool = db::connect(&shadow.settings).await?;
    workload::seed(&pool).await?;
    if options.history > 0 {
        super::history::load(&shadow.settings, &pool, options.history).await?;
    }
    vacuum_analyze_tables_with_rows(&pool).await?;
    // a template database takes no connections while it is copied
    pool.close().await;
    Ok(shadow)
}

/// Gathers statistics for the planner on the tables that hold rows, as a
/// database in service has them, and leaves the empty ones never analyzed,
/// as a new deployment has them. An empty table analyzed says "0 rows" for
/// good: the plans a connection caches while it is small (a sequential
/// scan of one page) then stay while it grows, until autovacuum's first
/// ANALYZE. A table never analyzed is planned as at least ten pages, and its
/// lookups by key use their indexes from the start.
async fn vacuum_analyze_tables_with_rows(pool: &PgPool) -> anyhow::Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let mut with_rows = Vec::with_capacity(tables.len());
    for table in tables {
        let has_rows: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
            .fetch_one(pool)
            .await?;
        if has_rows {
            with_rows.push(table);
        }
    }
    if !with_rows.is_empty() {
        sqlx::raw_sql(&format!("VACUUM ANALYZE {}", with_rows.join(", ")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Runs the fleet once in shadow environment `name`, its database a copy
/// of `catalogue` (see [`prepare_catalogue`]).
pub async fn run(
    base: &Settings,
    name: &str,
    catalogue: &str,
    options: &Options,
    seed: u64,
    gateway_url: Option<&str>,
    live: &mut (impl FnMut(Live<'_>) + Send),
) -> anyhow::Result<FleetRun> {
    let shadow = Shadow::create_from(base, name, Some(catalogue)).await?;
    let measured = measure(&shadow.settings, name, options, seed, gateway_url, live).await;
    if !options.keep {
        shadow.remove().await?;
    }
    measured
}

async fn measure(
    settings: &Settings,
    run_id: &str,
    options: &Options,
    seed: u64,
    gateway_url: Option<&str>,
    live: &mut (impl FnMut(Live<'_>) + Send),
) -> anyhow::Result<FleetRun> {
    crate::apply_topology(settings).await?;
    let topology = Topology::from_settings(settings)?;
    let pool = db::connect(settings).await?;
    if let Some(url) = gateway_url {
        crate::demo::seed_channels(&pool, url).await?;
    }
    let requests = workload::requests(run_id, options.payments, &options.mix, options.hot, seed);
    let like = format!("{run_id}-%");
    let stop = CancellationToken::new();
    let publisher = Publisher::new(
        broker::Endpoint::from_settings(settings)?,
        "payfleet-bench-upstream",
        stop.child_token(),
    );
    let exchange = topology.exchanges().ingress.clone();
    let published = Arc::new(AtomicU64::new(0));
    let publish = {
        let (publisher, exchange, published, rate) = (
            publisher.clone(),
            exchange.clone(),
            published.clone(),
            options.rate,
        );
        move || async move {
            let sent = crate::demo::publish_requests(
                &publisher,
                &exchange,
                requests.map(|r| (r.message_id, r.body, Some(r.signature))),
                &published,
                rate,
            )
            .await;
            publisher.close().await;
            sent
        }
    };
    // Drain: everything is queued before the fleet starts.
    let mut publish = Some(publish);
    if options.rate.is_none()
        && let Some(publish) = publish.take()
    {
        publish().await?;
    }

    let before = resources::sample();
    let handled_before = stage_sums(HANDLE_METRIC);
    let waited_before = stage_sums(QUEUE_WAIT_METRIC);
    let (commits_before, statements_before) = counters(&pool).await?;
    // Timed by the final events, as BI receives them: nothing polls PostgreSQL.
    let final_events = FinalEvents::watch(settings, &topology).await?;
    let fleet = crate::fleet(settings.clone(), &[], gateway_url.is_some()).await?;
    let started = Instant::now();
    let running = tokio::spawn(fleet.run(stop.clone()));
    let publishing = publish.map(|publish| tokio::spawn(publish()));
    let deadline = Duration::from_secs(120 + options.payments as u64 / 5);
    let done = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let done = final_events.count() as i64;
        live(Live::FleetTick {
            run_id,
            done,
            payments: options.payments,
            elapsed: started.elapsed(),
        });
        if done >= options.payments as i64 {
            break done;
        }
        if started.elapsed() > deadline {
            stop.cancel();
            anyhow::bail!(
                "{done} of {} payments reached a final event within {deadline:?}",
                options.payments
            );
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let after = resources::sample();
    let (commits_after, statements_after) = counters(&pool).await?;
    final_events.close().await;
    let handled_after = stage_sums(HANDLE_METRIC);
    let waited_after = stage_sums(QUEUE_WAIT_METRIC);
    live(Live::FleetDone);
    if let Some(publishing) = publishing {
        publishing.await.context("publisher task")??;
    }
    stop.cancel();
    running.await.context("fleet task")??;
    let settled = settled(&pool, &like).await?;

    let finished_count = done.max(1) as f64;
    let latency: (Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
         FROM (SELECT (extract(epoch FROM e.created_at - p.requested_at) * 1000)::float8 AS ms
               FROM payments p JOIN payment_events e ON e.payment_id = p.id
               WHERE p.merchant_order_id LIKE $1) t",
    )
    .bind(&like)
    .fetch_one(&pool)
    .await?;
    let mut report = invariants::all(&pool).await?;
    if gateway_url.is_some() {
        let since = chrono::Utc::now() - chrono::Duration::hours(1);
        report.checks.extend(
            invariants::against_channel_statements(&pool, since)
                .await?
                .checks,
        );
    }
    pool.close().await;
    let cpu = resources::cpu_between(&before, &after);
    Ok(FleetRun {
        payments: options.payments,
        settled,
        seconds,
        per_second: done as f64 / seconds,
        latency_ms: [
            latency.0.unwrap_or(0.0),
            latency.1.unwrap_or(0.0),
            latency.2.unwrap_or(0.0),
            latency.3.unwrap_or(0.0),
        ],
        handle_ms: stage_means(&handled_before, &handled_after),
        queue_wait_ms: stage_means(&waited_before, &waited_after),
        cpu_ms_per_payment: cpu
            .iter()
            .map(|(g, ms)| ((*g).to_owned(), ms / finished_count))
            .collect(),
        cpu_percent: cpu
            .iter()
            .map(|(g, ms)| ((*g).to_owned(), ms / (seconds * 10.0)))
            .collect(),
        peak_rss_mib: after
            .peak_rss_kib
            .iter()
            .map(|(g, kib)| ((*g).to_owned(), *kib as f64 / 1024.0))
            .collect(),
        commits_per_payment: (commits_after - commits_before) as f64 / finished_count,
        statements_per_payment: statements_before
            .zip(statements_after)
            .map(|(b, a)| (a - b) as f64 / finished_count),
        invariant_checks: report.checks.len(),
        invariant_failures: report.failures(),
    })
}
