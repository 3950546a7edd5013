//! Balances from postings: the hot accounts' roll-up, and a wallet's
//! top-up from outside payfleet.

use payfleet_common::{PaymentId, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};

use super::{Account, Entry, EntryKind};
use crate::domain::payment;

/// Folds postings not yet in their account's balance into it, in one
/// statement per batch, and writes the statement line of each transfer
/// credit it folds into a payee's wallet. It never waits: it takes the accounts nobody holds
/// and their postings nobody holds (SKIP LOCKED both), so several roll-ups
/// never count a posting twice, and a refund's Try, which folds a seller's
/// postings and then holds the seller's account, never waits on it in a
/// cycle. The accounts are taken `FOR NO KEY UPDATE`, as an update takes
/// them: the key-share lock of a payment appending a posting does not
/// keep them from the roll-up. Returns the postings folded.
pub async fn roll_up(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let folded: i64 = sqlx::query_scalar(
        "WITH free AS (
             SELECT id FROM accounts
             WHERE id IN (SELECT DISTINCT account_id FROM postings WHERE NOT rolled_up)
             FOR NO KEY UPDATE SKIP LOCKED),
         picked AS (
             SELECT id FROM postings WHERE NOT rolled_up AND account_id IN (SELECT id FROM free)
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
         marked AS (
             UPDATE postings p SET rolled_up = true FROM picked WHERE p.id = picked.id
             RETURNING p.id, p.account_id, p.amount, p.currency, p.entry_id),
         sums AS (SELECT account_id, sum(amount) AS amount, count(*) AS n FROM marked GROUP BY account_id),
         applied AS (
             UPDATE accounts a SET total = a.total + sums.amount, available = a.available + sums.amount, updated_at = now()
             FROM sums WHERE a.id = sums.account_id AND a.owner_kind <> 'external'
             RETURNING a.id, a.owner_kind, a.available, a.frozen),
         -- a transfer's credit reaches the payee's statement as it reaches
         -- the balance: each line, written in posting order, shows the
         -- balance after it (the balance now less every later posting folded)
         folded AS (
             SELECT m.id, m.account_id, m.amount, m.currency, m.entry_id, a.frozen,
                    a.available - COALESCE(sum(m.amount) OVER (PARTITION BY m.account_id ORDER BY m.id
                                            ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), 0) AS available_after
             FROM marked m JOIN applied a ON a.id = m.account_id AND a.owner_kind = 'user'),
         credited AS (
             INSERT INTO account_statements (account_id, transfer_id, kind, amount, currency, available_after, frozen_after)
             SELECT f.account_id, j.reference::uuid, 'credit', f.amount, f.currency, f.available_after, f.frozen
             FROM folded f JOIN journal_entries j ON j.id = f.entry_id AND j.kind = 'transfer'
             ORDER BY f.account_id, f.id
             ON CONFLICT DO NOTHING)
         SELECT COALESCE((SELECT sum(n) FROM sums), 0)::bigint"
    )
    .bind(batch)
    .fetch_one(pool)
    .await?;
    Ok(folded as u64)
}

/// Folds the postings of hot merchant `accounts` not yet rolled up into
/// their balances, so a reservation on them (a refund's, a payout's) sees
/// every settled sale. Never a wallet: a wallet's credits are folded by
/// [`roll_up`] alone, which writes their statement lines. The roll-up skips whatever
/// account or posting is held ([`crate::domain::ledger::roll_up`]), so it
/// never waits on this, nor this on it in a cycle.
pub async fn fold_pending(conn: &mut PgConnection, accounts: &[i64]) -> Result<(), StageError> {
    sqlx::query(
        "WITH marked AS (
             UPDATE postings SET rolled_up = true
             WHERE account_id = ANY($1) AND NOT rolled_up
               AND account_id IN (SELECT id FROM accounts WHERE id = ANY($1) AND owner_kind <> 'user')
             RETURNING account_id, amount),
         sums AS (SELECT account_id, sum(amount) AS amount FROM marked GROUP BY account_id)
         UPDATE accounts a SET total = a.total + sums.amount, available = a.available + sums.amount, updated_at = now()
         FROM sums WHERE a.id = sums.account_id",
    )
    .bind(accounts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Credits a wallet from outside payfleet (a seeded top-up), journaled
/// against the external account so balances stay equal to their postings.
pub async fn top_up(
    conn: &mut PgConnection,
    user_id: &str,
    currency: &str,
    amount: Decimal,
    reference: &str,
) -> Result<(), StageError> {
    let Some(entry) = Entry::open(conn, reference, EntryKind::TopUp, None).await? else {
        return Ok(());
    };
    entry.post(conn, Account::World, -amount, currency).await?;
    credit_wallet(conn, &entry, user_id, currency, amount, None).await
}

/// The wallet leg of `entry`: the wallet gains `amount`, in its balance
/// at once (wallets are updated in the transaction that moves them) and
/// on its statement as a top-up, naming the payment that brought it.
pub async fn credit_wallet(
    conn: &mut PgConnection,
    entry: &Entry,
    user_id: &str,
    currency: &str,
    amount: Decimal,
    payment_id: Option<PaymentId>,
) -> Result<(), StageError> {
    entry
        .post(conn, Account::Wallet(user_id), amount, currency)
        .await?;
    let wallet = payment::account_id(conn, "user", user_id, currency).await?;
    let (available, frozen): (Decimal, Decimal) = sqlx::query_as(
        "UPDATE accounts SET total = total + $2, available = available + $2, updated_at = now() WHERE id = $1 RETURNING available, frozen",
    )
    .bind(wallet)
    .bind(amount)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after)
         VALUES ($1, $2, 'top_up', $3, $4, $5, $6)",
    )
    .bind(wallet)
    .bind(payment_id)
    .bind(amount)
    .bind(currency)
    .bind(available)
    .bind(frozen)
    .execute(conn)
    .await?;
    Ok(())
}
