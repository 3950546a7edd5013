//! `payfleet user add`, `payfleet wallet show` and `payfleet wallet
//! freeze|unfreeze`: a payer registered without SQL, its wallets as the
//! books hold them — balances and the statement (every top-up, freeze,
//! unfreeze, debit, credit and refund) — and an operator stopping a
//! wallet's money from moving, audited. A wallet
//! is credited only through the books (a top-up's journal entry), never by
//! editing a balance.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::{Error, Result, merchant::Acting};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub status: String,
    pub blocked: bool,
    pub created_at: DateTime<Utc>,
}

/// One wallet (a currency) of a user.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Wallet {
    pub currency: String,
    pub status: String,
    pub total: Decimal,
    pub available: Decimal,
    pub frozen: Decimal,
}

/// One line of a wallet's statement.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StatementLine {
    pub at: DateTime<Utc>,
    pub currency: String,
    pub kind: String,
    pub amount: Decimal,
    pub available_after: Decimal,
    pub frozen_after: Decimal,
    pub payment_id: Option<uuid::Uuid>,
    pub withdrawal_id: Option<uuid::Uuid>,
    pub transfer_id: Option<uuid::Uuid>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WalletStory {
    pub user: UserView,
    pub wallets: Vec<Wallet>,
    /// Newest first.
    pub statement: Vec<StatementLine>,
}

/// Registers a payer, active; its wallets open with their first top-up.
pub async fn add(pool: &PgPool, id: &str, name: &str, acting: &Acting<'_>) -> Result<UserView> {
    let usable = crate::stages::order_validation::is_usable_id;
    if !usable(id) {
        return Err(Error::refused(
            "user id: 1 to 128 bytes, no control characters",
        ));
    }
    if !usable(name) {
        return Err(Error::refused(
            "--name: 1 to 128 bytes, no control characters",
        ));
    }
    let mut tx = pool.begin().await?;
    let created = crate::seed::users(&mut tx, &[crate::seed::user(id).name(name)]).await?;
    if created.is_empty() {
        return Err(Error::refused(format!(
            "user `{id}` already exists: `payfleet wallet show {id}`"
        )));
    }
    let user: UserView =
        sqlx::query_as("SELECT id, name, status, blocked, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO user_actions (user_id, action, operator, reason, after) VALUES ($1, 'add', $2, $3, $4)",
    )
    .bind(id)
    .bind(acting.operator)
    .bind(acting.reason)
    .bind(serde_json::to_value(&user)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// A user's wallets and their latest `limit` statement lines.
pub async fn wallet(pool: &PgPool, id: &str, limit: i64) -> Result<WalletStory> {
    let user: Option<UserView> =
        sqlx::query_as("SELECT id, name, status, blocked, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some(user) = user else {
        return Err(Error::not_found(format!("no user `{id}`")));
    };
    let wallets = sqlx::query_as(
        "SELECT currency::text AS currency, status, total, available, frozen FROM accounts
         WHERE owner_kind = 'user' AND owner_id = $1 ORDER BY currency",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let statement = sqlx::query_as(
        "SELECT s.created_at AS at, s.currency::text AS currency, s.kind, s.amount, s.available_after,
                s.frozen_after, s.payment_id, s.withdrawal_id, s.transfer_id
         FROM account_statements s JOIN accounts a ON a.id = s.account_id
         WHERE a.owner_kind = 'user' AND a.owner_id = $1
         ORDER BY s.id DESC LIMIT $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(WalletStory {
        user,
        wallets,
        statement,
    })
}

/// Freezes (`frozen`) or reopens (`active`) `user`'s wallet in `currency`:
/// a frozen wallet pays nothing and takes no transfer, top-up or
/// withdrawal; what is already frozen in it for operations in flight
/// finishes as it would. Audited in `user_actions`; returns the wallet.
pub async fn set_wallet_status(
    pool: &PgPool,
    user: &str,
    currency: &str,
    frozen: bool,
    acting: &Acting<'_>,
) -> Result<Wallet> {
    let (status, action) = if frozen {
        ("frozen", "freeze_wallet")
    } else {
        ("active", "unfreeze_wallet")
    };
    let mut tx = pool.begin().await?;
    // FOR UPDATE waits for every transfer Confirm crediting the wallet
    // (each holds it key-share): none credits it after this commits.
    sqlx::query(
        "SELECT 1 FROM accounts WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2 FOR UPDATE",
    )
    .bind(user)
    .bind(currency)
    .execute(&mut *tx)
    .await?;
    let wallet: Option<Wallet> = sqlx::query_as(
        "UPDATE accounts SET status = $3, updated_at = now()
         WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2 AND status <> 'closed'
         RETURNING currency::text AS currency, status, total, available, frozen",
    )
    .bind(user)
    .bind(currency)
    .bind(status)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(wallet) = wallet else {
        return Err(Error::not_found(format!(
            "user `{user}` has no open {currency} wallet: `payfleet wallet show {user}`"
        )));
    };
    sqlx::query(
        "INSERT INTO user_actions (user_id, action, operator, reason, after) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user)
    .bind(action)
    .bind(acting.operator)
    .bind(acting.reason)
    .bind(serde_json::to_value(&wallet)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(wallet)
}
