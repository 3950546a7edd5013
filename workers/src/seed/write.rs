//! The writers of the seeder: one set-based statement per row kind.

use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{Channel, Coupon, CouponRule, Merchant, Product, User};
use crate::domain::ledger;

/// Writes merchants; an existing one gets the notify URL described (and
/// the payout account, when one is).
/// Returns the ids it created (the others existed). `payfleet merchant
/// add` creates its merchant through this too: there is one way to make
/// a merchant.
pub async fn merchants(conn: &mut PgConnection, rows: &[Merchant]) -> anyhow::Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Merchant) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let written: Vec<(String, bool)> = sqlx::query_as(
        "INSERT INTO merchants (id, name, signing_key, fee_rate, notify_url, notify_hosts, acts_for_users, payout_account)
         SELECT id, name, key, fee, url, string_to_array(hosts, ' '), for_users, payout
         FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::text[], $7::boolean[],
                     $8::text[])
              AS t(id, name, key, fee, url, hosts, for_users, payout)
         ON CONFLICT (id) DO UPDATE SET notify_url = EXCLUDED.notify_url,
             payout_account = COALESCE(EXCLUDED.payout_account, merchants.payout_account)
         RETURNING id, xmax = 0",
    )
    .bind(column(|m| m.id.clone()))
    .bind(column(|m| m.name.clone()))
    .bind(column(|m| m.signing_key.clone()))
    .bind(rows.iter().map(|m| m.fee_rate).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|m| m.notify_url.clone())
            .collect::<Vec<_>>(),
    )
    .bind(column(|m| m.notify_hosts.join(" ")))
    .bind(rows.iter().map(|m| m.acts_for_users).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|m| m.payout_account.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(created(written))
}

/// The ids of an `INSERT … ON CONFLICT DO UPDATE … RETURNING id, xmax = 0`
/// that were inserted rather than updated.
fn created(written: Vec<(String, bool)>) -> Vec<String> {
    written
        .into_iter()
        .filter_map(|(id, inserted)| inserted.then_some(id))
        .collect()
}

/// Writes users, then tops up their wallets through the books. Returns
/// the ids it created; `payfleet user add` creates its user through this.
pub async fn users(conn: &mut PgConnection, rows: &[User]) -> anyhow::Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO users (id, name, blocked)
         SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[])
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(rows.iter().map(|u| u.id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.name.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.blocked).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    for user in rows {
        for top_up in &user.top_ups {
            ledger::top_up(
                conn,
                &user.id,
                &top_up.currency,
                top_up.amount,
                &top_up.reference,
            )
            .await
            .map_err(|e| anyhow::anyhow!("topping up {}: {e}", user.id))?;
        }
    }
    Ok(inserted)
}

/// Writes products (an existing SKU of the same seller takes the name,
/// spec, warehouse, price, currency and status described), tops their
/// stock up to at least what is described, and writes their price tiers
/// (a tier's price as described).
pub async fn products(conn: &mut PgConnection, rows: &[Product]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let skus: Vec<String> = rows.iter().map(|p| p.sku.clone()).collect();
    sqlx::query(
        "INSERT INTO products (sku, merchant_id, name, spec, warehouse, unit_price, currency, status)
         SELECT sku, seller, name, COALESCE(spec::jsonb, '{}'), COALESCE(warehouse, 'main'), price, currency,
                CASE WHEN on_sale THEN 'on_sale' ELSE 'off_shelf' END
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::boolean[])
              AS t(sku, seller, name, spec, warehouse, price, currency, on_sale)
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, spec = EXCLUDED.spec, warehouse = EXCLUDED.warehouse,
                                         unit_price = EXCLUDED.unit_price, currency = EXCLUDED.currency,
                                         status = EXCLUDED.status
             WHERE products.merchant_id = EXCLUDED.merchant_id
               AND (products.name, products.spec, products.warehouse, products.unit_price, products.currency, products.status)
                   IS DISTINCT FROM
                   (EXCLUDED.name, EXCLUDED.spec, EXCLUDED.warehouse, EXCLUDED.unit_price, EXCLUDED.currency, EXCLUDED.status)",
    )
    .bind(&skus)
    .bind(rows.iter().map(|p| p.merchant_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.name.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.spec.as_ref().map(|s| s.to_string())).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.warehouse.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.unit_price).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.currency.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.on_sale).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    // Inserting into the stock view adds units (spread over the SKU's buckets).
    sqlx::query(
        "INSERT INTO stock (sku, available)
         SELECT t.sku, t.units - COALESCE(b.units, 0)
         FROM unnest($1::text[], $2::integer[]) AS t(sku, units)
         LEFT JOIN (SELECT sku, sum(available)::integer AS units FROM stock_buckets
                    WHERE sku = ANY($1) GROUP BY sku) b ON b.sku = t.sku
         WHERE t.units > COALESCE(b.units, 0)",
    )
    .bind(&skus)
    .bind(rows.iter().map(|p| p.stock).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let tiers: Vec<(&str, i32, Decimal)> = rows
        .iter()
        .flat_map(|p| {
            p.tiers
                .iter()
                .map(|(q, price)| (p.sku.as_str(), *q, *price))
        })
        .collect();
    if !tiers.is_empty() {
        sqlx::query(
            "INSERT INTO price_tiers (sku, min_quantity, unit_price)
             SELECT * FROM unnest($1::text[], $2::integer[], $3::numeric[])
             ON CONFLICT (sku, min_quantity) DO UPDATE SET unit_price = EXCLUDED.unit_price
                 WHERE price_tiers.unit_price <> EXCLUDED.unit_price",
        )
        .bind(tiers.iter().map(|t| t.0).collect::<Vec<_>>())
        .bind(tiers.iter().map(|t| t.1).collect::<Vec<_>>())
        .bind(tiers.iter().map(|t| t.2).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The coupon's columns: (kind, threshold, amount off, percent off, cap, ladder).
pub(crate) type CouponColumns = (
    &'static str,
    Option<Decimal>,
    Option<Decimal>,
    Option<Decimal>,
    Option<Decimal>,
    Option<String>,
);

pub(crate) fn coupon_columns(rule: &CouponRule) -> CouponColumns {
    match rule {
        CouponRule::FullReduction {
            threshold,
            amount_off,
        } => (
            "full_reduction",
            Some(*threshold),
            Some(*amount_off),
            None,
            None,
            None,
        ),
        CouponRule::Percentage { percent_off, cap } => {
            ("percentage", None, None, Some(*percent_off), *cap, None)
        }
        CouponRule::Ladder(steps) => {
            let ladder = serde_json::to_string(steps).expect("a ladder serializes");
            ("ladder", None, None, None, None, Some(ladder))
        }
    }
}

/// Writes coupons; an existing code is left as it is.
pub async fn coupons(conn: &mut PgConnection, rows: &[Coupon]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let columns: Vec<CouponColumns> = rows.iter().map(|c| coupon_columns(&c.rule)).collect();
    sqlx::query(
        "INSERT INTO coupons (code, kind, currency, threshold, amount_off, percent_off, cap, ladder,
                              valid_from, valid_until, total_limit, per_user_limit)
         SELECT code, kind, currency, threshold, amount_off, percent_off, cap, ladder::jsonb,
                valid_from, valid_until, total, per_user
         FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::numeric[],
                     $7::numeric[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::integer[], $12::integer[])
              AS t(code, kind, currency, threshold, amount_off, percent_off, cap, ladder, valid_from, valid_until, total, per_user)
         ON CONFLICT (code) DO NOTHING",
    )
    .bind(rows.iter().map(|c| c.code.clone()).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.currency.clone()).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.2).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.3).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.4).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.5.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.valid_from).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.valid_until).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.total_limit).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.per_user_limit).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes channels; an existing one is pointed where described and made
/// active. Returns the names it created; `payfleet channel add` creates
/// its channel through this.
pub async fn channels(conn: &mut PgConnection, rows: &[Channel]) -> anyhow::Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let written: Vec<(String, bool)> = sqlx::query_as(
        "INSERT INTO channels (name, kind, base_url, webhook_secret, methods, fee_rate, reversal_cutoff)
         SELECT name, 'sandbox', url, secret, string_to_array(methods, ' '), fee, cutoff
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::time[])
              AS t(name, url, secret, methods, fee, cutoff)
         ON CONFLICT (name) DO UPDATE SET base_url = EXCLUDED.base_url, webhook_secret = EXCLUDED.webhook_secret,
                                          methods = EXCLUDED.methods, fee_rate = EXCLUDED.fee_rate,
                                          reversal_cutoff = EXCLUDED.reversal_cutoff, status = 'active'
         RETURNING name, xmax = 0",
    )
    .bind(rows.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.base_url.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.webhook_secret.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.methods.join(" ")).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.fee_rate).collect::<Vec<_>>())
    .bind(rows.iter().map(|c| c.reversal_cutoff).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(created(written))
}
