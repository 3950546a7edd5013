//! TCC Confirm of a batch's wallet purchases at once: the same books as
//! [`super::tcc::confirm`] writes for one, with one statement per table
//! for all of them instead of one per payment (a one-row statement costs
//! a round trip and an executor start-up before its row's own work).
//!
//! Only a `paid` purchase whose reservation is a wallet's freeze is
//! confirmed here. Anything else — a channel payment, a top-up, a
//! payment in another status — is left untouched, for
//! [`super::tcc::confirm`] one at a time. Anything unexpected (an entry
//! already written, a wallet holding less frozen, sub-orders that do not
//! sum to the freeze) is an error: the caller
//! undoes all of it and confirms each payment alone, which names the
//! payment at fault.
//!
//! The wallets and stock buckets are locked first, skipping those another
//! transaction holds: their payments are left to the one-at-a-time path,
//! so a lock held elsewhere never makes the whole batch wait or undo.
//!
//! Two payments of one wallet in a batch debit it once by their sum; each
//! statement line still shows the balances after its own debit, in
//! payment id order.

use std::collections::HashMap;

use payfleet_common::{PaymentId, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{
    ledger::{Account, Entry, EntryKind, LegTo, post_many},
    payment::{self, PaymentKind, PaymentStatus},
    stock,
};

/// A wallet purchase being confirmed.
struct Confirming {
    id: PaymentId,
    wallet: i64,
    amount: Decimal,
    currency: String,
}

/// Confirms the `paid` wallet purchases among `ids` (which the caller
/// holds the locks of) and moves them to `settled`: the ids confirmed.
pub async fn confirm_wallet_purchases(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> Result<Vec<PaymentId>, StageError> {
    let mut purchases = Vec::with_capacity(ids.len());
    let mut currencies = HashMap::with_capacity(ids.len());
    for p in payment::lock_many(conn, ids).await? {
        if p.status()? == PaymentStatus::Paid && p.kind()? == PaymentKind::Purchase {
            purchases.push(p.id);
            currencies.insert(p.id, p.currency);
        }
    }
    if purchases.is_empty() {
        return Ok(Vec::new());
    }
    let confirming = confirm_freezes(conn, &purchases, &currencies).await?;
    if confirming.is_empty() {
        return Ok(Vec::new());
    }
    let settled: Vec<PaymentId> = confirming.iter().map(|c| c.id).collect();
    let references: Vec<String> = settled.iter().map(ToString::to_string).collect();
    let by_reference: HashMap<&str, PaymentId> = references
        .iter()
        .map(String::as_str)
        .zip(settled.iter().copied())
        .collect();
    let entries: HashMap<PaymentId, Entry> =
        Entry::open_many(conn, &references, EntryKind::Payment)
            .await?
            .into_iter()
            .map(|(reference, entry)| (by_reference[reference.as_str()], entry))
            .collect();
    debit_wallets(conn, &confirming).await?;
    let payable = mark_paid(conn, &settled).await?;
    post_legs(conn, &confirming, &entries, &payable).await?;
    stock::deduct_many(&mut *conn, &settled).await?;
    payment::transition_many(conn, &settled, PaymentStatus::Paid, PaymentStatus::Settled).await?;
    Ok(settled)
}

/// Confirms the wallet freezes of `purchases`, in payment id order, after
/// locking the wallets and stock buckets their Confirm moves. A purchase
/// without a freeze (a channel payment), or one whose wallet or bucket
/// another transaction holds (a Try of the same wallet in fund-freeze's
/// batch), is left as it is: it runs alone and waits there on its own,
/// while the rest of the batch goes on without waiting.
async fn confirm_freezes(
    conn: &mut PgConnection,
    purchases: &[PaymentId],
    currencies: &HashMap<PaymentId, String>,
) -> Result<Vec<Confirming>, StageError> {
    let mut confirmed: Vec<(PaymentId, i64, Decimal)> = sqlx::query_as(
        "WITH freezes AS (
             SELECT payment_id, account_id FROM reservations
             WHERE payment_id = ANY($1) AND status = 'tried' AND account_id IS NOT NULL
         ), reserved AS (
             SELECT rb.payment_id, rb.sku, rb.bucket
             FROM stock_reservation_buckets rb
             JOIN stock_reservations s ON s.payment_id = rb.payment_id AND s.sku = rb.sku
             WHERE rb.payment_id IN (SELECT payment_id FROM freezes) AND s.status = 'reserved'
         ), wallets AS MATERIALIZED (
             SELECT id FROM accounts WHERE id IN (SELECT account_id FROM freezes)
             ORDER BY id FOR UPDATE SKIP LOCKED
         ), buckets AS MATERIALIZED (
             SELECT sku, bucket FROM stock_buckets
             WHERE (sku, bucket) IN (SELECT sku, bucket FROM reserved)
             ORDER BY sku, bucket FOR UPDATE SKIP LOCKED
         ), ready AS (
             SELECT f.payment_id FROM freezes f
             WHERE f.account_id IN (SELECT id FROM wallets)
               AND NOT EXISTS (
                   SELECT 1 FROM reserved r WHERE r.payment_id = f.payment_id
                     AND (r.sku, r.bucket) NOT IN (SELECT sku, bucket FROM buckets))
         )
         UPDATE reservations r SET status = 'confirmed', finished_at = now()
         FROM ready WHERE r.payment_id = ready.payment_id AND r.status = 'tried'
         RETURNING r.payment_id, r.account_id, r.amount",
    )
    .bind(purchases)
    .fetch_all(&mut *conn)
    .await?;
    confirmed.sort_by_key(|(id, _, _)| *id);
    Ok(confirmed
        .into_iter()
        .map(|(id, wallet, amount)| Confirming {
            id,
            wallet,
            amount,
            currency: currencies[&id].clone(),
        })
        .collect())
}

/// The frozen funds leave each wallet (once per wallet, by the sum of its
/// payments), with a statement line per payment.
async fn debit_wallets(
    conn: &mut PgConnection,
    confirming: &[Confirming],
) -> Result<(), StageError> {
    let ids: Vec<PaymentId> = confirming.iter().map(|c| c.id).collect();
    let wallets: Vec<i64> = confirming.iter().map(|c| c.wallet).collect();
    let amounts: Vec<Decimal> = confirming.iter().map(|c| c.amount).collect();
    let currencies: Vec<&str> = confirming.iter().map(|c| c.currency.as_str()).collect();
    let mut distinct = wallets.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // A line's frozen balance after its own debit: what was frozen before
    // the sum, less the payments up to it in id order.
    let moved: i64 = sqlx::query_scalar(
        "WITH debits AS (
             SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::numeric[], $4::text[])
                 AS d (payment_id, account_id, amount, currency)
         ), per_wallet AS (
             SELECT account_id, sum(amount) AS amount FROM debits GROUP BY account_id
         ), moved AS (
             UPDATE accounts a SET total = a.total - w.amount, frozen = a.frozen - w.amount, updated_at = now()
             FROM per_wallet w WHERE a.id = w.account_id AND a.frozen >= w.amount
             RETURNING a.id, a.available, a.frozen, w.amount AS debited
         ), lines AS (
             INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after)
             SELECT d.account_id, d.payment_id, 'debit', d.amount, d.currency, m.available,
                    m.frozen + m.debited - sum(d.amount) OVER (PARTITION BY d.account_id ORDER BY d.payment_id)
             FROM debits d JOIN moved m ON m.id = d.account_id
             WHERE d.amount <> 0
             ORDER BY d.payment_id
         )
         SELECT count(*) FROM moved",
    )
    .bind(&ids)
    .bind(&wallets)
    .bind(&amounts)
    .bind(&currencies)
    .fetch_one(&mut *conn)
    .await?;
    if moved != distinct.len() as i64 {
        return Err(StageError::permanent(format!(
            "{} of {} wallets hold less frozen than their payments reserved",
            distinct.len() as i64 - moved,
            distinct.len()
        )));
    }
    Ok(())
}

/// The orders are paid and their coupons consumed; their transaction
/// details are marked paid and returned per payment (seller, amount,
/// fee), in seller order.
async fn mark_paid(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> Result<HashMap<PaymentId, Vec<(String, Decimal, Decimal)>>, StageError> {
    let details: Vec<(PaymentId, String, Decimal, Decimal)> = sqlx::query_as(
        "WITH coupon AS (
             UPDATE coupon_redemptions SET status = 'consumed' WHERE payment_id = ANY($1) AND status = 'reserved'
         ), paid_order AS (
             UPDATE orders SET status = 'paid' WHERE payment_id = ANY($1)
         ), paid AS (
             UPDATE transaction_details SET status = 'paid' WHERE payment_id = ANY($1)
             RETURNING payment_id, seller_id, amount, fee_amount
         )
         SELECT payment_id, seller_id, amount, fee_amount FROM paid ORDER BY payment_id, seller_id",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let mut payable: HashMap<PaymentId, Vec<_>> = HashMap::with_capacity(ids.len());
    for (id, seller, amount, fee) in details {
        payable.entry(id).or_default().push((seller, amount, fee));
    }
    Ok(payable)
}

/// Every entry's legs with one statement: the wallet pays the payment's
/// frozen amount, each seller gains its sub-orders less their fees, the
/// platform the fees; per entry, exactly what the wallet paid.
async fn post_legs(
    conn: &mut PgConnection,
    confirming: &[Confirming],
    entries: &HashMap<PaymentId, Entry>,
    payable: &HashMap<PaymentId, Vec<(String, Decimal, Decimal)>>,
) -> Result<(), StageError> {
    let none = Vec::new();
    let mut legs = Vec::with_capacity(confirming.len() * 3);
    for c in confirming {
        let entry = &entries[&c.id];
        let currency = c.currency.as_str();
        legs.push((entry, LegTo::Applied(c.wallet), -c.amount, currency));
        let details = payable.get(&c.id).unwrap_or(&none);
        let (mut fees, mut credited) = (Decimal::ZERO, Decimal::ZERO);
        for (seller, amount, fee) in details {
            legs.push((
                entry,
                LegTo::Account(Account::Merchant(seller)),
                *amount - *fee,
                currency,
            ));
            fees += *fee;
            credited += *amount;
        }
        legs.push((entry, LegTo::Account(Account::PlatformFees), fees, currency));
        if credited != c.amount {
            return Err(StageError::permanent(format!(
                "payment {}: sub-orders sum to {credited} but {} is settled",
                c.id, c.amount
            )));
        }
    }
    post_many(conn, &legs).await
}
