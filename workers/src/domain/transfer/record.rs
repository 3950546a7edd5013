//! The transfer row as the stages read it, and how a new one is kept.

use chrono::{DateTime, Utc};
use payfleet_common::{messages, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use super::TransferStatus;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Transfer {
    pub id: Uuid,
    pub requester_id: String,
    pub request_id: String,
    pub payer_user_id: String,
    pub payee_user_id: String,
    /// The wallets; none when it was refused before they were found.
    pub payer_account_id: Option<i64>,
    pub payee_account_id: Option<i64>,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub detail: Option<String>,
    /// When it was asked: the business day its daily limit counts in.
    pub created_at: DateTime<Utc>,
}

impl Transfer {
    pub fn status(&self) -> Result<TransferStatus, StageError> {
        TransferStatus::parse(&self.status)
    }

    /// The payer's and the payee's wallets, which a kept transfer past
    /// order-validation always names.
    pub fn wallets(&self) -> Result<(i64, i64), StageError> {
        match (self.payer_account_id, self.payee_account_id) {
            (Some(payer), Some(payee)) => Ok((payer, payee)),
            _ => Err(StageError::permanent(format!(
                "transfer {} names no payer or no payee wallet",
                self.id
            ))),
        }
    }
}

/// The transfer id of a requester's request: the same request always maps to it.
pub fn transfer_id(requester_id: &str, request_id: &str) -> Uuid {
    messages::stable_id(&["transfer", requester_id, request_id])
}

/// The key of a transfer's Redis lock in every stage.
pub fn lock_key(id: Uuid) -> String {
    format!("transfer:{id}")
}

/// Loads and row-locks a transfer for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Transfer>, StageError> {
    Ok(sqlx::query_as(
        "SELECT id, requester_id, request_id, payer_user_id, payee_user_id, payer_account_id, payee_account_id,
                amount, currency::text AS currency, status, detail, created_at
         FROM transfers WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// A transfer as order-validation keeps it.
pub struct NewTransfer<'a> {
    pub id: Uuid,
    pub requester_id: &'a str,
    pub request_id: &'a str,
    pub request_hash: &'a str,
    pub payer_user_id: &'a str,
    pub payee_user_id: &'a str,
    pub payer_account_id: Option<i64>,
    pub payee_account_id: Option<i64>,
    pub amount: Decimal,
    pub currency: &'a str,
    pub memo: Option<&'a str>,
    pub notify_url: Option<&'a str>,
}

impl NewTransfer<'_> {
    /// Inserts it in `status` (`requested`, or `refused` with `detail`);
    /// false when the id was taken meanwhile.
    pub async fn insert(
        &self,
        conn: &mut PgConnection,
        status: TransferStatus,
        detail: Option<&str>,
    ) -> Result<bool, StageError> {
        let inserted = sqlx::query(
            "INSERT INTO transfers (id, requester_id, request_id, request_hash, payer_user_id, payee_user_id,
                                    payer_account_id, payee_account_id, amount, currency, memo, notify_url,
                                    status, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT DO NOTHING",
        )
        .bind(self.id)
        .bind(self.requester_id)
        .bind(self.request_id)
        .bind(self.request_hash)
        .bind(self.payer_user_id)
        .bind(self.payee_user_id)
        .bind(self.payer_account_id)
        .bind(self.payee_account_id)
        .bind(self.amount)
        .bind(self.currency)
        .bind(self.memo)
        .bind(self.notify_url)
        .bind(status.as_str())
        .bind(detail)
        .execute(conn)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}
