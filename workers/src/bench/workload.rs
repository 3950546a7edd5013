//! The benchmark's catalogue and requests: enough shops, sellers, SKUs and
//! users that nothing is hot by accident (or, with `hot`, one shop and one
//! SKU on purpose), and signed requests in the chosen mix.

use chrono::Utc;
use payfleet_common::messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::seed;

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

/// The catalogue: the shops, the sellers, their SKUs (each in ample
/// stock), every user's wallet topped up, and a coupon any cart of 20.00 or
/// more may use.
fn catalogue() -> seed::Catalogue {
    let shops = (0..SHOPS).map(|i| {
        let (id, key) = shop(i);
        seed::merchant(&id, &key).name(&format!("Bench shop {i}"))
    });
    let sellers = (0..SELLERS).map(|i| {
        let id = format!("bench-seller-{i}");
        seed::merchant(&id, &format!("{id}-key"))
            .name(&format!("Bench seller {i}"))
            .fee_rate(Decimal::new(60, 4))
    });
    let products = (0..SKUS).map(|i| {
        seed::product(&sku(i), &format!("bench-seller-{}", i % SELLERS), price(i))
            .name(&format!("Bench item {i}"))
            .warehouse(&format!("wh-{}", i % 4))
            .stock(100_000_000)
    });
    let users = (0..USERS).map(|i| {
        let user = format!("bench-user-{i}");
        seed::user(&user).name(&format!("Bench user {i}")).wallet(
            "CNY",
            Decimal::new(100_000_000, 2),
            &format!("bench-seed:{user}"),
        )
    });
    let coupon = seed::coupon(
        COUPON,
        seed::CouponRule::FullReduction {
            threshold: Decimal::new(2_000, 2),
            amount_off: Decimal::new(500, 2),
        },
    )
    .valid_days(-1, 30)
    .limits(2_000_000_000, 2_000_000_000);
    seed::Catalogue {
        merchants: shops.chain(sellers).collect(),
        users: users.collect(),
        products: products.collect(),
        coupons: vec![coupon],
        channels: Vec::new(),
    }
}

/// Seeds the catalogue (the caller gathers statistics).
pub async fn seed(pool: &PgPool) -> anyhow::Result<()> {
    catalogue().seed(pool).await
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
            _ => (crate::channels::BALANCE, None),
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
