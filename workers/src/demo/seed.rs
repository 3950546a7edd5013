//! The demo's catalogue, users and channels.

use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::{
    domain::ledger,
    stages::order_validation::{self, pricing},
};

use super::{SHOP, SHOP_KEY};

const SELLERS: [(&str, &str); 3] = [
    ("seller-a", "0.0060"),
    ("seller-b", "0.0100"),
    ("seller-c", "0.0000"),
];
pub(super) const USERS: usize = 200;
pub(super) const POOR_USERS: usize = 20;
pub(super) const BLOCKED_USER: &str = "demo-user-blocked";

pub(super) struct Catalogue {
    pub(super) products: Vec<pricing::Product>,
    pub(super) coupons: Vec<pricing::Coupon>,
}

/// Points the sandbox channels of the routing table at this run's gateway.
pub(crate) async fn seed_channels(pool: &PgPool, gateway_url: &str) -> anyhow::Result<()> {
    for channel in payfleet_sandbox_gateway::GatewayConfig::standard().channels {
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
pub(super) async fn seed_catalogue(
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
