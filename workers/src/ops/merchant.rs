//! `payfleet merchant add | suspend | activate | show | rotate-key`: a
//! merchant onboarded and managed without SQL. Every action is audited in
//! `merchant_actions` with who, why, and the merchant before and after
//! (request keys only by fingerprint). The request key is made by the
//! database (`new_request_key()`) and told once, to the operator who made
//! it; a rotated key keeps the one before valid for a stated grace period.
//! Webhook secrets rotate on their own (`payfleet webhook rotate-secret`).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::{Error, Result};

/// What `merchant add` is given.
#[derive(Debug, Clone)]
pub struct NewMerchant {
    pub id: String,
    pub name: String,
    /// The platform's fee on its sales, e.g. 0.0060.
    pub fee_rate: Decimal,
    pub notify_url: Option<String>,
    /// May ask to move users' wallets (the platform's wallet application).
    pub acts_for_users: bool,
    /// The bank account its settled balance is paid out to.
    pub payout_account: Option<String>,
}

/// A merchant as the commands show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MerchantView {
    pub id: String,
    pub name: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub fee_rate: Decimal,
    pub notify_url: Option<String>,
    /// The first 12 hex digits of SHA-256 of the request key: enough to
    /// tell keys apart, nothing to sign with.
    pub key_fingerprint: String,
    pub previous_key_fingerprint: Option<String>,
    pub previous_key_expires_at: Option<DateTime<Utc>>,
    pub acts_for_users: bool,
    /// The bank account its settled balance is paid out to (none: never paid out).
    pub payout_account: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One line of a merchant's audit trail.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Action {
    pub at: DateTime<Utc>,
    pub action: String,
    pub operator: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MerchantStory {
    pub merchant: MerchantView,
    pub actions: Vec<Action>,
}

/// The longest a previous request key stays valid after a rotation.
const MAX_GRACE: chrono::Duration = chrono::Duration::days(7);

/// Who acts and why, for the audit.
#[derive(Debug, Clone)]
pub struct Acting<'a> {
    pub operator: &'a str,
    pub reason: &'a str,
}

fn fingerprint(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..12].to_owned()
}

/// Checks what `add` is given; the refusal names the field.
fn check(new: &NewMerchant) -> Result<()> {
    let usable = crate::stages::order_validation::is_usable_id;
    if !usable(&new.id) {
        return Err(Error::refused(
            "merchant id: 1 to 128 bytes, no control characters",
        ));
    }
    if !usable(&new.name) {
        return Err(Error::refused(
            "--name: 1 to 128 bytes, no control characters",
        ));
    }
    if new.fee_rate < Decimal::ZERO || new.fee_rate >= Decimal::ONE || new.fee_rate.scale() > 4 {
        return Err(Error::refused(format!(
            "--fee-rate {}: a rate from 0 up to (not including) 1, at most 4 decimals (0.0060 = 0.6 %)",
            new.fee_rate
        )));
    }
    if new.payout_account.as_deref().is_some_and(|a| !usable(a)) {
        return Err(Error::refused(
            "--payout-account: 1 to 128 bytes, no control characters",
        ));
    }
    if let Some(url) = &new.notify_url {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::refused(format!("--notify-url `{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http")
            || parsed.host_str().is_none()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(Error::refused(
                "--notify-url: an http(s) URL with a host and no credentials in it",
            ));
        }
    }
    Ok(())
}

async fn view(conn: &mut PgConnection, id: &str) -> Result<(MerchantView, String)> {
    type Row = (
        String,
        String,
        String,
        Option<String>,
        Decimal,
        Option<String>,
        String,
        Option<String>,
        Option<DateTime<Utc>>,
        bool,
        Option<String>,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, status, status_reason, fee_rate, notify_url, signing_key,
                previous_signing_key, previous_key_expires_at, acts_for_users, payout_account,
                created_at, updated_at
         FROM merchants WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some((
        id,
        name,
        status,
        status_reason,
        fee_rate,
        notify_url,
        key,
        previous,
        until,
        acts_for_users,
        payout_account,
        created,
        updated,
    )) = row
    else {
        return Err(Error::not_found(format!("no merchant `{id}`")));
    };
    let merchant = MerchantView {
        id,
        name,
        status,
        status_reason,
        fee_rate,
        notify_url,
        key_fingerprint: fingerprint(&key),
        previous_key_fingerprint: previous.as_deref().map(fingerprint),
        previous_key_expires_at: until,
        acts_for_users,
        payout_account,
        created_at: created,
        updated_at: updated,
    };
    Ok((merchant, key))
}

/// Where an onboarding action is audited: the table, and its column
/// naming what was acted on (`merchant_actions.merchant_id`,
/// `channel_actions.channel`).
pub(super) struct Audited {
    pub(super) table: &'static str,
    pub(super) subject: &'static str,
}

const MERCHANT_ACTIONS: Audited = Audited {
    table: "merchant_actions",
    subject: "merchant_id",
};

impl Audited {
    /// Records `action` on `subject` by `acting`, with the subject before
    /// (none when it was just made) and after.
    pub(super) async fn record(
        &self,
        conn: &mut PgConnection,
        subject: &str,
        action: &str,
        acting: &Acting<'_>,
        before: Option<&impl Serialize>,
        after: &impl Serialize,
    ) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} ({}, action, operator, reason, before, after) VALUES ($1, $2, $3, $4, $5, $6)",
            self.table, self.subject
        ))
        .bind(subject)
        .bind(action)
        .bind(acting.operator)
        .bind(acting.reason)
        .bind(before.map(serde_json::to_value).transpose()?)
        .bind(serde_json::to_value(after)?)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Onboards a merchant, active, with a new request key and webhook
/// secret; returns it with both (told this once).
pub async fn add(
    pool: &PgPool,
    new: &NewMerchant,
    acting: &Acting<'_>,
) -> Result<(MerchantView, Keys)> {
    check(new)?;
    let mut tx = pool.begin().await?;
    let key: String = sqlx::query_scalar("SELECT new_request_key()")
        .fetch_one(&mut *tx)
        .await?;
    let mut merchant = crate::seed::merchant(&new.id, &key)
        .name(&new.name)
        .fee_rate(new.fee_rate);
    merchant.notify_url = new.notify_url.clone();
    merchant.acts_for_users = new.acts_for_users;
    merchant.payout_account = new.payout_account.clone();
    let created = crate::seed::merchants(&mut tx, &[merchant]).await?;
    if created.is_empty() {
        // (the transaction, and the writer's update of the existing row, roll back)
        return Err(Error::refused(format!(
            "merchant `{}` already exists: `payfleet merchant show {}`",
            new.id, new.id
        )));
    }
    let (merchant, key) = view(&mut tx, &new.id).await?;
    MERCHANT_ACTIONS
        .record(
            &mut tx,
            &new.id,
            "add",
            acting,
            None::<&MerchantView>,
            &merchant,
        )
        .await?;
    // Made with the merchant (a trigger): told once, with the request key.
    let webhook_secret: String = sqlx::query_scalar(
        "SELECT secret FROM merchant_webhook_secrets WHERE merchant_id = $1 AND expires_at IS NULL",
    )
    .bind(&new.id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        merchant,
        Keys {
            request_key: key,
            webhook_secret,
        },
    ))
}

/// A new merchant's secrets, told once.
#[derive(Debug, Clone, Serialize)]
pub struct Keys {
    /// What it signs its requests with.
    pub request_key: String,
    /// What payfleet signs its webhooks with (Standard Webhooks).
    pub webhook_secret: String,
}

/// Suspends (`active = false`) or activates a merchant; a suspended
/// merchant's requests are refused as `merchant_suspended`.
pub async fn set_active(
    pool: &PgPool,
    id: &str,
    active: bool,
    acting: &Acting<'_>,
) -> Result<MerchantView> {
    let (to, action) = if active {
        ("active", "activate")
    } else {
        ("suspended", "suspend")
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let (before, _) = view(&mut tx, id).await?;
    if before.status == to {
        return Err(Error::refused(format!("merchant `{id}` is already {to}")));
    }
    sqlx::query(
        "UPDATE merchants SET status = $2, status_reason = $3, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(to)
    .bind((!active).then_some(acting.reason))
    .execute(&mut *tx)
    .await?;
    let (after, _) = view(&mut tx, id).await?;
    MERCHANT_ACTIONS
        .record(&mut tx, id, action, acting, Some(&before), &after)
        .await?;
    tx.commit().await?;
    Ok(after)
}

/// Gives a merchant a new request key; the one before stays valid for
/// `grace` (zero: not at all). Returns the merchant and the new key.
pub async fn rotate_key(
    pool: &PgPool,
    id: &str,
    grace: chrono::Duration,
    acting: &Acting<'_>,
) -> Result<(MerchantView, String)> {
    if grace < chrono::Duration::zero() || grace > MAX_GRACE {
        return Err(Error::refused(format!(
            "--grace: from 0 (the old key ends now) to {} days",
            MAX_GRACE.num_days()
        )));
    }
    let mut tx = pool.begin().await?;
    // The row lock orders two rotations of one merchant; the second finds
    // the first's grace period running and is refused, so the key the
    // merchant still signs with is never dropped by a repeated command.
    let grace_running: Option<Option<bool>> = sqlx::query_scalar(
        "SELECT previous_key_expires_at > now() FROM merchants WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (before, _) = view(&mut tx, id).await?;
    if grace_running.flatten() == Some(true) && !grace.is_zero() {
        return Err(Error::refused(format!(
            "merchant `{id}` is within a rotation's grace period (its previous key is valid until {}): \
             wait for it to end, or rotate with --grace 0 to end every older key now (a leaked key)",
            before
                .previous_key_expires_at
                .map_or_else(|| "-".to_owned(), |t| t.to_string())
        )));
    }
    sqlx::query(
        "UPDATE merchants SET previous_signing_key = CASE WHEN $2 > 0 THEN signing_key END,
                              previous_key_expires_at = CASE WHEN $2 > 0 THEN now() + make_interval(secs => $2) END,
                              signing_key = new_request_key(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(grace.num_milliseconds() as f64 / 1000.0)
    .execute(&mut *tx)
    .await?;
    let (after, key) = view(&mut tx, id).await?;
    MERCHANT_ACTIONS
        .record(&mut tx, id, "rotate_key", acting, Some(&before), &after)
        .await?;
    tx.commit().await?;
    Ok((after, key))
}

/// A merchant and its audit trail, newest first.
pub async fn show(pool: &PgPool, id: &str) -> Result<MerchantStory> {
    let mut conn = pool.acquire().await?;
    let (merchant, _) = view(&mut conn, id).await?;
    let actions = sqlx::query_as(
        "SELECT at, action, operator, reason FROM merchant_actions WHERE merchant_id = $1 ORDER BY at DESC, id DESC",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(MerchantStory { merchant, actions })
}

/// A merchant's balance in one currency, as the seed's merchant balance
/// query asks it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Balance {
    pub currency: String,
    /// What it holds and may give back or be paid: its settled sales less
    /// fees and refunds, the postings not yet rolled up included.
    pub available: Decimal,
    /// Held for refunds in flight (Try reserved, the channel not yet answered).
    pub reserved: Decimal,
    /// On its way to the merchant's bank: payouts frozen and not yet paid
    /// out or released.
    pub paying_out: Decimal,
    /// Paid out to the merchant's bank account (returned payouts not counted).
    pub paid_out: Decimal,
    /// Its part (less fees) of payments taken but not yet settled.
    pub in_flight: Decimal,
    /// Credited today (the business day) for settled sales, less what
    /// same-day reversals took back.
    pub settled_today: Decimal,
}

/// Merchant `id`'s balance per currency; `today` is the business day's
/// first and next day's first instant.
pub async fn balance(
    pool: &PgPool,
    id: &str,
    (from, until): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<Balance>> {
    let mut conn = pool.acquire().await?;
    view(&mut conn, id).await?;
    Ok(sqlx::query_as(
        "WITH own AS (SELECT id, currency::text AS currency, available, frozen FROM accounts
                      WHERE owner_kind = 'merchant' AND owner_id = $1),
              -- the open payments (few, by their partial index), then their details
              flight AS (SELECT d.currency::text AS currency, sum(d.amount - d.fee_amount) AS amount
                         FROM payments p JOIN transaction_details d ON d.payment_id = p.id
                         WHERE p.status IN ('validated', 'frozen', 'paid')
                           AND d.seller_id = $1 AND d.status = 'awaiting_payment'
                         GROUP BY d.currency)
         SELECT COALESCE(o.currency, f.currency) AS currency,
                COALESCE(o.available, 0)
                  + COALESCE((SELECT sum(p.amount) FROM postings p
                              WHERE p.account_id = o.id AND NOT p.rolled_up), 0) AS available,
                COALESCE(o.frozen, 0) - COALESCE(w.paying_out, 0) AS reserved,
                COALESCE(w.paying_out, 0) AS paying_out,
                COALESCE(w.paid_out, 0) AS paid_out,
                COALESCE(f.amount, 0) AS in_flight,
                COALESCE((SELECT sum(p.amount) FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                          WHERE p.account_id = o.id AND p.created_at >= $2 AND p.created_at < $3
                            AND j.kind IN ('payment', 'reversal')), 0) AS settled_today
         FROM own o FULL JOIN flight f ON f.currency = o.currency
         LEFT JOIN LATERAL (
             SELECT sum(amount) FILTER (WHERE status IN ('frozen', 'sending', 'unknown', 'exception')) AS paying_out,
                    sum(amount) FILTER (WHERE status = 'succeeded') AS paid_out
             FROM withdrawals WHERE owner_kind = 'merchant' AND user_id = $1 AND currency = o.currency) w ON true
         ORDER BY 1",
    )
    .bind(id)
    .bind(from)
    .bind(until)
    .fetch_all(&mut *conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, fee: &str, url: Option<&str>) -> NewMerchant {
        NewMerchant {
            id: id.into(),
            name: "Tea House".into(),
            fee_rate: fee.parse().unwrap(),
            notify_url: url.map(str::to_owned),
            acts_for_users: false,
            payout_account: None,
        }
    }

    #[test]
    fn what_add_is_given_is_checked_with_the_field_named() {
        assert!(
            check(&new(
                "tea-house",
                "0.0060",
                Some("https://tea.example/hooks")
            ))
            .is_ok()
        );
        let refused = |m: NewMerchant| check(&m).unwrap_err().to_string();
        assert!(refused(new("", "0", None)).starts_with("merchant id"));
        assert!(refused(new("a\u{7}b", "0", None)).starts_with("merchant id"));
        assert!(refused(new("m", "1", None)).starts_with("--fee-rate"));
        assert!(refused(new("m", "-0.01", None)).starts_with("--fee-rate"));
        assert!(refused(new("m", "0.00001", None)).starts_with("--fee-rate"));
        assert!(refused(new("m", "0", Some("ftp://x"))).starts_with("--notify-url"));
        assert!(refused(new("m", "0", Some("not a url"))).starts_with("--notify-url"));
    }

    #[test]
    fn a_fingerprint_tells_keys_apart_and_gives_nothing_to_sign_with() {
        let a = fingerprint("pfk_aaaa");
        assert_eq!(a.len(), 12);
        assert_ne!(a, fingerprint("pfk_aaab"));
        assert!(!a.contains("aaaa"));
    }
}
