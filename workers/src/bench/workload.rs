//! The benchmark's catalogue and requests: enough shops, sellers, SKUs and
//! users that nothing is hot by accident (or, with `hot`, one shop and one
//! SKU on purpose), and signed requests in the chosen mix.

use chrono::Utc;
use payfleet_common::messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::domain::ledger;

pub const SHOPS: usize = 20;
pub const SELLERS: usize = 100;
pub const SKUS: usize = 1_000;
pub const USERS: usize = 2_000;
const COUPON: &str = "BENCH5";

/// One kind of payment in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The user's balance (the wallet inside payfleet).
    Wallet,
    /// The sandbox's sync card channel.
    Card,
    /// The sandbox's async wallet channel, webhooks with no delay.
    Async,
    /// A balance payment of a cart with items of three sellers.
    Carts,
    /// A balance payment with a coupon.
    Coupons,
}

fn shop(index: usize) -> (String, String) {
    (
        format!("bench-shop-{index}"),
        format!("bench-shop-{index}-key"),
    )
}

fn sku(index: usize) -> String {
    format!("bench-sku-{index}")
}

/// The price of SKU `index`: 10.00 to 99.99, so no amount rule fires.
fn price(index: usize) -> Decimal {
    Decimal::new(1_000 + (index as i64 * 7_919) % 8_999, 2)
}

/// Seeds the catalogue set-based, tops up every user's wallet, and a
/// coupon any cart of 20.00 or more may use.
pub async fn seed(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO merchants (id, name, signing_key, fee_rate)
         SELECT 'bench-shop-' || i, 'Bench shop ' || i, 'bench-shop-' || i || '-key', 0
         FROM generate_series(0, $1 - 1) i
         UNION ALL
         SELECT 'bench-seller-' || i, 'Bench seller ' || i, 'bench-seller-' || i || '-key', 0.0060
         FROM generate_series(0, $2 - 1) i",
    )
    .bind(SHOPS as i32)
    .bind(SELLERS as i32)
    .execute(&mut *tx)
    .await?;
    let prices: Vec<Decimal> = (0..SKUS).map(price).collect();
    sqlx::query(
        "INSERT INTO products (sku, merchant_id, name, warehouse, unit_price, currency)
         SELECT 'bench-sku-' || (n - 1), 'bench-seller-' || ((n - 1) % $1),
                'Bench item ' || (n - 1), 'wh-' || ((n - 1) % 4), p, 'CNY'
         FROM unnest($2::numeric[]) WITH ORDINALITY AS t(p, n)",
    )
    .bind(SELLERS as i32)
    .bind(&prices)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO stock (sku, available) SELECT sku, 100000000 FROM products WHERE sku LIKE 'bench-sku-%'",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO coupons (code, kind, currency, threshold, amount_off, valid_from, valid_until, total_limit, per_user_limit)
         VALUES ($1, 'full_reduction', 'CNY', 20.00, 5.00, now() - interval '1 day', now() + interval '30 days', 2000000000, 2000000000)",
    )
    .bind(COUPON)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO users (id, name) SELECT 'bench-user-' || i, 'Bench user ' || i FROM generate_series(0, $1 - 1) i")
        .bind(USERS as i32)
        .execute(&mut *tx)
        .await?;
    for user in 0..USERS {
        let user = format!("bench-user-{user}");
        ledger::top_up(
            &mut tx,
            &user,
            "CNY",
            Decimal::new(100_000_000, 2),
            &format!("bench-seed:{user}"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("topping up {user}: {e}"))?;
    }
    tx.commit().await?;
    // Statistics for the planner, as a database in service has them.
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// One signed request, ready to publish.
pub struct Request {
    pub message_id: String,
    pub body: Vec<u8>,
    pub signature: String,
}

/// `count` requests of run `run`, the kinds of `mix` in turn; with `hot`,
/// every one from one shop for one SKU. Each is made (and stamped
/// `requested_at`) when it is taken from the iterator.
pub fn requests(
    run: &str,
    count: usize,
    mix: &[Kind],
    hot: bool,
    seed: u64,
) -> impl Iterator<Item = Request> + Send + 'static {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (run, mix) = (run.to_owned(), mix.to_vec());
    (0..count).map(move |n| {
        let kind = mix[n % mix.len()];
        let (shop, key) = shop(if hot { 0 } else { rng.usize(0..SHOPS) });
        let pick = |rng: &mut fastrand::Rng| if hot { 0 } else { rng.usize(0..SKUS) };
        let mut skus = vec![pick(&mut rng)];
        if kind == Kind::Carts && !hot {
            // three sellers: SKUs whose seller (index mod SELLERS) differs
            skus.push((skus[0] + 1) % SKUS);
            skus.push((skus[0] + 2) % SKUS);
        }
        let gross: Decimal = skus.iter().map(|&s| price(s)).sum();
        let coupon =
            (kind == Kind::Coupons && gross >= Decimal::new(2_000, 2)).then(|| COUPON.to_owned());
        let expected = if coupon.is_some() {
            gross - Decimal::new(500, 2)
        } else {
            gross
        };
        let (method, token) = match kind {
            Kind::Card => ("card", Some("tok_success")),
            Kind::Async => ("wallet", Some("tok_success")),
            _ => ("balance", None),
        };
        let request = PaymentRequested {
            schema_version: SCHEMA_VERSION,
            merchant_id: shop,
            merchant_order_id: format!("{run}-{n:07}"),
            user_id: format!("bench-user-{}", rng.usize(0..USERS)),
            currency: "CNY".into(),
            items: skus
                .iter()
                .map(|&s| RequestedItem {
                    sku: sku(s),
                    quantity: 1,
                })
                .collect(),
            coupon_code: coupon,
            payment_method: method.into(),
            payer_token: token.map(str::to_owned),
            expected_amount: expected,
            notify_url: None,
            requested_at: Utc::now(),
        };
        let body = serde_json::to_vec(&request).expect("a request serializes");
        Request {
            message_id: uuid::Uuid::now_v7().to_string(),
            signature: messages::sign(&key, &body),
            body,
        }
    })
}
