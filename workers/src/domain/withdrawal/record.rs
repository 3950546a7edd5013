//! The withdrawal row as the stages read it, and how a new one is kept.

use chrono::{DateTime, Utc};
use payfleet_common::{messages, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::WithdrawalStatus;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Withdrawal {
    pub id: Uuid,
    pub requester_id: String,
    pub request_id: String,
    /// `user`, or `merchant` for a merchant's settlement payout.
    pub owner_kind: String,
    /// The owner whose money leaves: the user, or the merchant of a payout.
    pub user_id: String,
    /// The account it leaves (the wallet, or the merchant's account); none
    /// when it was refused before one was found.
    pub account_id: Option<i64>,
    /// What leaves the wallet.
    pub amount: Decimal,
    /// The platform's withdrawal fee, out of `amount`.
    pub fee: Decimal,
    pub currency: String,
    pub payee_account: String,
    pub channel: Option<String>,
    /// What the channel took for paying it out, as it said.
    pub channel_fee: Option<Decimal>,
    pub status: String,
    pub detail: Option<String>,
    pub booked_at: Option<DateTime<Utc>>,
    pub returned_booked_at: Option<DateTime<Utc>>,
    /// When it was asked: the business day its daily limit counts in.
    pub created_at: DateTime<Utc>,
}

impl Withdrawal {
    pub fn status(&self) -> Result<WithdrawalStatus, StageError> {
        WithdrawalStatus::parse(&self.status)
    }

    /// A merchant's settlement payout (its owner is a merchant account).
    pub fn is_merchant_payout(&self) -> bool {
        self.owner_kind == OWNER_MERCHANT
    }

    /// What the payee is paid: the amount less the platform's fee.
    pub fn payout_amount(&self) -> Decimal {
        self.amount - self.fee
    }
}

/// The withdrawal id of a requester's request: the same request always maps to it.
pub fn withdrawal_id(requester_id: &str, request_id: &str) -> Uuid {
    messages::stable_id(&["withdrawal", requester_id, request_id])
}

/// `withdrawals.owner_kind` of a merchant's settlement payout.
pub const OWNER_MERCHANT: &str = "merchant";

const COLUMNS: &str =
    "id, requester_id, request_id, owner_kind, user_id, account_id, amount, fee, currency::text AS currency,
     payee_account, channel, channel_fee, status, detail, booked_at, returned_booked_at, created_at";

/// Loads and row-locks a withdrawal for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Withdrawal>, StageError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM withdrawals WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Loads a withdrawal without locking it: for what never changes once it
/// is kept (its amounts, currency and channel).
pub async fn find(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<Withdrawal>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM withdrawals WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A withdrawal as order-validation keeps it.
pub struct NewWithdrawal<'a> {
    pub id: Uuid,
    pub requester_id: &'a str,
    pub request_id: &'a str,
    pub request_hash: &'a str,
    /// `user`, or [`OWNER_MERCHANT`] for a settlement payout.
    pub owner_kind: &'a str,
    pub user_id: &'a str,
    pub account_id: Option<i64>,
    pub amount: Decimal,
    pub fee: Decimal,
    pub currency: &'a str,
    pub payee_account: &'a str,
    pub channel: Option<&'a str>,
    pub notify_url: Option<&'a str>,
}

impl NewWithdrawal<'_> {
    /// Inserts it in `status` (`requested`, or `refused` with `detail`);
    /// false when the id was taken meanwhile.
    pub async fn insert(
        &self,
        conn: &mut PgConnection,
        status: WithdrawalStatus,
        detail: Option<&str>,
    ) -> Result<bool, StageError> {
        let inserted = sqlx::query(
            "INSERT INTO withdrawals (id, requester_id, request_id, request_hash, user_id, account_id, amount, fee,
                                      currency, payee_account, channel, notify_url, status, detail, owner_kind)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT DO NOTHING",
        )
        .bind(self.id)
        .bind(self.requester_id)
        .bind(self.request_id)
        .bind(self.request_hash)
        .bind(self.user_id)
        .bind(self.account_id)
        .bind(self.amount)
        .bind(self.fee)
        .bind(self.currency)
        .bind(self.payee_account)
        .bind(self.channel)
        .bind(self.notify_url)
        .bind(status.as_str())
        .bind(detail)
        .bind(self.owner_kind)
        .execute(conn)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}

/// The key of a withdrawal's Redis lock in every stage.
pub fn lock_key(id: Uuid) -> String {
    format!("withdrawal:{id}")
}
