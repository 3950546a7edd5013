//! Hot-account benchmark: 1,000 wallet payments to ONE merchant against the
//! same load spread over 100 merchants, through the whole chain on the real
//! services. Prints both rates and their ratio, then checks that every
//! rolled-up merchant balance equals its postings.
//!
//!     cargo bench -p payfleet-workers --bench hot_account [-- PAYMENTS]

use std::time::{Duration, Instant};

use chrono::Utc;
use payfleet_common::{
    CancellationToken,
    broker::Publisher,
    messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION},
};
use payfleet_tests::{TestEnv, bench_settings, publish_signed_requests};
use payfleet_workers::{domain::ledger, invariants, seed};
use rust_decimal::Decimal;

const SHOP: &str = "bench-shop";
const KEY: &str = "bench-key";
const MERCHANTS: usize = 100;
const USERS: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let payments: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000);
    let env = TestEnv::with("hotbench", |s| {
        bench_settings(s);
        s.payment_ttl = std::time::Duration::from_millis(3_600_000);
    })
    .await?;
    seed(&env).await?;
    let fleet = payfleet_workers::fleet(env.settings.clone(), &[], false).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(fleet.run(stop.clone()));
    let publisher = Publisher::new(
        payfleet_common::broker::Endpoint::from_settings(&env.settings)?,
        "bench-upstream",
        CancellationToken::new(),
    );

    // Warm up connections and caches with a few payments of neither kind.
    run(&env, &publisher, "warm", 50, |i| {
        format!("p{:03}", i % MERCHANTS)
    })
    .await?;
    let spread = run(&env, &publisher, "spread", payments, |i| {
        format!("p{:03}", i % MERCHANTS)
    })
    .await?;
    // The same 100 SKUs' worth of stock rows, all sold by m000: only the
    // merchant is hot, so the comparison measures its account alone.
    let hot = run(&env, &publisher, "hot", payments, |i| {
        format!("h{:03}", i % MERCHANTS)
    })
    .await?;

    stop.cancel();
    running.await??;
    publisher.close().await;
    ledger::roll_up(&env.pool, 10_000_000).await?;
    let report = invariants::all(&env.pool).await?;
    let (balance, postings): (Decimal, Decimal) = sqlx::query_as(
        "SELECT a.total, (SELECT sum(amount) FROM postings p WHERE p.account_id = a.id)
         FROM accounts a WHERE owner_kind = 'merchant' AND owner_id = 'm000'",
    )
    .fetch_one(&env.pool)
    .await?;

    println!("hot-account benchmark, {payments} payments per run, whole chain, wallet channel");
    println!(
        "  spread over {MERCHANTS} merchants  {:>8.1} payments/s  ({:.2} s)",
        spread.0,
        spread.1.as_secs_f64()
    );
    println!(
        "  one hot merchant          {:>8.1} payments/s  ({:.2} s)",
        hot.0,
        hot.1.as_secs_f64()
    );
    println!(
        "  hot / spread              {:>8.1} %",
        hot.0 / spread.0 * 100.0
    );
    println!(
        "  m000 rolled-up balance {balance} = postings {postings}: {}",
        if balance == postings {
            "equal"
        } else {
            "DIFFERENT"
        }
    );
    println!(
        "  invariants: {}",
        if report.ok() {
            "all hold".to_owned()
        } else {
            report.failures().join("; ")
        }
    );
    env.teardown().await?;
    if balance != postings || !report.ok() {
        anyhow::bail!("balances do not match the journal");
    }
    Ok(())
}

/// Publishes `count` payments (SKU chosen by `sku`) and waits until all are settled and notified.
async fn run(
    env: &TestEnv,
    publisher: &Publisher,
    tag: &str,
    count: usize,
    sku: impl Fn(usize) -> String,
) -> anyhow::Result<(f64, Duration)> {
    let started = Instant::now();
    let requests: Vec<PaymentRequested> = (0..count)
        .map(|i| PaymentRequested {
            schema_version: SCHEMA_VERSION,
            merchant_id: SHOP.into(),
            merchant_order_id: format!("{tag}-{i}"),
            user_id: format!("u{}", i % USERS),
            currency: "CNY".into(),
            items: vec![RequestedItem {
                sku: sku(i),
                quantity: 1,
            }],
            coupon_code: None,
            payment_method: "balance".into(),
            payer_token: None,
            expected_amount: Decimal::new(1000, 2),
            notify_url: None,
            requested_at: Utc::now(),
        })
        .collect();
    publish_signed_requests(publisher, messages::kind::PAYMENT_REQUESTED, KEY, &requests).await?;
    let like = format!("{tag}-%");
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments p WHERE merchant_order_id LIKE $1 AND status = 'settled'
               AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = p.id)",
        )
        .bind(&like)
        .fetch_one(&env.pool)
        .await?;
        if done as usize == count {
            break;
        }
        let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE merchant_order_id LIKE $1 AND status <> 'settled' AND finished_at IS NOT NULL")
            .bind(&like)
            .fetch_one(&env.pool)
            .await?;
        if failed > 0 {
            anyhow::bail!("{failed} {tag} payments did not settle");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    Ok((count as f64 / elapsed.as_secs_f64(), elapsed))
}

/// The shop, merchants m000… (fee 0.6 %) with one SKU p000… each, the hot
/// SKUs h000… all of m000, and users u0… with ample wallets.
async fn seed(env: &TestEnv) -> anyhow::Result<()> {
    let sku = |sku: String, seller: &str| {
        seed::product(&sku, seller, Decimal::new(1_000, 2)).stock(1_000_000)
    };
    let merchants = (0..MERCHANTS)
        .map(|m| seed::merchant(&format!("m{m:03}"), "k").fee_rate(Decimal::new(60, 4)));
    let spread = (0..MERCHANTS).map(|m| sku(format!("p{m:03}"), &format!("m{m:03}")));
    let hot = (0..MERCHANTS).map(|m| sku(format!("h{m:03}"), "m000"));
    let users = (0..USERS).map(|u| {
        let user = format!("u{u}");
        seed::user(&user).wallet("CNY", Decimal::new(10_000_000, 2), &format!("bench:{user}"))
    });
    seed::Catalogue {
        merchants: std::iter::once(seed::merchant(SHOP, KEY).name("Bench shop"))
            .chain(merchants)
            .collect(),
        products: spread.chain(hot).collect(),
        users: users.collect(),
        ..Default::default()
    }
    .seed(&env.pool)
    .await
}
