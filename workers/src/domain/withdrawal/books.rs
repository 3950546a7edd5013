//! A withdrawal's money: Try freezes the amount in the wallet, Confirm
//! debits it and posts the `withdrawal` entry, Cancel releases it, and a
//! payout the payee's bank sent back is credited to the wallet once with
//! the `withdrawal_returned` entry (docs/ARCHITECTURE.md, "The books").
//! Each is idempotent: Confirm and Cancel stamp `booked_at`, the return
//! `returned_booked_at`, and an entry is opened once per (withdrawal, kind).

use payfleet_common::runtime::StageError;
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{Limits, WithdrawalStatus, limits::Day, record::Withdrawal};
use crate::domain::ledger::{Account, Entry, EntryKind};

/// Why Try cannot freeze: its reason code and a detail.
pub type Refusal = (&'static str, String);

/// Try: available → frozen in the wallet, never below zero, under the
/// wallet's row lock; the withdrawal moves to `frozen`. A wallet short of
/// the amount or no longer active, or a user past the daily limit of the
/// business day it was asked in, freezes nothing. A merchant's payout
/// freezes on the merchant's account, its postings folded in first, and
/// never takes the holdback.
pub async fn freeze(
    conn: &mut PgConnection,
    w: &Withdrawal,
    limits: &Limits,
) -> Result<Result<(), Refusal>, StageError> {
    let Some(wallet) = w.account_id else {
        return Err(StageError::permanent(format!(
            "withdrawal {} names no wallet to freeze",
            w.id
        )));
    };
    if w.is_merchant_payout() {
        crate::domain::ledger::fold_pending(conn, &[wallet]).await?;
    }
    // NO KEY: a settlement appending a posting to a merchant's account
    // (a key-share lock) need not wait for this Try.
    let row: Option<(String, Decimal)> =
        sqlx::query_as("SELECT status, available FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
            .bind(wallet)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((status, available)) = row else {
        return Err(StageError::permanent(format!(
            "withdrawal {}: wallet {wallet} is gone",
            w.id
        )));
    };
    if status != "active" {
        return Ok(Err((
            "wallet_not_active",
            format!("{}'s {} wallet is {status}", w.user_id, w.currency),
        )));
    }
    if w.is_merchant_payout() {
        if let Some(refusal) = payout_refusal(conn, w, limits, wallet, available).await? {
            return Ok(Err(refusal));
        }
    } else if available < w.amount {
        return Ok(Err((
            "insufficient_balance",
            format!(
                "{} {} asked, {available} available in {}'s wallet",
                w.amount, w.currency, w.user_id
            ),
        )));
    }
    if !w.is_merchant_payout() {
        let day = limits.day_of(&w.currency, w.created_at);
        if let Some(refusal) = over_daily_limit(conn, w, day).await? {
            return Ok(Err(refusal));
        }
    }
    let (available_after, frozen_after) = move_balance(conn, wallet, -w.amount, w.amount).await?;
    statement_line(conn, wallet, w, "freeze", available_after, frozen_after).await?;
    super::transition(
        conn,
        w.id,
        WithdrawalStatus::Requested,
        WithdrawalStatus::Frozen,
        None,
    )
    .await?;
    Ok(Ok(()))
}

/// Why merchant payout `w` cannot be frozen on `account`, holding
/// `available`, if it cannot: the merchant suspended since it was asked,
/// or the amount past what is payable (the balance less the holdback).
async fn payout_refusal(
    conn: &mut PgConnection,
    w: &Withdrawal,
    limits: &Limits,
    account: i64,
    available: Decimal,
) -> Result<Option<Refusal>, StageError> {
    let merchant_status: String = sqlx::query_scalar("SELECT status FROM merchants WHERE id = $1")
        .bind(&w.user_id)
        .fetch_one(&mut *conn)
        .await?;
    if merchant_status != "active" {
        let detail = format!("{} is {merchant_status}", w.user_id);
        return Ok(Some(("merchant_suspended", detail)));
    }
    let payable = super::limits::payable(conn, limits, account, available).await?;
    Ok((payable < w.amount).then(|| {
        (
            "insufficient_balance",
            format!(
                "{} {c} asked, {payable} {c} payable of the {available} {c} {} holds (the rest is held back)",
                w.amount,
                w.user_id,
                c = w.currency
            ),
        )
    }))
}

/// Why `w` would take its user past the daily limit, if it would: what the
/// user has withdrawn or has on its way out in the currency on the
/// business day `w` was asked (under the wallet's row lock every Try of
/// the wallet waits for this one), and `w` itself. A returned payout gave
/// its money back and does not count.
async fn over_daily_limit(
    conn: &mut PgConnection,
    w: &Withdrawal,
    day: Day,
) -> Result<Option<Refusal>, StageError> {
    let Some(limit) = day.limit else {
        return Ok(None);
    };
    let today: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0) FROM withdrawals
         WHERE user_id = $1 AND owner_kind = 'user' AND currency = $2
           AND created_at >= $3 AND created_at < $5 AND id <> $4
           AND status IN ('frozen', 'sending', 'unknown', 'exception', 'succeeded')",
    )
    .bind(&w.user_id)
    .bind(&w.currency)
    .bind(day.start)
    .bind(w.id)
    .bind(day.end)
    .fetch_one(&mut *conn)
    .await?;
    Ok((today + w.amount > limit).then(|| {
        (
            "over_daily_limit",
            format!(
                "{} {c} more would take {} past its daily limit of {limit} {c} ({today} {c} today)",
                w.amount,
                w.user_id,
                c = w.currency
            ),
        )
    }))
}

/// Confirm of a paid-out withdrawal: the frozen amount A leaves the
/// wallet. `withdrawal` entry: wallet −A; `fees` +W (the platform's
/// withdrawal fee); `clearing:<ch>` +(A − W + F): the channel paid the
/// payee A − W and took its fee F out of what it holds for us;
/// `channel-costs:<ch>` −F: the channel's fee is the platform's cost.
/// False when it was booked before.
pub async fn confirm(conn: &mut PgConnection, w: &Withdrawal) -> Result<bool, StageError> {
    if !stamp(conn, w, "booked_at").await? {
        return Ok(false);
    }
    let (wallet, channel) = wallet_and_channel(w)?;
    let channel_fee = w.channel_fee.unwrap_or(Decimal::ZERO);
    let (available_after, frozen_after) =
        move_balance(conn, wallet, Decimal::ZERO, -w.amount).await?;
    statement_line(conn, wallet, w, "debit", available_after, frozen_after).await?;
    let reference = w.id.to_string();
    let Some(entry) = Entry::open(conn, &reference, EntryKind::Withdrawal, None).await? else {
        return Err(StageError::permanent(format!(
            "withdrawal {}: its entry exists but it was not booked",
            w.id
        )));
    };
    let c = w.currency.as_str();
    // the owner's balance moved above: its leg is applied already
    entry.post_applied(conn, owner(w), -w.amount, c).await?;
    entry.post(conn, Account::PlatformFees, w.fee, c).await?;
    entry
        .post(
            conn,
            Account::Clearing(channel),
            w.payout_amount() + channel_fee,
            c,
        )
        .await?;
    entry
        .post(conn, Account::ChannelCosts(channel), -channel_fee, c)
        .await?;
    Ok(true)
}

/// Cancel of a withdrawal the channel refused: frozen → available, no
/// entry (no money moved). False when it was booked before.
pub async fn cancel(conn: &mut PgConnection, w: &Withdrawal) -> Result<bool, StageError> {
    if !stamp(conn, w, "booked_at").await? {
        return Ok(false);
    }
    let (wallet, _) = wallet_and_channel(w)?;
    let (available_after, frozen_after) = move_balance(conn, wallet, w.amount, -w.amount).await?;
    statement_line(conn, wallet, w, "unfreeze", available_after, frozen_after).await?;
    Ok(true)
}

/// The payee's bank sent a paid-out withdrawal back: the wallet gets the
/// whole amount A back. `withdrawal_returned` entry: `clearing:<ch>`
/// −(A − W): the channel hands back what the bank returned; `fees` −W:
/// the platform gives its fee back, as nothing was withdrawn; wallet +A.
/// The channel keeps its own fee: it stays the platform's cost. False when
/// it was credited before.
pub async fn credit_back(conn: &mut PgConnection, w: &Withdrawal) -> Result<bool, StageError> {
    if !stamp(conn, w, "returned_booked_at").await? {
        return Ok(false);
    }
    let (wallet, channel) = wallet_and_channel(w)?;
    let credited: (Decimal, Decimal) = sqlx::query_as(
        "UPDATE accounts SET total = total + $2, available = available + $2, updated_at = now()
         WHERE id = $1 RETURNING available, frozen",
    )
    .bind(wallet)
    .bind(w.amount)
    .fetch_one(&mut *conn)
    .await?;
    statement_line(conn, wallet, w, "credit", credited.0, credited.1).await?;
    let reference = w.id.to_string();
    let Some(entry) = Entry::open(conn, &reference, EntryKind::WithdrawalReturned, None).await?
    else {
        return Err(StageError::permanent(format!(
            "withdrawal {}: its return entry exists but it was not credited",
            w.id
        )));
    };
    let c = w.currency.as_str();
    entry
        .post(conn, Account::Clearing(channel), -w.payout_amount(), c)
        .await?;
    entry.post(conn, Account::PlatformFees, -w.fee, c).await?;
    entry.post_applied(conn, owner(w), w.amount, c).await?;
    Ok(true)
}

/// Stamps `column` (`booked_at` or `returned_booked_at`) once; false when
/// it was stamped before.
async fn stamp(conn: &mut PgConnection, w: &Withdrawal, column: &str) -> Result<bool, StageError> {
    let stamped = sqlx::query(&format!(
        "UPDATE withdrawals SET {column} = now(), updated_at = now() WHERE id = $1 AND {column} IS NULL"
    ))
    .bind(w.id)
    .execute(conn)
    .await?;
    Ok(stamped.rows_affected() == 1)
}

/// The account whose money leaves: the user's wallet, or the merchant's
/// account of a settlement payout.
fn owner(w: &Withdrawal) -> Account<'_> {
    if w.is_merchant_payout() {
        Account::Merchant(&w.user_id)
    } else {
        Account::Wallet(&w.user_id)
    }
}

fn wallet_and_channel(w: &Withdrawal) -> Result<(i64, &str), StageError> {
    match (w.account_id, w.channel.as_deref()) {
        (Some(wallet), Some(channel)) => Ok((wallet, channel)),
        _ => Err(StageError::permanent(format!(
            "withdrawal {} names no wallet or no channel",
            w.id
        ))),
    }
}

/// Moves a wallet's balance: `available` and `frozen` by these amounts,
/// `total` by their sum; returns the balances after.
pub(crate) async fn move_balance(
    conn: &mut PgConnection,
    wallet: i64,
    available: Decimal,
    frozen: Decimal,
) -> Result<(Decimal, Decimal), StageError> {
    Ok(sqlx::query_as(
        "UPDATE accounts SET available = available + $2, frozen = frozen + $3,
                total = total + $2 + $3, updated_at = now()
         WHERE id = $1 RETURNING available, frozen",
    )
    .bind(wallet)
    .bind(available)
    .bind(frozen)
    .fetch_one(conn)
    .await?)
}

/// A line of the wallet's statement for this withdrawal.
async fn statement_line(
    conn: &mut PgConnection,
    wallet: i64,
    w: &Withdrawal,
    kind: &str,
    available_after: Decimal,
    frozen_after: Decimal,
) -> Result<(), StageError> {
    sqlx::query(
        "INSERT INTO account_statements (account_id, withdrawal_id, kind, amount, currency, available_after, frozen_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(wallet)
    .bind(w.id)
    .bind(kind)
    .bind(w.amount)
    .bind(&w.currency)
    .bind(available_after)
    .bind(frozen_after)
    .execute(conn)
    .await?;
    Ok(())
}
