//! Channel money: what a channel charged for an attempt, brought into the
//! books, held while it is reviewed, or owed back; and refunds sent back
//! through a channel.

use payfleet_common::{AttemptId, PaymentId, money, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Account, Entry, EntryKind};

/// What a channel charged for one attempt.
#[derive(Debug, Clone)]
pub struct ChannelCharge {
    pub payment_id: PaymentId,
    pub attempt_id: AttemptId,
    pub channel: String,
    pub amount: Decimal,
    pub currency: String,
}

impl ChannelCharge {
    /// The charge of a payment's succeeded attempt at a third-party channel,
    /// as the channel reported it (the asked amount where the channel's own
    /// figure was not recorded). Wallet payments have none: their money is
    /// the wallet's freeze.
    pub async fn of_payment(
        conn: &mut PgConnection,
        payment_id: PaymentId,
    ) -> Result<Option<ChannelCharge>, StageError> {
        let row: Option<(AttemptId, String, Decimal, String)> = sqlx::query_as(
            "SELECT id, channel, COALESCE(charged_amount, amount), COALESCE(charged_currency, currency)::text
             FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded' AND channel <> $2
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(payment_id)
        .bind(crate::channels::BALANCE)
        .fetch_optional(conn)
        .await?;
        Ok(
            row.map(|(attempt_id, channel, amount, currency)| ChannelCharge {
                payment_id,
                attempt_id,
                channel,
                amount,
                currency,
            }),
        )
    }

    /// The charge's own entry of `kind` (referenced by its attempt), once.
    async fn open_entry(
        &self,
        conn: &mut PgConnection,
        kind: EntryKind,
    ) -> Result<Option<Entry>, StageError> {
        Entry::open(
            conn,
            &self.attempt_id.to_string(),
            kind,
            Some(self.attempt_id),
        )
        .await
    }

    /// Whether this charge already waits in suspense for review.
    pub async fn is_held(&self, conn: &mut PgConnection) -> Result<bool, StageError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM journal_entries WHERE reference = $1 AND kind = 'charge_held')",
        )
        .bind(self.attempt_id.to_string())
        .fetch_one(conn)
        .await?)
    }

    /// Posts what the channel handed over for this charge: its clearing
    /// account pays the charge less the channel's fee, and the fee is the
    /// platform's cost. The caller credits the whole charge elsewhere.
    /// Returns the fee, also recorded on the attempt.
    async fn receive(
        &self,
        conn: &mut PgConnection,
        entry: &Entry,
        fee: Decimal,
    ) -> Result<(), StageError> {
        // A charge comes in once: its attempt records the fee when it does.
        let booked: Option<Option<Decimal>> =
            sqlx::query_scalar("SELECT fee FROM payment_attempts WHERE id = $1 FOR UPDATE")
                .bind(self.attempt_id)
                .fetch_optional(&mut *conn)
                .await?;
        match booked {
            None => {
                return Err(StageError::permanent(format!(
                    "no attempt {} for the charge of payment {}",
                    self.attempt_id, self.payment_id
                )));
            }
            Some(Some(_)) => {
                return Err(StageError::permanent(format!(
                    "the charge of attempt {} (payment {}) is already booked: it cannot come in twice",
                    self.attempt_id, self.payment_id
                )));
            }
            Some(None) => {}
        }
        entry
            .post(
                conn,
                Account::Clearing(&self.channel),
                -(self.amount - fee),
                &self.currency,
            )
            .await?;
        entry
            .post(
                conn,
                Account::ChannelCosts(&self.channel),
                -fee,
                &self.currency,
            )
            .await?;
        sqlx::query(
            "UPDATE payment_attempts SET charged_amount = $2, charged_currency = $3, fee = $4 WHERE id = $1",
        )
        .bind(self.attempt_id)
        .bind(self.amount)
        .bind(&self.currency)
        .bind(fee)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The channel's fee for this charge at its current rate.
    async fn fee_at_rate(&self, conn: &mut PgConnection) -> Result<Decimal, StageError> {
        let rate: Option<Decimal> =
            sqlx::query_scalar("SELECT fee_rate FROM channels WHERE name = $1")
                .bind(&self.channel)
                .fetch_optional(conn)
                .await?;
        Ok(money::round(self.amount * rate.unwrap_or_default()))
    }

    /// A charge that does not match its payment (amount or currency): the
    /// money the channel handed over waits in suspense until ops decide.
    /// Returns whether it was booked now (false: it already was).
    pub async fn hold(&self, conn: &mut PgConnection) -> Result<bool, StageError> {
        let Some(entry) = self.open_entry(conn, EntryKind::ChargeHeld).await? else {
            return Ok(false);
        };
        let fee = self.fee_at_rate(conn).await?;
        self.receive(conn, &entry, fee).await?;
        entry
            .post(
                conn,
                Account::Suspense(&self.channel),
                self.amount,
                &self.currency,
            )
            .await?;
        Ok(true)
    }

    /// A charge payfleet does not keep (a late success after the payment was
    /// given up, or a held charge resolved as failed): all of it is owed back
    /// to the payer, and a refund is recorded for the sender.
    pub async fn owe_back(&self, conn: &mut PgConnection, reason: &str) -> Result<(), StageError> {
        let held = self.is_held(conn).await?;
        let Some(entry) = self.open_entry(conn, EntryKind::ChargeOwedBack).await? else {
            return Ok(());
        };
        self.bring_in_held_or(conn, &entry, held, None).await?;
        entry
            .post(
                conn,
                Account::PayerRefunds(&self.channel),
                self.amount,
                &self.currency,
            )
            .await?;
        owe_refund(conn, self, self.amount, reason).await
    }

    /// The legs of a settled channel payment's entry that bring the money
    /// in: from suspense when the charge was held for review, else from the
    /// channel (clearing less its fee, the fee as the platform's cost).
    pub async fn bring_in(
        &self,
        conn: &mut PgConnection,
        entry: &Entry,
        booked_fee: Decimal,
    ) -> Result<(), StageError> {
        let held = self.is_held(conn).await?;
        self.bring_in_held_or(conn, entry, held, Some(booked_fee))
            .await
    }

    /// A held charge leaves suspense; any other comes in from the channel,
    /// with `fee` as its cost (`None`: at the channel's current rate).
    async fn bring_in_held_or(
        &self,
        conn: &mut PgConnection,
        entry: &Entry,
        held: bool,
        fee: Option<Decimal>,
    ) -> Result<(), StageError> {
        if held {
            return entry
                .post(
                    conn,
                    Account::Suspense(&self.channel),
                    -self.amount,
                    &self.currency,
                )
                .await;
        }
        let fee = match fee {
            Some(fee) => fee,
            None => self.fee_at_rate(conn).await?,
        };
        self.receive(conn, entry, fee).await
    }

    /// What was charged beyond what is settled goes back to the payer.
    pub async fn owe_back_excess(
        &self,
        conn: &mut PgConnection,
        entry: &Entry,
        excess: Decimal,
    ) -> Result<(), StageError> {
        if excess <= Decimal::ZERO {
            return Ok(());
        }
        entry
            .post(
                conn,
                Account::PayerRefunds(&self.channel),
                excess,
                &self.currency,
            )
            .await?;
        owe_refund(conn, self, excess, "over_charge").await
    }
}

/// Records a refund owed on the charge's attempt (one per attempt), for the
/// refund sender.
async fn owe_refund(
    conn: &mut PgConnection,
    charge: &ChannelCharge,
    amount: Decimal,
    reason: &str,
) -> Result<(), StageError> {
    sqlx::query(
        "INSERT INTO refunds (id, payment_id, attempt_id, channel, amount, currency, reason, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (attempt_id) WHERE origin = 'automatic' DO NOTHING",
    )
    .bind(payfleet_common::messages::stable_id(&[
        "refund",
        &charge.attempt_id.to_string(),
    ]))
    .bind(charge.payment_id)
    .bind(charge.attempt_id)
    .bind(&charge.channel)
    .bind(amount)
    .bind(&charge.currency)
    .bind(reason)
    .bind(crate::domain::refund::RefundStatus::Owed.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// The channel paid a refund back to the payer: the payer-refunds payable
/// is settled through the channel's clearing account.
pub async fn refund_sent(
    conn: &mut PgConnection,
    refund_id: Uuid,
    attempt_id: AttemptId,
    channel: &str,
    amount: Decimal,
    currency: &str,
) -> Result<(), StageError> {
    let Some(entry) = Entry::open(
        conn,
        &refund_id.to_string(),
        EntryKind::Refund,
        Some(attempt_id),
    )
    .await?
    else {
        return Ok(());
    };
    entry
        .post(conn, Account::PayerRefunds(channel), -amount, currency)
        .await?;
    entry
        .post(conn, Account::Clearing(channel), amount, currency)
        .await
}
