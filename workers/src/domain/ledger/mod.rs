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

use payfleet_common::{AttemptId, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::payment::{self, EXTERNAL_WORLD, PLATFORM_FEES};

mod balances;
mod charge;
pub use balances::{credit_wallet, fold_pending, roll_up, top_up};
pub use charge::{ChannelCharge, refund_sent};

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
    /// The entry's id, for a statement that writes a leg along with the
    /// movement it books.
    pub fn id(&self) -> i64 {
        self.id
    }

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
