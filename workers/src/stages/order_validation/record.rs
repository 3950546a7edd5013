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

/// The order, its sub-orders (one per seller and warehouse) and its lines,
/// in one statement: the rows go in column by column, in the order of the
/// priced order.
pub(super) async fn insert_order(
    conn: &mut PgConnection,
    id: PaymentId,
    r: &PaymentRequested,
    order: &PricedOrder,
) -> Result<(), StageError> {
    let mut sub = SubOrderColumns::default();
    let mut line = LineColumns::default();
    for s in &order.sub_orders {
        let sub_id =
            messages::stable_id(&["sub-order", &id.to_string(), &s.seller_id, &s.warehouse]);
        let rate = order
            .fee_rates
            .get(&s.seller_id)
            .copied()
            .unwrap_or(Decimal::ZERO);
        sub.id.push(sub_id);
        sub.seller.push(s.seller_id.as_str());
        sub.warehouse.push(s.warehouse.as_str());
        sub.gross.push(s.gross);
        sub.discount.push(s.discount);
        sub.payable.push(s.payable());
        sub.fee.push(money::round(s.payable() * rate));
        for index in &s.lines {
            let l = &order.lines[*index];
            line.sub_order.push(sub_id);
            line.sku.push(l.sku.as_str());
            line.spec.push(&l.spec);
            line.seller.push(l.seller_id.as_str());
            line.unit_price.push(l.unit_price);
            line.quantity.push(l.quantity as i32);
            line.amount.push(l.amount);
            line.discount.push(l.discount);
        }
    }
    sqlx::query(
        "WITH the_order AS (
             INSERT INTO orders (payment_id, merchant_id, merchant_order_id, user_id, currency, gross_amount, discount_amount,
                                 payable_amount, coupon_code, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'created')
         ), subs AS (
             INSERT INTO sub_orders (id, payment_id, seller_id, warehouse, currency, gross_amount, discount_amount, payable_amount, fee_amount)
             SELECT s.id, $1, s.seller_id, s.warehouse, $5, s.gross, s.discount, s.payable, s.fee
             FROM UNNEST($10::uuid[], $11::text[], $12::text[], $13::numeric[], $14::numeric[], $15::numeric[], $16::numeric[])
                  WITH ORDINALITY AS s (id, seller_id, warehouse, gross, discount, payable, fee, n)
             ORDER BY s.n
         )
         INSERT INTO order_details (payment_id, sub_order_id, sku, spec, buyer_id, seller_id, unit_price, quantity,
                                    line_amount, discount_amount, currency)
         SELECT $1, l.sub_order_id, l.sku, l.spec, $4, l.seller_id, l.unit_price, l.quantity, l.amount, l.discount, $5
         FROM UNNEST($17::uuid[], $18::text[], $19::jsonb[], $20::text[], $21::numeric[], $22::int4[], $23::numeric[], $24::numeric[])
              WITH ORDINALITY AS l (sub_order_id, sku, spec, seller_id, unit_price, quantity, amount, discount, n)
         ORDER BY l.n",
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
    .bind(&sub.id)
    .bind(&sub.seller)
    .bind(&sub.warehouse)
    .bind(&sub.gross)
    .bind(&sub.discount)
    .bind(&sub.payable)
    .bind(&sub.fee)
    .bind(&line.sub_order)
    .bind(&line.sku)
    .bind(&line.spec)
    .bind(&line.seller)
    .bind(&line.unit_price)
    .bind(&line.quantity)
    .bind(&line.amount)
    .bind(&line.discount)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The sub-orders' rows, column by column, for `UNNEST`.
#[derive(Default)]
struct SubOrderColumns<'a> {
    id: Vec<uuid::Uuid>,
    seller: Vec<&'a str>,
    warehouse: Vec<&'a str>,
    gross: Vec<Decimal>,
    discount: Vec<Decimal>,
    payable: Vec<Decimal>,
    fee: Vec<Decimal>,
}

/// The order's lines, column by column, for `UNNEST`.
#[derive(Default)]
struct LineColumns<'a> {
    sub_order: Vec<uuid::Uuid>,
    sku: Vec<&'a str>,
    spec: Vec<&'a serde_json::Value>,
    seller: Vec<&'a str>,
    unit_price: Vec<Decimal>,
    quantity: Vec<i32>,
    amount: Vec<Decimal>,
    discount: Vec<Decimal>,
}
