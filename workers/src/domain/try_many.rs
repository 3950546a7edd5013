//! TCC Try of a batch's wallet purchases at once: the same reservations as
//! fund-freeze's Try writes for one, with one statement per table for all
//! of them instead of a few per payment.
//!
//! Only a plain case is tried here: a `validated` purchase paid from the
//! wallet, not expired, without a coupon, whose wallet covers all of the
//! batch's payments of it, and each of whose SKUs one free bucket holds
//! for all of the batch's payments of that SKU. Anything else — a coupon,
//! a shortfall, a wallet or bucket another transaction holds, a channel
//! payment, a top-up — is left untouched, for the one-at-a-time Try,
//! which names the shortfall and waits for a held row on its own.
//! Anything unexpected (a bucket or an order that did not move) is an
//! error: the caller undoes all of it and tries each payment alone.
//!
//! Two payments of one wallet in a batch freeze it once by their sum; each
//! statement line still shows the balances after its own freeze, in
//! payment id order. The plain payments of a batch are tried before the
//! rest of it: when a wallet or a SKU falls short for the batch, the
//! payments tried alone afterwards meet what the plain ones left (one at a
//! time, the batch goes in payment id order). Each SKU's units come from
//! the fullest free bucket, for all of the batch's payments of it.

use std::collections::HashSet;

use chrono::Utc;
use payfleet_common::{PaymentId, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::payment::{self, Payment, PaymentKind, PaymentStatus};
use crate::channels::BALANCE;

/// One SKU of a payment, and the bucket its units come from.
struct StockLine {
    payment: PaymentId,
    sku: String,
    bucket: i16,
    quantity: i32,
}

/// Tries the plain wallet purchases among `ids` (whose locks the caller
/// holds) and moves them to `frozen`: the payments tried.
pub async fn try_wallet_purchases(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> Result<Vec<Payment>, StageError> {
    let locked = payment::lock_many(conn, ids).await?;
    // Expiry is judged once the payments are locked, as one at a time.
    let now = Utc::now();
    let mut candidates = Vec::with_capacity(ids.len());
    for p in locked {
        if p.status()? == PaymentStatus::Validated
            && p.kind()? == PaymentKind::Purchase
            && p.channel.as_deref().unwrap_or(BALANCE) == BALANCE
            && p.expires_at > now
        {
            candidates.push(p);
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let candidate_ids: Vec<PaymentId> = candidates.iter().map(|p| p.id).collect();
    let lines = choose_buckets(conn, &candidate_ids).await?;
    let stocked: HashSet<PaymentId> = lines.iter().map(|l| l.payment).collect();
    candidates.retain(|p| stocked.contains(&p.id));
    let frozen = freeze_wallets(conn, &candidates).await?;
    candidates.retain(|p| frozen.contains(&p.id));
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let tried: Vec<PaymentId> = candidates.iter().map(|p| p.id).collect();
    let lines: Vec<&StockLine> = lines
        .iter()
        .filter(|l| frozen.contains(&l.payment))
        .collect();
    take_stock(conn, &lines).await?;
    open_details(conn, &tried).await?;
    payment::transition_many(
        conn,
        &tried,
        PaymentStatus::Validated,
        PaymentStatus::Frozen,
    )
    .await?;
    Ok(candidates)
}

/// For the coupon-less payments among `ids`: each SKU's line with the
/// bucket it takes its units from, one free bucket per SKU that holds the
/// units of every such payment of it, locked (skipping the buckets another
/// transaction holds). Only payments all of whose SKUs found a bucket are
/// returned, in payment id and SKU order.
async fn choose_buckets(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> Result<Vec<StockLine>, StageError> {
    // MATERIALIZED: the choice, which locks, runs once per SKU.
    let rows: Vec<(PaymentId, String, Option<i16>, i32)> = sqlx::query_as(
        "WITH plain AS (
             SELECT payment_id FROM orders WHERE payment_id = ANY($1) AND coupon_code IS NULL
         ), wanted AS (
             SELECT payment_id, sku, sum(quantity)::integer AS quantity FROM order_details
             WHERE payment_id IN (SELECT payment_id FROM plain) GROUP BY payment_id, sku
         ), per_sku AS (
             SELECT sku, sum(quantity)::integer AS total FROM wanted GROUP BY sku
         ), chosen AS MATERIALIZED (
             SELECT s.sku, c.bucket FROM per_sku s
             CROSS JOIN LATERAL (
                 SELECT bucket FROM stock_buckets b
                 WHERE b.sku = s.sku AND b.available >= s.total
                 ORDER BY b.available DESC, b.bucket LIMIT 1
                 FOR UPDATE SKIP LOCKED
             ) c
         )
         SELECT w.payment_id, w.sku, c.bucket, w.quantity
         FROM wanted w LEFT JOIN chosen c ON c.sku = w.sku
         ORDER BY w.payment_id, w.sku",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let unstocked: HashSet<PaymentId> = rows
        .iter()
        .filter(|(_, _, bucket, _)| bucket.is_none())
        .map(|(id, _, _, _)| *id)
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|(payment, sku, bucket, quantity)| {
            let bucket = bucket.filter(|_| !unstocked.contains(&payment))?;
            Some(StockLine {
                payment,
                sku,
                bucket,
                quantity,
            })
        })
        .collect())
}

/// Freezes each wallet once by the sum of its payments, when it is active,
/// no other transaction holds it and it covers them all; with a statement
/// line and a `tried` reservation per payment: the payments frozen.
async fn freeze_wallets(
    conn: &mut PgConnection,
    payments: &[Payment],
) -> Result<HashSet<PaymentId>, StageError> {
    let ids: Vec<PaymentId> = payments.iter().map(|p| p.id).collect();
    let users: Vec<&str> = payments.iter().map(|p| p.user_id.as_str()).collect();
    let currencies: Vec<&str> = payments.iter().map(|p| p.currency.as_str()).collect();
    let amounts: Vec<Decimal> = payments.iter().map(|p| p.amount).collect();
    // A line's balances after its own freeze: the wallet's before the sum,
    // moved by the payments up to it in id order.
    let frozen: Vec<PaymentId> = sqlx::query_scalar(
        "WITH wanted AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::numeric[])
                 AS w (payment_id, user_id, currency, amount)
         ), wallets AS MATERIALIZED (
             SELECT a.id, a.owner_id, a.currency::text AS currency FROM accounts a
             WHERE a.owner_kind = 'user' AND a.status = 'active'
               AND (a.owner_id, a.currency::text) IN (SELECT user_id, currency FROM wanted)
             ORDER BY a.id FOR UPDATE SKIP LOCKED
         ), per_wallet AS (
             SELECT wl.id, sum(w.amount) AS amount
             FROM wanted w JOIN wallets wl ON wl.owner_id = w.user_id AND wl.currency = w.currency
             GROUP BY wl.id
         ), moved AS (
             UPDATE accounts a SET available = a.available - p.amount, frozen = a.frozen + p.amount, updated_at = now()
             FROM per_wallet p WHERE a.id = p.id AND a.available >= p.amount
             RETURNING a.id, a.owner_id, a.currency::text AS currency, a.available, a.frozen, p.amount AS total
         ), freezes AS (
             SELECT w.payment_id, m.id AS account_id, w.amount, w.currency,
                    m.available + m.total - sum(w.amount) OVER running AS available_after,
                    m.frozen - m.total + sum(w.amount) OVER running AS frozen_after
             FROM wanted w JOIN moved m ON m.owner_id = w.user_id AND m.currency = w.currency
             WINDOW running AS (PARTITION BY m.id ORDER BY w.payment_id)
         ), lines AS (
             INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after)
             SELECT account_id, payment_id, 'freeze', amount, currency, available_after, frozen_after
             FROM freezes WHERE amount <> 0 ORDER BY payment_id
         ), reservation AS (
             INSERT INTO reservations (payment_id, account_id, amount, currency, status)
             SELECT payment_id, account_id, amount, currency, 'tried' FROM freezes ORDER BY payment_id
         )
         SELECT payment_id FROM freezes",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&currencies)
    .bind(&amounts)
    .fetch_all(&mut *conn)
    .await?;
    Ok(frozen.into_iter().collect())
}

/// Takes each line's units from its bucket (each bucket once, by the sum),
/// with the payment's stock reservation and where it came from.
async fn take_stock(conn: &mut PgConnection, lines: &[&StockLine]) -> Result<(), StageError> {
    let payments: Vec<PaymentId> = lines.iter().map(|l| l.payment).collect();
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let buckets: Vec<i16> = lines.iter().map(|l| l.bucket).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| l.quantity).collect();
    let buckets_moved: HashSet<(&str, i16)> =
        lines.iter().map(|l| (l.sku.as_str(), l.bucket)).collect();
    let moved: i64 = sqlx::query_scalar(
        "WITH taken AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::int4[])
                 AS t (payment_id, sku, bucket, quantity)
         ), per_bucket AS (
             SELECT sku, bucket, sum(quantity)::integer AS quantity FROM taken GROUP BY sku, bucket
         ), moved AS (
             UPDATE stock_buckets b SET available = b.available - p.quantity, reserved = b.reserved + p.quantity
             FROM per_bucket p WHERE b.sku = p.sku AND b.bucket = p.bucket AND b.available >= p.quantity
             RETURNING b.sku
         ), reservation AS (
             INSERT INTO stock_reservations (payment_id, sku, quantity, status)
             SELECT payment_id, sku, quantity, 'reserved' FROM taken ORDER BY payment_id, sku
         ), from_bucket AS (
             INSERT INTO stock_reservation_buckets (payment_id, sku, bucket, quantity)
             SELECT payment_id, sku, bucket, quantity FROM taken ORDER BY payment_id, sku
         )
         SELECT count(*) FROM moved",
    )
    .bind(&payments)
    .bind(&skus)
    .bind(&buckets)
    .bind(&quantities)
    .fetch_one(&mut *conn)
    .await?;
    if moved != buckets_moved.len() as i64 {
        return Err(StageError::transient(format!(
            "{} of {} stock buckets no longer hold the units chosen from them",
            buckets_moved.len() as i64 - moved,
            buckets_moved.len()
        )));
    }
    Ok(())
}

/// One transaction detail per sub-order (where the money will go), and the
/// orders awaiting payment.
async fn open_details(conn: &mut PgConnection, ids: &[PaymentId]) -> Result<(), StageError> {
    let awaiting = sqlx::query(
        "WITH details AS (
             INSERT INTO transaction_details (payment_id, sub_order_id, seller_id, amount, fee_amount, currency, status)
             SELECT payment_id, id, seller_id, payable_amount, fee_amount, currency, 'awaiting_payment'
             FROM sub_orders WHERE payment_id = ANY($1) ORDER BY payment_id, id
         )
         UPDATE orders SET status = 'awaiting_payment' WHERE payment_id = ANY($1)",
    )
    .bind(ids)
    .execute(conn)
    .await?
    .rows_affected();
    if awaiting != ids.len() as u64 {
        return Err(StageError::permanent(format!(
            "{} of {} payments have no order to await payment",
            ids.len() as u64 - awaiting,
            ids.len()
        )));
    }
    Ok(())
}
