//! Confirm and Cancel of an upstream refund, each once (`booked_at`).
//!
//! Confirm posts the `refund` entry (docs/ARCHITECTURE.md, "The books"):
//! each seller gives back its parts less the platform-fee share, out of
//! what Try reserved on its account; the platform gives back that share;
//! the payer gains the whole refund — in the wallet, or through the
//! channel, which paid the payer from what it holds for us (its clearing
//! account). The channel keeps its fee on the refunded charge: it stays the
//! platform's cost, as it was booked with the payment. A refund that makes
//! the payment whole gives back its coupon use, and its stock when asked.
//!
//! A reversal (the whole payment, cancelled by the channel the day it was
//! paid) posts the `reversal` entry: the same legs, except that the
//! channel keeps no fee — what it handed over for the charge goes back
//! through clearing (+(A − F)) and the fee it had taken is no longer the
//! platform's cost (`channel-costs` +F). Every leg of the payment is
//! undone; its stock and coupon come back.
//!
//! Cancel gives each seller back what Try reserved.

use payfleet_common::runtime::StageError;
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::record::Refund;
use crate::domain::{
    ledger::{Account, Entry, EntryKind},
    payment::Payment,
};

/// Confirm of refund `r` (succeeded) of payment `p`; false when it was
/// already booked.
pub async fn confirm(conn: &mut PgConnection, p: &Payment, r: &Refund) -> Result<bool, StageError> {
    if !mark_booked(conn, r).await? {
        return Ok(false);
    }
    let kind = if r.is_reversal() {
        EntryKind::Reversal
    } else {
        EntryKind::Refund
    };
    let Some(entry) = Entry::open(conn, &r.id.to_string(), kind, r.attempt_id).await? else {
        return Err(StageError::permanent(format!(
            "refund {} already has its journal entry but was not booked",
            r.id
        )));
    };
    let parts: Vec<(String, i64, Decimal)> = sqlx::query_as(
        "UPDATE refund_allocations SET status = 'booked' WHERE refund_id = $1 AND status = 'reserved'
         RETURNING seller_id, account_id, amount - fee_back",
    )
    .bind(r.id)
    .fetch_all(&mut *conn)
    .await?;
    for (seller, account, given_back) in merged_by_account(parts) {
        let taken = sqlx::query(
            "UPDATE accounts SET total = total - $2, frozen = frozen - $2, updated_at = now()
             WHERE id = $1 AND frozen >= $2",
        )
        .bind(account)
        .bind(given_back)
        .execute(&mut *conn)
        .await?;
        if taken.rows_affected() == 0 {
            return Err(StageError::permanent(format!(
                "{seller} holds less frozen than refund {} reserved",
                r.id
            )));
        }
        entry
            .post_applied(conn, Account::Merchant(&seller), -given_back, &r.currency)
            .await?;
    }
    entry
        .post(conn, Account::PlatformFees, -r.fee_back, &r.currency)
        .await?;
    if r.to_wallet() {
        credit_wallet(conn, p, r, &entry).await?;
    } else if r.is_reversal() {
        let fee = channel_fee(conn, r).await?;
        entry
            .post(
                conn,
                Account::Clearing(&r.channel),
                r.amount - fee,
                &r.currency,
            )
            .await?;
        entry
            .post(conn, Account::ChannelCosts(&r.channel), fee, &r.currency)
            .await?;
    } else {
        entry
            .post(conn, Account::Clearing(&r.channel), r.amount, &r.currency)
            .await?;
    }
    if made_whole(conn, p).await? {
        give_back_coupon(conn, p).await?;
        if r.return_stock {
            crate::domain::stock::put_back(conn, p.id).await?;
        }
    }
    Ok(true)
}

/// Cancel of refund `r` (failed): each seller's reservation is available
/// again. False when it was already booked.
pub async fn cancel(conn: &mut PgConnection, r: &Refund) -> Result<bool, StageError> {
    if !mark_booked(conn, r).await? {
        return Ok(false);
    }
    let parts: Vec<(String, i64, Decimal)> = sqlx::query_as(
        "UPDATE refund_allocations SET status = 'released' WHERE refund_id = $1 AND status = 'reserved'
         RETURNING seller_id, account_id, amount - fee_back",
    )
    .bind(r.id)
    .fetch_all(&mut *conn)
    .await?;
    for (seller, account, held) in merged_by_account(parts) {
        let released = sqlx::query(
            "UPDATE accounts SET available = available + $2, frozen = frozen - $2, updated_at = now()
             WHERE id = $1 AND frozen >= $2",
        )
        .bind(account)
        .bind(held)
        .execute(&mut *conn)
        .await?;
        if released.rows_affected() == 0 {
            return Err(StageError::permanent(format!(
                "{seller} holds less frozen than refund {} reserved",
                r.id
            )));
        }
    }
    Ok(true)
}

/// The fee the channel took on the reversed charge, as booked with the payment.
async fn channel_fee(conn: &mut PgConnection, r: &Refund) -> Result<Decimal, StageError> {
    let fee: Option<Option<Decimal>> =
        sqlx::query_scalar("SELECT fee FROM payment_attempts WHERE id = $1")
            .bind(r.attempt_id)
            .fetch_optional(conn)
            .await?;
    match fee {
        Some(Some(fee)) => Ok(fee),
        _ => Err(StageError::permanent(format!(
            "reversal {}: the charge {:?} it reverses has no booked fee",
            r.id, r.attempt_id
        ))),
    }
}

async fn mark_booked(conn: &mut PgConnection, r: &Refund) -> Result<bool, StageError> {
    let marked = sqlx::query(
        "UPDATE refunds SET booked_at = now(), updated_at = now() WHERE id = $1 AND booked_at IS NULL",
    )
    .bind(r.id)
    .execute(conn)
    .await?;
    Ok(marked.rows_affected() == 1)
}

/// One amount per seller account, in account order (a stable lock order),
/// the zero ones left out: what Try reserves, Confirm takes and Cancel
/// gives back.
pub(super) fn merged_by_account(parts: Vec<(String, i64, Decimal)>) -> Vec<(String, i64, Decimal)> {
    let mut merged: Vec<(String, i64, Decimal)> = Vec::new();
    for (seller, account, amount) in parts {
        match merged.iter_mut().find(|(_, id, _)| *id == account) {
            Some(m) => m.2 += amount,
            None => merged.push((seller, account, amount)),
        }
    }
    merged.sort_by_key(|(_, id, _)| *id);
    merged.retain(|(_, _, amount)| !amount.is_zero());
    merged
}

/// The refund goes back into the payer's wallet, with a statement line.
async fn credit_wallet(
    conn: &mut PgConnection,
    p: &Payment,
    r: &Refund,
    entry: &Entry,
) -> Result<(), StageError> {
    let credited: Option<(i64, Decimal, Decimal)> = sqlx::query_as(
        "UPDATE accounts SET total = total + $3, available = available + $3, updated_at = now()
         WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2 RETURNING id, available, frozen",
    )
    .bind(&p.user_id)
    .bind(&r.currency)
    .bind(r.amount)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((wallet, available_after, frozen_after)) = credited else {
        return Err(StageError::permanent(format!(
            "refund {}: {} has no {} wallet to credit",
            r.id, p.user_id, r.currency
        )));
    };
    sqlx::query(
        "INSERT INTO account_statements (account_id, payment_id, refund_id, kind, amount, currency, available_after, frozen_after)
         VALUES ($1, $2, $3, 'refund', $4, $5, $6, $7)",
    )
    .bind(wallet)
    .bind(p.id)
    .bind(r.id)
    .bind(r.amount)
    .bind(&r.currency)
    .bind(available_after)
    .bind(frozen_after)
    .execute(&mut *conn)
    .await?;
    entry
        .post(conn, Account::Wallet(&p.user_id), r.amount, &r.currency)
        .await
}

/// Whether the payment's booked refunds now add up to everything it settled.
async fn made_whole(conn: &mut PgConnection, p: &Payment) -> Result<bool, StageError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(d.amount), 0) = COALESCE((SELECT sum(a.amount) FROM refund_allocations a
                                                      JOIN transaction_details t ON t.id = a.detail_id
                                                      WHERE t.payment_id = $1 AND a.status = 'booked'), 0)
         FROM transaction_details d WHERE d.payment_id = $1 AND d.status = 'paid'",
    )
    .bind(p.id)
    .fetch_one(conn)
    .await?)
}

/// A payment refunded in full gives its coupon use back.
async fn give_back_coupon(conn: &mut PgConnection, p: &Payment) -> Result<(), StageError> {
    let returned: Option<String> = sqlx::query_scalar(
        "UPDATE coupon_redemptions SET status = 'returned' WHERE payment_id = $1 AND status = 'consumed'
         RETURNING coupon_code",
    )
    .bind(p.id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(code) = returned {
        sqlx::query("UPDATE coupons SET used = used - 1 WHERE code = $1")
            .bind(code)
            .execute(conn)
            .await?;
    }
    Ok(())
}
