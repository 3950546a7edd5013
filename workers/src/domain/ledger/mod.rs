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
    /// one statement when every account exists (the usual case); when one
    /// does not, the missing accounts are opened, then the legs written.
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
        let rows: Vec<LegRow> = legs
            .iter()
            .map(|(account, amount)| LegRow::to(self.id, *account, *amount, currency))
            .collect();
        write_legs(conn, &rows).await
    }

    /// Opens the entries of `kind` for `references` at once (no channel
    /// attempt): each reference with its entry, or an error naming one
    /// that already has its entry, with none opened.
    pub async fn open_many(
        conn: &mut PgConnection,
        references: &[String],
        kind: EntryKind,
    ) -> Result<Vec<(String, Entry)>, StageError> {
        let opened: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO journal_entries (reference, kind)
             SELECT reference, $2 FROM UNNEST($1::text[]) AS reference ORDER BY reference
             ON CONFLICT (reference, kind) DO NOTHING RETURNING reference, id",
        )
        .bind(references)
        .bind(kind.as_str())
        .fetch_all(conn)
        .await?;
        if opened.len() != references.len() {
            let taken = references
                .iter()
                .find(|r| !opened.iter().any(|(o, _)| o == *r));
            return Err(StageError::permanent(format!(
                "{} entry {} already exists",
                kind.as_str(),
                taken.map_or("?", |r| r.as_str())
            )));
        }
        Ok(opened
            .into_iter()
            .map(|(reference, id)| (reference, Entry { id }))
            .collect())
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

/// Where a leg of [`post_many`] goes.
#[derive(Debug, Clone, Copy)]
pub enum LegTo<'a> {
    /// An account the caller knows and has already moved itself (a wallet).
    Applied(i64),
    /// An account by its business meaning, as [`Entry::post`] posts it.
    Account(Account<'a>),
}

/// Legs of several entries with one statement: `(entry, to, amount,
/// currency)`, zero amounts skipped; accounts not opened yet are opened
/// first, as [`Entry::post_all`] does.
pub async fn post_many(
    conn: &mut PgConnection,
    legs: &[(&Entry, LegTo<'_>, Decimal, &str)],
) -> Result<(), StageError> {
    let rows: Vec<LegRow> = legs
        .iter()
        .filter(|(_, _, amount, _)| !amount.is_zero())
        .map(|(entry, to, amount, currency)| match to {
            LegTo::Applied(id) => LegRow {
                entry_id: entry.id,
                account_id: Some(*id),
                owner_kind: "",
                owner_id: String::new(),
                amount: *amount,
                currency: (*currency).to_owned(),
                rolled_up: true,
            },
            LegTo::Account(account) => LegRow::to(entry.id, *account, *amount, currency),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    write_legs(conn, &rows).await
}

/// Writes the rows with one statement; when an account is not opened yet,
/// opens every missing one with one more (in key order, as two writers
/// may open the same), then writes them.
async fn write_legs(conn: &mut PgConnection, rows: &[LegRow]) -> Result<(), StageError> {
    if write_when_all_accounts_exist(conn, rows).await? {
        return Ok(());
    }
    let by_key: Vec<&LegRow> = rows.iter().filter(|r| r.account_id.is_none()).collect();
    let kinds: Vec<&str> = by_key.iter().map(|r| r.owner_kind).collect();
    let owners: Vec<&str> = by_key.iter().map(|r| r.owner_id.as_str()).collect();
    let currencies: Vec<&str> = by_key.iter().map(|r| r.currency.as_str()).collect();
    sqlx::query(
        "INSERT INTO accounts (owner_kind, owner_id, currency)
         SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ORDER BY 1, 2, 3
         ON CONFLICT (owner_kind, owner_id, currency) DO NOTHING",
    )
    .bind(&kinds)
    .bind(&owners)
    .bind(&currencies)
    .execute(&mut *conn)
    .await?;
    if write_when_all_accounts_exist(conn, rows).await? {
        return Ok(());
    }
    Err(StageError::permanent(
        "an account of these legs could not be opened; nothing was posted",
    ))
}

/// One leg as written: its account by id, or by (kind, owner) in its currency.
struct LegRow {
    entry_id: i64,
    account_id: Option<i64>,
    owner_kind: &'static str,
    owner_id: String,
    amount: Decimal,
    currency: String,
    rolled_up: bool,
}

impl LegRow {
    fn to(entry_id: i64, account: Account<'_>, amount: Decimal, currency: &str) -> Self {
        let (owner_kind, owner_id) = account.key();
        LegRow {
            entry_id,
            account_id: None,
            owner_kind,
            owner_id,
            amount,
            currency: currency.to_owned(),
            rolled_up: account.rolled_up_at_once(),
        }
    }
}

/// Writes every row, in order, with one statement when each one's account
/// exists; writes none and returns false when one does not.
async fn write_when_all_accounts_exist(
    conn: &mut PgConnection,
    rows: &[LegRow],
) -> Result<bool, StageError> {
    let column = |f: fn(&LegRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let entry_ids: Vec<i64> = rows.iter().map(|r| r.entry_id).collect();
    let account_ids: Vec<Option<i64>> = rows.iter().map(|r| r.account_id).collect();
    let amounts: Vec<Decimal> = rows.iter().map(|r| r.amount).collect();
    let rolled_up: Vec<bool> = rows.iter().map(|r| r.rolled_up).collect();
    let written = sqlx::query_scalar::<_, i64>(
        "WITH legs AS (
             SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::numeric[], $6::text[], $7::bool[])
                 WITH ORDINALITY AS l (entry_id, account_id, owner_kind, owner_id, amount, currency, rolled_up, n)
         ), found AS (
             SELECT COALESCE(l.account_id, a.id) AS id, l.entry_id, l.amount, l.currency, l.rolled_up, l.n
             FROM legs l
             LEFT JOIN accounts a ON l.account_id IS NULL
                 AND a.owner_kind = l.owner_kind AND a.owner_id = l.owner_id AND a.currency = l.currency
             WHERE COALESCE(l.account_id, a.id) IS NOT NULL
         ), written AS (
             INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up)
             SELECT entry_id, id, amount, currency, rolled_up FROM found
             WHERE (SELECT count(*) FROM found) = (SELECT count(*) FROM legs)
             ORDER BY n
             RETURNING 1
         )
         SELECT count(*) FROM written",
    )
    .bind(&entry_ids)
    .bind(&account_ids)
    .bind(column(|r| r.owner_kind.to_owned()))
    .bind(column(|r| r.owner_id.clone()))
    .bind(&amounts)
    .bind(column(|r| r.currency.clone()))
    .bind(&rolled_up)
    .fetch_one(conn)
    .await?;
    Ok(written > 0)
}
