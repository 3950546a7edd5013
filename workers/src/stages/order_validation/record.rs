//! What order-validation writes: the payment (validated, rejected or
//! challenged) and, for a validated one, its order, sub-orders and lines.

use payfleet_common::{
    PaymentId,
    messages::{self, PaymentRequested},
    money,
    runtime::StageError,
};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{PricedOrder, Request, risk::Decision};
use crate::domain::payment::PaymentStatus;

#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_payment(
    conn: &mut PgConnection,
    id: PaymentId,
    r: &PaymentRequested,
    request: &Request,
    status: PaymentStatus,
    reason: Option<&str>,
    risk: Option<(Decision, Vec<String>)>,
    route: Option<(&str, Decimal)>,
    ttl: chrono::Duration,
) -> Result<(), StageError> {
    let (decision, reasons) = match risk {
        Some((decision, reasons)) => (Some(decision.as_str()), reasons),
        None => (None, Vec::new()),
    };
    let terminal = status != PaymentStatus::Validated;
    sqlx::query(
        "INSERT INTO payments (id, merchant_id, merchant_order_id, request_hash, user_id, method, channel, currency, amount,
                               status, reason, risk_decision, risk_reasons, notify_url, expires_at, requested_at, finished_at,
                               payer_token, channel_fee)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now() + $15, $16, CASE WHEN $17 THEN now() END, $18, $19)",
    )
    .bind(id)
    .bind(&request.merchant_id)
    .bind(&request.merchant_order_id)
    .bind(&request.content_hash)
    .bind(&r.user_id)
    .bind(&r.payment_method)
    .bind(route.map(|(channel, _)| channel))
    // a rejected request may carry an unusable currency or amount: stored as XXX / 0
    .bind(money::currency(&r.currency).unwrap_or(money::NO_CURRENCY))
    .bind(money::check_amount(r.expected_amount).unwrap_or(Decimal::ZERO))
    .bind(status.as_str())
    .bind(reason)
    .bind(decision)
    .bind(serde_json::json!(reasons))
    .bind(&r.notify_url)
    .bind(ttl)
    .bind(r.requested_at)
    .bind(terminal)
    .bind(&r.payer_token)
    .bind(route.map(|(_, fee)| fee).unwrap_or(Decimal::ZERO))
    .execute(conn)
    .await
    .map_err(unique_is_transient)?;
    Ok(())
}

/// A unique violation here means a concurrent duplicate won (the lock was
/// lost): retry, and the retry sees its row.
pub(crate) fn unique_is_transient(error: sqlx::Error) -> StageError {
    if let sqlx::Error::Database(db) = &error {
        if db.code().as_deref() == Some("23505") {
            return StageError::transient(format!("concurrent duplicate: {error}"));
        }
    }
    error.into()
}

pub(super) async fn insert_order(
    conn: &mut PgConnection,
    id: PaymentId,
    r: &PaymentRequested,
    order: &PricedOrder,
) -> Result<(), StageError> {
    sqlx::query(
        "INSERT INTO orders (payment_id, merchant_id, merchant_order_id, user_id, currency, gross_amount, discount_amount,
                             payable_amount, coupon_code, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'created')",
    )
    .bind(id)
    .bind(&r.merchant_id)
    .bind(&r.merchant_order_id)
    .bind(&r.user_id)
    .bind(&r.currency)
    .bind(order.gross)
    .bind(order.discount)
    .bind(order.payable)
    .bind(&r.coupon_code)
    .execute(&mut *conn)
    .await?;
    for sub in &order.sub_orders {
        let sub_id =
            messages::stable_id(&["sub-order", &id.to_string(), &sub.seller_id, &sub.warehouse]);
        let rate = order
            .fee_rates
            .get(&sub.seller_id)
            .copied()
            .unwrap_or(Decimal::ZERO);
        let fee = money::round(sub.payable() * rate);
        sqlx::query(
            "INSERT INTO sub_orders (id, payment_id, seller_id, warehouse, currency, gross_amount, discount_amount, payable_amount, fee_amount)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(sub_id)
        .bind(id)
        .bind(&sub.seller_id)
        .bind(&sub.warehouse)
        .bind(&r.currency)
        .bind(sub.gross)
        .bind(sub.discount)
        .bind(sub.payable())
        .bind(fee)
        .execute(&mut *conn)
        .await?;
        for index in &sub.lines {
            let line = &order.lines[*index];
            sqlx::query(
                "INSERT INTO order_details (payment_id, sub_order_id, sku, spec, buyer_id, seller_id, unit_price, quantity,
                                            line_amount, discount_amount, currency)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(id)
            .bind(sub_id)
            .bind(&line.sku)
            .bind(&line.spec)
            .bind(&r.user_id)
            .bind(&line.seller_id)
            .bind(line.unit_price)
            .bind(line.quantity as i32)
            .bind(line.amount)
            .bind(line.discount)
            .bind(&r.currency)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}
