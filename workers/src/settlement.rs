//! settlement: TCC Confirm and Cancel, each idempotent.
//!
//! Confirm deducts the frozen funds from the payer's wallet, posts one
//! balanced journal entry (payer → each seller's account per sub-order, less
//! its fee; the fees → the platform's fee account), deducts the reserved
//! stock, consumes the coupon and marks the order paid. Cancel releases the
//! freeze, the stock and the coupon and closes the order; run before its Try
//! (an empty rollback) it records itself so the late Try reserves nothing.
//!
//! Hot accounts: a payment never updates a seller's or the fee account's
//! row. Its postings are appended (`rolled_up = false`) and [`roll_up`] folds
//! them into the balances in batches, so a thousand payments to one merchant
//! do not queue on one row lock. Wallets are updated in the payment's
//! transaction, as the freeze needs them to be.

use payfleet_common::{
    messages::{Outcome as Final, PaymentResolved, Resolution},
    runtime::{Inbound, Outcome, Stage, StageError, StageTx},
};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::payment::{self, EXTERNAL_WORLD, PLATFORM_FEES, Payment, PaymentStatus};

pub const NAME: &str = "settlement";

pub struct Settlement;

impl Stage for Settlement {
    type Message = PaymentResolved;

    fn name(&self) -> &str {
        NAME
    }

    fn decode(&self, inbound: &Inbound) -> Result<PaymentResolved, String> {
        payfleet_common::runtime::decode_json(inbound)
    }

    fn lock_key(&self, m: &PaymentResolved) -> Option<String> {
        Some(m.payment_id.to_string())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        _inbound: &Inbound,
        m: &PaymentResolved,
    ) -> Result<Outcome, StageError> {
        tx.set_correlation_id(&m.payment_id.to_string());
        let Some(p) = payment::lock(tx.conn(), m.payment_id).await? else {
            return Ok(Outcome::NotYet {
                reason: format!("payment {} not found", m.payment_id),
            });
        };
        let status = p.status()?;
        match (m.resolution, status) {
            (Resolution::Paid, PaymentStatus::Paid) => {
                confirm(tx.conn(), &p).await?;
                payment::emit_outcome(tx, p.id, Final::Succeeded, None)
            }
            (Resolution::Failed, PaymentStatus::Frozen | PaymentStatus::Validated) => {
                let reason = m.reason.clone().unwrap_or_else(|| "declined".to_owned());
                let to = if reason == "expired" {
                    PaymentStatus::Cancelled
                } else {
                    PaymentStatus::Failed
                };
                cancel(tx.conn(), &p, to, &reason).await?;
                payment::emit_outcome(tx, p.id, Final::Failed, Some(&reason))
            }
            (Resolution::Paid, PaymentStatus::Frozen | PaymentStatus::Validated) => {
                Ok(Outcome::NotYet {
                    reason: format!("payment {} is not paid yet", p.id),
                })
            }
            (_, s) => Ok(Outcome::Stale {
                reason: format!("payment {} already {}", p.id, s.as_str()),
            }),
        }
    }
}

/// TCC Confirm of a `paid` payment; moves it to `settled`.
pub async fn confirm(conn: &mut PgConnection, p: &Payment) -> Result<(), StageError> {
    let reservation: Option<(Option<i64>, Decimal)> = sqlx::query_as(
        "UPDATE reservations SET status = 'confirmed', finished_at = now() WHERE payment_id = $1 AND status = 'tried'
         RETURNING account_id, amount",
    )
    .bind(p.id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((wallet, amount)) = reservation else {
        return Err(StageError::permanent(format!(
            "payment {} is paid but holds no open reservation",
            p.id
        )));
    };
    // One journal entry, balanced per currency (a deferred trigger checks it at commit).
    let entry: i64 = sqlx::query_scalar(
        "INSERT INTO journal_entries (reference, kind) VALUES ($1, 'payment') RETURNING id",
    )
    .bind(p.id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    match wallet {
        // Paid from the wallet: the frozen funds leave it.
        Some(wallet) => {
            let debited: Option<(Decimal, Decimal)> = sqlx::query_as(
                "UPDATE accounts SET total = total - $2, frozen = frozen - $2, updated_at = now() WHERE id = $1 AND frozen >= $2
                 RETURNING available, frozen",
            )
            .bind(wallet)
            .bind(amount)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((available_after, frozen_after)) = debited else {
                return Err(StageError::permanent(format!(
                    "wallet {wallet} holds less frozen than payment {} reserved",
                    p.id
                )));
            };
            statement(
                conn,
                wallet,
                p.id,
                "debit",
                amount,
                &p.currency,
                available_after,
                frozen_after,
            )
            .await?;
            post(conn, entry, wallet, -amount, &p.currency, true).await?;
        }
        // Paid at a third-party channel: the money comes from its clearing
        // account, less the channel's fee, which is the platform's cost.
        None => {
            let channel = p.channel.clone().unwrap_or_default();
            let channel_fee = p.channel_fee;
            let clearing = payment::account_id(
                conn,
                "external",
                &format!("clearing:{channel}"),
                &p.currency,
            )
            .await?;
            let cost = payment::account_id(
                conn,
                "external",
                &format!("channel-fees:{channel}"),
                &p.currency,
            )
            .await?;
            post(
                conn,
                entry,
                clearing,
                -(amount - channel_fee),
                &p.currency,
                false,
            )
            .await?;
            post(conn, entry, cost, -channel_fee, &p.currency, false).await?;
        }
    }
    let details: Vec<(String, Decimal, Decimal)> =
        sqlx::query_as("SELECT seller_id, amount, fee_amount FROM transaction_details WHERE payment_id = $1 ORDER BY seller_id")
            .bind(p.id)
            .fetch_all(&mut *conn)
            .await?;
    let mut fees = Decimal::ZERO;
    for (seller, payable, fee) in &details {
        let account = payment::account_id(conn, "merchant", seller, &p.currency).await?;
        post(conn, entry, account, *payable - *fee, &p.currency, false).await?;
        fees += *fee;
    }
    let fee_account = payment::account_id(conn, "platform", PLATFORM_FEES, &p.currency).await?;
    post(conn, entry, fee_account, fees, &p.currency, false).await?;

    sqlx::query(
        "UPDATE stock s SET reserved = s.reserved - r.quantity FROM stock_reservations r
         WHERE r.payment_id = $1 AND r.status = 'reserved' AND s.sku = r.sku",
    )
    .bind(p.id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE stock_reservations SET status = 'deducted' WHERE payment_id = $1 AND status = 'reserved'")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE coupon_redemptions SET status = 'consumed' WHERE payment_id = $1 AND status = 'reserved'")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE transaction_details SET status = 'paid' WHERE payment_id = $1")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE orders SET status = 'paid' WHERE payment_id = $1")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    if !payment::transition(
        conn,
        p.id,
        PaymentStatus::Paid,
        PaymentStatus::Settled,
        None,
    )
    .await?
    {
        return Err(StageError::transient(format!(
            "payment {} left `paid` during Confirm",
            p.id
        )));
    }
    Ok(())
}

/// TCC Cancel of a `validated`, `frozen` (or, by hand, `exception`) payment; moves it to `to`
/// (`failed` or `cancelled`). Returns false when it was not cancellable.
pub async fn cancel(
    conn: &mut PgConnection,
    p: &Payment,
    to: PaymentStatus,
    reason: &str,
) -> Result<bool, StageError> {
    let from = p.status()?;
    // An exception is cancelled only by hand (payfleet payment resolve).
    if !matches!(
        from,
        PaymentStatus::Validated | PaymentStatus::Frozen | PaymentStatus::Exception
    ) {
        return Ok(false);
    }
    let reservation: Option<(Option<i64>, Decimal, String)> = sqlx::query_as(
        "SELECT account_id, amount, status FROM reservations WHERE payment_id = $1 FOR UPDATE",
    )
    .bind(p.id)
    .fetch_optional(&mut *conn)
    .await?;
    match reservation {
        None => {
            // Empty rollback: Try never ran. Recorded, so a late Try is refused.
            sqlx::query("INSERT INTO reservations (payment_id, amount, currency, status, finished_at) VALUES ($1, $2, $3, 'cancelled', now())")
                .bind(p.id)
                .bind(p.amount)
                .bind(&p.currency)
                .execute(&mut *conn)
                .await?;
        }
        Some((None, _, status)) if status == "tried" => {
            // A channel payment: no wallet was frozen.
            sqlx::query("UPDATE reservations SET status = 'cancelled', finished_at = now() WHERE payment_id = $1")
                .bind(p.id)
                .execute(&mut *conn)
                .await?;
        }
        Some((Some(wallet), amount, status)) if status == "tried" => {
            let released: (Decimal, Decimal) = sqlx::query_as(
                "UPDATE accounts SET available = available + $2, frozen = frozen - $2, updated_at = now()
                 WHERE id = $1 AND frozen >= $2 RETURNING available, frozen",
            )
            .bind(wallet)
            .bind(amount)
            .fetch_one(&mut *conn)
            .await?;
            statement(
                conn,
                wallet,
                p.id,
                "unfreeze",
                amount,
                &p.currency,
                released.0,
                released.1,
            )
            .await?;
            sqlx::query("UPDATE reservations SET status = 'cancelled', finished_at = now() WHERE payment_id = $1")
                .bind(p.id)
                .execute(&mut *conn)
                .await?;
        }
        Some((_, _, status)) if status == "cancelled" => {}
        Some((_, _, status)) => {
            return Err(StageError::permanent(format!(
                "payment {} cannot be cancelled: its reservation is {status}",
                p.id
            )));
        }
    }
    sqlx::query(
        "UPDATE stock s SET available = s.available + r.quantity, reserved = s.reserved - r.quantity FROM stock_reservations r
         WHERE r.payment_id = $1 AND r.status = 'reserved' AND s.sku = r.sku",
    )
    .bind(p.id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE stock_reservations SET status = 'released' WHERE payment_id = $1 AND status = 'reserved'")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    let released_coupon: Option<String> = sqlx::query_scalar(
        "UPDATE coupon_redemptions SET status = 'released' WHERE payment_id = $1 AND status = 'reserved' RETURNING coupon_code",
    )
    .bind(p.id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(code) = released_coupon {
        sqlx::query("UPDATE coupons SET used = used - 1 WHERE code = $1")
            .bind(code)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("UPDATE transaction_details SET status = 'cancelled' WHERE payment_id = $1")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE orders SET status = 'closed' WHERE payment_id = $1")
        .bind(p.id)
        .execute(&mut *conn)
        .await?;
    payment::transition(conn, p.id, from, to, Some(reason)).await
}

async fn post(
    conn: &mut PgConnection,
    entry: i64,
    account: i64,
    amount: Decimal,
    currency: &str,
    rolled_up: bool,
) -> Result<(), StageError> {
    if amount.is_zero() {
        return Ok(());
    }
    sqlx::query("INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up) VALUES ($1, $2, $3, $4, $5)")
        .bind(entry)
        .bind(account)
        .bind(amount)
        .bind(currency)
        .bind(rolled_up)
        .execute(conn)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn statement(
    conn: &mut PgConnection,
    account: i64,
    payment_id: Uuid,
    kind: &str,
    amount: Decimal,
    currency: &str,
    available_after: Decimal,
    frozen_after: Decimal,
) -> Result<(), StageError> {
    if amount.is_zero() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(account)
    .bind(payment_id)
    .bind(kind)
    .bind(amount)
    .bind(currency)
    .bind(available_after)
    .bind(frozen_after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Folds postings not yet in their account's balance into it, in one
/// statement per batch (postings are claimed with SKIP LOCKED, so several
/// roll-ups never count one twice). Returns the postings folded.
pub async fn roll_up(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let folded: i64 = sqlx::query_scalar(
        "WITH picked AS (
             SELECT id FROM postings WHERE NOT rolled_up ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
         marked AS (
             UPDATE postings p SET rolled_up = true FROM picked WHERE p.id = picked.id RETURNING p.account_id, p.amount),
         sums AS (SELECT account_id, sum(amount) AS amount, count(*) AS n FROM marked GROUP BY account_id),
         applied AS (
             UPDATE accounts a SET total = a.total + sums.amount, available = a.available + sums.amount, updated_at = now()
             FROM sums WHERE a.id = sums.account_id AND a.owner_kind <> 'external' RETURNING a.id)
         SELECT COALESCE((SELECT sum(n) FROM sums), 0)::bigint",
    )
    .bind(batch)
    .fetch_one(pool)
    .await?;
    Ok(folded as u64)
}

/// Credits a wallet from outside payfleet (a top-up), journaled against the
/// external account so balances stay equal to their postings.
pub async fn top_up(
    conn: &mut PgConnection,
    user_id: &str,
    currency: &str,
    amount: Decimal,
    reference: &str,
) -> Result<(), StageError> {
    let wallet = payment::account_id(conn, "user", user_id, currency).await?;
    let world = payment::account_id(conn, "external", EXTERNAL_WORLD, currency).await?;
    let entry: Option<i64> = sqlx::query_scalar(
        "INSERT INTO journal_entries (reference, kind) VALUES ($1, 'top_up') ON CONFLICT (reference, kind) DO NOTHING RETURNING id",
    )
    .bind(reference)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(entry) = entry else { return Ok(()) };
    post(conn, entry, wallet, amount, currency, true).await?;
    post(conn, entry, world, -amount, currency, true).await?;
    let (available, frozen): (Decimal, Decimal) = sqlx::query_as(
        "UPDATE accounts SET total = total + $2, available = available + $2, updated_at = now() WHERE id = $1 RETURNING available, frozen",
    )
    .bind(wallet)
    .bind(amount)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO account_statements (account_id, kind, amount, currency, available_after, frozen_after)
         VALUES ($1, 'top_up', $2, $3, $4, $5)",
    )
    .bind(wallet)
    .bind(amount)
    .bind(currency)
    .bind(available)
    .bind(frozen)
    .execute(conn)
    .await?;
    Ok(())
}
