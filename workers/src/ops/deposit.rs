//! `payfleet wallet top-up`: a deposit an operator attests (a user paid
//! the platform outside any third-party channel: a bank transfer to its
//! account, cash at a counter) becomes a top-up like any other, never a
//! direct balance edit: a payment of kind `top_up` asked for by the
//! platform's own requester (`payfleet-ops`) at the deposit channel `ops`,
//! keyed by the operator's reference (the bank transfer's, say), handed to
//! fund-freeze in the transaction that keeps it and audits it. The fleet
//! credits the wallet when settlement confirms it, with the `top_up` entry
//! from `clearing:ops`.

use chrono::Utc;
use payfleet_common::{
    PaymentId, Settings, Topology,
    messages::{OrderValidated, SCHEMA_VERSION, TopUpRequested, kind},
    money,
    outbox::{self, OutboxMessage},
};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{Error, Result, merchant::Acting};
use crate::channels::DEPOSIT;
use crate::domain::{handoff, payment::PaymentStatus};
use crate::stages::order_validation::top_up::{NewTopUp, top_up_id};

/// The platform's own requester of attested deposits (its key is never
/// handed out: deposits are asked for by this command only).
pub const OPS_REQUESTER: &str = "payfleet-ops";

/// What an operator attests.
#[derive(Debug, Clone)]
pub struct Deposit {
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
    /// The operator's own reference of the money received: the top-up's
    /// idempotency key.
    pub reference: String,
}

/// The top-up a deposit became.
#[derive(Debug, Clone, Serialize)]
pub struct DepositView {
    pub top_up_id: PaymentId,
    /// False when this reference was attested before with the same content.
    pub new: bool,
    pub status: String,
    pub reason: Option<String>,
}

fn check(deposit: &Deposit) -> Result<()> {
    let usable = crate::stages::order_validation::is_usable_id;
    if !usable(&deposit.reference) {
        return Err(Error::refused(
            "--reference: 1 to 128 bytes, no control characters",
        ));
    }
    let most = Decimal::from(10_i64.pow(18));
    if money::check_amount(deposit.amount).is_err()
        || deposit.amount <= Decimal::ZERO
        || deposit.amount >= most
    {
        return Err(Error::refused(format!(
            "--amount {}: a positive amount in cents",
            deposit.amount
        )));
    }
    if money::currency(&deposit.currency).is_err() {
        return Err(Error::refused(format!(
            "--currency {}: not a currency payfleet takes",
            deposit.currency
        )));
    }
    Ok(())
}

/// Keeps the attested deposit as a top-up at the deposit channel and hands
/// it to the chain; the same reference with the same content again is
/// the same top-up, with other content it is refused.
pub async fn attest(
    pool: &PgPool,
    settings: &Settings,
    deposit: &Deposit,
    acting: &Acting<'_>,
) -> Result<DepositView> {
    check(deposit)?;
    let request = TopUpRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: OPS_REQUESTER.to_owned(),
        request_id: deposit.reference.clone(),
        user_id: deposit.user_id.clone(),
        amount: deposit.amount,
        currency: deposit.currency.clone(),
        payment_method: DEPOSIT.to_owned(),
        payer_token: None,
        notify_url: None,
        requested_at: Utc::now(),
    };
    // what the deposit is, not when it was attested
    let content = serde_json::json!({
        "user_id": deposit.user_id, "amount": deposit.amount.to_string(), "currency": deposit.currency,
    });
    let content_hash = hex::encode(Sha256::digest(serde_json::to_vec(&content)?));
    let id = top_up_id(OPS_REQUESTER, &deposit.reference);
    let mut tx = pool.begin().await?;
    let existing: Option<(String, String, Option<String>)> =
        sqlx::query_as("SELECT request_hash, status, reason FROM payments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((hash, status, reason)) = existing {
        if hash != content_hash {
            return Err(Error::refused(format!(
                "reference `{}` was attested before for another deposit (top-up {id})",
                deposit.reference
            )));
        }
        return Ok(DepositView {
            top_up_id: id,
            new: false,
            status,
            reason,
        });
    }
    check_user(&mut tx, deposit).await?;
    let new = NewTopUp {
        id,
        requester_id: OPS_REQUESTER,
        request_id: &deposit.reference,
        content_hash: &content_hash,
        parsed: &request,
    };
    let ttl = chrono::Duration::from_std(settings.payment_ttl).unwrap_or(chrono::Duration::MAX);
    new.insert(
        &mut tx,
        PaymentStatus::Validated,
        None,
        Some((DEPOSIT, Decimal::ZERO)),
        ttl,
    )
    .await
    .map_err(|e| Error::told(e.to_string()))?;
    sqlx::query(
        "INSERT INTO manual_actions (payment_id, action, operator, reason, before, after)
         VALUES ($1, 'deposit', $2, $3, 'null'::jsonb, $4)",
    )
    .bind(id)
    .bind(acting.operator)
    .bind(acting.reason)
    .bind(serde_json::to_value(&request)?)
    .execute(&mut *tx)
    .await?;
    let topology = Topology::from_settings(settings)?;
    let message = OutboxMessage::json(
        &topology.exchanges().stages,
        handoff::FUND_FREEZE,
        kind::ORDER_VALIDATED,
        Some(&id.to_string()),
        &OrderValidated {
            schema_version: SCHEMA_VERSION,
            payment_id: id,
            amount: deposit.amount,
            currency: deposit.currency.clone(),
            validated_at: Utc::now(),
        },
    )?;
    outbox::insert(&mut tx, &[message]).await?;
    tx.commit().await?;
    Ok(DepositView {
        top_up_id: id,
        new: true,
        status: PaymentStatus::Validated.as_str().to_owned(),
        reason: None,
    })
}

/// The user exists and is active, and its wallet in the currency, if it
/// has one yet, takes money in (a first deposit opens it).
async fn check_user(conn: &mut sqlx::PgConnection, deposit: &Deposit) -> Result<()> {
    let user: Option<String> = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
        .bind(&deposit.user_id)
        .fetch_optional(&mut *conn)
        .await?;
    match user.as_deref() {
        None => return Err(Error::not_found(format!("no user `{}`", deposit.user_id))),
        Some("active") => {}
        Some(status) => {
            return Err(Error::refused(format!(
                "user `{}` is {status}: no money goes in",
                deposit.user_id
            )));
        }
    }
    let wallet: Option<String> = sqlx::query_scalar(
        "SELECT status FROM accounts WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2",
    )
    .bind(&deposit.user_id)
    .bind(&deposit.currency)
    .fetch_optional(&mut *conn)
    .await?;
    match wallet.as_deref() {
        None | Some("active") => Ok(()),
        Some(status) => Err(Error::refused(format!(
            "{}'s {} wallet is {status}: no money goes in",
            deposit.user_id, deposit.currency
        ))),
    }
}

/// Where top-up `id` stands: its status and reason.
pub async fn standing(pool: &PgPool, id: PaymentId) -> Result<(String, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT status, reason FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?,
    )
}
