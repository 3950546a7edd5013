//! TCC, the three steps that keep a payment's reservations and its money
//! consistent, each idempotent: Confirm and Cancel, used by settlement, by
//! fund-freeze (a Try that comes too late), by the expiry sweeper and by
//! the operator's `payment resolve`.
//!
//! Confirm deducts the frozen funds from the payer's wallet, posts one
//! balanced journal entry (payer or channel → each seller's account per
//! sub-order, less its fee; the fees → the platform's fee account; a
//! channel's fee → the platform's cost), deducts the reserved
//! stock, consumes the coupon and marks the order paid. Cancel releases the
//! freeze, the stock and the coupon and closes the order; run before its Try
//! (an empty rollback) it records itself so the late Try reserves nothing.

use payfleet_common::{PaymentId, money, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::{
    ledger::{Account, ChannelCharge, Entry, EntryKind},
    payment::{self, Payment, PaymentKind, PaymentStatus},
};

/// A payment's reservation of its amount (the wallet's freeze, or a mark
/// for a channel payment): Try leaves it `tried`, Confirm or Cancel finish
/// it. A Cancel before Try records it `cancelled` (an empty rollback), so a
/// late Try reserves nothing. The SQL that moves it is a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationStatus {
    Tried,
    Confirmed,
    Cancelled,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 3] = [
        ReservationStatus::Tried,
        ReservationStatus::Confirmed,
        ReservationStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Tried => "tried",
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StageError> {
        super::parse_status(&Self::ALL, Self::as_str, text, "reservation")
    }

    /// Confirmed or cancelled: nothing is held any more.
    pub fn is_terminal(self) -> bool {
        self != ReservationStatus::Tried
    }
}

/// The uses of coupon `code` by `user_id` that still count (reserved or
/// consumed): order-validation judges by them, Try takes a use by them.
pub async fn coupon_uses(
    conn: &mut PgConnection,
    code: &str,
    user_id: &str,
) -> Result<i64, StageError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM coupon_redemptions WHERE coupon_code = $1 AND user_id = $2 AND status IN ('reserved', 'consumed')",
    )
    .bind(code)
    .bind(user_id)
    .fetch_one(&mut *conn)
    .await?)
}

/// TCC Confirm of a `paid` payment; moves it to `settled`.
///
/// A channel payment settles what the channel actually charged: a shortfall
/// is taken from the sub-orders by exact allocation, an excess is owed back
/// to the payer. A charge in another currency cannot settle the payment.
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
    // Paid at a third-party channel: what it actually charged.
    let charge = match wallet {
        Some(_) => None,
        // Paid at a channel: only what it reported charging can settle.
        None => Some(
            ChannelCharge::of_payment(conn, p.id)
                .await?
                .ok_or_else(|| {
                    StageError::permanent(format!(
                        "payment {} has no succeeded attempt at its channel: nothing to settle",
                        p.id
                    ))
                })?,
        ),
    };
    match (p.kind()?, charge) {
        // A top-up: the wallet gains what the channel charged.
        (PaymentKind::TopUp, Some(charge)) => super::top_up::book(conn, p, &charge).await?,
        (PaymentKind::TopUp, None) => {
            return Err(StageError::permanent(format!(
                "top-up {} holds a wallet freeze: a wallet is never filled from itself",
                p.id
            )));
        }
        (PaymentKind::Purchase, charge) => book_purchase(conn, p, wallet, amount, charge).await?,
    }
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

/// The books of a paid purchase: the payer's money (the wallet's freeze,
/// or what the channel charged) goes to the sellers and the platform, and
/// the reserved stock and coupon are taken.
async fn book_purchase(
    conn: &mut PgConnection,
    p: &Payment,
    wallet: Option<i64>,
    amount: Decimal,
    charge: Option<ChannelCharge>,
) -> Result<(), StageError> {
    let attempt = charge.as_ref().map(|c| c.attempt_id);
    let Some(entry) = Entry::open(conn, &p.id.to_string(), EntryKind::Payment, attempt).await?
    else {
        return Err(StageError::permanent(format!(
            "payment {} already has its journal entry",
            p.id
        )));
    };
    let settled = match (wallet, charge) {
        // Paid from the wallet: the frozen funds leave it.
        (Some(wallet), _) => debit_wallet(conn, p, &entry, wallet, amount).await?,
        // Paid at a third-party channel: what it charged comes in (from the
        // channel, or from suspense after a review); the channel's fee is
        // the platform's cost.
        (None, Some(charge)) => bring_in_charge(conn, p, &entry, amount, &charge).await?,
        (None, None) => {
            return Err(StageError::permanent(format!(
                "payment {} has neither a wallet freeze nor a channel charge",
                p.id
            )));
        }
    };
    let payable = mark_paid(conn, p.id).await?;
    credit_sellers(conn, p, &entry, settled, &payable).await?;
    super::stock::deduct(&mut *conn, p.id).await?;
    Ok(())
}

/// The frozen funds of a wallet payment leave the wallet; what is settled.
async fn debit_wallet(
    conn: &mut PgConnection,
    p: &Payment,
    entry: &Entry,
    wallet: i64,
    amount: Decimal,
) -> Result<Decimal, StageError> {
    // The debit, its statement line and the wallet's leg of the entry in
    // one statement; the leg is posted applied, as the balance moved here.
    let debited = sqlx::query_scalar::<_, i64>(
        "WITH moved AS (
             UPDATE accounts SET total = total - $2, frozen = frozen - $2, updated_at = now()
             WHERE id = $1 AND frozen >= $2
             RETURNING id, available, frozen
         ), line AS (
             INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after)
             SELECT id, $3, 'debit', $2, $4, available, frozen FROM moved WHERE $2 <> 0
         ), leg AS (
             INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up)
             SELECT $5, id, -$2, $4, true FROM moved WHERE $2 <> 0
         )
         SELECT id FROM moved",
    )
    .bind(wallet)
    .bind(amount)
    .bind(p.id)
    .bind(&p.currency)
    .bind(entry.id())
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if !debited {
        return Err(StageError::permanent(format!(
            "wallet {wallet} holds less frozen than payment {} reserved",
            p.id
        )));
    }
    Ok(amount)
}

/// What a channel charged for a payment of `amount` comes in; an excess is
/// owed back, a shortfall taken from the sub-orders. What is settled.
async fn bring_in_charge(
    conn: &mut PgConnection,
    p: &Payment,
    entry: &Entry,
    amount: Decimal,
    charge: &ChannelCharge,
) -> Result<Decimal, StageError> {
    if charge.currency != p.currency {
        return Err(StageError::permanent(format!(
            "payment {} is in {} but its channel charged {} {}: it cannot settle",
            p.id, p.currency, charge.amount, charge.currency
        )));
    }
    charge
        .bring_in(conn, entry, p.channel_fee_on(charge.amount))
        .await?;
    let settled = charge.amount.min(amount);
    charge
        .owe_back_excess(conn, entry, charge.amount - settled)
        .await?;
    if settled < amount {
        take_shortfall(conn, p.id, amount - settled).await?;
    }
    Ok(settled)
}

/// The order is paid and its coupon consumed; its transaction details
/// are marked paid and returned (seller, amount, fee) in seller order,
/// after any shortfall taken from them.
async fn mark_paid(
    conn: &mut PgConnection,
    id: PaymentId,
) -> Result<Vec<(String, Decimal, Decimal)>, StageError> {
    Ok(sqlx::query_as(
        "WITH coupon AS (
             UPDATE coupon_redemptions SET status = 'consumed' WHERE payment_id = $1 AND status = 'reserved'
         ), paid_order AS (
             UPDATE orders SET status = 'paid' WHERE payment_id = $1
         ), paid AS (
             UPDATE transaction_details SET status = 'paid' WHERE payment_id = $1
             RETURNING seller_id, amount, fee_amount
         )
         SELECT seller_id, amount, fee_amount FROM paid ORDER BY seller_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?)
}

/// Each seller gains its sub-orders less their fees, the platform the
/// fees; together exactly what is settled.
async fn credit_sellers(
    conn: &mut PgConnection,
    p: &Payment,
    entry: &Entry,
    settled: Decimal,
    payable: &[(String, Decimal, Decimal)],
) -> Result<(), StageError> {
    let mut fees = Decimal::ZERO;
    let mut credited = Decimal::ZERO;
    let mut legs = Vec::with_capacity(payable.len() + 1);
    for (seller, amount, fee) in payable {
        legs.push((Account::Merchant(seller), *amount - *fee));
        fees += *fee;
        credited += *amount;
    }
    legs.push((Account::PlatformFees, fees));
    entry.post_all(conn, &p.currency, &legs).await?;
    if credited != settled {
        return Err(StageError::permanent(format!(
            "payment {}: sub-orders sum to {credited} but {settled} is settled",
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
    if !from.may_move_to(to) {
        return Ok(false);
    }
    release_reservation(conn, p).await?;
    release_stock_and_coupon(conn, p.id).await?;
    sqlx::query(
        "WITH closed_order AS (UPDATE orders SET status = 'closed' WHERE payment_id = $1)
         UPDATE transaction_details SET status = 'cancelled' WHERE payment_id = $1",
    )
    .bind(p.id)
    .execute(&mut *conn)
    .await?;
    payment::transition(conn, p.id, from, to, Some(reason)).await
}

/// Releases the payment's reservation (unfreezing the wallet), or records
/// an empty rollback when Try never ran, so a late Try reserves nothing.
async fn release_reservation(conn: &mut PgConnection, p: &Payment) -> Result<(), StageError> {
    let reservation: Option<(Option<i64>, Decimal, String)> = sqlx::query_as(
        "SELECT account_id, amount, status FROM reservations WHERE payment_id = $1 FOR UPDATE",
    )
    .bind(p.id)
    .fetch_optional(&mut *conn)
    .await?;
    let reservation = match reservation {
        Some((wallet, amount, status)) => {
            Some((wallet, amount, ReservationStatus::parse(&status)?))
        }
        None => None,
    };
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
        Some((None, _, ReservationStatus::Tried)) => {
            // A channel payment: no wallet was frozen.
            sqlx::query("UPDATE reservations SET status = 'cancelled', finished_at = now() WHERE payment_id = $1")
                .bind(p.id)
                .execute(&mut *conn)
                .await?;
        }
        Some((Some(wallet), amount, ReservationStatus::Tried)) => {
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
        Some((_, _, ReservationStatus::Cancelled)) => {}
        Some((_, _, status @ ReservationStatus::Confirmed)) => {
            return Err(StageError::permanent(format!(
                "payment {} cannot be cancelled: its reservation is {}",
                p.id,
                status.as_str()
            )));
        }
    }
    Ok(())
}

/// Releases the reserved stock and the coupon's use.
async fn release_stock_and_coupon(
    conn: &mut PgConnection,
    id: PaymentId,
) -> Result<(), StageError> {
    super::stock::release(&mut *conn, id).await?;
    let released_coupon: Option<String> = sqlx::query_scalar(
        "UPDATE coupon_redemptions SET status = 'released' WHERE payment_id = $1 AND status = 'reserved' RETURNING coupon_code",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(code) = released_coupon {
        sqlx::query("UPDATE coupons SET used = used - 1 WHERE code = $1")
            .bind(code)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The channel charged less than the payment: the shortfall is taken from
/// the sub-orders in proportion (largest remainder, so the parts sum to it
/// exactly); their platform fees stay as agreed.
async fn take_shortfall(
    conn: &mut PgConnection,
    payment: PaymentId,
    shortfall: Decimal,
) -> Result<(), StageError> {
    let details: Vec<(i64, Decimal, Decimal)> = sqlx::query_as(
        "SELECT id, amount, fee_amount FROM transaction_details WHERE payment_id = $1 ORDER BY seller_id, id FOR UPDATE",
    )
    .bind(payment)
    .fetch_all(&mut *conn)
    .await?;
    let weights: Vec<Decimal> = details.iter().map(|(_, amount, _)| *amount).collect();
    for ((id, amount, fee), part) in details.iter().zip(money::allocate(shortfall, &weights)) {
        if *amount - part < *fee {
            return Err(StageError::permanent(format!(
                "payment {payment}: a shortfall of {shortfall} leaves a sub-order below its fee"
            )));
        }
        sqlx::query("UPDATE transaction_details SET amount = $2 WHERE id = $1")
            .bind(id)
            .bind(*amount - part)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A line of a wallet's statement: what moved, and the balances after it.
#[allow(clippy::too_many_arguments)]
pub async fn statement(
    conn: &mut PgConnection,
    account: i64,
    payment_id: PaymentId,
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
