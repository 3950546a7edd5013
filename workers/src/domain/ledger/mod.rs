//! The journal: balanced entries of postings, the accounts they move, and
//! the hot-account roll-up. Every entry kind, with who gains and who loses,
//! is listed in docs/ARCHITECTURE.md ("The books"); this module is the only
//! place that writes postings.
//!
//! Channel money: a channel hands over what it charged less its fee (its
//! clearing account), the fee is the platform's cost, and what the channel
//! took that is not the merchants' waits in a payable account — suspense
//! while a mismatched payment is reviewed, payer refunds while a refund is
//! owed — until it is settled or sent back.

use payfleet_common::{AttemptId, PaymentId, money, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::payment::{self, EXTERNAL_WORLD, PLATFORM_FEES};

mod balances;
pub use balances::{credit_wallet, fold_pending, roll_up, top_up};

/// An account by its business meaning.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    /// A user's wallet.
    Wallet(&'a str),
    /// What the platform owes a merchant (seller).
    Merchant(&'a str),
    /// The platform's fee income.
    PlatformFees,
    /// The platform's cost of a channel: its fees. May go below zero.
    ChannelCosts(&'a str),
    /// What a channel owes us (negative: it handed money over; positive: we
    /// sent money back through it).
    Clearing(&'a str),
    /// Money a channel took for a payment under review.
    Suspense(&'a str),
    /// Money owed back to payers through a channel.
    PayerRefunds(&'a str),
    /// Money outside payfleet (top-ups come from it).
    World,
}

impl Account<'_> {
    fn key(&self) -> (&'static str, String) {
        match self {
            Account::Wallet(user) => ("user", (*user).to_owned()),
            Account::Merchant(seller) => ("merchant", (*seller).to_owned()),
            Account::PlatformFees => ("platform", PLATFORM_FEES.to_owned()),
            Account::ChannelCosts(channel) => ("platform_cost", format!("channel-costs:{channel}")),
            Account::Clearing(channel) => ("external", format!("clearing:{channel}")),
            Account::Suspense(channel) => ("payable", format!("suspense:{channel}")),
            Account::PayerRefunds(channel) => ("payable", format!("payer-refunds:{channel}")),
            Account::World => ("external", EXTERNAL_WORLD.to_owned()),
        }
    }

    /// Wallets are updated in the payment's transaction (the freeze must see
    /// them); every other account is rolled up from its postings.
    fn rolled_up_at_once(&self) -> bool {
        matches!(self, Account::Wallet(_))
    }
}

/// The kinds of journal entry (docs/ARCHITECTURE.md lists each one's legs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Payment,
    TopUp,
    ChargeHeld,
    ChargeOwedBack,
    Refund,
    Reversal,
    Withdrawal,
    WithdrawalReturned,
    Transfer,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::Payment => "payment",
            EntryKind::TopUp => "top_up",
            EntryKind::ChargeHeld => "charge_held",
            EntryKind::ChargeOwedBack => "charge_owed_back",
            EntryKind::Refund => "refund",
            EntryKind::Reversal => "reversal",
            EntryKind::Withdrawal => "withdrawal",
            EntryKind::WithdrawalReturned => "withdrawal_returned",
            EntryKind::Transfer => "transfer",
        }
    }
}

/// One journal entry being written; its postings must balance per currency
/// (a deferred trigger checks it at commit).
pub struct Entry {
    id: i64,
}

impl Entry {
    /// Opens the entry `(reference, kind)`; `None` when it already exists, so
    /// an entry is written once however often its cause is redelivered.
    pub async fn open(
        conn: &mut PgConnection,
        reference: &str,
        kind: EntryKind,
        attempt: Option<AttemptId>,
    ) -> Result<Option<Entry>, StageError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO journal_entries (reference, kind, attempt_id) VALUES ($1, $2, $3)
             ON CONFLICT (reference, kind) DO NOTHING RETURNING id",
        )
        .bind(reference)
        .bind(kind.as_str())
        .bind(attempt)
        .fetch_optional(conn)
        .await?;
        Ok(id.map(|id| Entry { id }))
    }

    /// One leg: positive credits the account (it gains), negative debits it.
    pub async fn post(
        &self,
        conn: &mut PgConnection,
        account: Account<'_>,
        amount: Decimal,
        currency: &str,
    ) -> Result<(), StageError> {
        self.insert(conn, account, amount, currency, account.rolled_up_at_once())
            .await
    }

    /// One leg whose amount the caller has already applied to the account's
    /// balance (a merchant's refund taken from what it reserved), so the
    /// roll-up never folds it in a second time.
    pub async fn post_applied(
        &self,
        conn: &mut PgConnection,
        account: Account<'_>,
        amount: Decimal,
        currency: &str,
    ) -> Result<(), StageError> {
        self.insert(conn, account, amount, currency, true).await
    }

    /// One leg on account `account_id`, which the caller already knows.
    /// `applied`: the caller has moved the account's balance itself; else
    /// the roll-up folds the leg in (a transfer's payee, whose row no
    /// transfer holds).
    pub async fn post_on(
        &self,
        conn: &mut PgConnection,
        account_id: i64,
        amount: Decimal,
        currency: &str,
        applied: bool,
    ) -> Result<(), StageError> {
        if amount.is_zero() {
            return Ok(());
        }
        sqlx::query("INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up) VALUES ($1, $2, $3, $4, $5)")
            .bind(self.id)
            .bind(account_id)
            .bind(amount)
            .bind(currency)
            .bind(applied)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Several legs in one currency, each as [`Self::post`] writes it, with
    /// one statement when every account exists (the usual case); accounts
    /// not opened yet are opened first, then the legs written.
    pub async fn post_all(
        &self,
        conn: &mut PgConnection,
        currency: &str,
        legs: &[(Account<'_>, Decimal)],
    ) -> Result<(), StageError> {
        let legs: Vec<_> = legs
            .iter()
            .filter(|(_, amount)| !amount.is_zero())
            .collect();
        if legs.is_empty() {
            return Ok(());
        }
        let mut kinds = Vec::with_capacity(legs.len());
        let mut owners = Vec::with_capacity(legs.len());
        let mut amounts = Vec::with_capacity(legs.len());
        let mut applied = Vec::with_capacity(legs.len());
        for (account, amount) in &legs {
            let (kind, owner) = account.key();
            kinds.push(kind);
            owners.push(owner);
            amounts.push(*amount);
            applied.push(account.rolled_up_at_once());
        }
        // Writes every leg or, when an account is missing, none.
        let insert_when_all_accounts_exist = sqlx::query_scalar::<_, i64>(
            "WITH legs AS (
                 SELECT * FROM UNNEST($3::text[], $4::text[], $5::numeric[], $6::bool[])
                     WITH ORDINALITY AS l (owner_kind, owner_id, amount, rolled_up, n)
             ), found AS (
                 SELECT a.id, l.amount, l.rolled_up, l.n FROM legs l
                 JOIN accounts a ON a.owner_kind = l.owner_kind AND a.owner_id = l.owner_id AND a.currency = $2
             ), written AS (
                 INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up)
                 SELECT $1, id, amount, $2, rolled_up FROM found
                 WHERE (SELECT count(*) FROM found) = (SELECT count(*) FROM legs)
                 ORDER BY n
                 RETURNING 1
             )
             SELECT count(*) FROM written",
        )
        .bind(self.id)
        .bind(currency)
        .bind(&kinds)
        .bind(&owners)
        .bind(&amounts)
        .bind(&applied);
        if insert_when_all_accounts_exist.fetch_one(&mut *conn).await? > 0 {
            return Ok(());
        }
        for (account, amount) in legs {
            self.insert(
                conn,
                *account,
                *amount,
                currency,
                account.rolled_up_at_once(),
            )
            .await?;
        }
        Ok(())
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        account: Account<'_>,
        amount: Decimal,
        currency: &str,
        rolled_up: bool,
    ) -> Result<(), StageError> {
        if amount.is_zero() {
            return Ok(());
        }
        let (kind, owner) = account.key();
        let account_id = payment::account_id(conn, kind, &owner, currency).await?;
        self.post_on(conn, account_id, amount, currency, rolled_up)
            .await
    }
}

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
    .bind(super::refund::RefundStatus::Owed.as_str())
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
