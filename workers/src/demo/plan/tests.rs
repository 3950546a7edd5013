//! The demo plan's counts against every arrival order.

use std::collections::HashMap;

use chrono::Duration;

use super::*;

fn product(sku: &str) -> pricing::Product {
    pricing::Product {
        sku: sku.to_owned(),
        seller_id: "seller-a".to_owned(),
        warehouse: "wh-1".to_owned(),
        spec: serde_json::json!({}),
        unit_price: Decimal::new(1999, 2),
        currency: "CNY".to_owned(),
        on_sale: true,
        tiers: Vec::new(),
    }
}

fn catalogue() -> Catalogue {
    Catalogue {
        products: [
            "demo-tee",
            "demo-mug",
            "demo-cap",
            "demo-rare",
            "demo-lux-watch",
        ]
        .map(product)
        .into(),
        coupons: vec![pricing::Coupon {
            code: "DEMO-10PCT".to_owned(),
            currency: "CNY".to_owned(),
            rule: pricing::CouponRule::Percentage {
                percent_off: Decimal::new(10, 0),
                cap: None,
            },
            valid_from: Utc::now() - Duration::days(1),
            valid_until: Utc::now() + Duration::days(1),
            total_limit: 1_000_000,
            per_user_limit: 1_000_000,
            used: 0,
        }],
    }
}

/// The idempotency rule of order-validation, for requests arriving in
/// `order`: the first of a merchant order id makes its payment, a later
/// one with the same body is a duplicate, with another body a refusal.
fn outcomes(plan: &[Planned], order: &[usize]) -> (i64, i64) {
    let mut first: HashMap<String, &[u8]> = HashMap::new();
    let (mut payments, mut refusals) = (0, 0);
    for &i in order {
        let planned = &plan[i];
        if planned.kind == Kind::BadSignature {
            refusals += 1;
            continue;
        }
        let Ok(request) = serde_json::from_slice::<PaymentRequested>(&planned.body) else {
            continue; // poison
        };
        match first.get(&request.merchant_order_id) {
            None => {
                first.insert(request.merchant_order_id, &planned.body);
                payments += 1;
            }
            Some(body) if *body == planned.body.as_slice() => {}
            Some(_) => refusals += 1,
        }
    }
    (payments, refusals)
}

#[test]
fn the_planned_counts_hold_whatever_order_the_requests_arrive_in() {
    for seed in 0..40 {
        let plan = plan(400, seed, "demo-test", &catalogue());
        let expected = (
            plan.iter().filter(|p| p.creates_payment).count() as i64,
            plan.iter().filter(|p| p.refused).count() as i64,
        );
        assert!(
            plan.iter().any(|p| p.kind == Kind::Conflict)
                && plan.iter().any(|p| p.kind == Kind::Duplicate),
            "seed {seed} plans both kinds of copies"
        );
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut order: Vec<usize> = (0..plan.len()).collect();
        assert_eq!(
            outcomes(&plan, &order),
            expected,
            "seed {seed}, as published"
        );
        order.reverse();
        assert_eq!(outcomes(&plan, &order), expected, "seed {seed}, reversed");
        for _ in 0..20 {
            rng.shuffle(&mut order);
            assert_eq!(outcomes(&plan, &order), expected, "seed {seed}, shuffled");
        }
    }
}
