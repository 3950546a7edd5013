//! The demo's request mix: what each request exercises and how it is made.

use chrono::Utc;
use payfleet_common::messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION};
use rust_decimal::Decimal;

use crate::stages::order_validation::pricing;

use super::{
    SHOP, SHOP_KEY,
    seed::{BLOCKED_USER, Catalogue, POOR_USERS, USERS},
};

/// What one request was meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Normal,
    InsufficientBalance,
    OutOfStock,
    PriceMismatch,
    BadSignature,
    Duplicate,
    Conflict,
    Challenge,
    Blocked,
    Poison,
    /// A third-party channel payment: (method, sandbox payer token).
    Channel(&'static str, &'static str),
}

/// The channel mix: (weight, method, payer token). `card` goes to the sync
/// sandbox channel, `wallet` to the async one.
const CHANNEL_MIX: [(u32, &str, &str); 10] = [
    (30, "card", "tok_success"),
    (30, "wallet", "tok_success"),
    (8, "card", "tok_decline"),
    (4, "card", "tok_timeout"),
    (4, "card", "tok_5xx_after_charge"),
    (4, "card", "tok_slow"),
    (6, "wallet", "tok_duplicate_webhook"),
    (6, "wallet", "tok_out_of_order"),
    (3, "wallet", "tok_amount_mismatch"),
    (5, "wallet", "tok_no_webhook"),
];

fn channel_kind(rng: &mut fastrand::Rng) -> Kind {
    let total: u32 = CHANNEL_MIX.iter().map(|m| m.0).sum();
    let mut pick = rng.u32(0..total);
    for (weight, method, token) in CHANNEL_MIX {
        if pick < weight {
            return Kind::Channel(method, token);
        }
        pick -= weight;
    }
    Kind::Channel("card", "tok_success")
}

pub(super) struct Planned {
    pub(super) kind: Kind,
    pub(super) message_id: String,
    pub(super) body: Vec<u8>,
    pub(super) signature: Option<String>,
    pub(super) creates_payment: bool,
    pub(super) refused: bool,
}

fn sign(body: &[u8]) -> Option<String> {
    Some(messages::sign(SHOP_KEY, body))
}

pub(super) fn plan(
    requests: usize,
    seed: u64,
    run_id: &str,
    catalogue: &Catalogue,
) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut planned: Vec<Planned> = Vec::with_capacity(requests);
    let mut previous: Vec<(String, PaymentRequested)> = Vec::new();
    let on_sale: Vec<&pricing::Product> = catalogue
        .products
        .iter()
        .filter(|p| p.on_sale && !p.sku.starts_with("demo-lux") && p.sku != "demo-rare")
        .collect();
    while planned.len() < requests {
        let index = planned.len();
        let roll = rng.u32(0..100);
        let kind = match roll {
            0..=29 => Kind::Normal,
            30..=62 => channel_kind(&mut rng),
            63..=70 => Kind::InsufficientBalance,
            71..=74 => Kind::OutOfStock,
            75..=77 => Kind::PriceMismatch,
            78..=81 => Kind::BadSignature,
            82..=86 if !previous.is_empty() => Kind::Duplicate,
            87..=90 if !previous.is_empty() => Kind::Conflict,
            91..=92 => Kind::Challenge,
            93 => Kind::Blocked,
            94 => Kind::Poison,
            _ => Kind::Normal,
        };
        let order_id = format!("{run_id}-{index:06}");
        let user = match kind {
            Kind::InsufficientBalance => format!("demo-poor-{}", rng.usize(0..POOR_USERS)),
            Kind::Blocked => BLOCKED_USER.to_owned(),
            _ => format!("demo-user-{}", rng.usize(0..USERS)),
        };
        let mut items: Vec<(&pricing::Product, u32)> = Vec::new();
        match kind {
            Kind::OutOfStock => items.push((
                catalogue
                    .products
                    .iter()
                    .find(|p| p.sku == "demo-rare")
                    .expect("seeded"),
                5,
            )),
            Kind::Challenge => items.push((
                catalogue
                    .products
                    .iter()
                    .find(|p| p.sku == "demo-lux-watch")
                    .expect("seeded"),
                1,
            )),
            _ => {
                for _ in 0..rng.usize(1..5) {
                    let product = on_sale[rng.usize(0..on_sale.len())];
                    if !items.iter().any(|(p, _)| p.sku == product.sku) {
                        items.push((product, rng.u32(1..4)));
                    }
                }
            }
        }
        let gross: Decimal = pricing::price_lines(&items, Decimal::ZERO)
            .iter()
            .map(|l| l.amount)
            .sum();
        let mut coupon_code = None;
        let mut discount = Decimal::ZERO;
        if matches!(kind, Kind::Normal | Kind::Channel(..)) && rng.u32(0..100) < 35 {
            let coupon = &catalogue.coupons[rng.usize(0..catalogue.coupons.len())];
            if let Ok(off) = coupon.discount(gross, "CNY", Utc::now(), 0) {
                if off < gross {
                    coupon_code = Some(coupon.code.clone());
                    discount = off;
                }
            }
        }
        let mut expected = gross - discount;
        if kind == Kind::PriceMismatch {
            expected -= Decimal::new(100, 2);
        }
        let request = PaymentRequested {
            schema_version: SCHEMA_VERSION,
            merchant_id: SHOP.to_owned(),
            merchant_order_id: order_id.clone(),
            user_id: user,
            currency: "CNY".to_owned(),
            items: items
                .iter()
                .map(|(p, q)| RequestedItem {
                    sku: p.sku.clone(),
                    quantity: *q,
                })
                .collect(),
            coupon_code,
            payment_method: match kind {
                Kind::Channel(method, _) => method.to_owned(),
                _ => crate::channels::BALANCE.to_owned(),
            },
            payer_token: match kind {
                Kind::Channel(_, token) => Some(token.to_owned()),
                _ => None,
            },
            expected_amount: expected,
            notify_url: None,
            requested_at: Utc::now(),
        };
        let message_id = uuid::Uuid::now_v7().to_string();
        let entry = match kind {
            Kind::Poison => Planned {
                kind,
                message_id,
                body: format!(
                    "{{\"merchant_id\": \"{SHOP}\", \"merchant_order_id\": {index}, truncated"
                )
                .into_bytes(),
                signature: None,
                creates_payment: false,
                refused: false,
            },
            Kind::BadSignature => {
                let body = serde_json::to_vec(&request).expect("serializable");
                Planned {
                    kind,
                    message_id,
                    signature: Some(messages::sign("a forged key", &body)),
                    body,
                    creates_payment: false,
                    refused: true,
                }
            }
            Kind::Duplicate => {
                let (_, original) = &previous[rng.usize(0..previous.len())];
                let body = serde_json::to_vec(original).expect("serializable");
                Planned {
                    kind,
                    message_id,
                    signature: sign(&body),
                    body,
                    creates_payment: false,
                    refused: false,
                }
            }
            Kind::Conflict => {
                let (_, original) = &previous[rng.usize(0..previous.len())];
                let mut changed = original.clone();
                changed.items[0].quantity += 1;
                let body = serde_json::to_vec(&changed).expect("serializable");
                Planned {
                    kind,
                    message_id,
                    signature: sign(&body),
                    body,
                    creates_payment: false,
                    refused: true,
                }
            }
            _ => {
                let body = serde_json::to_vec(&request).expect("serializable");
                previous.push((order_id, request));
                Planned {
                    kind,
                    message_id,
                    signature: sign(&body),
                    body,
                    creates_payment: true,
                    refused: false,
                }
            }
        };
        planned.push(entry);
    }
    planned
}
