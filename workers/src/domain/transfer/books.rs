//! A transfer's money: Try freezes the amount on the payer's wallet,
//! Confirm debits it and posts the `transfer` entry (payer −A, payee +A),
//! Cancel releases it (docs/ARCHITECTURE.md, "The books"). The payer's
//! wallet is moved in the transaction, under its row lock; the payee's leg
//! is appended and folded in by the roll-up, which writes the payee's
//! statement line ([`crate::domain::ledger::roll_up`]). Each runs once:
//! its status move is a compare-and-set, and the entry is opened once per
//! transfer.

use payfleet_common::runtime::StageError;
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{Limits, TransferStatus, record::Transfer};
use crate::domain::{
    ledger::{Entry, EntryKind},
    limits::Day,
    withdrawal::books::move_balance,
};

/// Why a transfer cannot go on: its reason code and a detail.
pub type Refusal = (&'static str, String);

/// Try: available → frozen on the payer's wallet, never below zero, under
/// its row lock; the transfer moves to `frozen`. A wallet short of the
/// amount or no longer active, or a payer past the daily limit of the
/// business day the transfer was asked in, freezes nothing.
pub async fn freeze(
    conn: &mut PgConnection,
    t: &Transfer,
    limits: &Limits,
) -> Result<Result<(), Refusal>, StageError> {
    let (payer, _) = t.wallets()?;
    let row: Option<(String, Decimal)> =
        sqlx::query_as("SELECT status, available FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
            .bind(payer)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((status, available)) = row else {
        return Err(StageError::permanent(format!(
            "transfer {}: wallet {payer} is gone",
            t.id
        )));
    };
    if status != "active" {
        return Ok(Err((
            "wallet_not_active",
            format!("{}'s {} wallet is {status}", t.payer_user_id, t.currency),
        )));
    }
    if available < t.amount {
        return Ok(Err((
            "insufficient_balance",
            format!(
                "{} {} asked, {available} available in {}'s wallet",
                t.amount, t.currency, t.payer_user_id
            ),
        )));
    }
    if let Some(refusal) =
        over_daily_limit(conn, t, limits.day_of(&t.currency, t.created_at)).await?
    {
        return Ok(Err(refusal));
    }
    let (available_after, frozen_after) = move_balance(conn, payer, -t.amount, t.amount).await?;
    statement_line(conn, payer, t, "freeze", available_after, frozen_after).await?;
    if !super::transition(
        conn,
        t.id,
        TransferStatus::Requested,
        TransferStatus::Frozen,
        None,
    )
    .await?
    {
        return Err(moved_meanwhile(t));
    }
    Ok(Ok(()))
}

/// Why `t` would take its payer past the daily limit, if it would: what
/// the payer has transferred out or has frozen for a transfer in the
/// currency on the business day `t` was asked, and `t` itself. Every Try
/// of the payer holds its wallet row, so none slips past another.
async fn over_daily_limit(
    conn: &mut PgConnection,
    t: &Transfer,
    day: Day,
) -> Result<Option<Refusal>, StageError> {
    let Some(limit) = day.limit else {
        return Ok(None);
    };
    let today: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0) FROM transfers
         WHERE payer_user_id = $1 AND currency = $2 AND created_at >= $3 AND created_at < $5 AND id <> $4
           AND status IN ('frozen', 'succeeded')",
    )
    .bind(&t.payer_user_id)
    .bind(&t.currency)
    .bind(day.start)
    .bind(t.id)
    .bind(day.end)
    .fetch_one(&mut *conn)
    .await?;
    Ok((today + t.amount > limit).then(|| {
        (
            "over_daily_limit",
            format!(
                "{} {c} more would take {} past its daily limit of {limit} {c} ({today} {c} today)",
                t.amount,
                t.payer_user_id,
                c = t.currency
            ),
        )
    }))
}

/// Confirm of a frozen transfer: the frozen amount A leaves the payer's
/// wallet and reaches the payee's. `transfer` entry: payer −A (applied to
/// its row now), payee +A (appended; the roll-up folds it in). A payee's
/// wallet that stopped taking money since the request was judged (frozen
/// or closed by ops) refuses it: the caller cancels.
pub async fn confirm(
    conn: &mut PgConnection,
    t: &Transfer,
) -> Result<Result<(), Refusal>, StageError> {
    let (payer, payee) = t.wallets()?;
    // A key-share lock, as the posting's own reference to the wallet takes:
    // it never waits on another transfer, a roll-up or the payee's own
    // spending, but an operator freezing the wallet (`FOR UPDATE`) waits
    // for this Confirm, or this Confirm sees the wallet frozen.
    let payee_status: String =
        sqlx::query_scalar("SELECT status FROM accounts WHERE id = $1 FOR KEY SHARE")
            .bind(payee)
            .fetch_one(&mut *conn)
            .await?;
    if payee_status != "active" {
        return Ok(Err((
            "payee_wallet_not_active",
            format!(
                "{}'s {} wallet is {payee_status}",
                t.payee_user_id, t.currency
            ),
        )));
    }
    if !super::transition(
        conn,
        t.id,
        TransferStatus::Frozen,
        TransferStatus::Succeeded,
        None,
    )
    .await?
    {
        return Err(moved_meanwhile(t));
    }
    let (available_after, frozen_after) =
        move_balance(conn, payer, Decimal::ZERO, -t.amount).await?;
    statement_line(conn, payer, t, "debit", available_after, frozen_after).await?;
    let Some(entry) = Entry::open(conn, &t.id.to_string(), EntryKind::Transfer, None).await? else {
        return Err(StageError::permanent(format!(
            "transfer {}: its entry exists but it was frozen",
            t.id
        )));
    };
    let c = t.currency.as_str();
    entry.post_on(conn, payer, -t.amount, c, true).await?;
    entry.post_on(conn, payee, t.amount, c, false).await?;
    Ok(Ok(()))
}

/// Cancel of a frozen transfer: frozen → available on the payer's wallet,
/// no entry (no money moved); the transfer is `failed` with `detail`.
pub async fn cancel(conn: &mut PgConnection, t: &Transfer, detail: &str) -> Result<(), StageError> {
    let (payer, _) = t.wallets()?;
    if !super::transition(
        conn,
        t.id,
        TransferStatus::Frozen,
        TransferStatus::Failed,
        Some(detail),
    )
    .await?
    {
        return Err(moved_meanwhile(t));
    }
    let (available_after, frozen_after) = move_balance(conn, payer, t.amount, -t.amount).await?;
    statement_line(conn, payer, t, "unfreeze", available_after, frozen_after).await
}

/// A status move that found the transfer elsewhere: the callers hold its
/// row lock and checked its status, so this is a defect, never a race.
fn moved_meanwhile(t: &Transfer) -> StageError {
    StageError::permanent(format!("transfer {} moved while it was row-locked", t.id))
}

/// A line of the payer's statement for this transfer.
async fn statement_line(
    conn: &mut PgConnection,
    wallet: i64,
    t: &Transfer,
    kind: &str,
    available_after: Decimal,
    frozen_after: Decimal,
) -> Result<(), StageError> {
    sqlx::query(
        "INSERT INTO account_statements (account_id, transfer_id, kind, amount, currency, available_after, frozen_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(wallet)
    .bind(t.id)
    .bind(kind)
    .bind(t.amount)
    .bind(&t.currency)
    .bind(available_after)
    .bind(frozen_after)
    .execute(conn)
    .await?;
    Ok(())
}
