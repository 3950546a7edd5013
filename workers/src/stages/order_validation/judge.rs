//! Judging a signed, fresh request against the catalogue and the books:
//! its shape, the payer, the products, prices and stock, the coupon, the
//! channel and the sellers. The first refusal is the verdict.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use payfleet_common::{
    messages::{PaymentRequested, SCHEMA_VERSION},
    money,
    runtime::StageError,
};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;

use super::{
    MAX_LINES, MAX_QUANTITY, METHODS, OrderValidation,
    pricing::{self, Coupon, CouponRule, LadderStep, Product},
};
use crate::channels::BALANCE;

/// A priced, split order that passed every check but risk.
pub struct PricedOrder {
    pub route: crate::channels::routing::Route,
    pub channel_fee: Decimal,
    pub lines: Vec<pricing::Line>,
    pub sub_orders: Vec<pricing::SubOrder>,
    pub fee_rates: HashMap<String, Decimal>,
    pub gross: Decimal,
    pub discount: Decimal,
    pub payable: Decimal,
    pub user_blocked: bool,
}

pub(super) enum Verdict {
    Reject {
        reason: &'static str,
        detail: String,
    },
    Accept(PricedOrder),
}

/// Why judging stopped before a priced order: the request is refused (the
/// reason code and a detail), or the stage failed.
enum Stop {
    Refused(&'static str, String),
    Failed(StageError),
}

impl From<StageError> for Stop {
    fn from(error: StageError) -> Self {
        Stop::Failed(error)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Stop::Failed(error.into())
    }
}

fn reject<T>(reason: &'static str, detail: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Refused(
        reason,
        format!("{reason}: {}", detail.into()),
    ))
}

impl OrderValidation {
    pub(super) async fn judge(
        &self,
        conn: &mut PgConnection,
        r: &PaymentRequested,
    ) -> Result<Verdict, StageError> {
        match self.price(conn, r).await {
            Ok(order) => Ok(Verdict::Accept(order)),
            Err(Stop::Refused(reason, detail)) => Ok(Verdict::Reject { reason, detail }),
            Err(Stop::Failed(error)) => Err(error),
        }
    }

    async fn price(
        &self,
        conn: &mut PgConnection,
        r: &PaymentRequested,
    ) -> Result<PricedOrder, Stop> {
        self.check_shape(r)?;
        let user_blocked = check_payer(conn, r).await?;
        let skus: Vec<String> = r.items.iter().map(|i| i.sku.clone()).collect();
        let catalogue = Catalogue::load(conn, &skus).await?;
        let priced_items = on_sale(&catalogue.products, r)?;
        check_stock(&catalogue, r)?;

        let undiscounted = pricing::price_lines(&priced_items, Decimal::ZERO);
        let gross: Decimal = undiscounted.iter().map(|l| l.amount).sum();
        let discount = match &r.coupon_code {
            None => Decimal::ZERO,
            Some(code) => coupon_discount(conn, r, code, gross).await?,
        };
        let lines = pricing::price_lines(&priced_items, discount);
        let payable = gross - discount;
        if payable <= Decimal::ZERO {
            return reject(
                "nothing_to_pay",
                format!("the discount covers the whole {gross} {}", r.currency),
            );
        }
        if payable != r.expected_amount {
            return reject(
                "price_mismatch",
                format!(
                    "expected {} {}, the catalogue says {payable}",
                    r.expected_amount, r.currency
                ),
            );
        }
        let Some(route) = crate::channels::routing::choose(
            conn,
            &self.redis,
            &self.risk.key_prefix,
            &r.payment_method,
        )
        .await?
        else {
            return reject(
                "no_channel_available",
                format!("no healthy channel takes `{}`", r.payment_method),
            );
        };
        let channel_fee = money::round(payable * route.fee_rate);
        let sub_orders = pricing::split(&lines);
        let fee_rates = seller_fee_rates(&catalogue, &sub_orders)?;
        Ok(PricedOrder {
            route,
            channel_fee,
            lines,
            sub_orders,
            fee_rates,
            gross,
            discount,
            payable,
            user_blocked,
        })
    }

    /// What can be judged from the request alone.
    fn check_shape(&self, r: &PaymentRequested) -> Result<(), Stop> {
        if r.schema_version != SCHEMA_VERSION {
            return reject(
                "unsupported_schema_version",
                format!(
                    "schema_version {} (this fleet speaks {SCHEMA_VERSION})",
                    r.schema_version
                ),
            );
        }
        if money::currency(&r.currency).is_err() {
            return reject("unsupported_currency", r.currency.clone());
        }
        if self.risk.thresholds(&r.currency).is_none() {
            return reject(
                "unsupported_currency",
                format!("{}: no risk thresholds are configured for it", r.currency),
            );
        }
        if money::check_amount(r.expected_amount).is_err() {
            return reject(
                "invalid_amount",
                format!("expected_amount {}", r.expected_amount),
            );
        }
        if !METHODS.contains(&r.payment_method.as_str()) {
            return reject(
                "unsupported_payment_method",
                format!(
                    "`{}` (this fleet takes: {})",
                    r.payment_method,
                    METHODS.join(", ")
                ),
            );
        }
        check_items(r)?;
        if let Some(url) = &r.notify_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
                return reject("invalid_notify_url", url.clone());
            }
        }
        Ok(())
    }
}

/// 1 to [`MAX_LINES`] lines of distinct SKUs, each of 1 to [`MAX_QUANTITY`].
fn check_items(r: &PaymentRequested) -> Result<(), Stop> {
    if r.items.is_empty() || r.items.len() > MAX_LINES {
        return reject(
            "invalid_items",
            format!("{} lines (1 to {MAX_LINES})", r.items.len()),
        );
    }
    let mut seen = HashSet::new();
    for item in &r.items {
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return reject(
                "invalid_quantity",
                format!("{} x {}", item.sku, item.quantity),
            );
        }
        if !seen.insert(item.sku.as_str()) {
            return reject("duplicate_sku", item.sku.clone());
        }
    }
    Ok(())
}

/// The payer is an active user, with an active wallet in the currency when
/// paying from it. Whether risk blocks the user is risk's to decide.
async fn check_payer(conn: &mut PgConnection, r: &PaymentRequested) -> Result<bool, Stop> {
    // The user, and the status of its wallet in the currency if it has one.
    let user: Option<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT u.status, u.blocked,
                (SELECT a.status FROM accounts a WHERE a.owner_kind = 'user' AND a.owner_id = u.id AND a.currency = $2)
         FROM users u WHERE u.id = $1",
    )
    .bind(&r.user_id)
    .bind(&r.currency)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((user_status, user_blocked, wallet)) = user else {
        return reject("unknown_user", r.user_id.clone());
    };
    if user_status != "active" {
        return reject("user_frozen", r.user_id.clone());
    }
    if r.payment_method == BALANCE {
        match wallet.as_deref() {
            None => {
                return reject(
                    "no_wallet",
                    format!("user {} has no {} wallet", r.user_id, r.currency),
                );
            }
            Some("active") => {}
            Some(status) => return reject("wallet_not_active", format!("wallet is {status}")),
        }
    }
    Ok(user_blocked)
}

/// Each line's product, on sale and priced in the request's currency.
fn on_sale<'p>(
    products: &'p [Product],
    r: &PaymentRequested,
) -> Result<Vec<(&'p Product, u32)>, Stop> {
    let mut priced_items = Vec::with_capacity(r.items.len());
    for item in &r.items {
        let Some(product) = products.iter().find(|p| p.sku == item.sku) else {
            return reject("unknown_product", item.sku.clone());
        };
        if !product.on_sale {
            return reject("product_off_shelf", item.sku.clone());
        }
        if product.currency != r.currency {
            return reject(
                "currency_mismatch",
                format!("{} is priced in {}", item.sku, product.currency),
            );
        }
        priced_items.push((product, item.quantity));
    }
    Ok(priced_items)
}

/// Enough stock for every line (Try reserves it; this refuses early).
fn check_stock(catalogue: &Catalogue, r: &PaymentRequested) -> Result<(), Stop> {
    for item in &r.items {
        let available = catalogue.available.get(&item.sku).copied().unwrap_or(0);
        if i64::from(available) < i64::from(item.quantity) {
            return reject(
                "out_of_stock",
                format!(
                    "{}: {} wanted, {} available",
                    item.sku, item.quantity, available
                ),
            );
        }
    }
    Ok(())
}

/// The discount of coupon `code` on `gross`, or why it does not apply.
async fn coupon_discount(
    conn: &mut PgConnection,
    r: &PaymentRequested,
    code: &str,
    gross: Decimal,
) -> Result<Decimal, Stop> {
    let Some(coupon) = load_coupon(conn, code).await? else {
        return reject("unknown_coupon", code.to_owned());
    };
    let user_uses = crate::domain::tcc::coupon_uses(conn, code, &r.user_id).await?;
    match coupon.discount(gross, &r.currency, Utc::now(), user_uses) {
        Ok(discount) => Ok(discount),
        Err(refusal) => reject(refusal.reason(), code.to_owned()),
    }
}

/// Each seller's fee rate; every seller must be active.
fn seller_fee_rates(
    catalogue: &Catalogue,
    sub_orders: &[pricing::SubOrder],
) -> Result<HashMap<String, Decimal>, Stop> {
    let mut fee_rates = HashMap::with_capacity(sub_orders.len());
    for sub in sub_orders {
        let Some((rate, status)) = catalogue.sellers.get(&sub.seller_id) else {
            continue;
        };
        if status != "active" {
            return reject("seller_suspended", sub.seller_id.clone());
        }
        fee_rates.insert(sub.seller_id.clone(), *rate);
    }
    Ok(fee_rates)
}

/// What the catalogue says about a request's SKUs, read in one statement:
/// the products with their price tiers, the units each has available, and
/// each product's seller (its fee rate and status).
struct Catalogue {
    products: Vec<Product>,
    available: HashMap<String, i32>,
    sellers: HashMap<String, (Decimal, String)>,
}

/// One product of the request, with what [`Catalogue`] reads beside it.
#[derive(sqlx::FromRow)]
struct CatalogueRow {
    sku: String,
    seller_id: String,
    warehouse: String,
    spec: Value,
    unit_price: Decimal,
    currency: String,
    status: String,
    tier_quantities: Vec<i32>,
    tier_prices: Vec<Decimal>,
    available: Option<i32>,
    fee_rate: Option<Decimal>,
    seller_status: Option<String>,
}

impl Catalogue {
    async fn load(conn: &mut PgConnection, skus: &[String]) -> Result<Self, StageError> {
        let rows: Vec<CatalogueRow> = sqlx::query_as(
            "SELECT p.sku, p.merchant_id AS seller_id, p.warehouse, p.spec, p.unit_price, p.currency::text AS currency, p.status,
                    COALESCE(t.quantities, '{}') AS tier_quantities, COALESCE(t.prices, '{}') AS tier_prices,
                    (SELECT s.available FROM stock s WHERE s.sku = p.sku) AS available,
                    m.fee_rate, m.status AS seller_status
             FROM products p
             LEFT JOIN merchants m ON m.id = p.merchant_id
             LEFT JOIN LATERAL (
                 SELECT array_agg(min_quantity ORDER BY min_quantity) AS quantities,
                        array_agg(unit_price ORDER BY min_quantity) AS prices
                 FROM price_tiers WHERE sku = p.sku
             ) t ON true
             WHERE p.sku = ANY($1)",
        )
        .bind(skus)
        .fetch_all(&mut *conn)
        .await?;
        let mut catalogue = Catalogue {
            products: Vec::with_capacity(rows.len()),
            available: HashMap::with_capacity(rows.len()),
            sellers: HashMap::new(),
        };
        for row in rows {
            if let Some(available) = row.available {
                catalogue.available.insert(row.sku.clone(), available);
            }
            if let (Some(rate), Some(seller_status)) = (row.fee_rate, row.seller_status) {
                catalogue
                    .sellers
                    .insert(row.seller_id.clone(), (rate, seller_status));
            }
            catalogue.products.push(Product {
                tiers: row
                    .tier_quantities
                    .into_iter()
                    .zip(row.tier_prices)
                    .collect(),
                sku: row.sku,
                seller_id: row.seller_id,
                warehouse: row.warehouse,
                spec: row.spec,
                unit_price: row.unit_price,
                currency: row.currency,
                on_sale: row.status == "on_sale",
            });
        }
        Ok(catalogue)
    }
}

type CouponRow = (
    String,
    String,
    String,
    Option<Decimal>,
    Option<Decimal>,
    Option<Decimal>,
    Option<Decimal>,
    Option<Value>,
    chrono::DateTime<Utc>,
    chrono::DateTime<Utc>,
    i32,
    i32,
    i32,
);

pub async fn load_coupon(
    conn: &mut PgConnection,
    code: &str,
) -> Result<Option<Coupon>, StageError> {
    let row: Option<CouponRow> = sqlx::query_as(
        "SELECT code, kind, currency::text, threshold, amount_off, percent_off, cap, ladder, valid_from, valid_until,
                total_limit, per_user_limit, used
         FROM coupons WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((
        code,
        kind,
        currency,
        threshold,
        amount_off,
        percent_off,
        cap,
        ladder,
        valid_from,
        valid_until,
        total_limit,
        per_user_limit,
        used,
    )) = row
    else {
        return Ok(None);
    };
    let broken =
        |what: &str| StageError::permanent(format!("coupon {code} is misconfigured: {what}"));
    let rule = match kind.as_str() {
        "full_reduction" => CouponRule::FullReduction {
            threshold: threshold.ok_or_else(|| broken("no threshold"))?,
            amount_off: amount_off.ok_or_else(|| broken("no amount_off"))?,
        },
        "percentage" => CouponRule::Percentage {
            percent_off: percent_off.ok_or_else(|| broken("no percent_off"))?,
            cap,
        },
        _ => {
            let steps: Vec<LadderStep> =
                serde_json::from_value(ladder.ok_or_else(|| broken("no ladder"))?)
                    .map_err(|e| broken(&e.to_string()))?;
            CouponRule::Ladder(steps)
        }
    };
    Ok(Some(Coupon {
        code,
        currency,
        rule,
        valid_from,
        valid_until,
        total_limit,
        per_user_limit,
        used,
    }))
}
