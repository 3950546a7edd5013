//! `payfleet catalogue import FILE`: products, their stock and price tiers,
//! and coupons, from a JSON file checked against the committed schema
//! (`contracts/catalogue/catalogue.schema.json`), then as a whole — every
//! seller a merchant, no SKU moved to another seller, no issued coupon's
//! terms changed — and written in one transaction by the seeder's own
//! writers (the demo, the tests and the benchmarks seed through them too),
//! so a bad file changes nothing. Importing the same file again changes
//! nothing, and the report says so.

use std::{collections::BTreeMap, sync::LazyLock};

use chrono::{DateTime, Utc};
use jsonschema::Validator;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;

use super::{Error, Result};
use crate::{
    seed::{self, Catalogue},
    stages::order_validation::{
        pricing::{CouponRule, LadderStep},
        schema,
    },
};

pub const SCHEMA: &str = include_str!("../../../contracts/catalogue/catalogue.schema.json");
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| schema::compile(SCHEMA));

#[derive(Debug, Deserialize)]
struct File {
    #[serde(default)]
    products: Vec<ProductIn>,
    #[serde(default)]
    coupons: Vec<CouponIn>,
}

#[derive(Debug, Deserialize)]
struct ProductIn {
    sku: String,
    seller: String,
    name: String,
    #[serde(with = "rust_decimal::serde::str")]
    unit_price: Decimal,
    currency: String,
    #[serde(default = "on_sale")]
    on_sale: bool,
    #[serde(default)]
    stock: i32,
    warehouse: Option<String>,
    spec: Option<Value>,
    #[serde(default)]
    tiers: Vec<TierIn>,
}

fn on_sale() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct TierIn {
    min_quantity: i32,
    #[serde(with = "rust_decimal::serde::str")]
    unit_price: Decimal,
}

#[derive(Debug, Deserialize)]
struct CouponIn {
    code: String,
    currency: String,
    rule: RuleIn,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    total_limit: i32,
    #[serde(default = "one")]
    per_user_limit: i32,
}

fn one() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RuleIn {
    FullReduction {
        #[serde(with = "rust_decimal::serde::str")]
        threshold: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        amount_off: Decimal,
    },
    Percentage {
        #[serde(with = "rust_decimal::serde::str")]
        percent_off: Decimal,
        #[serde(default, with = "rust_decimal::serde::str_option")]
        cap: Option<Decimal>,
    },
    Ladder {
        steps: Vec<LadderStep>,
    },
}

impl From<RuleIn> for CouponRule {
    fn from(rule: RuleIn) -> Self {
        match rule {
            RuleIn::FullReduction {
                threshold,
                amount_off,
            } => CouponRule::FullReduction {
                threshold,
                amount_off,
            },
            RuleIn::Percentage { percent_off, cap } => CouponRule::Percentage { percent_off, cap },
            RuleIn::Ladder { steps } => CouponRule::Ladder(steps),
        }
    }
}

/// What an import changed.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub products_added: usize,
    pub products_updated: usize,
    pub products_unchanged: usize,
    /// Units added to bring stock up to what the file says.
    pub stock_units_added: i64,
    pub tiers_set: usize,
    /// Tiers of the file's SKUs the file no longer lists.
    pub tiers_removed: usize,
    pub coupons_added: usize,
    pub coupons_unchanged: usize,
}

impl Report {
    pub fn changed_anything(&self) -> bool {
        self.products_added
            + self.products_updated
            + self.tiers_set
            + self.tiers_removed
            + self.coupons_added
            > 0
            || self.stock_units_added > 0
    }
}

/// Reads `text` as a catalogue: the schema's first violation, with its
/// JSON pointer, or the file.
fn read(text: &str) -> Result<File> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Error::refused(format!("not JSON: {e}")))?;
    if let Some(violation) = schema::first_violation_of(&VALIDATOR, &value) {
        return Err(Error::refused(format!(
            "does not follow the catalogue schema {violation}"
        )));
    }
    serde_json::from_value(value).map_err(|e| Error::refused(format!("unreadable: {e}")))
}

/// The checks the schema cannot make alone: ones within the file.
fn check(file: &File) -> Result<()> {
    let mut skus = BTreeMap::new();
    for (n, p) in file.products.iter().enumerate() {
        if p.unit_price <= Decimal::ZERO || p.tiers.iter().any(|t| t.unit_price <= Decimal::ZERO) {
            return Err(Error::refused(format!(
                "/products/{n} ({}): prices must be more than zero",
                p.sku
            )));
        }
        let mut quantities: Vec<i32> = p.tiers.iter().map(|t| t.min_quantity).collect();
        quantities.sort_unstable();
        if quantities.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::refused(format!(
                "/products/{n} ({}): two tiers from the same quantity",
                p.sku
            )));
        }
        if skus.insert(p.sku.as_str(), n).is_some() {
            return Err(Error::refused(format!(
                "/products/{n}: SKU `{}` is listed twice",
                p.sku
            )));
        }
    }
    let mut codes = BTreeMap::new();
    for (n, c) in file.coupons.iter().enumerate() {
        if c.valid_until <= c.valid_from {
            return Err(Error::refused(format!(
                "/coupons/{n} ({}): valid_until must come after valid_from",
                c.code
            )));
        }
        if let RuleIn::Percentage { percent_off, .. } = &c.rule
            && (*percent_off <= Decimal::ZERO || *percent_off >= Decimal::ONE_HUNDRED)
        {
            return Err(Error::refused(format!(
                "/coupons/{n} ({}): percent_off must be more than 0 and less than 100",
                c.code
            )));
        }
        if codes.insert(c.code.as_str(), n).is_some() {
            return Err(Error::refused(format!(
                "/coupons/{n}: code `{}` is listed twice",
                c.code
            )));
        }
    }
    Ok(())
}

fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Imports the catalogue in `text`; what it changed.
pub async fn import(pool: &PgPool, text: &str) -> Result<Report> {
    let file = read(text)?;
    check(&file)?;
    let mut tx = pool.begin().await?;
    let mut report = Report::default();

    let sellers: Vec<String> = file.products.iter().map(|p| p.seller.clone()).collect();
    let known: Vec<String> = sqlx::query_scalar("SELECT id FROM merchants WHERE id = ANY($1)")
        .bind(&sellers)
        .fetch_all(&mut *tx)
        .await?;
    if let Some((n, p)) = file
        .products
        .iter()
        .enumerate()
        .find(|(_, p)| !known.contains(&p.seller))
    {
        return Err(Error::refused(format!(
            "/products/{n} ({}): seller `{}` is not a merchant (`payfleet merchant add {}` first)",
            p.sku, p.seller, p.seller
        )));
    }
    // What is there now, to tell what the import changes.
    let skus: Vec<String> = file.products.iter().map(|p| p.sku.clone()).collect();
    type Existing = (
        String,
        String,
        String,
        Decimal,
        String,
        bool,
        Value,
        String,
        i64,
    );
    let existing: Vec<Existing> = sqlx::query_as(
        "SELECT p.sku, p.merchant_id, p.name, p.unit_price, p.currency::text, p.status = 'on_sale', p.spec, p.warehouse,
                COALESCE((SELECT sum(b.available) FROM stock_buckets b WHERE b.sku = p.sku), 0)::bigint
         FROM products p WHERE p.sku = ANY($1)",
    )
    .bind(&skus)
    .fetch_all(&mut *tx)
    .await?;
    let existing: BTreeMap<String, Existing> =
        existing.into_iter().map(|e| (e.0.clone(), e)).collect();
    let tiers_now: Vec<(String, i32, Decimal)> =
        sqlx::query_as("SELECT sku, min_quantity, unit_price FROM price_tiers WHERE sku = ANY($1)")
            .bind(&skus)
            .fetch_all(&mut *tx)
            .await?;
    for (n, p) in file.products.iter().enumerate() {
        let spec = p
            .spec
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let warehouse = p.warehouse.clone().unwrap_or_else(|| "main".to_owned());
        match existing.get(&p.sku) {
            None => {
                report.products_added += 1;
                report.stock_units_added += i64::from(p.stock);
            }
            Some((_, seller, ..)) if *seller != p.seller => {
                return Err(Error::refused(format!(
                    "/products/{n}: SKU `{}` is sold by `{seller}`, not `{}`: a SKU does not change sellers",
                    p.sku, p.seller
                )));
            }
            Some((_, _, name, price, currency, on_sale, spec_now, warehouse_now, units)) => {
                let same = *name == p.name
                    && *price == p.unit_price
                    && *currency == p.currency
                    && *on_sale == p.on_sale
                    && *spec_now == spec
                    && *warehouse_now == warehouse;
                if same {
                    report.products_unchanged += 1;
                } else {
                    report.products_updated += 1;
                }
                report.stock_units_added += (i64::from(p.stock) - units).max(0);
            }
        }
        for tier in &p.tiers {
            let now = tiers_now
                .iter()
                .find(|(sku, q, _)| *sku == p.sku && *q == tier.min_quantity);
            if now.is_none_or(|(_, _, price)| *price != tier.unit_price) {
                report.tiers_set += 1;
            }
        }
    }
    let codes: Vec<String> = file.coupons.iter().map(|c| c.code.clone()).collect();
    let issued: Vec<String> = sqlx::query_scalar("SELECT code FROM coupons WHERE code = ANY($1)")
        .bind(&codes)
        .fetch_all(&mut *tx)
        .await?;

    let catalogue = Catalogue {
        products: file
            .products
            .into_iter()
            .map(|p| {
                let mut product = seed::product(&p.sku, &p.seller, p.unit_price)
                    .name(&p.name)
                    .currency(&p.currency)
                    .stock(p.stock)
                    .spec(p.spec.unwrap_or_else(|| Value::Object(Default::default())));
                if let Some(warehouse) = &p.warehouse {
                    product = product.warehouse(warehouse);
                }
                if !p.on_sale {
                    product = product.off_shelf();
                }
                p.tiers.iter().fold(product, |product, t| {
                    product.tier(t.min_quantity, t.unit_price)
                })
            })
            .collect(),
        coupons: file
            .coupons
            .into_iter()
            .map(|c| seed::Coupon {
                code: c.code,
                rule: c.rule.into(),
                currency: c.currency,
                // PostgreSQL keeps microseconds: compared as it will keep them
                valid_from: to_micros(c.valid_from),
                valid_until: to_micros(c.valid_until),
                total_limit: c.total_limit,
                per_user_limit: c.per_user_limit,
            })
            .collect(),
        ..Catalogue::default()
    };
    catalogue.write(&mut tx).await.map_err(Error::from)?;
    // The file lists each of its SKUs' tiers whole: one it no longer lists
    // would otherwise stay in force.
    let (tier_skus, tier_quantities): (Vec<String>, Vec<i32>) = catalogue
        .products
        .iter()
        .flat_map(|p| p.tiers.iter().map(|(q, _)| (p.sku.clone(), *q)))
        .unzip();
    report.tiers_removed = sqlx::query(
        "DELETE FROM price_tiers t WHERE t.sku = ANY($1)
           AND (t.sku, t.min_quantity) NOT IN (SELECT * FROM unnest($2::text[], $3::integer[]))",
    )
    .bind(&skus)
    .bind(&tier_skus)
    .bind(&tier_quantities)
    .execute(&mut *tx)
    .await?
    .rows_affected() as usize;
    // An issued code keeps its terms: the writer left it as it was, and
    // a file that says otherwise is refused whole.
    for (n, coupon) in catalogue.coupons.iter().enumerate() {
        if !issued.contains(&coupon.code) {
            report.coupons_added += 1;
            continue;
        }
        let same = issued_with_the_same_terms(&mut tx, coupon).await?;
        if !same {
            return Err(Error::refused(format!(
                "/coupons/{n}: coupon `{}` was issued with other terms: issued coupons do not change (give it a new code)",
                coupon.code
            )));
        }
        report.coupons_unchanged += 1;
    }
    tx.commit().await?;
    Ok(report)
}

/// Whether issued coupon `coupon.code` has the terms `coupon` describes.
async fn issued_with_the_same_terms(
    conn: &mut sqlx::PgConnection,
    coupon: &seed::Coupon,
) -> Result<bool> {
    type Terms = (
        String,
        String,
        Option<Decimal>,
        Option<Decimal>,
        Option<Decimal>,
        Option<Decimal>,
        Option<Value>,
        DateTime<Utc>,
        DateTime<Utc>,
        i32,
        i32,
    );
    let issued: Terms = sqlx::query_as(
        "SELECT kind, currency::text, threshold, amount_off, percent_off, cap, ladder, valid_from, valid_until,
                total_limit, per_user_limit
         FROM coupons WHERE code = $1",
    )
    .bind(&coupon.code)
    .fetch_one(conn)
    .await?;
    let (kind, threshold, amount_off, percent_off, cap, ladder) =
        seed::coupon_columns(&coupon.rule);
    let ladder: Option<Value> = ladder.map(|l| serde_json::from_str(&l)).transpose()?;
    // timestamptz keeps microseconds
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    Ok(issued.0 == kind
        && issued.1 == coupon.currency
        && issued.2 == threshold
        && issued.3 == amount_off
        && issued.4 == percent_off
        && issued.5 == cap
        && issued.6 == ladder
        && micros(issued.7) == micros(coupon.valid_from)
        && micros(issued.8) == micros(coupon.valid_until)
        && issued.9 == coupon.total_limit
        && issued.10 == coupon.per_user_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_example_follows_the_schema_and_reads() {
        let example = include_str!("../../../contracts/catalogue/example.json");
        let file = read(example).expect("the example reads");
        check(&file).expect("the example holds");
        assert_eq!((file.products.len(), file.coupons.len()), (2, 1));
    }

    #[test]
    fn a_bad_file_is_refused_naming_where() {
        let refused = |text: &str| read(text).and_then(|f| check(&f)).unwrap_err().to_string();
        assert!(refused("{").starts_with("not JSON"));
        let no_price =
            r#"{"products": [{"sku": "a", "seller": "m", "name": "A", "currency": "CNY"}]}"#;
        assert!(
            refused(no_price).contains("/products/0"),
            "{}",
            refused(no_price)
        );
        let bad_price = r#"{"products": [{"sku": "a", "seller": "m", "name": "A", "currency": "CNY", "unit_price": "1.234"}]}"#;
        assert!(
            refused(bad_price).contains("/products/0/unit_price"),
            "{}",
            refused(bad_price)
        );
        let twice = r#"{"products": [{"sku": "a", "seller": "m", "name": "A", "currency": "CNY", "unit_price": "1"},
                                      {"sku": "a", "seller": "m", "name": "A", "currency": "CNY", "unit_price": "2"}]}"#;
        assert!(refused(twice).contains("listed twice"));
        let backwards = r#"{"coupons": [{"code": "C", "currency": "CNY", "rule": {"kind": "percentage", "percent_off": "10"},
                            "valid_from": "2027-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z", "total_limit": 1}]}"#;
        assert!(refused(backwards).contains("valid_until must come after"));
        let zero = r#"{"products": [{"sku": "a", "seller": "m", "name": "A", "currency": "CNY", "unit_price": "0"}]}"#;
        assert!(refused(zero).contains("more than zero"));
    }
}
