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
const CHANNEL_MIX: [(u32, &str, &str); 12] = [
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
    // paid like tok_success; their refunds are refused, or answered too late
    (3, "card", "tok_refund_fails"),
    (3, "card", "tok_refund_timeout"),
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

/// A request that later requests copy.
struct Original {
    request: PaymentRequested,
    copies: Copies,
}

/// What copies of one original were planned. An original gets duplicates
/// or conflicts, never both: when the broker reorders (a crash, a busy
/// lock), whichever copy arrives first makes the payment, and the counts
/// stay the same only so — with both, a conflict arriving first would turn
/// the original and its duplicate into two refusals. Conflicts each differ
/// from the others (the n-th adds n to a quantity) for the same reason.
#[derive(Clone, Copy)]
enum Copies {
    None,
    Duplicates,
    Conflicts(u32),
}

impl Copies {
    /// Takes one more copy of `kind` if the original can have it.
    fn admit(&mut self, kind: Kind) -> bool {
        match (*self, kind) {
            (Copies::None | Copies::Duplicates, Kind::Duplicate) => *self = Copies::Duplicates,
            (Copies::None, Kind::Conflict) => *self = Copies::Conflicts(1),
            (Copies::Conflicts(n), Kind::Conflict) => *self = Copies::Conflicts(n + 1),
            _ => return false,
        }
        true
    }
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
    let mut previous: Vec<Original> = Vec::new();
    let on_sale: Vec<&pricing::Product> = catalogue
        .products
        .iter()
        .filter(|p| p.on_sale && !p.sku.starts_with("demo-lux") && p.sku != "demo-rare")
        .collect();
    while planned.len() < requests {
        let index = planned.len();
        let roll = rng.u32(0..100);
        let mut kind = match roll {
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
        // The copy's original; a kind of copy the original cannot take
        // (see [`Copies`]) becomes a new payment instead.
        let mut original = None;
        if matches!(kind, Kind::Duplicate | Kind::Conflict) {
            let index = rng.usize(0..previous.len());
            if previous[index].copies.admit(kind) {
                original = Some(index);
            } else {
                kind = Kind::Normal;
            }
        }
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
                let original = &previous[original.expect("chosen above")].request;
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
                let original = &previous[original.expect("chosen above")];
                let Copies::Conflicts(nth) = original.copies else {
                    unreachable!("admitted as a conflict")
                };
                // each conflict differs from the original and from the others
                let mut changed = original.request.clone();
                changed.items[0].quantity += nth;
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
                previous.push(Original {
                    request,
                    copies: Copies::None,
                });
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

#[cfg(test)]
mod tests;
