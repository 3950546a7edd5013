//! fund-freeze: TCC Try. Freezes the wallet amount (available → frozen),
//! reserves stock and the coupon, opens one transaction detail per sub-order
//! and hands the payment to channel-call. Insufficient balance or stock is a
//! business failure with a reason, and reserves nothing; so is a coupon
//! outside its validity window by the time the Try runs. A Try that arrives
//! after its payment was cancelled (it expired while this message waited) is
//! refused. A withdrawal's Try freezes its amount in the wallet
//! ([`withdrawal::books::freeze`]).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use payfleet_common::{
    PaymentId,
    messages::{
        FundsFrozen, OrderValidated, Outcome as Final, RefundResult, RefundStep, SCHEMA_VERSION,
        TransferResult, TransferStep, WithdrawalResult, WithdrawalStep, kind,
    },
    runtime::{Outcome, StageError, StageTx},
    transition::{self, Status},
};
use rust_decimal::Decimal;
use sqlx::{Acquire, PgConnection};

use crate::channels::BALANCE;
use crate::domain::{
    payment::{self, Payment, PaymentKind, PaymentStatus},
    refund::{self, Refund, RefundStatus},
    step::PaymentStep,
    tcc,
    transfer::{self, Transfer, TransferStatus},
    try_many::try_wallet_purchases,
    withdrawal::{self, Withdrawal, WithdrawalStatus},
};

pub const NAME: &str = crate::domain::handoff::FUND_FREEZE;

pub struct FundFreeze {
    /// A withdrawal's daily limit, judged by its Try under the wallet's lock.
    withdrawal_limits: withdrawal::Limits,
    /// A transfer's daily limit, judged by its Try under the payer's wallet lock.
    transfer_limits: transfer::Limits,
}

impl FundFreeze {
    pub fn new(settings: &payfleet_common::Settings) -> Self {
        Self {
            withdrawal_limits: withdrawal::Limits::new(settings),
            transfer_limits: transfer::Limits::for_transfers(settings),
        }
    }
}

/// Why a Try could not reserve.
enum Shortfall {
    Balance(String),
    Stock(String),
    Coupon(String),
    /// Outside its validity window now (it ran out while the Try waited).
    CouponWindow(&'static str, String),
}

impl PaymentStep for FundFreeze {
    type Message = OrderValidated;

    const NAME: &'static str = NAME;

    /// A payment's Try may be done set-based with others.
    fn together(&self, _m: &OrderValidated) -> bool {
        true
    }

    /// Tries the batch's plain wallet purchases at once (see
    /// [`try_wallet_purchases`]); the rest are tried alone.
    async fn handle_together(
        &self,
        tx: &mut StageTx,
        messages: &[&OrderValidated],
    ) -> Result<Vec<bool>, StageError> {
        let ids: Vec<PaymentId> = messages.iter().map(|m| m.payment_id).collect();
        let mut tried = HashSet::with_capacity(ids.len());
        for p in try_wallet_purchases(tx.conn(), &ids).await? {
            tx.set_correlation_id(&p.id.to_string());
            hand_to_channel_call(tx, &p)?;
            tried.insert(p.id);
        }
        Ok(ids.iter().map(|id| tried.contains(id)).collect())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        _m: &OrderValidated,
        p: Payment,
    ) -> Result<Outcome, StageError> {
        let status = p.status()?;
        if !status.may_move_to(PaymentStatus::Frozen) {
            let miss = transition::classify(
                Some(status),
                PaymentStatus::Validated,
                PaymentStatus::Frozen,
            );
            let why = if status == PaymentStatus::Cancelled {
                format!(
                    "payment {} was cancelled before its Try: refused, nothing reserved",
                    p.id
                )
            } else {
                format!("payment {} is already {}", p.id, status.as_str())
            };
            // A cancelled payment is past this step: nothing to do, never a conflict.
            return Ok(if status.is_terminal() {
                Outcome::Stale { reason: why }
            } else {
                miss.outcome(why)
            });
        }
        if p.expires_at <= Utc::now() {
            // Expired while the message waited: an empty rollback, recorded so
            // that no later Try reserves anything.
            tcc::cancel(tx.conn(), &p, PaymentStatus::Cancelled, "expired").await?;
            return payment::emit_outcome(tx, p.id, Final::Failed, Some("expired"));
        }

        let mut savepoint = tx.conn().begin().await?;
        match reserve(&mut savepoint, &p).await? {
            Ok(()) => savepoint.commit().await?,
            Err(shortfall) => {
                savepoint.rollback().await?;
                let (reason, detail) = match shortfall {
                    Shortfall::Balance(d) => ("insufficient_balance", d),
                    Shortfall::Stock(d) => ("out_of_stock", d),
                    Shortfall::Coupon(d) => ("coupon_unavailable", d),
                    Shortfall::CouponWindow(reason, d) => (reason, d),
                };
                let detail = format!("{reason}: {detail}");
                payment::transition(
                    tx.conn(),
                    p.id,
                    PaymentStatus::Validated,
                    PaymentStatus::Failed,
                    Some(&detail),
                )
                .await?;
                sqlx::query("UPDATE orders SET status = 'closed' WHERE payment_id = $1")
                    .bind(p.id)
                    .execute(tx.conn())
                    .await?;
                return payment::emit_outcome(tx, p.id, Final::Failed, Some(reason));
            }
        }
        payment::transition(
            tx.conn(),
            p.id,
            PaymentStatus::Validated,
            PaymentStatus::Frozen,
            None,
        )
        .await?;
        hand_to_channel_call(tx, &p)
    }

    async fn handle_withdrawal(
        &self,
        tx: &mut StageTx,
        _m: &WithdrawalStep,
        w: Withdrawal,
    ) -> Result<Outcome, StageError> {
        try_withdrawal(tx, &self.withdrawal_limits, w).await
    }

    /// Try of a transfer: freeze the amount on the payer's wallet, judging
    /// the balance and the daily limit under its row lock, then straight
    /// to settlement (no channel is asked); a refusal freezes nothing and
    /// the transfer is `refused`.
    async fn handle_transfer(
        &self,
        tx: &mut StageTx,
        _m: &TransferStep,
        t: Transfer,
    ) -> Result<Outcome, StageError> {
        let status = t.status()?;
        if status != TransferStatus::Requested {
            return Ok(Outcome::Stale {
                reason: format!("transfer {} is already {}", t.id, status.as_str()),
            });
        }
        let mut savepoint = tx.conn().begin().await?;
        match transfer::books::freeze(&mut savepoint, &t, &self.transfer_limits).await? {
            Ok(()) => {
                savepoint.commit().await?;
                transfer::hand_on(
                    tx,
                    crate::domain::handoff::SETTLEMENT,
                    kind::TRANSFER_FROZEN,
                    &TransferStep::new(t.id),
                )
            }
            Err((reason, detail)) => {
                savepoint.rollback().await?;
                let detail = format!("{reason}: {detail}");
                transfer::transition(
                    tx.conn(),
                    t.id,
                    TransferStatus::Requested,
                    TransferStatus::Refused,
                    Some(&detail),
                )
                .await?;
                transfer::emit_outcome(tx, t.id, TransferResult::Failed, Some(reason))
            }
        }
    }

    /// Try of a refund: check what is left and reserve each merchant's part
    /// together, under the payment's row lock; a refusal reserves nothing.
    async fn handle_refund(
        &self,
        tx: &mut StageTx,
        _m: &RefundStep,
        p: Payment,
        r: Refund,
    ) -> Result<Outcome, StageError> {
        let status = r.status()?;
        if status != RefundStatus::Requested {
            return Ok(Outcome::Stale {
                reason: format!("refund {} is already {}", r.id, status.as_str()),
            });
        }
        let mut savepoint = tx.conn().begin().await?;
        match refund::reserve::reserve(&mut savepoint, &p, &r).await? {
            Ok(()) => {
                savepoint.commit().await?;
                refund::hand_on(
                    tx,
                    crate::domain::handoff::CHANNEL_CALL,
                    kind::REFUND_RESERVED,
                    &RefundStep::new(r.id, p.id),
                )
            }
            Err((reason, detail)) => {
                savepoint.rollback().await?;
                refund::record::refuse(tx.conn(), r.id, &format!("{reason}: {detail}")).await?;
                refund::emit_outcome(tx, r.id, p.id, RefundResult::Failed, Some(reason))
            }
        }
    }
}

/// A frozen payment goes on to its channel.
fn hand_to_channel_call(tx: &mut StageTx, p: &Payment) -> Result<Outcome, StageError> {
    tx.emit_to_stage(
        crate::domain::handoff::CHANNEL_CALL,
        kind::FUNDS_FROZEN,
        &FundsFrozen {
            schema_version: SCHEMA_VERSION,
            payment_id: p.id,
            amount: p.amount,
            currency: p.currency.clone(),
            channel: p.channel.clone().unwrap_or_else(|| BALANCE.to_owned()),
            expires_at: p.expires_at,
            frozen_at: Utc::now(),
        },
    )?;
    Ok(Outcome::Applied)
}

/// Try of a withdrawal: freeze the amount in the wallet, judging the
/// balance and the daily limit under the wallet's row lock; a refusal
/// freezes nothing and the withdrawal is `refused`.
async fn try_withdrawal(
    tx: &mut StageTx,
    limits: &withdrawal::Limits,
    w: Withdrawal,
) -> Result<Outcome, StageError> {
    let status = w.status()?;
    if status != WithdrawalStatus::Requested {
        return Ok(Outcome::Stale {
            reason: format!("withdrawal {} is already {}", w.id, status.as_str()),
        });
    }
    let mut savepoint = tx.conn().begin().await?;
    match withdrawal::books::freeze(&mut savepoint, &w, limits).await? {
        Ok(()) => {
            savepoint.commit().await?;
            withdrawal::hand_on(
                tx,
                crate::domain::handoff::CHANNEL_CALL,
                kind::WITHDRAWAL_FROZEN,
                &WithdrawalStep::new(w.id),
            )
        }
        Err((reason, detail)) => {
            savepoint.rollback().await?;
            let detail = format!("{reason}: {detail}");
            withdrawal::transition(
                tx.conn(),
                w.id,
                WithdrawalStatus::Requested,
                WithdrawalStatus::Refused,
                Some(&detail),
            )
            .await?;
            withdrawal::emit_outcome(tx, w.id, WithdrawalResult::Failed, Some(reason))
        }
    }
}

/// Everything Try takes, inside a savepoint the caller rolls back on a shortfall.
async fn reserve(
    conn: &mut PgConnection,
    p: &payment::Payment,
) -> Result<Result<(), Shortfall>, StageError> {
    // A top-up has no order: the channel takes the money, nothing is
    // reserved but the mark that Confirm and Cancel finish.
    if p.kind()? == PaymentKind::TopUp {
        open_channel_reservation(conn, p).await?;
        return Ok(Ok(()));
    }
    // Wallet payments: available → frozen, never below zero. A third-party
    // channel takes the money itself, so only stock and coupon are reserved.
    if p.channel.as_deref().unwrap_or(BALANCE) == BALANCE {
        // The freeze opens the reservation in the same statement.
        if let Err(shortfall) = freeze_wallet(conn, p).await? {
            return Ok(Err(shortfall));
        }
    } else {
        open_channel_reservation(conn, p).await?;
    }
    if let Err(shortfall) = reserve_stock(conn, p).await? {
        return Ok(Err(shortfall));
    }
    // One transaction detail per sub-order (where the money will go), the
    // order awaiting payment, and its coupon, in one statement; a coupon
    // refused below rolls all of it back with the savepoint.
    let (coupon, discount): (Option<String>, Decimal) = sqlx::query_as(
        "WITH details AS (
             INSERT INTO transaction_details (payment_id, sub_order_id, seller_id, amount, fee_amount, currency, status)
             SELECT payment_id, id, seller_id, payable_amount, fee_amount, currency, 'awaiting_payment' FROM sub_orders WHERE payment_id = $1
         )
         UPDATE orders SET status = 'awaiting_payment' WHERE payment_id = $1
         RETURNING coupon_code, discount_amount",
    )
    .bind(p.id)
    .fetch_one(&mut *conn)
    .await?;
    // Coupon: one use, within the total and the per-user limits.
    if let Some(code) = coupon
        && let Err(shortfall) = reserve_coupon(conn, p, &code, discount).await?
    {
        return Ok(Err(shortfall));
    }
    Ok(Ok(()))
}

/// The reservation, `tried`, of a payment no wallet freezes (a channel
/// payment, a top-up): a mark that Confirm and Cancel finish. A wallet's
/// freeze opens its own ([`freeze_wallet`]).
async fn open_channel_reservation(
    conn: &mut PgConnection,
    p: &payment::Payment,
) -> Result<(), StageError> {
    sqlx::query("INSERT INTO reservations (payment_id, account_id, amount, currency, status) VALUES ($1, NULL, $2, $3, 'tried')")
        .bind(p.id)
        .bind(p.amount)
        .bind(&p.currency)
        .execute(conn)
        .await?;
    Ok(())
}

/// Freezes the payment's amount in the payer's wallet and opens the
/// payment's reservation of it, `tried`.
async fn freeze_wallet(
    conn: &mut PgConnection,
    p: &payment::Payment,
) -> Result<Result<(), Shortfall>, StageError> {
    // The freeze, its statement line and the reservation in one statement.
    let wallet: Option<i64> = sqlx::query_scalar(
        "WITH moved AS (
             UPDATE accounts SET available = available - $3, frozen = frozen + $3, updated_at = now()
             WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2 AND status = 'active' AND available >= $3
             RETURNING id, available, frozen
         ), line AS (
             INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after)
             SELECT id, $4, 'freeze', $3, $2, available, frozen FROM moved WHERE $3 <> 0
         ), reservation AS (
             INSERT INTO reservations (payment_id, account_id, amount, currency, status)
             SELECT $4, id, $3, $2, 'tried' FROM moved
         )
         SELECT id FROM moved",
    )
    .bind(&p.user_id)
    .bind(&p.currency)
    .bind(p.amount)
    .bind(p.id)
    .fetch_optional(&mut *conn)
    .await?;
    if wallet.is_none() {
        return Ok(Err(Shortfall::Balance(format!(
            "{} {} needed",
            p.amount, p.currency
        ))));
    }
    Ok(Ok(()))
}

/// Reserves each SKU's stock, in SKU order so concurrent Trys never deadlock.
async fn reserve_stock(
    conn: &mut PgConnection,
    p: &payment::Payment,
) -> Result<Result<(), Shortfall>, StageError> {
    let lines: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, sum(quantity)::bigint FROM order_details WHERE payment_id = $1 GROUP BY sku ORDER BY sku",
    )
    .bind(p.id)
    .fetch_all(&mut *conn)
    .await?;
    for (sku, quantity) in &lines {
        if !crate::domain::stock::reserve(&mut *conn, p.id, sku, *quantity as i32).await? {
            return Ok(Err(Shortfall::Stock(format!("{sku}: {quantity} wanted"))));
        }
    }
    Ok(Ok(()))
}

/// Takes one use of coupon `code`, within its window and its total and
/// per-user limits.
async fn reserve_coupon(
    conn: &mut PgConnection,
    p: &payment::Payment,
    code: &str,
    discount: Decimal,
) -> Result<Result<(), Shortfall>, StageError> {
    // The coupon row lock serialises concurrent Trys of the same coupon,
    // so the per-user count below sees every committed redemption.
    let (used, total_limit, per_user_limit, valid_from, valid_until): (
        i32,
        i32,
        i32,
        DateTime<Utc>,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT used, total_limit, per_user_limit, valid_from, valid_until FROM coupons WHERE code = $1 FOR UPDATE",
    )
    .bind(code)
    .fetch_one(&mut *conn)
    .await?;
    // Validation saw the coupon valid, but the Try may come much later
    // (a retry queue, an outage): the window is judged again now.
    let now = Utc::now();
    if now < valid_from {
        return Ok(Err(Shortfall::CouponWindow(
            "coupon_not_yet_valid",
            format!("{code} is valid from {valid_from}"),
        )));
    }
    if now >= valid_until {
        return Ok(Err(Shortfall::CouponWindow(
            "coupon_expired",
            format!("{code} expired at {valid_until}"),
        )));
    }
    let user_uses = tcc::coupon_uses(conn, code, &p.user_id).await?;
    let available = used < total_limit && user_uses < i64::from(per_user_limit);
    let taken = sqlx::query("UPDATE coupons SET used = used + 1 WHERE code = $1 AND $2")
        .bind(code)
        .bind(available)
        .execute(&mut *conn)
        .await?;
    if taken.rows_affected() == 0 {
        return Ok(Err(Shortfall::Coupon(format!(
            "{code} has no use left for {}",
            p.user_id
        ))));
    }
    sqlx::query(
        "INSERT INTO coupon_redemptions (payment_id, coupon_code, user_id, amount, status) VALUES ($1, $2, $3, $4, 'reserved')",
    )
    .bind(p.id)
    .bind(code)
    .bind(&p.user_id)
    .bind(discount)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}
