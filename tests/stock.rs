//! Stock in buckets: concurrent Trys racing for a SKU's last units never
//! oversell it, whichever buckets the units sit in, and Confirm and Cancel
//! put every unit where it belongs.

use std::time::Duration;

use payfleet_common::PaymentId;
use payfleet_tests::TestEnv;
use payfleet_workers::{domain::stock, seed};
use rust_decimal::Decimal;

async fn payment(env: &TestEnv, n: usize) -> anyhow::Result<PaymentId> {
    let id = PaymentId::new();
    sqlx::query(
        "INSERT INTO payments (id, merchant_id, merchant_order_id, request_hash, user_id, method, currency, amount,
                               status, expires_at, requested_at)
         VALUES ($1, 'shop', $2, 'h', 'u', 'balance', 'CNY', 1, 'validated', now() + interval '1 hour', now())",
    )
    .bind(id)
    .bind(format!("race-{n}"))
    .execute(&env.pool)
    .await?;
    Ok(id)
}

async fn totals(env: &TestEnv) -> anyhow::Result<(i32, i32, i32)> {
    Ok(sqlx::query_as(
        "SELECT s.available, s.reserved,
                (SELECT min(least(available, reserved)) FROM stock_buckets WHERE sku = 'last')
         FROM stock s WHERE s.sku = 'last'",
    )
    .fetch_one(&env.pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_trys_never_oversell_the_last_units() -> anyhow::Result<()> {
    let env = TestEnv::new("stockrace").await?;
    seed::Catalogue {
        merchants: vec![seed::merchant("shop", "k").name("Shop")],
        products: vec![
            seed::product("last", "shop", Decimal::ONE)
                .name("Last units")
                .stock(13),
        ],
        ..Default::default()
    }
    .seed(&env.pool)
    .await?;
    let spread: Vec<i32> = sqlx::query_scalar(
        "SELECT available FROM stock_buckets WHERE sku = 'last' ORDER BY bucket",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(
        spread,
        vec![2, 2, 2, 2, 2, 1, 1, 1],
        "13 units spread over 8 buckets"
    );

    // 40 Trys of 1 to 3 units (62 wanted), each holding its transaction a
    // moment, so that most of them find the buckets taken and some must
    // gather units from several buckets.
    let mut racers = Vec::new();
    for n in 0..40 {
        let id = payment(&env, n).await?;
        let quantity = 1 + (n % 3) as i32;
        let pool = env.pool.clone();
        racers.push(tokio::spawn(async move {
            let mut tx = pool.begin().await?;
            let got = stock::reserve(&mut tx, id, "last", quantity).await?;
            tokio::time::sleep(Duration::from_millis(5 + (n % 7) as u64 * 3)).await;
            tx.commit().await?;
            anyhow::Ok(got.then_some((id, quantity)))
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        if let Some(won) = racer.await?? {
            winners.push(won);
        }
    }
    let reserved: i32 = winners.iter().map(|(_, q)| q).sum();
    let (available, reserved_in_stock, _) = totals(&env).await?;
    assert!(
        reserved <= 13,
        "never more reserved than there was: {reserved}"
    );
    assert_eq!(available + reserved, 13, "no unit made or lost");
    assert_eq!(reserved_in_stock, reserved);
    // Demand exceeded supply by far: every Try that lost found too few units.
    assert!(
        available < 3,
        "a loser was turned away only when units ran short: {available} left"
    );
    let negative: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stock_buckets WHERE available < 0 OR reserved < 0",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(negative, 0);

    // Confirm half, cancel the rest: the cancelled units come back.
    let mut released = 0;
    for (n, (id, quantity)) in winners.iter().enumerate() {
        let mut tx = env.pool.begin().await?;
        if n % 2 == 0 {
            stock::deduct(&mut tx, *id).await?;
        } else {
            stock::release(&mut tx, *id).await?;
            released += quantity;
        }
        tx.commit().await?;
    }
    let (after, reserved_after, _) = totals(&env).await?;
    assert_eq!(reserved_after, 0, "no reservation left open");
    assert_eq!(
        after,
        available + released,
        "cancelled units are available again"
    );
    // The stock invariants (the payments here are bare rows, not whole payments).
    let report = payfleet_workers::invariants::all(&env.pool).await?;
    let stock_checks: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name.contains("stock"))
        .collect();
    assert!(stock_checks.len() >= 3, "{stock_checks:?}");
    assert!(
        stock_checks.iter().all(|c| c.violations == 0),
        "{stock_checks:?}"
    );
    env.teardown().await
}

async fn payment_with_id(env: &TestEnv, id: PaymentId, order: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO payments (id, merchant_id, merchant_order_id, request_hash, user_id, method, currency, amount,
                               status, expires_at, requested_at)
         VALUES ($1, 'shop', $2, 'h', 'u', 'balance', 'CNY', 1, 'validated', now() + interval '1 hour', now())",
    )
    .bind(id)
    .bind(order)
    .execute(&env.pool)
    .await?;
    Ok(())
}

/// A Try that finds a free bucket takes its units from that one bucket,
/// whatever plan PostgreSQL picks for the statement that chooses and
/// updates it. After a VACUUM and before any ANALYZE of `stock_buckets`
/// (what autovacuum's first pass over the table leaves between its two
/// halves) the planner thinks a SKU has one bucket and may join the buckets
/// in a nested loop with the choice (FOR UPDATE SKIP LOCKED LIMIT 1) on its
/// inner side: run again for every bucket, it skips those the statement has
/// just updated and chooses the next, so every bucket from the payment's
/// own to the last gave the units, and only the first was recorded.
#[tokio::test]
async fn a_try_takes_its_units_from_one_bucket_whatever_the_plan() -> anyhow::Result<()> {
    let env = TestEnv::new("stockplan").await?;
    // The table's statistics stay as the VACUUM below leaves them.
    sqlx::raw_sql("ALTER TABLE stock_buckets SET (autovacuum_enabled = false)")
        .execute(&env.pool)
        .await?;
    seed::Catalogue {
        merchants: vec![seed::merchant("shop", "k").name("Shop")],
        products: vec![
            seed::product("vac", "shop", Decimal::ONE)
                .name("Vacuumed")
                .stock(800),
        ],
        ..Default::default()
    }
    .seed(&env.pool)
    .await?;
    sqlx::raw_sql("VACUUM stock_buckets")
        .execute(&env.pool)
        .await?;
    let (tuples, statistics): (f32, i64) = sqlx::query_as(
        "SELECT c.reltuples, (SELECT count(*) FROM pg_stats s WHERE s.tablename = 'stock_buckets')
         FROM pg_class c WHERE c.oid = 'stock_buckets'::regclass",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!((tuples, statistics), (8.0, 0), "vacuumed, never analyzed");

    // A payment whose search starts at bucket 0, the first the scan meets.
    let id = loop {
        let id = PaymentId::new();
        if id.as_uuid().as_u128() % 8 == 0 {
            break id;
        }
    };
    payment_with_id(&env, id, "plan-0").await?;
    let mut tx = env.pool.begin().await?;
    assert!(stock::reserve(&mut tx, id, "vac", 2).await?);
    tx.commit().await?;
    let gave: Vec<(i16, i32, i32)> = sqlx::query_as(
        "SELECT bucket, available, reserved FROM stock_buckets WHERE sku = 'vac' AND reserved <> 0 ORDER BY bucket",
    )
    .fetch_all(&env.pool)
    .await?;
    assert_eq!(
        gave,
        vec![(0, 98, 2)],
        "two units from bucket 0, none from another"
    );

    // Cancel puts them back where they came from: no unit made or lost.
    let mut tx = env.pool.begin().await?;
    stock::release(&mut tx, id).await?;
    tx.commit().await?;
    let (available, reserved): (i32, i32) =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'vac'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!((available, reserved), (800, 0));
    let report = payfleet_workers::invariants::all(&env.pool).await?;
    let broken: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name.contains("stock") && c.violations != 0)
        .collect();
    assert!(broken.is_empty(), "{broken:?}");
    env.teardown().await
}
