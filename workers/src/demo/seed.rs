//! The demo's catalogue, users and channels.

use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::{
    seed::{self as seeder, CouponRule, LadderStep},
    stages::order_validation::{self, pricing, withdrawal::PAYOUT_METHOD},
};

use super::{SHOP, SHOP_KEY, WALLET_APP, WALLET_APP_KEY};

const SELLERS: [(&str, &str); 3] = [
    ("seller-a", "0.0060"),
    ("seller-b", "0.0100"),
    ("seller-c", "0.0000"),
];
pub(super) const USERS: usize = 200;
pub(super) const POOR_USERS: usize = 20;
pub(super) const BLOCKED_USER: &str = "demo-user-blocked";
/// The seller the demo pays out, and the sandbox's bank account token it
/// registered (a payout there is paid at once).
pub(super) const PAID_OUT_SELLER: &str = "seller-a";
const PAID_OUT_ACCOUNT: &str = "acct_success";

pub(super) struct Catalogue {
    pub(super) products: Vec<pricing::Product>,
    pub(super) coupons: Vec<pricing::Coupon>,
}

/// The sandbox gateway's standard channels, as rows of a routing table
/// that points them at the gateway at `gateway_url`.
pub fn sandbox_channels(gateway_url: &str) -> Vec<seeder::Channel> {
    payfleet_sandbox_gateway::GatewayConfig::standard()
        .channels
        .into_iter()
        .map(|channel| {
            // the card channel also pays withdrawals out
            let methods: &[&str] = if channel.name == "sandbox-card" {
                &["card", PAYOUT_METHOD]
            } else {
                &["wallet"]
            };
            seeder::sandbox_channel(
                &channel.name,
                gateway_url,
                &channel.secret,
                methods,
                channel.fee_rate,
            )
            .reversal_cutoff(channel.reversal_cutoff)
        })
        .collect()
}

/// Points the sandbox channels of the routing table at this run's gateway.
pub(crate) async fn seed_channels(pool: &PgPool, gateway_url: &str) -> anyhow::Result<()> {
    seeder::Catalogue {
        channels: sandbox_channels(gateway_url),
        ..Default::default()
    }
    .seed(pool)
    .await
}

/// (SKU, seller, warehouse, name, price, units in stock)
const PRODUCTS: [(&str, &str, &str, &str, &str, i32); 14] = [
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

fn money(text: &str) -> Decimal {
    text.parse().expect("a decimal literal")
}

/// The demo's shop, sellers, users (wallets topped up each run, except the
/// poor ones, which stay short), products and coupons.
fn catalogue(run_id: &str, webhook_url: &str) -> seeder::Catalogue {
    let mut merchants = vec![
        seeder::merchant(SHOP, SHOP_KEY)
            .name("Demo Shop")
            .notify_url(webhook_url),
        seeder::merchant(WALLET_APP, WALLET_APP_KEY)
            .name("Demo Wallet")
            .notify_url(webhook_url)
            .acts_for_users(),
    ];
    merchants.extend(SELLERS.map(|(seller, fee)| {
        let merchant = seeder::merchant(seller, &format!("{seller}-key")).fee_rate(money(fee));
        // the seller the demo pays out has a bank account registered
        if seller == PAID_OUT_SELLER {
            merchant.payout_account(PAID_OUT_ACCOUNT)
        } else {
            merchant
        }
    }));
    let mut users: Vec<seeder::User> = (0..USERS)
        .map(|i| {
            let user = format!("demo-user-{i}");
            let reference = format!("demo-{run_id}:{user}");
            seeder::user(&user).wallet("CNY", Decimal::new(500_000, 2), &reference)
        })
        .collect();
    users.extend((0..POOR_USERS).map(|i| {
        let user = format!("demo-poor-{i}");
        let reference = format!("demo-seed:{user}");
        seeder::user(&user).wallet("CNY", Decimal::new(500, 2), &reference)
    }));
    users.push(seeder::user(BLOCKED_USER).blocked(true).wallet(
        "CNY",
        Decimal::new(100_000, 2),
        &format!("demo-{run_id}:{BLOCKED_USER}"),
    ));
    let products = PRODUCTS
        .iter()
        .map(|&(sku, seller, warehouse, name, price, stock)| {
            let product = seeder::product(sku, seller, money(price))
                .name(name)
                .spec(serde_json::json!({"name": name}))
                .warehouse(warehouse)
                .stock(stock);
            match sku {
                "demo-old" => product.off_shelf(),
                "demo-tea" => product.tier(3, money("35.90")),
                "demo-fan" => product.tier(2, money("11.00")),
                _ => product,
            }
        })
        .collect();
    let coupons = [
        seeder::coupon(
            "DEMO-100-15",
            CouponRule::FullReduction {
                threshold: money("100"),
                amount_off: money("15"),
            },
        ),
        seeder::coupon(
            "DEMO-10PCT",
            CouponRule::Percentage {
                percent_off: money("10"),
                cap: Some(money("20")),
            },
        ),
        seeder::coupon(
            "DEMO-LADDER",
            CouponRule::Ladder(vec![
                LadderStep {
                    threshold: money("50.00"),
                    amount_off: money("5.00"),
                },
                LadderStep {
                    threshold: money("150.00"),
                    amount_off: money("18.00"),
                },
            ]),
        ),
    ]
    .map(|coupon| coupon.valid_days(-1, 365).limits(1_000_000, 100_000));
    seeder::Catalogue {
        merchants,
        users,
        products,
        coupons: coupons.into(),
        channels: Vec::new(),
    }
}

/// Seeds (or tops up) the demo catalogue. Idempotent per run.
pub(super) async fn seed_catalogue(
    pool: &PgPool,
    run_id: &str,
    webhook_url: &str,
) -> anyhow::Result<Catalogue> {
    catalogue(run_id, webhook_url).seed(pool).await?;
    let skus = PRODUCTS.map(|p| p.0);

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
            sku: (*sku).to_owned(),
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
