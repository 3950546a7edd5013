//! `payfleet run --demo N`: seeds a demo catalogue, starts the whole fleet
//! in this process, publishes N realistic mixed payment requests to the
//! ingress exchange like an upstream shop would, shows a live progress line,
//! and ends with a summary and the invariant check.

use std::{
    collections::BTreeMap,
    io::Write,
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
    broker::{self, Outgoing, Publisher},
    db,
    messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION},
    telemetry,
};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::{
    domain::ledger,
    invariants,
    stages::order_validation::{self, pricing},
};

pub const SHOP: &str = "demo-shop";
pub const SHOP_KEY: &str = "demo-shop-signing-key";
const SELLERS: [(&str, &str); 3] = [
    ("seller-a", "0.0060"),
    ("seller-b", "0.0100"),
    ("seller-c", "0.0000"),
];
const USERS: usize = 200;
const POOR_USERS: usize = 20;
const BLOCKED_USER: &str = "demo-user-blocked";

/// What one request was meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    InsufficientBalance,
    OutOfStock,
    PriceMismatch,
    BadSignature,
    Duplicate,
    Conflict,
    Challenge,
    Blocked,
    Poison,
    /// A third-party channel payment: (method, sandbox payer token).
    Channel(&'static str, &'static str),
}

/// The channel mix: (weight, method, payer token). `card` goes to the sync
/// sandbox channel, `wallet` to the async one.
const CHANNEL_MIX: [(u32, &str, &str); 10] = [
    (30, "card", "tok_success"),
    (30, "wallet", "tok_success"),
    (8, "card", "tok_decline"),
    (4, "card", "tok_timeout"),
    (4, "card", "tok_5xx_after_charge"),
    (4, "card", "tok_slow"),
    (6, "wallet", "tok_duplicate_webhook"),
    (6, "wallet", "tok_out_of_order"),
    (3, "wallet", "tok_amount_mismatch"),
    (5, "wallet", "tok_no_webhook"),
];

fn channel_kind(rng: &mut fastrand::Rng) -> Kind {
    let total: u32 = CHANNEL_MIX.iter().map(|m| m.0).sum();
    let mut pick = rng.u32(0..total);
    for (weight, method, token) in CHANNEL_MIX {
        if pick < weight {
            return Kind::Channel(method, token);
        }
        pick -= weight;
    }
    Kind::Channel("card", "tok_success")
}

struct Catalogue {
    products: Vec<pricing::Product>,
    coupons: Vec<pricing::Coupon>,
}

/// Runs the demo; returns an error (non-zero exit) when it did not finish
/// cleanly or an invariant broke.
pub async fn run(settings: Settings, requests: usize) -> anyhow::Result<()> {
    let (finished, verdict) = carry(settings, requests, true).await?;
    println!("{}", verdict.summary);
    if !finished {
        bail!("not every payment reached a terminal state within the deadline");
    }
    if !verdict.invariants.ok() {
        bail!("invariants broken");
    }
    Ok(())
}

/// The demo load carried by a fleet in this process: whether it finished
/// within its deadline, and what the check found. `live` draws the progress line.
pub async fn carry(
    settings: Settings,
    requests: usize,
    live: bool,
) -> anyhow::Result<(bool, Verdict)> {
    let mut load = Load::prepare(settings, requests, PLAN_SEED).await?;
    if live {
        println!(
            "payfleet demo {}: {requests} requests, catalogue seeded, fleet starting",
            load.run_id
        );
    }
    let fleet = crate::fleet(load.settings.clone(), &[], true).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(fleet.run(stop.clone()));
    let publishing = load.publish(stop.child_token())?;
    let finished = load.wait(load.deadline(), live).await?;
    publishing.await.context("publisher task")??;
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
    /// `http_addr`, and the merchant's webhooks go to loopback.
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
    published: Arc<AtomicU64>,
    webhooks: Arc<WebhookCount>,
    gateway_stop: CancellationToken,
}

/// What a finished load found.
pub struct Verdict {
    /// The printed summary (statuses, channels, throughput, retries, dead letters, webhooks).
    pub summary: String,
    /// Every invariant, and the books against the sandbox's own store.
    pub invariants: invariants::Report,
    /// Webhooks the demo merchant accepted, and how many distinct webhook ids they had.
    pub webhooks_received: u64,
    pub webhook_ids: u64,
    /// Payments of this run that reached a terminal status.
    pub payments: i64,
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
        if settings.callback_base_url == Settings::default().callback_base_url {
            // the sandbox's webhooks come to the fleet's own HTTP endpoint
            settings.callback_base_url = format!("http://{}", settings.http_addr);
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
            crate::sandbox_gateway::Gateway::new(crate::sandbox_gateway::GatewayConfig::standard());
        let gateway_stop = CancellationToken::new();
        let (gateway_addr, _) = gateway
            .serve("127.0.0.1:0".parse()?, gateway_stop.clone())
            .await?;
        seed_channels(&pool, &format!("http://{gateway_addr}")).await?;
        let run_id = Utc::now().format("%Y%m%d%H%M%S").to_string();
        let catalogue = seed_catalogue(&pool, &run_id, &webhook_url).await?;
        *webhooks.secrets.write().expect("lock") = sqlx::query_scalar(
            "SELECT secret FROM merchant_webhook_secrets WHERE merchant_id = $1 AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(SHOP)
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
    /// (`false`), drawing the live progress line when `live` is set.
    pub async fn wait(&self, within: Duration, live: bool) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        let finished = loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let progress = self.progress().await?;
            if live {
                print!(
                    "\r[{:>6.1}s] published {}/{} · payments {}/{} terminal (settled {}, failed {}, rejected {}) · refused {} · dead letters {}   ",
                    self.started.elapsed().as_secs_f64(),
                    self.published.load(Ordering::Relaxed),
                    self.requests,
                    progress.terminal,
                    self.expected_payments,
                    progress.settled,
                    progress.failed,
                    progress.rejected,
                    progress.refused,
                    progress.dead,
                );
                let _ = std::io::stdout().flush();
            }
            if self.complete(&progress) && quiet(&self.pool, self.started_at).await? {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        if live {
            println!();
        }
        Ok(finished)
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
        let mut report = invariants::all(&self.pool).await?;
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
        self.pool.close().await;
        let webhook_ids = self.webhooks.ids.lock().expect("lock").len() as u64;
        Ok(Verdict {
            summary,
            invariants: report,
            webhooks_received,
            webhook_ids,
            payments,
        })
    }
}

struct Planned {
    kind: Kind,
    message_id: String,
    body: Vec<u8>,
    signature: Option<String>,
    creates_payment: bool,
    refused: bool,
}

fn sign(body: &[u8]) -> Option<String> {
    Some(messages::sign(SHOP_KEY, body))
}

fn plan(requests: usize, seed: u64, run_id: &str, catalogue: &Catalogue) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut planned: Vec<Planned> = Vec::with_capacity(requests);
    let mut previous: Vec<(String, PaymentRequested)> = Vec::new();
    let on_sale: Vec<&pricing::Product> = catalogue
        .products
        .iter()
        .filter(|p| p.on_sale && !p.sku.starts_with("demo-lux") && p.sku != "demo-rare")
        .collect();
    while planned.len() < requests {
        let index = planned.len();
        let roll = rng.u32(0..100);
        let kind = match roll {
            0..=29 => Kind::Normal,
            30..=62 => channel_kind(&mut rng),
            63..=70 => Kind::InsufficientBalance,
            71..=74 => Kind::OutOfStock,
            75..=77 => Kind::PriceMismatch,
            78..=81 => Kind::BadSignature,
            82..=86 if !previous.is_empty() => Kind::Duplicate,
            87..=90 if !previous.is_empty() => Kind::Conflict,
            91..=92 => Kind::Challenge,
            93 => Kind::Blocked,
            94 => Kind::Poison,
            _ => Kind::Normal,
        };
        let order_id = format!("{run_id}-{index:06}");
        let user = match kind {
            Kind::InsufficientBalance => format!("demo-poor-{}", rng.usize(0..POOR_USERS)),
            Kind::Blocked => BLOCKED_USER.to_owned(),
            _ => format!("demo-user-{}", rng.usize(0..USERS)),
        };
        let mut items: Vec<(&pricing::Product, u32)> = Vec::new();
        match kind {
            Kind::OutOfStock => items.push((
                catalogue
                    .products
                    .iter()
                    .find(|p| p.sku == "demo-rare")
                    .expect("seeded"),
                5,
            )),
            Kind::Challenge => items.push((
                catalogue
                    .products
                    .iter()
                    .find(|p| p.sku == "demo-lux-watch")
                    .expect("seeded"),
                1,
            )),
            _ => {
                for _ in 0..rng.usize(1..5) {
                    let product = on_sale[rng.usize(0..on_sale.len())];
                    if !items.iter().any(|(p, _)| p.sku == product.sku) {
                        items.push((product, rng.u32(1..4)));
                    }
                }
            }
        }
        let gross: Decimal = pricing::price_lines(&items, Decimal::ZERO)
            .iter()
            .map(|l| l.amount)
            .sum();
        let mut coupon_code = None;
        let mut discount = Decimal::ZERO;
        if matches!(kind, Kind::Normal | Kind::Channel(..)) && rng.u32(0..100) < 35 {
            let coupon = &catalogue.coupons[rng.usize(0..catalogue.coupons.len())];
            if let Ok(off) = coupon.discount(gross, "CNY", Utc::now(), 0) {
                if off < gross {
                    coupon_code = Some(coupon.code.clone());
                    discount = off;
                }
            }
        }
        let mut expected = gross - discount;
        if kind == Kind::PriceMismatch {
            expected -= Decimal::new(100, 2);
        }
        let request = PaymentRequested {
            schema_version: SCHEMA_VERSION,
            merchant_id: SHOP.to_owned(),
            merchant_order_id: order_id.clone(),
            user_id: user,
            currency: "CNY".to_owned(),
            items: items
                .iter()
                .map(|(p, q)| RequestedItem {
                    sku: p.sku.clone(),
                    quantity: *q,
                })
                .collect(),
            coupon_code,
            payment_method: match kind {
                Kind::Channel(method, _) => method.to_owned(),
                _ => "balance".to_owned(),
            },
            payer_token: match kind {
                Kind::Channel(_, token) => Some(token.to_owned()),
                _ => None,
            },
            expected_amount: expected,
            notify_url: None,
            requested_at: Utc::now(),
        };
        let message_id = uuid::Uuid::now_v7().to_string();
        let entry = match kind {
            Kind::Poison => Planned {
                kind,
                message_id,
                body: format!(
                    "{{\"merchant_id\": \"{SHOP}\", \"merchant_order_id\": {index}, truncated"
                )
                .into_bytes(),
                signature: None,
                creates_payment: false,
                refused: false,
            },
            Kind::BadSignature => {
                let body = serde_json::to_vec(&request).expect("serializable");
                Planned {
                    kind,
                    message_id,
                    signature: Some(messages::sign("a forged key", &body)),
                    body,
                    creates_payment: false,
                    refused: true,
                }
            }
            Kind::Duplicate => {
                let (_, original) = &previous[rng.usize(0..previous.len())];
                let body = serde_json::to_vec(original).expect("serializable");
                Planned {
                    kind,
                    message_id,
                    signature: sign(&body),
                    body,
                    creates_payment: false,
                    refused: false,
                }
            }
            Kind::Conflict => {
                let (_, original) = &previous[rng.usize(0..previous.len())];
                let mut changed = original.clone();
                changed.items[0].quantity += 1;
                let body = serde_json::to_vec(&changed).expect("serializable");
                Planned {
                    kind,
                    message_id,
                    signature: sign(&body),
                    body,
                    creates_payment: false,
                    refused: true,
                }
            }
            _ => {
                let body = serde_json::to_vec(&request).expect("serializable");
                previous.push((order_id, request));
                Planned {
                    kind,
                    message_id,
                    signature: sign(&body),
                    body,
                    creates_payment: true,
                    refused: false,
                }
            }
        };
        planned.push(entry);
    }
    planned
}

async fn publish_all(
    publisher: Publisher,
    exchange: String,
    plan: Vec<Planned>,
    published: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    publish_requests(
        &publisher,
        &exchange,
        plan.into_iter()
            .map(|p| (p.message_id, p.body, p.signature)),
        &published,
        None,
    )
    .await
}

/// Publishes payment requests (message id, body, signature) to the ingress
/// exchange as a careful upstream would: pipelined confirms in windows of
/// 100, or one at a time at `rate` per second (each request is taken from
/// the iterator at its moment, so it is made when it is sent). Counts each
/// confirmed one.
pub(crate) async fn publish_requests(
    publisher: &Publisher,
    exchange: &str,
    mut requests: impl Iterator<Item = (String, Vec<u8>, Option<String>)>,
    published: &AtomicU64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let window = if rate.is_some() { 1 } else { 100 };
    let mut ticker = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    loop {
        let mut confirms = Vec::with_capacity(window);
        while confirms.len() < window {
            if let Some(ticker) = ticker.as_mut() {
                ticker.tick().await;
            }
            let Some((message_id, body, signature)) = requests.next() else {
                break;
            };
            let mut properties =
                broker::properties(&message_id, None, Some(messages::kind::PAYMENT_REQUESTED));
            if let Some(signature) = signature {
                let mut headers = lapin::types::FieldTable::default();
                broker::set_header(&mut headers, messages::SIGNATURE_HEADER, signature.as_str());
                properties = properties.with_headers(headers);
            }
            let message = Outgoing {
                exchange: exchange.to_owned(),
                routing_key: messages::kind::PAYMENT_REQUESTED.to_owned(),
                body,
                properties,
            };
            let confirm = publisher.start(&message).await?;
            confirms.push((message, confirm));
        }
        if confirms.is_empty() {
            return Ok(());
        }
        for (message, confirm) in confirms {
            broker::confirmed(confirm, &message)
                .await
                .context("publishing a payment request")?;
            published.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where a load stands: its payments by outcome, its refusals and its poison dead letters.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub terminal: i64,
    pub settled: i64,
    pub failed: i64,
    pub rejected: i64,
    pub refused: i64,
    pub dead: i64,
}

async fn progress(
    pool: &PgPool,
    like: &str,
    since: chrono::DateTime<Utc>,
) -> anyhow::Result<Progress> {
    let (terminal, settled, failed, rejected): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')
                                  AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = payments.id)),
                count(*) FILTER (WHERE status = 'settled'),
                count(*) FILTER (WHERE status IN ('failed', 'cancelled')),
                count(*) FILTER (WHERE status IN ('rejected', 'challenged'))
         FROM payments WHERE merchant_order_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request_rejections WHERE merchant_order_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE stored_at >= $1 AND error_kind = 'poison'",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(Progress {
        terminal,
        settled,
        failed,
        rejected,
        refused,
        dead,
    })
}

/// Nothing left to relay, roll up or deliver.
/// Nothing in flight: the outbox sent, postings rolled up, webhooks
/// delivered, and this run's refunds paid back (its sandbox is gone after it).
async fn quiet(pool: &PgPool, since: chrono::DateTime<Utc>) -> anyhow::Result<bool> {
    let (unsent, unrolled, webhooks, refunds): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL),
                (SELECT count(*) FROM postings WHERE NOT rolled_up),
                (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
                (SELECT count(*) FROM refunds WHERE status = 'owed' AND created_at >= $1)",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(unsent == 0 && unrolled == 0 && webhooks == 0 && refunds == 0)
}

async fn summarize(
    pool: &PgPool,
    like: &str,
    since: chrono::DateTime<Utc>,
    elapsed: Duration,
    webhooks: u64,
) -> anyhow::Result<String> {
    let by_status: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, split_part(reason, ':', 1), count(*) FROM payments WHERE merchant_order_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 3 DESC",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let refusals: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count(*) FROM request_rejections WHERE merchant_order_id LIKE $1 GROUP BY 1 ORDER BY 2 DESC")
            .bind(like)
            .fetch_all(pool)
            .await?;
    type Latency = (
        Option<f64>,
        Option<f64>,
        Option<chrono::DateTime<Utc>>,
        Option<chrono::DateTime<Utc>>,
    );
    let (p50, p99, first, last): Latency = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), min(requested_at), max(done_at)
         FROM (SELECT p.requested_at, e.created_at AS done_at,
                      extract(epoch FROM e.created_at - p.requested_at) * 1000 AS ms
               FROM payments p JOIN payment_events e ON e.payment_id = p.id
               WHERE p.merchant_order_id LIKE $1) t",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let dead: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT stage, error_kind, count(*) FROM dead_letters WHERE stored_at >= $1 GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let by_channel: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT channel, count(*) FILTER (WHERE status = 'settled'), count(*) FROM payments
         WHERE merchant_order_id LIKE $1 AND channel IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let (queries, refunds_owed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM integration_log l JOIN payments p ON p.id = l.payment_id
                 WHERE p.merchant_order_id LIKE $1 AND l.direction = 'query'),
                (SELECT count(*) FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE p.merchant_order_id LIKE $1)",
    )
    .bind(like)
    .fetch_one(pool)
    .await?;
    let payments: i64 = by_status.iter().map(|r| r.2).sum();
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (status, reason, count) in &by_status {
        let entry = grouped.entry(status.clone()).or_default();
        match reason.as_deref() {
            Some(reason) if !reason.is_empty() => entry.push(format!("{reason} {count}")),
            _ => entry.push(count.to_string()),
        }
    }
    let metrics = telemetry::metrics_handle().render();
    let metric = |result: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("payfleet_messages_total{")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).num_milliseconds().max(1) as f64 / 1000.0,
        _ => elapsed.as_secs_f64(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "payfleet demo summary ({:.1} s)\n",
        elapsed.as_secs_f64()
    ));
    out.push_str(&format!("  payments    {payments}\n"));
    for (status, parts) in &grouped {
        out.push_str(&format!("    {status:<11} {}\n", parts.join(", ")));
    }
    let refused: Vec<String> = refusals.iter().map(|(r, n)| format!("{r} {n}")).collect();
    out.push_str(&format!(
        "  refused     {}\n",
        if refused.is_empty() {
            "0".into()
        } else {
            refused.join(", ")
        }
    ));
    let channels: Vec<String> = by_channel
        .iter()
        .map(|(c, settled, all)| format!("{} {settled}/{all} settled", c.as_deref().unwrap_or("?")))
        .collect();
    out.push_str(&format!(
        "  channels    {} · status queries {queries} · refunds owed {refunds_owed}\n",
        channels.join(", ")
    ));
    // Counted by the fleet's metrics: known here only when it ran in this process.
    let fleet_here = metrics.contains("payfleet_messages_total{");
    if fleet_here {
        out.push_str(&format!(
            "  duplicates  {} absorbed (stale)\n",
            metric("stale") + metric("duplicate")
        ));
    }
    out.push_str(&format!(
        "  throughput  {:.1} payments/s · end-to-end p50 {:.0} ms · p99 {:.0} ms\n",
        payments as f64 / span,
        p50.unwrap_or(0.0),
        p99.unwrap_or(0.0)
    ));
    if fleet_here {
        out.push_str(&format!(
            "  retries     {} (lock waits {})\n",
            metric("retried"),
            metric("lock_busy")
        ));
    }
    let dead: Vec<String> = dead
        .iter()
        .map(|(s, k, n)| format!("{s}/{k} {n}"))
        .collect();
    out.push_str(&format!(
        "  dead letters {}\n",
        if dead.is_empty() {
            "0".into()
        } else {
            dead.join(", ")
        }
    ));
    out.push_str(&format!(
        "  webhooks    {webhooks} received by the demo merchant"
    ));
    Ok(out)
}

/// What the demo merchant's endpoint has accepted: verified webhooks, their
/// distinct ids (a webhook delivered again keeps its id), and the secrets it
/// verifies with (known once the merchant is seeded).
#[derive(Default)]
struct WebhookCount {
    received: AtomicU64,
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
    secrets: std::sync::RwLock<Vec<String>>,
}

/// A merchant endpoint for the demo's webhooks: verifies each one (Standard
/// Webhooks, with the merchant's webhook secrets) and counts them.
async fn webhook_receiver() -> anyhow::Result<(String, Arc<WebhookCount>)> {
    use axum::{
        Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post,
    };
    let count = Arc::new(WebhookCount::default());
    let app = Router::new()
        .route(
            "/webhooks",
            post(
                |State(count): State<Arc<WebhookCount>>, headers: HeaderMap, body: Bytes| async move {
                    let headers: std::collections::BTreeMap<String, String> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let verified = count
                        .secrets
                        .read()
                        .expect("lock")
                        .iter()
                        .any(|secret| messages::verify_webhook(secret, &headers, &body));
                    if !verified {
                        return StatusCode::UNAUTHORIZED;
                    }
                    count.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = headers.get("webhook-id") {
                        count.ids.lock().expect("lock").insert(id.clone());
                    }
                    StatusCode::OK
                },
            ),
        )
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhooks", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, count))
}

/// Points the sandbox channels of the routing table at this run's gateway.
pub(crate) async fn seed_channels(pool: &PgPool, gateway_url: &str) -> anyhow::Result<()> {
    for channel in crate::sandbox_gateway::GatewayConfig::standard().channels {
        let methods = if channel.name == "sandbox-card" {
            vec!["card"]
        } else {
            vec!["wallet"]
        };
        sqlx::query(
            "INSERT INTO channels (name, kind, base_url, webhook_secret, methods, fee_rate) VALUES ($1, 'sandbox', $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET base_url = EXCLUDED.base_url, webhook_secret = EXCLUDED.webhook_secret,
                                              methods = EXCLUDED.methods, fee_rate = EXCLUDED.fee_rate, status = 'active'",
        )
        .bind(&channel.name)
        .bind(gateway_url)
        .bind(&channel.secret)
        .bind(&methods)
        .bind(channel.fee_rate)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Seeds (or tops up) the demo catalogue. Idempotent per run.
async fn seed_catalogue(
    pool: &PgPool,
    run_id: &str,
    webhook_url: &str,
) -> anyhow::Result<Catalogue> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO merchants (id, name, signing_key, notify_url, fee_rate) VALUES ($1, 'Demo Shop', $2, $3, 0)
         ON CONFLICT (id) DO UPDATE SET notify_url = EXCLUDED.notify_url",
    )
    .bind(SHOP)
    .bind(SHOP_KEY)
    .bind(webhook_url)
    .execute(&mut *tx)
    .await?;
    for (seller, fee) in SELLERS {
        sqlx::query("INSERT INTO merchants (id, name, signing_key, fee_rate) VALUES ($1, $1, $2, $3::numeric) ON CONFLICT (id) DO NOTHING")
            .bind(seller)
            .bind(format!("{seller}-key"))
            .bind(fee)
            .execute(&mut *tx)
            .await?;
    }
    let mut users: Vec<(String, Decimal)> = (0..USERS)
        .map(|i| (format!("demo-user-{i}"), Decimal::new(500_000, 2)))
        .collect();
    users.extend((0..POOR_USERS).map(|i| (format!("demo-poor-{i}"), Decimal::new(500, 2))));
    users.push((BLOCKED_USER.to_owned(), Decimal::new(100_000, 2)));
    for (user, balance) in &users {
        sqlx::query(
            "INSERT INTO users (id, name, blocked) VALUES ($1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(user)
        .bind(user == BLOCKED_USER)
        .execute(&mut *tx)
        .await?;
        // Wallets are topped up each run, except the poor ones, which stay short.
        let reference = if user.starts_with("demo-poor") {
            format!("demo-seed:{user}")
        } else {
            format!("demo-{run_id}:{user}")
        };
        ledger::top_up(&mut tx, user, "CNY", *balance, &reference)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let products: [(&str, &str, &str, &str, &str, i32); 14] = [
        (
            "demo-tea",
            "seller-a",
            "hangzhou",
            "Longjing tea 250 g",
            "39.90",
            100_000,
        ),
        (
            "demo-cup",
            "seller-a",
            "hangzhou",
            "Celadon cup",
            "18.50",
            100_000,
        ),
        (
            "demo-pot",
            "seller-a",
            "suzhou",
            "Yixing teapot",
            "128.00",
            100_000,
        ),
        (
            "demo-silk",
            "seller-b",
            "suzhou",
            "Silk scarf",
            "89.00",
            100_000,
        ),
        (
            "demo-fan",
            "seller-b",
            "suzhou",
            "Folding fan",
            "12.30",
            100_000,
        ),
        (
            "demo-ink",
            "seller-b",
            "hangzhou",
            "Ink stick",
            "7.77",
            100_000,
        ),
        (
            "demo-brush",
            "seller-c",
            "beijing",
            "Calligraphy brush",
            "23.33",
            100_000,
        ),
        (
            "demo-paper",
            "seller-c",
            "beijing",
            "Xuan paper, 50 sheets",
            "45.00",
            100_000,
        ),
        (
            "demo-lamp",
            "seller-c",
            "shanghai",
            "Paper lantern",
            "66.60",
            100_000,
        ),
        (
            "demo-kite",
            "seller-a",
            "beijing",
            "Swallow kite",
            "29.99",
            100_000,
        ),
        (
            "demo-knot",
            "seller-b",
            "shanghai",
            "Chinese knot",
            "9.90",
            100_000,
        ),
        (
            "demo-rare",
            "seller-c",
            "beijing",
            "Antique seal (one of a kind)",
            "999.00",
            0,
        ),
        (
            "demo-lux-watch",
            "seller-a",
            "shanghai",
            "Gold watch",
            "25000.00",
            1_000,
        ),
        (
            "demo-old",
            "seller-b",
            "suzhou",
            "Discontinued vase",
            "10.00",
            0,
        ),
    ];
    for (sku, seller, warehouse, name, price, stock) in products {
        sqlx::query(
            "INSERT INTO products (sku, merchant_id, name, spec, warehouse, unit_price, currency, status)
             VALUES ($1, $2, $3, $4, $5, $6::numeric, 'CNY', $7) ON CONFLICT (sku) DO NOTHING",
        )
        .bind(sku)
        .bind(seller)
        .bind(name)
        .bind(serde_json::json!({"name": name}))
        .bind(warehouse)
        .bind(price)
        .bind(if sku == "demo-old" { "off_shelf" } else { "on_sale" })
        .execute(&mut *tx)
        .await?;
        // Topped up to at least `stock` units available (inserting into the view adds units).
        sqlx::query(
            "INSERT INTO stock (sku, available)
             SELECT $1, $2 - COALESCE((SELECT sum(available) FROM stock_buckets WHERE sku = $1), 0)::integer
             WHERE $2 > COALESCE((SELECT sum(available) FROM stock_buckets WHERE sku = $1), 0)",
        )
            .bind(sku)
            .bind(stock)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("INSERT INTO price_tiers (sku, min_quantity, unit_price) VALUES ('demo-tea', 3, 35.90), ('demo-fan', 2, 11.00) ON CONFLICT DO NOTHING")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO coupons (code, kind, currency, threshold, amount_off, percent_off, cap, ladder, valid_from, valid_until, total_limit, per_user_limit)
         VALUES ('DEMO-100-15', 'full_reduction', 'CNY', 100, 15, NULL, NULL, NULL, now() - interval '1 day', now() + interval '365 days', 1000000, 100000),
                ('DEMO-10PCT', 'percentage', 'CNY', NULL, NULL, 10, 20, NULL, now() - interval '1 day', now() + interval '365 days', 1000000, 100000),
                ('DEMO-LADDER', 'ladder', 'CNY', NULL, NULL, NULL, NULL,
                 '[{\"threshold\": \"50.00\", \"amount_off\": \"5.00\"}, {\"threshold\": \"150.00\", \"amount_off\": \"18.00\"}]',
                 now() - interval '1 day', now() + interval '365 days', 1000000, 100000)
         ON CONFLICT (code) DO NOTHING",
    )
    .execute(&mut *tx)
    .await?;
    let skus: Vec<String> = products.iter().map(|p| p.0.to_owned()).collect();
    tx.commit().await?;

    let mut conn = pool.acquire().await?;
    let mut catalogue_products = Vec::new();
    for sku in &skus {
        let row: (String, String, serde_json::Value, Decimal, String) = sqlx::query_as(
            "SELECT merchant_id, warehouse, spec, unit_price, status FROM products WHERE sku = $1",
        )
        .bind(sku)
        .fetch_one(&mut *conn)
        .await?;
        let tiers: Vec<(i32, Decimal)> =
            sqlx::query_as("SELECT min_quantity, unit_price FROM price_tiers WHERE sku = $1")
                .bind(sku)
                .fetch_all(&mut *conn)
                .await?;
        catalogue_products.push(pricing::Product {
            sku: sku.clone(),
            seller_id: row.0,
            warehouse: row.1,
            spec: row.2,
            unit_price: row.3,
            currency: "CNY".into(),
            on_sale: row.4 == "on_sale",
            tiers,
        });
    }
    let mut coupons = Vec::new();
    for code in ["DEMO-100-15", "DEMO-10PCT", "DEMO-LADDER"] {
        if let Some(coupon) = order_validation::load_coupon(&mut conn, code)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            coupons.push(coupon);
        }
    }
    Ok(Catalogue {
        products: catalogue_products,
        coupons,
    })
}
