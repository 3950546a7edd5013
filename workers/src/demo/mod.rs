//! `payfleet run --demo N`: seeds a demo catalogue, starts the whole fleet
//! in this process, publishes N realistic mixed payment requests to the
//! ingress exchange like an upstream shop would, reports its progress as it
//! goes ([`Live`]), and ends with a summary and the invariant check. It
//! prints nothing itself: the binary draws the progress line and prints
//! the summary.

mod after_payments;
mod merchant;
mod payouts;
mod plan;
mod publish;
mod refunds;
mod report;
mod seed;
mod status;
mod top_ups;
mod transfers;
mod withdrawals;

pub(crate) use publish::publish_requests;
pub use report::Progress;
pub use seed::sandbox_channels;
pub(crate) use seed::seed_channels;

use merchant::{WebhookCount, webhook_receiver};
use plan::{Kind, Planned, plan};
use publish::{publish_all, publish_signed_by};
use report::{progress, quiet, summarize};
use seed::seed_catalogue;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::Utc;
use payfleet_common::{
    CancellationToken, Settings, Topology,
    broker::{self, Publisher},
    db, telemetry,
};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::{domain::ledger, invariants};

pub const SHOP: &str = "demo-shop";
pub const SHOP_KEY: &str = "demo-shop-signing-key";
/// The platform's wallet application, registered like a merchant to act
/// for users: it asks the demo's withdrawals.
pub const WALLET_APP: &str = "demo-wallet-app";
pub const WALLET_APP_KEY: &str = "demo-wallet-app-signing-key";

/// Runs the demo quietly; returns an error when it did not finish cleanly
/// or an invariant broke.
pub async fn run(settings: Settings, requests: usize) -> anyhow::Result<()> {
    let (finished, verdict) = carry(settings, requests, |_| {}).await?;
    verdict.outcome(finished)
}

/// What a demo run reports as it goes, for a live display.
#[derive(Debug, Clone, Copy)]
pub enum Live<'a> {
    /// The catalogue is seeded and the fleet is starting.
    Started { run_id: &'a str, requests: usize },
    /// Where the run stands, four times a second.
    Tick(Tick),
    /// The wait is over (finished or out of time).
    Ended,
    /// The refunds, withdrawals, top-ups, payouts and transfers asked for once the payments finished:
    /// how many have ended (with their events), four times a second.
    Refunds {
        elapsed: Duration,
        asked: usize,
        finished: i64,
    },
}

/// Where a run stands at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub elapsed: Duration,
    pub published: u64,
    pub requests: usize,
    pub expected_payments: i64,
    pub progress: Progress,
}

/// The demo load carried by a fleet in this process: whether it finished
/// within its deadline, and what the check found. `live` hears how it goes.
pub async fn carry(
    settings: Settings,
    requests: usize,
    mut live: impl FnMut(Live<'_>) + Send,
) -> anyhow::Result<(bool, Verdict)> {
    let mut load = Load::prepare(settings, requests, PLAN_SEED).await?;
    live(Live::Started {
        run_id: &load.run_id,
        requests,
    });
    let fleet = crate::fleet(load.settings.clone(), &[], true).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(fleet.run(stop.clone()));
    let publishing = load.publish(stop.child_token())?;
    let finished = load.wait(load.deadline(), &mut live).await?;
    publishing.await.context("publisher task")??;
    let finished = finished && load.refund(stop.child_token(), &mut live).await?;
    if finished {
        load.ask_statuses().await?;
    }
    stop.cancel();
    running.await.context("fleet task")??;
    Ok((finished, load.verify().await?))
}

/// The seed of the demo's request mix (`payfleet run --demo` always sends the same mix).
pub const PLAN_SEED: u64 = 42;

/// A demo load against the database and broker of `settings`: the sandbox
/// gateway and the demo merchant's webhook receiver run in this process,
/// the catalogue is seeded and the requests are planned. The fleet that
/// carries the load runs wherever the caller starts it (in this process for
/// `payfleet run --demo`, as worker processes for the chaos suite).
pub struct Load {
    /// The settings the fleet must run with: the sandbox calls back to
    /// `ingress_addr`, and the merchant's webhooks go to loopback.
    pub settings: Settings,
    pub run_id: String,
    pub requests: usize,
    pool: PgPool,
    topology: Topology,
    like: String,
    plan: Vec<Planned>,
    expected_payments: i64,
    expected_refusals: i64,
    expected_dead: i64,
    started: Instant,
    started_at: chrono::DateTime<Utc>,
    /// What the status queries asked after the refunds found, when asked.
    statuses: Option<status::Asked>,
    published: Arc<AtomicU64>,
    webhooks: Arc<WebhookCount>,
    gateway_stop: CancellationToken,
}

/// What a finished load found.
pub struct Verdict {
    /// The summary to show (statuses, channels, throughput, retries, dead letters, webhooks).
    pub summary: String,
    /// Every invariant, and the books against the sandbox's own store.
    pub invariants: invariants::Report,
    /// Webhooks the demo merchant accepted, and how many distinct webhook ids they had.
    pub webhooks_received: u64,
    pub webhook_ids: u64,
    /// Payments of this run that reached a terminal status.
    pub payments: i64,
    /// Refunds of this run that ended with their event.
    pub refunds: i64,
    /// Events of this run's withdrawals (a returned payout has two): each
    /// is a webhook to the requester.
    pub withdrawal_events: i64,
    /// Events of this run's top-ups (one each): each is a webhook to the requester.
    pub top_up_events: i64,
    /// Events of this run's transfers kept (one each): each is a webhook to the requester.
    pub transfer_events: i64,
}

impl Verdict {
    /// An error when the run did not finish within its deadline or an
    /// invariant broke.
    pub fn outcome(&self, finished: bool) -> anyhow::Result<()> {
        if !finished {
            bail!("not every payment reached a terminal state within the deadline");
        }
        if !self.invariants.ok() {
            bail!("invariants broken");
        }
        Ok(())
    }
}

impl Load {
    /// Migrates, applies the topology, starts the sandbox gateway and the
    /// merchant's receiver, seeds the catalogue and plans `requests`
    /// requests from `seed`.
    pub async fn prepare(
        mut settings: Settings,
        requests: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        if requests == 0 {
            bail!("--demo needs at least one request");
        }
        if settings.ingress_socket_addr().port() == 0 {
            // The sandbox must know where to send its webhooks: a payout
            // the bank sends back is learned of only by its notice.
            let free = std::net::TcpListener::bind((settings.ingress_socket_addr().ip(), 0))
                .and_then(|listener| listener.local_addr())
                .context("finding a free port for the webhook ingress")?;
            settings.ingress_addr = free.to_string();
        }
        if settings.callback_base_url == Settings::default().callback_base_url {
            // the sandbox's webhooks come to the fleet's own webhook ingress
            settings.callback_base_url = format!("http://{}", settings.ingress_addr);
        }
        // the demo merchant's webhook receiver listens on 127.0.0.1
        settings.webhook_allow_loopback = true;
        telemetry::metrics_handle();
        db::migrate(&settings)
            .await
            .context("applying migrations")?;
        crate::apply_topology(&settings).await?;
        let topology = Topology::from_settings(&settings)?;
        let pool = db::connect(&settings).await?;

        let (webhook_url, webhooks) = webhook_receiver().await?;
        // The third party: the sandbox gateway, in this process but with its own store.
        let gateway =
            payfleet_sandbox_gateway::Gateway::new(payfleet_sandbox_gateway::GatewayConfig {
                business_zone: settings.business_zone(),
                ..payfleet_sandbox_gateway::GatewayConfig::standard()
            });
        let gateway_stop = CancellationToken::new();
        let (gateway_addr, _) = gateway
            .serve("127.0.0.1:0".parse()?, gateway_stop.clone())
            .await?;
        seed_channels(&pool, &format!("http://{gateway_addr}")).await?;
        let run_id = Utc::now().format("%Y%m%d%H%M%S").to_string();
        let catalogue = seed_catalogue(&pool, &run_id, &webhook_url).await?;
        // one endpoint stands in for the shop's and the wallet application's
        *webhooks.secrets.write().expect("lock") = sqlx::query_scalar(
            "SELECT secret FROM merchant_webhook_secrets WHERE merchant_id = ANY($1) AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind([SHOP, WALLET_APP])
        .fetch_all(&pool)
        .await?;
        let plan = plan(requests, seed, &run_id, &catalogue);
        Ok(Self {
            expected_payments: plan.iter().filter(|p| p.creates_payment).count() as i64,
            expected_refusals: plan.iter().filter(|p| p.refused).count() as i64,
            expected_dead: plan.iter().filter(|p| p.kind == Kind::Poison).count() as i64,
            like: format!("{run_id}-%"),
            settings,
            run_id,
            requests,
            pool,
            topology,
            plan,
            started: Instant::now(),
            started_at: Utc::now(),
            statuses: None,
            published: Arc::new(AtomicU64::new(0)),
            webhooks,
            gateway_stop,
        })
    }

    /// Payments the plan creates (the rest are refused, duplicates or poison).
    pub fn expected_payments(&self) -> i64 {
        self.expected_payments
    }

    /// How long a healthy fleet may take: a minute plus a tenth of a second per request.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(60 + self.requests as u64 / 10)
    }

    /// Publishes the planned requests to the ingress exchange like an
    /// upstream would (pipelined confirms), in the background.
    pub fn publish(
        &mut self,
        stop: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        self.started = Instant::now();
        self.started_at = Utc::now();
        let publisher = Publisher::new(
            broker::Endpoint::from_settings(&self.settings)?,
            "payfleet-demo-upstream",
            stop,
        );
        let exchange = self.topology.exchanges().ingress.clone();
        let plan = std::mem::take(&mut self.plan);
        let published = self.published.clone();
        Ok(tokio::spawn(async move {
            let sent = publish_all(publisher.clone(), exchange, plan, published).await;
            publisher.close().await;
            sent
        }))
    }

    /// Where the run stands now.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        progress(&self.pool, &self.like, self.started_at).await
    }

    /// Every planned request has its outcome and nothing is in flight.
    pub async fn finished(&self) -> anyhow::Result<bool> {
        let progress = self.progress().await?;
        Ok(self.complete(&progress) && quiet(&self.pool, self.started_at).await?)
    }

    fn complete(&self, progress: &Progress) -> bool {
        progress.terminal == self.expected_payments
            && progress.refused == self.expected_refusals
            && progress.dead >= self.expected_dead
            && self.published.load(Ordering::Relaxed) == self.requests as u64
    }

    /// Waits until the run is finished (`true`) or `within` has passed
    /// (`false`), telling `live` where it stands as it goes.
    pub async fn wait(
        &self,
        within: Duration,
        mut live: impl FnMut(Live<'_>) + Send,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        let finished = loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let progress = self.progress().await?;
            live(Live::Tick(Tick {
                elapsed: self.started.elapsed(),
                published: self.published.load(Ordering::Relaxed),
                requests: self.requests,
                expected_payments: self.expected_payments,
                progress,
            }));
            if self.complete(&progress) && quiet(&self.pool, self.started_at).await? {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        live(Live::Ended);
        Ok(finished)
    }

    /// Asks where some of the run's payments, refunds and reversals stand,
    /// as the shop would, and as a stranger and a forger would (see [`status`]).
    pub async fn ask_statuses(&mut self) -> anyhow::Result<()> {
        self.statuses = Some(status::ask(&self.settings, &self.pool, &self.like).await?);
        Ok(())
    }

    /// Rolls up the balances, checks every invariant and the books against
    /// the sandbox's own store, stops the sandbox and summarizes.
    pub async fn verify(self) -> anyhow::Result<Verdict> {
        let elapsed = self.started.elapsed();
        ledger::roll_up(&self.pool, 1_000_000).await?;
        let webhooks_received = self.webhooks.received.load(Ordering::Relaxed);
        let mut summary = summarize(
            &self.pool,
            &self.like,
            self.started_at,
            elapsed,
            webhooks_received,
        )
        .await?;
        summary.push('\n');
        summary.push_str(&refunds::summary(&self.pool, &self.like).await?);
        summary.push('\n');
        summary.push_str(&withdrawals::summary(&self.pool, &self.like).await?);
        summary.push('\n');
        let top_ups_like = top_ups::like(&self.run_id);
        summary.push_str(&top_ups::summary(&self.pool, &top_ups_like).await?);
        summary.push('\n');
        summary.push_str(&payouts::summary(&self.pool, &payouts::like(&self.run_id)).await?);
        summary.push('\n');
        let transfers_like = transfers::like(&self.run_id);
        summary.push_str(&transfers::summary(&self.pool, &transfers_like).await?);
        let mut report = invariants::all(&self.pool).await?;
        if let Some(statuses) = &self.statuses {
            summary.push('\n');
            summary.push_str(&statuses.summary());
            report.checks.push(statuses.check());
        }
        // The books against the sandbox's own store, while it still runs.
        let statements = invariants::against_channel_statements(&self.pool, self.started_at).await;
        self.gateway_stop.cancel();
        report.checks.extend(statements?.checks);
        let (fees, costs): (Decimal, Decimal) = sqlx::query_as(
            "SELECT COALESCE(sum(p.amount) FILTER (WHERE a.owner_kind = 'platform'), 0),
                    COALESCE(-sum(p.amount) FILTER (WHERE a.owner_kind = 'platform_cost'), 0)
             FROM postings p JOIN accounts a ON a.id = p.account_id
             WHERE a.owner_kind IN ('platform', 'platform_cost') AND a.currency = 'CNY'",
        )
        .fetch_one(&self.pool)
        .await?;
        summary.push_str(&format!(
            "\n  platform    fees {fees} CNY - channel costs {costs} CNY = earned {} CNY",
            fees - costs
        ));
        if report.ok() {
            summary.push_str(&format!(
                "\n  invariants  all {} checks hold",
                report.checks.len()
            ));
        } else {
            summary.push_str(&format!(
                "\n  invariants  BROKEN: {}",
                report.failures().join("; ")
            ));
        }
        let payments = self.progress().await?.terminal;
        let (refunds, _) = refunds::finished(&self.pool, &self.like).await?;
        let withdrawal_events = withdrawals::events(&self.pool, &self.like).await?;
        let top_up_events = top_ups::events(&self.pool, &top_ups_like).await?;
        let transfer_events = transfers::events(&self.pool, &transfers_like).await?;
        self.pool.close().await;
        let webhook_ids = self.webhooks.ids.lock().expect("lock").len() as u64;
        Ok(Verdict {
            summary,
            invariants: report,
            webhooks_received,
            webhook_ids,
            payments,
            refunds,
            withdrawal_events,
            top_up_events,
            transfer_events,
        })
    }
}
