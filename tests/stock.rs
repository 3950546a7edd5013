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
