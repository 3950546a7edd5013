//! Prices from the catalogue (never the client's), coupons, the discount's
//! allocation across lines, and the split into sub-orders by seller and
//! warehouse. Pure functions over loaded rows, so they are tested directly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payfleet_common::money;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A catalogue product as pricing needs it.
#[derive(Debug, Clone)]
pub struct Product {
    pub sku: String,
    pub seller_id: String,
    pub warehouse: String,
    pub spec: serde_json::Value,
    pub unit_price: Decimal,
    pub currency: String,
    pub on_sale: bool,
    /// (min quantity, unit price), any order.
    pub tiers: Vec<(i32, Decimal)>,
}

impl Product {
    /// The unit price for a quantity: the best tier reached, else the list price.
    pub fn unit_price_for(&self, quantity: u32) -> Decimal {
        self.tiers
            .iter()
            .filter(|(min, _)| i64::from(*min) <= i64::from(quantity))
            .max_by_key(|(min, _)| *min)
            .map(|(_, price)| *price)
            .unwrap_or(self.unit_price)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LadderStep {
    #[serde(with = "rust_decimal::serde::str")]
    pub threshold: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_off: Decimal,
}

#[derive(Debug, Clone)]
pub enum CouponRule {
    /// Spend at least `threshold`, get `amount_off`.
    FullReduction {
        threshold: Decimal,
        amount_off: Decimal,
    },
    /// `percent_off` of the gross, at most `cap`.
    Percentage {
        percent_off: Decimal,
        cap: Option<Decimal>,
    },
    /// The highest step whose threshold the gross reaches.
    Ladder(Vec<LadderStep>),
}

#[derive(Debug, Clone)]
pub struct Coupon {
    pub code: String,
    pub currency: String,
    pub rule: CouponRule,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub total_limit: i32,
    pub per_user_limit: i32,
    pub used: i32,
}

/// Why a coupon does not apply (a rejection reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponRefusal {
    NotYetValid,
    Expired,
    Exhausted,
    UsedUpByUser,
    WrongCurrency,
    BelowThreshold,
}

impl CouponRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            CouponRefusal::NotYetValid => "coupon_not_yet_valid",
            CouponRefusal::Expired => "coupon_expired",
            CouponRefusal::Exhausted => "coupon_exhausted",
            CouponRefusal::UsedUpByUser => "coupon_used_up_by_user",
            CouponRefusal::WrongCurrency => "coupon_currency_mismatch",
            CouponRefusal::BelowThreshold => "coupon_not_applicable",
        }
    }
}

impl Coupon {
    /// The discount on `gross`, or why there is none. `user_uses` counts the
    /// user's reserved and consumed redemptions.
    pub fn discount(
        &self,
        gross: Decimal,
        currency: &str,
        now: DateTime<Utc>,
        user_uses: i64,
    ) -> Result<Decimal, CouponRefusal> {
        if self.currency != currency {
            return Err(CouponRefusal::WrongCurrency);
        }
        if now < self.valid_from {
            return Err(CouponRefusal::NotYetValid);
        }
        if now >= self.valid_until {
            return Err(CouponRefusal::Expired);
        }
        if self.used >= self.total_limit {
            return Err(CouponRefusal::Exhausted);
        }
        if user_uses >= i64::from(self.per_user_limit) {
            return Err(CouponRefusal::UsedUpByUser);
        }
        let off = match &self.rule {
            CouponRule::FullReduction {
                threshold,
                amount_off,
            } => {
                if gross < *threshold {
                    return Err(CouponRefusal::BelowThreshold);
                }
                *amount_off
            }
            CouponRule::Percentage { percent_off, cap } => {
                let off = money::round(gross * *percent_off / Decimal::ONE_HUNDRED);
                cap.map_or(off, |cap| off.min(cap))
            }
            CouponRule::Ladder(steps) => steps
                .iter()
                .filter(|step| gross >= step.threshold)
                .max_by(|a, b| a.threshold.cmp(&b.threshold))
                .map(|step| step.amount_off)
                .ok_or(CouponRefusal::BelowThreshold)?,
        };
        Ok(off.min(gross))
    }
}

/// One priced line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub sku: String,
    pub seller_id: String,
    pub warehouse: String,
    pub spec: serde_json::Value,
    pub quantity: u32,
    pub unit_price: Decimal,
    pub amount: Decimal,
    pub discount: Decimal,
}

/// Lines grouped by (seller, warehouse).
#[derive(Debug, Clone, PartialEq)]
pub struct SubOrder {
    pub seller_id: String,
    pub warehouse: String,
    pub gross: Decimal,
    pub discount: Decimal,
    pub lines: Vec<usize>,
}

impl SubOrder {
    pub fn payable(&self) -> Decimal {
        self.gross - self.discount
    }
}

/// Prices `(product, quantity)` pairs and allocates `discount` across them
/// in proportion to their amounts; the line discounts sum to `discount`.
pub fn price_lines(items: &[(&Product, u32)], discount: Decimal) -> Vec<Line> {
    let mut lines: Vec<Line> = items
        .iter()
        .map(|(product, quantity)| {
            let unit_price = product.unit_price_for(*quantity);
            Line {
                sku: product.sku.clone(),
                seller_id: product.seller_id.clone(),
                warehouse: product.warehouse.clone(),
                spec: product.spec.clone(),
                quantity: *quantity,
                unit_price,
                amount: unit_price * Decimal::from(*quantity),
                discount: Decimal::ZERO,
            }
        })
        .collect();
    let weights: Vec<Decimal> = lines.iter().map(|l| l.amount).collect();
    for (line, part) in lines.iter_mut().zip(money::allocate(discount, &weights)) {
        line.discount = part;
    }
    lines
}

/// Splits lines into sub-orders by seller and warehouse (ordered, stable).
pub fn split(lines: &[Line]) -> Vec<SubOrder> {
    let mut groups: BTreeMap<(String, String), SubOrder> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        let entry = groups
            .entry((line.seller_id.clone(), line.warehouse.clone()))
            .or_insert_with(|| SubOrder {
                seller_id: line.seller_id.clone(),
                warehouse: line.warehouse.clone(),
                gross: Decimal::ZERO,
                discount: Decimal::ZERO,
                lines: Vec::new(),
            });
        entry.gross += line.amount;
        entry.discount += line.discount;
        entry.lines.push(index);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn product(sku: &str, seller: &str, price: &str) -> Product {
        Product {
            sku: sku.into(),
            seller_id: seller.into(),
            warehouse: "main".into(),
            spec: serde_json::json!({}),
            unit_price: d(price),
            currency: "CNY".into(),
            on_sale: true,
            tiers: vec![],
        }
    }

    fn coupon(rule: CouponRule) -> Coupon {
        Coupon {
            code: "C".into(),
            currency: "CNY".into(),
            rule,
            valid_from: Utc::now() - chrono::Duration::days(1),
            valid_until: Utc::now() + chrono::Duration::days(1),
            total_limit: 10,
            per_user_limit: 1,
            used: 0,
        }
    }

    #[test]
    fn tiers_lower_the_unit_price_from_their_quantity() {
        let mut p = product("A", "m1", "10.00");
        p.tiers = vec![(10, d("9.00")), (5, d("9.50"))];
        assert_eq!(p.unit_price_for(4), d("10.00"));
        assert_eq!(p.unit_price_for(5), d("9.50"));
        assert_eq!(p.unit_price_for(12), d("9.00"));
    }

    #[test]
    fn each_coupon_kind_computes_its_discount() {
        let now = Utc::now();
        let full = coupon(CouponRule::FullReduction {
            threshold: d("100"),
            amount_off: d("15"),
        });
        assert_eq!(full.discount(d("120.00"), "CNY", now, 0), Ok(d("15")));
        assert_eq!(
            full.discount(d("99.99"), "CNY", now, 0),
            Err(CouponRefusal::BelowThreshold)
        );
        let pct = coupon(CouponRule::Percentage {
            percent_off: d("10"),
            cap: Some(d("8.00")),
        });
        assert_eq!(pct.discount(d("55.55"), "CNY", now, 0), Ok(d("5.56")));
        assert_eq!(pct.discount(d("200.00"), "CNY", now, 0), Ok(d("8.00")));
        let ladder = coupon(CouponRule::Ladder(vec![
            LadderStep {
                threshold: d("50"),
                amount_off: d("5"),
            },
            LadderStep {
                threshold: d("100"),
                amount_off: d("12"),
            },
        ]));
        assert_eq!(ladder.discount(d("120"), "CNY", now, 0), Ok(d("12")));
        assert_eq!(ladder.discount(d("60"), "CNY", now, 0), Ok(d("5")));
        assert_eq!(
            ladder.discount(d("40"), "CNY", now, 0),
            Err(CouponRefusal::BelowThreshold)
        );
        assert_eq!(
            full.discount(d("120"), "CNY", now, 1),
            Err(CouponRefusal::UsedUpByUser)
        );
        assert_eq!(
            full.discount(d("120"), "USD", now, 0),
            Err(CouponRefusal::WrongCurrency)
        );
        let mut expired = full.clone();
        expired.valid_until = now - chrono::Duration::seconds(1);
        assert_eq!(
            expired.discount(d("120"), "CNY", now, 0),
            Err(CouponRefusal::Expired)
        );
    }

    #[test]
    fn the_discount_allocates_exactly_and_splits_by_seller() {
        let a = product("A", "m1", "3.33");
        let b = product("B", "m2", "3.33");
        let c = product("C", "m1", "3.34");
        let lines = price_lines(&[(&a, 1), (&b, 1), (&c, 1)], d("0.05"));
        assert_eq!(lines.iter().map(|l| l.discount).sum::<Decimal>(), d("0.05"));
        let subs = split(&lines);
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].seller_id, "m1");
        assert_eq!(subs[0].gross, d("6.67"));
        assert_eq!(
            subs.iter().map(SubOrder::payable).sum::<Decimal>(),
            d("9.95")
        );
    }
}
