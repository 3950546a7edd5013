//! Growth: with 100,000 payments of history in the database, the fleet must
//! not read any large table in full. The test loads the history set-based
//! (workers/src/bench/history.sql, as `payfleet bench --history` does), runs a chain scenario over the sandbox
//! gateway with every statement's plan captured by `auto_explain`, and fails
//! on any sequential scan of a table holding more than 10,000 rows — the
//! sizes come from `pg_class` after the load, so no hand-picked list decides
//! what is "hot". It ends with the chain's invariants over the whole history.
//!
//! How the plans are captured: the fleet runs in this process, and its
//! database URL carries startup options that load `auto_explain` into each
//! of its sessions (`session_preload_libraries`, superuser-only, as the test
//! connects as `postgres`) with `log_min_duration = 0`, `log_analyze`,
//! `log_nested_statements` (trigger and foreign-key queries too) and JSON
//! output at level NOTICE. A NOTICE goes back to the session that ran the
//! statement, and sqlx hands each one to `tracing` (target
//! `sqlx::postgres::notice`), where the subscriber below keeps it. So every
//! statement of every fleet connection is captured, and nothing else: the
//! test's own pool (waits, checks, invariants) connects without the options.
//! This needs no access to the server's log file, whose place and format
//! differ between installations, and writes nothing into a log other
//! sessions share.

mod fleet;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use payfleet_common::messages::{PaymentRequested, RequestedItem, SCHEMA_VERSION};
use payfleet_sandbox_gateway::{Gateway, GatewayConfig};
use payfleet_tests::{TestEnv, wait_until};
use payfleet_workers::{domain::ledger, invariants, ops, seed};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tracing::{
    Event, Level, Metadata,
    field::{Field, Visit},
    span,
    subscriber::Interest,
};

/// Payments of history loaded before the scenario.
const HISTORY_PAYMENTS: u32 = 100_000;
/// A sequential scan of a table with more rows than this fails the test.
const LARGE_TABLE_ROWS: f32 = 10_000.0;
const WAIT: Duration = Duration::from_secs(60);
const SHOP: &str = "shop";
const SHOP_KEY: &str = "shop-secret";
const NOTICE_TARGET: &str = "sqlx::postgres::notice";

fn d(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

/// Keeps every `auto_explain` notice; prints the fleet's warnings and errors
/// (nothing else is enabled, so the fleet's info logs cost nothing).
struct PlanSink {
    plans: Arc<Mutex<Vec<String>>>,
}

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        }
    }
}

impl tracing::Subscriber for PlanSink {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
    // `enabled!` hints (sqlx asks one before each notice) count as events here
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == NOTICE_TARGET
            || (metadata.target().starts_with("payfleet") && *metadata.level() <= Level::WARN)
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        let metadata = event.metadata();
        if metadata.target() == NOTICE_TARGET && message.starts_with("duration:") {
            self.plans.lock().expect("plans").push(message);
        } else if metadata.target() != NOTICE_TARGET {
            eprintln!("{} {}: {message}", metadata.level(), metadata.target());
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// `url` with startup options that make each session explain every statement.
fn explained(url: &str) -> String {
    let options = [
        ("session_preload_libraries", "auto_explain"),
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_analyze", "on"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_format", "json"),
        ("auto_explain.log_level", "notice"),
        ("client_min_messages", "notice"),
    ]
    .iter()
    .map(|(name, value)| format!("-c {name}={value}"))
    .collect::<Vec<_>>()
    .join(" ");
    let encoded: String = options
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options={encoded}")
}

/// Every node of a JSON plan: (node type, relation).
fn nodes(plan: &Value, out: &mut Vec<(String, Option<String>)>) {
    out.push((
        plan["Node Type"].as_str().unwrap_or_default().to_owned(),
        plan["Relation Name"].as_str().map(str::to_owned),
    ));
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

/// The merchant's webhook endpoint: takes everything.
async fn merchant_endpoint() -> anyhow::Result<String> {
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// The merchant, the two sandbox channels at `gateway_url`, and a user whose
/// wallet is nearly empty; the history brings everything else.
async fn seed(env: &TestEnv, gateway_url: &str) -> anyhow::Result<()> {
    seed::Catalogue {
        merchants: vec![
            seed::merchant(SHOP, SHOP_KEY)
                .name("Shop")
                .notify_hosts(&["127.0.0.1"]),
        ],
        users: vec![
            seed::user("poor")
                .name("Poor")
                .wallet("CNY", d("5.00"), "seed:poor"),
        ],
        channels: payfleet_workers::demo::sandbox_channels(gateway_url),
        ..Default::default()
    }
    .seed(&env.pool)
    .await
}

/// The history (bench::history's script); returns how long it took.
async fn load_history(env: &TestEnv) -> anyhow::Result<Duration> {
    let started = Instant::now();
    payfleet_workers::bench::history::load_script(
        &env.settings.database_url,
        HISTORY_PAYMENTS as u64,
    )
    .await?;
    Ok(started.elapsed())
}

/// One scenario request: `lines` of (sku, quantity) priced from the catalogue.
struct Order {
    order: String,
    user: String,
    lines: Vec<(String, u32)>,
    method: &'static str,
    token: Option<&'static str>,
    coupon: bool,
    /// added to the correct amount (a client with a stale price)
    off_by: Decimal,
}

/// The scenario: wallet balance payments (some with a coupon, some across
/// sellers), both sandbox channels with their success, decline, timeout,
/// 5xx, slow, duplicate and out-of-order webhook, no-webhook and
/// amount-mismatch behaviours, an insufficient balance and a stale price.
fn scenario() -> Vec<Order> {
    let mut orders = Vec::new();
    let behaviours: [(&str, Option<&str>); 10] = [
        ("balance", None),
        ("balance", None),
        ("balance", None),
        ("balance", None),
        ("wallet", Some("tok_success")),
        ("wallet", Some("tok_success")),
        ("card", Some("tok_success")),
        ("card", Some("tok_success")),
        ("card", Some("tok_decline")),
        ("wallet", Some("tok_duplicate_webhook")),
    ];
    for j in 0..30u32 {
        let (method, token) = behaviours[j as usize % behaviours.len()];
        let first = (j * 17) % 200;
        let mut lines = vec![(format!("p{first:03}"), 1 + j % 3)];
        if j % 2 == 1 {
            lines.push((format!("p{:03}", (first + 53) % 200), 1));
        }
        if j % 5 == 2 {
            lines.push((format!("p{:03}", (first + 120) % 200), 2));
        }
        orders.push(Order {
            order: format!("g-{j}"),
            user: format!("u{:05}", 101 + j),
            lines,
            method,
            token,
            coupon: j % 4 == 0,
            off_by: Decimal::ZERO,
        });
    }
    for (j, (method, token)) in [
        ("card", "tok_timeout"),
        ("card", "tok_5xx_after_charge"),
        ("card", "tok_slow"),
        ("wallet", "tok_out_of_order"),
        ("wallet", "tok_no_webhook"),
        ("wallet", "tok_amount_mismatch"),
    ]
    .into_iter()
    .enumerate()
    {
        orders.push(Order {
            order: format!("g-{method}-{token}"),
            user: format!("u{:05}", 201 + j),
            lines: vec![(format!("p{:03}", 7 + j * 11), 2)],
            method,
            token: Some(token),
            coupon: false,
            off_by: Decimal::ZERO,
        });
    }
    orders.push(Order {
        order: "g-poor".into(),
        user: "poor".into(),
        lines: vec![("p010".into(), 1)],
        method: "balance",
        token: None,
        coupon: false,
        off_by: Decimal::ZERO,
    });
    orders.push(Order {
        order: "g-stale-price".into(),
        user: "u00300".into(),
        lines: vec![("p011".into(), 1)],
        method: "balance",
        token: None,
        coupon: false,
        off_by: d("-0.01"),
    });
    orders
}

async fn request(pool: &PgPool, o: &Order, notify_url: &str) -> anyhow::Result<PaymentRequested> {
    let mut gross = Decimal::ZERO;
    for (sku, quantity) in &o.lines {
        let price: Decimal = sqlx::query_scalar("SELECT unit_price FROM products WHERE sku = $1")
            .bind(sku)
            .fetch_one(pool)
            .await?;
        gross += price * Decimal::from(*quantity);
    }
    // the history's coupon: 5.00 off from 50.00 on
    let coupon = o.coupon && gross >= d("50");
    let discount = if coupon { d("5") } else { Decimal::ZERO };
    Ok(PaymentRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_order_id: o.order.clone(),
        user_id: o.user.clone(),
        currency: "CNY".into(),
        items: o
            .lines
            .iter()
            .map(|(sku, quantity)| RequestedItem {
                sku: sku.clone(),
                quantity: *quantity,
            })
            .collect(),
        coupon_code: coupon.then(|| "HIST-5".to_owned()),
        payment_method: o.method.into(),
        payer_token: o.token.map(str::to_owned),
        expected_amount: gross - discount + o.off_by,
        notify_url: Some(notify_url.to_owned()),
        requested_at: Utc::now(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_large_table_is_scanned_in_full_with_100k_payments_of_history() -> anyhow::Result<()> {
    let started = Instant::now();
    let plans: Arc<Mutex<Vec<String>>> = Default::default();
    tracing::subscriber::set_global_default(PlanSink {
        plans: plans.clone(),
    })?;

    let harness = fleet::Harness::new("growth", true, |s| {
        s.channel_timeout = std::time::Duration::from_millis(1_000);
        s.status_query_delays = payfleet_common::config::millis(&[200, 400, 800]);
        s.max_attempts = 8;
    })
    .await?;
    let http_port = harness.http_port;
    let env = harness.env;
    let gateway = Gateway::new(GatewayConfig {
        webhook_delay: Duration::from_millis(200),
        slow: Duration::from_millis(300),
        timeout_hold: Duration::from_secs(3),
        ..GatewayConfig::standard()
    });
    let gateway_stop = payfleet_common::CancellationToken::new();
    let (bound, _) = gateway
        .serve("127.0.0.1:0".parse()?, gateway_stop.clone())
        .await?;
    seed(&env, &format!("http://{bound}")).await?;

    let loaded_in = load_history(&env).await?;
    let analyzed = Instant::now();
    sqlx::raw_sql("VACUUM ANALYZE").execute(&env.pool).await?;
    let analyzed_in = analyzed.elapsed();
    let sizes: HashMap<String, f32> = sqlx::query_as(
        "SELECT relname::text, reltuples FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')",
    )
    .fetch_all(&env.pool)
    .await?
    .into_iter()
    .collect();
    let large: BTreeMap<&str, f32> = sizes
        .iter()
        .filter(|(_, rows)| **rows > LARGE_TABLE_ROWS)
        .map(|(name, rows)| (name.as_str(), *rows))
        .collect();
    let history_rows: f32 = sizes.values().filter(|r| **r > 0.0).sum();
    println!(
        "history: {HISTORY_PAYMENTS} payments, {history_rows:.0} rows, loaded in {loaded_in:.1?}, vacuumed and analyzed in {analyzed_in:.1?}"
    );
    println!("tables over {LARGE_TABLE_ROWS} rows: {large:?}");
    assert!(
        sizes.get("payments").copied().unwrap_or_default() >= HISTORY_PAYMENTS as f32 * 0.99,
        "the history is loaded"
    );

    // The fleet and the ops commands explain every statement they run.
    let mut fleet_settings = env.settings.clone();
    fleet_settings.database_url = explained(&env.settings.database_url);
    let fleet = fleet::start_fleet(fleet_settings.clone(), &[], http_port).await?;

    let scenario_started = Instant::now();
    let since = Utc::now();
    let notify_url = merchant_endpoint().await?;
    let orders = scenario();
    for order in &orders {
        let request = request(&env.pool, order, &notify_url).await?;
        env.publish_payment_request(SHOP_KEY, &request).await?;
    }
    let expected = orders.len() as i64;
    wait_until(WAIT, "every scenario payment finished and notified", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments p WHERE p.merchant_order_id LIKE 'g-%'
               AND p.status IN ('settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')
               AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = p.id)",
        )
        .fetch_one(&env.pool)
        .await?;
        Ok(done == expected)
    })
    .await?;
    wait_until(WAIT, "every merchant webhook delivered", || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE url = $1 AND status <> 'delivered'",
        )
        .bind(&notify_url)
        .fetch_one(&env.pool)
        .await?;
        Ok(pending == 0)
    })
    .await?;
    env.wait_drained(WAIT).await.ok();
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status || COALESCE(' (' || split_part(reason, ':', 1) || ')', ''), count(*)
         FROM payments WHERE merchant_order_id LIKE 'g-%' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await?;
    println!(
        "scenario: {expected} payments in {:.1?}: {outcomes:?}",
        scenario_started.elapsed()
    );

    // What on-call runs, and the fleet's housekeeping (every ten minutes,
    // so it would not come round during the scenario), explained alike.
    let ops_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&fleet_settings.database_url)
        .await?;
    for order in ["g-4", "g-8"] {
        let id = ops::payment::parse_reference(&format!("{SHOP}:{order}"))?;
        ops::payment::show(&ops_pool, id).await?;
    }
    // `payfleet webhook list|resend`: by payment, merchant, time, status.
    let g4 = ops::payment::parse_reference(&format!("{SHOP}:g-4"))?;
    let day_ago = Utc::now() - chrono::Duration::days(1);
    for filter in [
        ops::webhook::Filter {
            payment: Some(g4),
            ..Default::default()
        },
        ops::webhook::Filter {
            merchant: Some(SHOP.into()),
            since: Some(day_ago),
            ..Default::default()
        },
        ops::webhook::Filter {
            since: Some(day_ago),
            until: Some(Utc::now()),
            ..Default::default()
        },
        ops::webhook::Filter {
            statuses: vec!["exhausted".into()],
            ..Default::default()
        },
        ops::webhook::Filter {
            merchant: Some(SHOP.into()),
            statuses: vec!["refused".into()],
            ..Default::default()
        },
    ] {
        let filter = ops::webhook::Filter {
            limit: 100,
            ..filter
        };
        ops::webhook::list(&ops_pool, &filter).await?;
    }
    let resent = ops::webhook::list(
        &ops_pool,
        &ops::webhook::Filter {
            payment: Some(g4),
            limit: 10,
            ..Default::default()
        },
    )
    .await?;
    let ids: Vec<uuid::Uuid> = resent.iter().map(|d| d.id).collect();
    ops::webhook::resend(&ops_pool, &ids, "growth", "webhook resend", Value::Null).await?;
    let today = Utc::now().date_naive();
    for channel in GatewayConfig::standard().channels {
        ops::reconcile::reconcile(&ops_pool, &channel.name, today, chrono_tz::Tz::UTC).await?;
    }
    payfleet_common::retention::prune_inbox(&ops_pool, Duration::from_secs(30 * 86_400)).await?;
    payfleet_common::retention::prune_sent_outbox(&ops_pool, Duration::from_secs(86_400)).await?;
    ops_pool.close().await;
    fleet.stop().await;

    // Read the plans back.
    let captured = std::mem::take(&mut *plans.lock().expect("plans"));
    let mut statements = BTreeSet::new();
    let mut touched: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut full_scans: BTreeMap<(String, String), usize> = BTreeMap::new();
    for notice in &captured {
        let Some(start) = notice.find('{') else {
            continue;
        };
        let explained: Value = serde_json::from_str(&notice[start..])?;
        let query = explained["Query Text"].as_str().unwrap_or_default();
        let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
        statements.insert(query.clone());
        let mut found = Vec::new();
        nodes(&explained["Plan"], &mut found);
        for (node, relation) in found {
            let Some(relation) = relation else { continue };
            *touched
                .entry(relation.clone())
                .or_default()
                .entry(node.clone())
                .or_default() += 1;
            if node == "Seq Scan" && large.contains_key(relation.as_str()) {
                *full_scans.entry((relation, query.clone())).or_default() += 1;
            }
        }
    }
    println!(
        "captured {} plans of {} distinct statements; tables and how they were read:",
        captured.len(),
        statements.len()
    );
    for (relation, reads) in &touched {
        println!("  {relation}: {reads:?}");
    }
    for ((relation, query), times) in &full_scans {
        println!(
            "SEQ SCAN of {relation} ({} rows), {times}x: {query}",
            large[relation.as_str()]
        );
    }

    // Not vacuous: every stage's tables were written and read, the deferred
    // balance trigger's own query is among the plans.
    assert!(
        captured.len() >= 1_000,
        "only {} plans captured",
        captured.len()
    );
    assert!(
        statements.len() >= 60,
        "only {} distinct statements captured",
        statements.len()
    );
    for table in [
        "payments",
        "orders",
        "order_details",
        "transaction_details",
        "reservations",
        "payment_attempts",
        "integration_log",
        "journal_entries",
        "postings",
        "payment_events",
        "webhook_deliveries",
        "webhook_attempts",
        "inbox",
        "outbox",
    ] {
        assert!(touched.contains_key(table), "no plan touched {table}");
    }
    assert!(
        statements
            .iter()
            .any(|s| s.contains("FROM postings WHERE entry_id = NEW.entry_id")),
        "the balance trigger's nested query was captured"
    );

    ledger::roll_up(&env.pool, 1_000_000).await?;
    let report = invariants::all(&env.pool).await?;
    assert!(report.ok(), "invariants broken: {:?}", report.failures());
    let books = invariants::against_channel_statements(&env.pool, since).await?;
    assert!(
        books.ok(),
        "the books disagree with the channels' statements: {:?}",
        books.failures()
    );
    gateway_stop.cancel();
    println!(
        "invariants hold; the whole test took {:.1?}",
        started.elapsed()
    );

    assert!(
        full_scans.is_empty(),
        "{} statements read a table over {LARGE_TABLE_ROWS} rows in full: {:?}",
        full_scans.len(),
        full_scans.keys().collect::<Vec<_>>()
    );
    env.teardown().await
}
