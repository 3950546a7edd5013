//! The demo's refunds: once its payments have their outcomes, the shop asks
//! for refunds of some of the settled ones, as a shop would after returns —
//! full ones (the stock put back), partial ones, one payment refunded in
//! three pieces, one asked for more than was paid, two partial refunds of
//! one payment racing for more than is left, channel refunds the sandbox
//! refuses or answers too late — and same-day reversals: card payments
//! cancelled whole, one racing a partial refund of the same payment (one
//! of the two wins), one of a wallet payment (refused: never reversible).
//! Every request ends in one event; the summary tells how they ended.

use std::sync::atomic::AtomicU64;

use chrono::Utc;
use payfleet_common::{
    broker::Publisher,
    messages::{self, PaymentReverse, RefundRequested, SCHEMA_VERSION, kind},
    money,
};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{SHOP, SHOP_KEY, publish::publish_upstream};

/// What one refund request is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Full,
    Partial,
    /// One of three pieces that together refund the whole payment.
    Piece,
    /// More than was paid: refused as `exceeds_refundable`.
    Over,
    /// One of two partial refunds of 60 % each: one wins, one is refused.
    Racing,
    /// The whole payment cancelled the day it was paid.
    Reversal,
    /// A reversal and a partial refund of one payment at once: one wins.
    ReversalRacingRefund,
}

/// A request of the refund phase.
pub(super) enum Request {
    Refund(RefundRequested),
    Reversal(PaymentReverse),
}

/// A settled payment of the run, as the refund plan reads it.
#[derive(sqlx::FromRow)]
struct Settled {
    merchant_order_id: String,
    method: String,
    payer_token: Option<String>,
    amount: Decimal,
}

/// The refund requests for this run's settled payments (matching `like`),
/// in the order they are published.
pub(super) async fn plan(pool: &PgPool, like: &str) -> anyhow::Result<Vec<Request>> {
    let settled: Vec<Settled> = sqlx::query_as(
        "SELECT merchant_order_id, method, payer_token, amount FROM payments
         WHERE merchant_order_id LIKE $1 AND status = 'settled' ORDER BY merchant_order_id",
    )
    .bind(like)
    .fetch_all(pool)
    .await?;
    let mut requests = Vec::new();
    let (mut wallet, mut card) = (0usize, 0usize);
    for payment in &settled {
        let asks: &[Ask] = match (payment.method.as_str(), payment.payer_token.as_deref()) {
            ("card", Some("tok_refund_fails" | "tok_refund_timeout")) => &[Ask::Full],
            ("balance", _) => {
                wallet += 1;
                match wallet % 10 {
                    0 => &[Ask::Full],
                    1 => &[Ask::Partial],
                    2 => &[Ask::Piece, Ask::Piece, Ask::Piece],
                    3 => &[Ask::Over],
                    4 => &[Ask::Racing, Ask::Racing],
                    5 if wallet == 5 => &[Ask::Reversal],
                    _ => &[],
                }
            }
            ("card", Some("tok_success")) => {
                card += 1;
                match card % 5 {
                    0 => &[Ask::Partial],
                    1 => &[Ask::Reversal],
                    2 if card % 10 == 2 => &[Ask::ReversalRacingRefund, Ask::Partial],
                    _ => &[],
                }
            }
            _ => &[],
        };
        let pieces = money::allocate(payment.amount, &[Decimal::ONE; 3]);
        for (n, ask) in asks.iter().enumerate() {
            let amount = match ask {
                Ask::Full => payment.amount,
                Ask::Partial => money::round(payment.amount / Decimal::TWO),
                Ask::Piece => pieces[n],
                Ask::Over => payment.amount + Decimal::ONE,
                Ask::Racing => money::round(payment.amount * Decimal::new(6, 1)),
                Ask::Reversal | Ask::ReversalRacingRefund => {
                    requests.push(Request::Reversal(PaymentReverse {
                        schema_version: SCHEMA_VERSION,
                        merchant_id: SHOP.to_owned(),
                        merchant_reversal_id: format!("{}-rv{n}", payment.merchant_order_id),
                        merchant_order_id: Some(payment.merchant_order_id.clone()),
                        payment_id: None,
                        reason: format!("demo_{ask:?}").to_lowercase(),
                        requested_at: Utc::now(),
                    }));
                    continue;
                }
            };
            if amount <= Decimal::ZERO {
                continue;
            }
            requests.push(Request::Refund(RefundRequested {
                schema_version: SCHEMA_VERSION,
                merchant_id: SHOP.to_owned(),
                merchant_refund_id: format!("{}-rf{n}", payment.merchant_order_id),
                merchant_order_id: Some(payment.merchant_order_id.clone()),
                payment_id: None,
                amount,
                currency: "CNY".to_owned(),
                reason: format!("demo_{ask:?}").to_lowercase(),
                return_stock: *ask == Ask::Full,
                requested_at: Utc::now(),
            }));
        }
    }
    Ok(requests)
}

/// Publishes the planned refund and reversal requests, signed by the shop:
/// the refunds, then the reversals (a reversal racing a refund of its
/// payment meets it in the chain).
pub(super) async fn publish(
    publisher: &Publisher,
    exchange: &str,
    requests: &[Request],
    published: &AtomicU64,
) -> anyhow::Result<()> {
    let signed = |body: Vec<u8>| {
        let signature = messages::sign(SHOP_KEY, &body);
        (uuid::Uuid::now_v7().to_string(), body, Some(signature))
    };
    let (mut refunds, mut reversals) = (Vec::new(), Vec::new());
    for request in requests {
        match request {
            Request::Refund(r) => refunds.push(signed(serde_json::to_vec(r)?)),
            Request::Reversal(r) => reversals.push(signed(serde_json::to_vec(r)?)),
        }
    }
    publish_upstream(
        publisher,
        exchange,
        kind::REFUND_REQUESTED,
        refunds,
        published,
    )
    .await?;
    publish_upstream(
        publisher,
        exchange,
        kind::PAYMENT_REVERSE,
        reversals,
        published,
    )
    .await
}

/// How this run's refunds stand: (finished with their event, in all).
pub(super) async fn finished(pool: &PgPool, like: &str) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE f.status IN ('succeeded', 'failed', 'refused')
                                  AND EXISTS (SELECT 1 FROM payment_events e WHERE e.refund_id = f.id)),
                count(*)
         FROM refunds f WHERE f.origin = 'upstream' AND f.merchant_refund_id LIKE $1",
    )
    .bind(like)
    .fetch_one(pool)
    .await?)
}

/// The summary's refund and reversal lines: how the run's refunds and
/// reversals ended, by reason.
pub(super) async fn summary(pool: &PgPool, like: &str) -> anyhow::Result<String> {
    Ok(format!(
        "{}\n{}",
        summary_of(pool, like, "refund").await?,
        summary_of(pool, like, "reversal").await?
    ))
}

async fn summary_of(pool: &PgPool, like: &str, of_kind: &str) -> anyhow::Result<String> {
    let rows: Vec<(String, String, i64, Decimal)> = sqlx::query_as(
        "SELECT status, COALESCE(split_part(detail, ':', 1), CASE WHEN channel = 'balance' THEN 'wallet' ELSE 'channel' END),
                count(*), sum(amount)
         FROM refunds WHERE origin = 'upstream' AND merchant_refund_id LIKE $1 AND kind = $2
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(like)
    .bind(of_kind)
    .fetch_all(pool)
    .await?;
    let asked: i64 = rows.iter().map(|r| r.2).sum();
    let paid_back: Decimal = rows
        .iter()
        .filter(|r| r.0 == "succeeded")
        .map(|r| r.3)
        .sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|(status, how, n, _)| format!("{status} {how} {n}"))
        .collect();
    Ok(format!(
        "  {:<11} {asked} asked: {} · {paid_back} CNY paid back",
        format!("{of_kind}s"),
        parts.join(", ")
    ))
}
