//! `payfleet bench`: the fleet measured against the broker's own limit on
//! this machine, in a shadow environment (its own `bench_…` vhosts and
//! databases, never the production ones). Runs interleave the null
//! pipeline (six pass-through hops, see [`null_pipeline`]) with the fleet,
//! and the report gives the fleet's payments/s as a share of the null
//! pipeline's messages/s, with latency, per-stage handling time, CPU per
//! process group, commits per payment, peak memory and the invariant check.
//! It prints nothing: it reports its progress ([`Live`]) to the caller, and
//! the report is a value (shown through its `Display`, or as JSON).

pub mod final_events;
pub mod fleet_run;
pub mod history;
pub mod null_pipeline;
pub mod resources;
pub mod shadow;
pub mod workload;

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::bail;
use payfleet_common::{CancellationToken, Settings};

pub use fleet_run::FleetRun;
pub use workload::Kind;

/// The size of a payment request on the wire, for the null pipeline's messages.
const NULL_BODY_BYTES: usize = 420;

/// What to measure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Options {
    pub payments: usize,
    pub mix: Vec<Kind>,
    /// One shop and one SKU for every payment.
    pub hot: bool,
    /// Interleaved runs of each (null, fleet); medians are reported.
    pub runs: usize,
    /// Open loop at this many requests per second; `None`: drain.
    pub rate: Option<f64>,
    /// Keep the shadow vhosts and databases.
    pub keep: bool,
    pub seed: u64,
    /// Payments of history loaded once, with the catalogue, into the
    /// database every fleet run starts from a copy of.
    pub history: u64,
}

/// What a benchmark reports as it goes, for a live display.
#[derive(Debug, Clone, Copy)]
pub enum Live<'a> {
    /// The catalogue and `history` payments of history are loaded.
    CatalogueReady {
        history: u64,
        took: std::time::Duration,
    },
    /// A null pipeline run (numbered from 1) is done.
    NullRun { run: usize, per_second: f64 },
    /// Where a fleet run stands, every 50 ms.
    FleetTick {
        run_id: &'a str,
        done: i64,
        payments: usize,
        elapsed: std::time::Duration,
    },
    /// Every payment of the fleet run is final.
    FleetDone,
    /// A fleet run (numbered from 1) is measured.
    FleetRun { run: usize, measured: &'a FleetRun },
}

/// What `payfleet bench` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub options: Options,
    pub null_per_second: Vec<f64>,
    pub fleet: Vec<FleetRun>,
    pub null_median: f64,
    pub fleet_median: f64,
    /// The fleet's payments/s over the null pipeline's messages/s.
    pub ratio: f64,
}

impl Report {
    /// Every invariant held in every run.
    pub fn invariants_hold(&self) -> bool {
        self.fleet.iter().all(|r| r.invariant_failures.is_empty())
    }

    /// The fleet run whose rate is the median.
    pub fn median_run(&self) -> &FleetRun {
        let mut runs: Vec<&FleetRun> = self.fleet.iter().collect();
        runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        runs[runs.len() / 2]
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the benchmark on the servers of `settings`, in shadow environments;
/// `live` hears how it goes.
pub async fn run(
    settings: &Settings,
    options: Options,
    mut live: impl FnMut(Live<'_>) + Send,
) -> anyhow::Result<Report> {
    if options.payments == 0 {
        bail!("--payments must be at least 1");
    }
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if options.mix.is_empty() {
        bail!("--mix needs at least one kind");
    }
    let name = format!(
        "{}{}_{:04x}",
        shadow::PREFIX,
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        fastrand::u16(..)
    );
    let mut base = settings.clone();
    let needs_sandbox = options
        .mix
        .iter()
        .any(|k| matches!(k, Kind::Card | Kind::Async));
    let gateway_stop = CancellationToken::new();
    let gateway_url = if needs_sandbox {
        // The sandbox with no webhook delay, calling back to this process.
        let mut config = payfleet_sandbox_gateway::GatewayConfig::standard();
        config.webhook_delay = std::time::Duration::ZERO;
        config.business_zone = settings.business_zone();
        let gateway = payfleet_sandbox_gateway::Gateway::new(config);
        let (addr, _) = gateway
            .serve("127.0.0.1:0".parse()?, gateway_stop.clone())
            .await?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        base.http_addr = "127.0.0.1:0".into();
        base.ingress_addr = http.to_string();
        base.callback_base_url = format!("http://{http}");
        Some(format!("http://{addr}"))
    } else {
        None
    };

    let prepared_at = std::time::Instant::now();
    let catalogue =
        fleet_run::prepare_catalogue(&base, &format!("{name}_catalogue"), &options).await?;
    live(Live::CatalogueReady {
        history: options.history,
        took: prepared_at.elapsed(),
    });
    let runs = interleaved_runs(
        &base,
        &name,
        &catalogue.name,
        &options,
        gateway_url.as_deref(),
        &mut live,
    )
    .await;
    gateway_stop.cancel();
    if !options.keep {
        catalogue.remove().await?;
    }
    let (null_per_second, fleet) = runs?;
    let null_median = median(&null_per_second);

    let fleet_median = median(&fleet.iter().map(|r| r.per_second).collect::<Vec<_>>());
    Ok(Report {
        ratio: if null_median > 0.0 {
            fleet_median / null_median
        } else {
            0.0
        },
        options,
        null_per_second,
        fleet,
        null_median,
        fleet_median,
    })
}

/// `options.runs` null pipeline runs, each followed by a fleet run.
async fn interleaved_runs(
    base: &Settings,
    name: &str,
    catalogue: &str,
    options: &Options,
    gateway_url: Option<&str>,
    live: &mut (impl FnMut(Live<'_>) + Send),
) -> anyhow::Result<(Vec<f64>, Vec<FleetRun>)> {
    let mut null_per_second = Vec::new();
    let mut fleet = Vec::new();
    for run in 0..options.runs {
        let null_name = format!("{name}_null{run}");
        let null_shadow = shadow::Shadow::create(base, &null_name).await?;
        let elapsed =
            null_pipeline::run(&null_shadow.settings, options.payments, NULL_BODY_BYTES).await;
        if !options.keep {
            null_shadow.remove().await?;
        }
        let rate = options.payments as f64 / elapsed?.as_secs_f64();
        live(Live::NullRun {
            run: run + 1,
            per_second: rate,
        });
        null_per_second.push(rate);
        let measured = fleet_run::run(
            base,
            &format!("{name}_fleet{run}"),
            catalogue,
            options,
            options.seed.wrapping_add(run as u64),
            gateway_url,
            live,
        )
        .await?;
        live(Live::FleetRun {
            run: run + 1,
            measured: &measured,
        });
        fleet.push(measured);
    }
    Ok((null_per_second, fleet))
}

fn join(values: &BTreeMap<String, f64>, digits: usize, unit: &str) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k} {v:.digits$}{unit}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let mix: Vec<String> = o
            .mix
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect();
        let mode = match o.rate {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "drain".to_owned(),
        };
        let median = self.median_run();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "payfleet bench: {} payments × {} runs · mix {} · {} · {mode}{}",
            o.payments,
            o.runs,
            mix.join("+"),
            if o.hot {
                "hot (one shop, one SKU)"
            } else {
                "spread"
            },
            if o.history > 0 {
                format!(" · {} payments of history", o.history)
            } else {
                String::new()
            }
        );
        let runs = |v: Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  null pipeline   {:>8.0} messages/s through 6 hops (runs: {})",
            self.null_median,
            runs(self.null_per_second.clone())
        );
        let _ = writeln!(
            out,
            "  fleet           {:>8.1} payments/s (runs: {})",
            self.fleet_median,
            runs(self.fleet.iter().map(|r| r.per_second).collect())
        );
        let _ = writeln!(
            out,
            "  ratio           {:>8.1} % of the null pipeline",
            self.ratio * 100.0
        );
        let [p50, p95, p99, max] = median.latency_ms;
        let _ = writeln!(
            out,
            "  latency         publish → final event p50 {p50:.0} ms · p95 {p95:.0} ms · p99 {p99:.0} ms · max {max:.0} ms{}",
            if o.rate.is_none() {
                " (drain: mostly queueing)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  handling        {}",
            join(&median.handle_ms, 2, " ms")
        );
        let _ = writeln!(
            out,
            "  queue wait      {}",
            join(&median.queue_wait_ms, 1, " ms")
        );
        let _ = writeln!(
            out,
            "  CPU             {}",
            join(&median.cpu_percent, 0, " %")
        );
        let _ = writeln!(
            out,
            "  CPU / payment   {}",
            join(&median.cpu_ms_per_payment, 2, " core-ms")
        );
        let _ = writeln!(
            out,
            "  PostgreSQL      {:.1} commits / payment · {}",
            median.commits_per_payment,
            match median.statements_per_payment {
                Some(s) => format!("{s:.0} statements / payment"),
                None => "statements: load pg_stat_statements to count them".to_owned(),
            }
        );
        let _ = writeln!(
            out,
            "  peak RSS        {}",
            join(&median.peak_rss_mib, 0, " MiB")
        );
        let settled: i64 = self.fleet.iter().map(|r| r.settled).sum();
        let total: usize = self.fleet.iter().map(|r| r.payments).sum();
        let _ = write!(
            out,
            "  invariants      {} · {settled} of {total} payments settled",
            if self.invariants_hold() {
                format!("all {} checks hold in every run", median.invariant_checks)
            } else {
                let failures: Vec<String> = self
                    .fleet
                    .iter()
                    .flat_map(|r| r.invariant_failures.clone())
                    .collect();
                format!("BROKEN: {}", failures.join("; "))
            }
        );
        f.write_str(&out)
    }
}
