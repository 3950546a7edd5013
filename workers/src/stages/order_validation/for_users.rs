//! Requests that move a user's wallet on the user's behalf (a withdrawal,
//! a top-up, a transfer): they come from a registered requester acting for users (the
//! platform's wallet application), keyed by (requester, request id) and
//! compared by content like payments.

use chrono::{DateTime, Utc};
use payfleet_common::{
    broker,
    messages::{self, TopUpRequested, TransferRequested, WithdrawalRequested},
    runtime::{Inbound, Outcome, StageError, StageTx, Undecodable},
};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};

use payfleet_common::money;

use super::{OrderValidation, signed_by};

/// A request acting for a user, as far as it could be read before any
/// database lookup.
#[derive(Debug)]
pub struct ForUser<T> {
    pub requester_id: String,
    pub request_id: String,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub content_hash: String,
    pub parsed: Result<T, (&'static str, String)>,
}

/// Only a body without a usable requester (its field `requester_field`)
/// and request id cannot be answered (poison); anything else is judged.
pub(super) fn decode<T>(
    inbound: &Inbound,
    value: Value,
    (message, requester_field): (&'static str, &'static str),
    read: fn(Value) -> Result<T, (&'static str, String)>,
) -> Result<ForUser<T>, Undecodable> {
    let requester_id = super::usable_id(&value, message, requester_field)?;
    let request_id = super::usable_id(&value, message, "request_id")?;
    let canonical =
        serde_json::to_vec(&value).map_err(|e| Undecodable::json(inbound, message, e))?;
    Ok(ForUser {
        requester_id,
        request_id,
        signature: broker::header_str(Some(&inbound.headers), messages::SIGNATURE_HEADER),
        content_hash: hex::encode(Sha256::digest(&canonical)),
        parsed: read(value),
        body: inbound.body.clone(),
    })
}

/// The requester's status when it signed the request and is registered
/// to act for users (a merchant's key must never reach users' wallets);
/// else why the request cannot be trusted.
pub(super) async fn trusted_requester<T>(
    tx: &mut StageTx,
    request: &ForUser<T>,
) -> Result<Result<String, (&'static str, String)>, StageError> {
    let requester = &request.requester_id;
    let signed = signed_by(tx, requester, request.signature.as_deref(), &request.body).await?;
    let status = match signed {
        Ok(status) => status,
        Err((reason, detail)) => return Ok(Err((reason, detail.to_owned()))),
    };
    let acts: Option<bool> =
        sqlx::query_scalar("SELECT acts_for_users FROM merchants WHERE id = $1")
            .bind(requester)
            .fetch_optional(tx.conn())
            .await?;
    if acts != Some(true) {
        return Ok(Err((
            "requester_not_permitted",
            format!(
                "requester {requester} may not move users' wallets: only one registered to act for users (the platform's wallet application) may"
            ),
        )));
    }
    Ok(Ok(status))
}

/// What a user's wallet in `currency` is for a request acting for the
/// user: its id (none when it has none yet and `may_open` it: a top-up
/// opens the wallet it fills) and the user's risk flag, or why none can
/// be used.
pub(super) async fn usable_wallet(
    tx: &mut StageTx,
    user_id: &str,
    currency: &str,
    may_open: bool,
) -> Result<Result<(Option<i64>, bool), (Option<i64>, &'static str, String)>, StageError> {
    let user: Option<(String, bool)> =
        sqlx::query_as("SELECT status, blocked FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(tx.conn())
            .await?;
    let Some((user_status, user_blocked)) = user else {
        return Ok(Err((None, "unknown_user", user_id.to_owned())));
    };
    if user_status != "active" {
        return Ok(Err((None, "user_frozen", user_id.to_owned())));
    }
    let wallet: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, status FROM accounts WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2",
    )
    .bind(user_id)
    .bind(currency)
    .fetch_optional(tx.conn())
    .await?;
    let Some((wallet, wallet_status)) = wallet else {
        if may_open {
            return Ok(Ok((None, user_blocked)));
        }
        let detail = format!("user {user_id} has no {currency} wallet");
        return Ok(Err((None, "no_wallet", detail)));
    };
    if wallet_status != "active" {
        let detail = format!("wallet is {wallet_status}");
        return Ok(Err((Some(wallet), "wallet_not_active", detail)));
    }
    Ok(Ok((Some(wallet), user_blocked)))
}

/// Whether `amount` can be kept as a request's (a withdrawal's, a
/// top-up's, a transfer's, a payout's): positive, in cents, and
/// within the books' range (numeric(20, 2)); otherwise why not.
pub(super) fn storable_amount(amount: Decimal) -> Result<(), String> {
    let most = Decimal::from(10_i64.pow(18));
    if money::check_amount(amount).is_err() || amount <= Decimal::ZERO || amount >= most {
        return Err(format!("{amount} is not a positive amount in cents"));
    }
    Ok(())
}

/// Where a request acting for a user is kept once accepted.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kept {
    Withdrawal,
    TopUp,
    Payout,
    Transfer,
}

impl Kept {
    fn what(self) -> &'static str {
        match self {
            Kept::Withdrawal => "withdrawal",
            Kept::TopUp => "top-up",
            Kept::Payout => "payout",
            Kept::Transfer => "transfer",
        }
    }
}

/// A request already kept under `id`: `Ok` of the stale duplicate's
/// outcome (same content), `Err` of a conflict's detail (other content).
pub(super) async fn kept_before<T>(
    tx: &mut StageTx,
    kept: Kept,
    request: &ForUser<T>,
    id: uuid::Uuid,
) -> Result<Option<Result<Outcome, String>>, StageError> {
    let sql = match kept {
        Kept::Withdrawal | Kept::Payout => {
            "SELECT request_hash, status FROM withdrawals WHERE id = $1"
        }
        Kept::TopUp => "SELECT request_hash, status FROM payments WHERE id = $1",
        Kept::Transfer => "SELECT request_hash, status FROM transfers WHERE id = $1",
    };
    let existing: Option<(String, String)> = sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(tx.conn())
        .await?;
    let what = kept.what();
    Ok(existing.map(|(hash, status)| {
        if hash == request.content_hash {
            Ok(Outcome::Stale {
                reason: format!("duplicate request of {what} {id} ({status})"),
            })
        } else {
            Err(format!(
                "request id already used by {what} {id} with different content"
            ))
        }
    }))
}

/// What a request acting for a user says of its time and money, as the
/// shared opening reads them.
pub(super) trait MovesMoney {
    fn requested_at(&self) -> DateTime<Utc>;
    fn amount(&self) -> Decimal;
}

macro_rules! moves_money {
    ($($request:ty),*) => {$(
        impl MovesMoney for $request {
            fn requested_at(&self) -> DateTime<Utc> {
                self.requested_at
            }
            fn amount(&self) -> Decimal {
                self.amount
            }
        }
    )*};
}
moves_money!(WithdrawalRequested, TopUpRequested, TransferRequested);

/// How the opening every request acting for a user shares ended.
pub(super) enum Opening<'a, T> {
    /// Trusted, new, readable, fresh, from an active requester, with an
    /// amount that can be kept: the kind's own checks judge it.
    Judge(&'a T),
    /// The same request again: its duplicate's outcome.
    Seen(Outcome),
    /// Refused before anything is kept: the reason and its detail.
    Refused(&'static str, String),
}

impl OrderValidation {
    /// The opening of a request acting for a user, kept as `kept` under
    /// `id`: the requester's signature and standing, the idempotency key,
    /// the committed schema, freshness, an active requester and a
    /// storable amount, in that order.
    pub(super) async fn open_for_user<'a, T: MovesMoney>(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        (request, kept, id): (&'a ForUser<T>, Kept, uuid::Uuid),
    ) -> Result<Opening<'a, T>, StageError> {
        let requester_status = match trusted_requester(tx, request).await? {
            Ok(status) => status,
            Err((reason, detail)) => return Ok(Opening::Refused(reason, detail)),
        };
        match kept_before(tx, kept, request, id).await? {
            None => {}
            Some(Ok(duplicate)) => return Ok(Opening::Seen(duplicate)),
            Some(Err(detail)) => return Ok(Opening::Refused("idempotency_conflict", detail)),
        }
        let parsed = match &request.parsed {
            Ok(parsed) => parsed,
            Err((reason, detail)) => return Ok(Opening::Refused(reason, detail.clone())),
        };
        if let Some((reason, detail)) = self
            .stale_request(tx, inbound, parsed.requested_at())
            .await?
        {
            return Ok(Opening::Refused(reason, detail));
        }
        if requester_status != "active" {
            let detail = "the requester is suspended".to_owned();
            return Ok(Opening::Refused("merchant_suspended", detail));
        }
        if let Err(detail) = storable_amount(parsed.amount()) {
            return Ok(Opening::Refused("invalid_amount", detail));
        }
        Ok(Opening::Judge(parsed))
    }
}
