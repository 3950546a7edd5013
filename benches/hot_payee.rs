//! Hot-payee benchmark: 1,000 transfers to ONE user's wallet against the
//! same load spread over 100 payees, through the whole chain on the real
//! services. A payee's credit is appended and rolled up, never applied to
//! its row in the transfer's transaction, so the hot run should keep pace
//! with the spread one. Prints both rates and their ratio, then checks the
//! payee's balance against its postings and its statement, and every
//! invariant.
//!
//!     cargo bench -p payfleet-workers --bench hot_payee [-- TRANSFERS]

use std::time::{Duration, Instant};

use chrono::Utc;
use payfleet_common::{
    CancellationToken,
    broker::Publisher,
    messages::{self, SCHEMA_VERSION, TransferRequested},
};
use payfleet_tests::{TestEnv, bench_settings, publish_signed_requests};
use payfleet_workers::{domain::ledger, invariants, seed};
use rust_decimal::Decimal;

const WALLET_APP: &str = "bench-wallet-app";
const KEY: &str = "bench-key";
const PAYEES: usize = 100;
const PAYERS: usize = 500;
const HOT_PAYEE: &str = "hot";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let transfers: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000);
    let env = TestEnv::with("hotpayee", bench_settings).await?;
    seed(&env).await?;
    let fleet = payfleet_workers::fleet(env.settings.clone(), &[], false).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(fleet.run(stop.clone()));
    let publisher = Publisher::new(
        payfleet_common::broker::Endpoint::from_settings(&env.settings)?,
        "bench-upstream",
        CancellationToken::new(),
    );

    // Warm up connections and caches.
    run(&env, &publisher, "warm", 50, |i| {
        format!("p{:03}", i % PAYEES)
    })
    .await?;
    let spread = run(&env, &publisher, "spread", transfers, |i| {
        format!("p{:03}", i % PAYEES)
    })
    .await?;
    let hot = run(&env, &publisher, "hot", transfers, |_| HOT_PAYEE.to_owned()).await?;

    stop.cancel();
    running.await??;
    publisher.close().await;
    ledger::roll_up(&env.pool, 10_000_000).await?;
    let report = invariants::all(&env.pool).await?;
    let (balance, postings, credits): (Decimal, Decimal, i64) = sqlx::query_as(
        "SELECT a.total, (SELECT sum(amount) FROM postings p WHERE p.account_id = a.id),
                (SELECT count(*) FROM account_statements s WHERE s.account_id = a.id AND s.kind = 'credit')
         FROM accounts a WHERE owner_kind = 'user' AND owner_id = $1",
    )
    .bind(HOT_PAYEE)
    .fetch_one(&env.pool)
    .await?;

    println!("hot-payee benchmark, {transfers} transfers per run, whole chain");
    println!(
        "  spread over {PAYEES} payees   {:>8.1} transfers/s  ({:.2} s)",
        spread.0,
        spread.1.as_secs_f64()
    );
    println!(
        "  one hot payee            {:>8.1} transfers/s  ({:.2} s)",
        hot.0,
        hot.1.as_secs_f64()
    );
    println!(
        "  hot / spread             {:>8.1} %",
        hot.0 / spread.0 * 100.0
    );
    let consistent = balance == postings && credits == transfers as i64;
    println!(
        "  {HOT_PAYEE}'s rolled-up balance {balance} = postings {postings}, {credits} credit lines: {}",
        if consistent {
            "consistent"
        } else {
            "INCONSISTENT"
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
    if !consistent || !report.ok() {
        anyhow::bail!("the hot payee's balance does not match its journal");
    }
    Ok(())
}

/// Publishes `count` transfers of 1.00 (payee chosen by `payee`) and waits
/// until all have succeeded and been notified.
async fn run(
    env: &TestEnv,
    publisher: &Publisher,
    tag: &str,
    count: usize,
    payee: impl Fn(usize) -> String,
) -> anyhow::Result<(f64, Duration)> {
    let started = Instant::now();
    let requests: Vec<TransferRequested> = (0..count)
        .map(|i| TransferRequested {
            schema_version: SCHEMA_VERSION,
            requester_id: WALLET_APP.into(),
            request_id: format!("{tag}-{i}"),
            payer_user_id: format!("u{}", i % PAYERS),
            payee_user_id: payee(i),
            amount: Decimal::new(100, 2),
            currency: "CNY".into(),
            memo: None,
            notify_url: None,
            requested_at: Utc::now(),
        })
        .collect();
    publish_signed_requests(
        publisher,
        messages::kind::TRANSFER_REQUESTED,
        KEY,
        &requests,
    )
    .await?;
    let like = format!("{tag}-%");
    loop {
        let (done, refused): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE t.status = 'succeeded'
                      AND EXISTS (SELECT 1 FROM payment_events e WHERE e.transfer_id = t.id)),
                    count(*) FILTER (WHERE t.status IN ('refused', 'failed'))
             FROM transfers t WHERE t.request_id LIKE $1",
        )
        .bind(&like)
        .fetch_one(&env.pool)
        .await?;
        if refused > 0 {
            anyhow::bail!("{refused} {tag} transfers did not succeed");
        }
        if done as usize == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    Ok((count as f64 / elapsed.as_secs_f64(), elapsed))
}

/// The wallet application, payers u0… with ample wallets, and payees
/// p000… and the hot one, each with a wallet.
async fn seed(env: &TestEnv) -> anyhow::Result<()> {
    let payers = (0..PAYERS).map(|u| {
        let user = format!("u{u}");
        seed::user(&user).wallet("CNY", Decimal::new(10_000_000, 2), &format!("bench:{user}"))
    });
    let payees = (0..PAYEES)
        .map(|p| format!("p{p:03}"))
        .chain(std::iter::once(HOT_PAYEE.to_owned()))
        .map(|p| seed::user(&p).wallet("CNY", Decimal::new(100, 2), &format!("bench:{p}")));
    seed::Catalogue {
        merchants: vec![
            seed::merchant(WALLET_APP, KEY)
                .name("Bench wallet app")
                .acts_for_users(),
        ],
        users: payers.chain(payees).collect(),
        ..Default::default()
    }
    .seed(&env.pool)
    .await
}
