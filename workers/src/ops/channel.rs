//! `payfleet channel add | disable | enable | list`: the routing table
//! without SQL. A channel takes the payment methods it is added for (and
//! `payout`: it pays withdrawals out), at
//! its fee rate; disabled by hand it is out of routing until enabled (its
//! circuit breaker does the same by itself while the channel fails). Every
//! action is audited in `channel_actions` (the webhook secret never).

use chrono::{DateTime, NaiveTime, Utc};
use payfleet_common::lock::Locks;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::{
    Error, Result,
    merchant::{Acting, Audited},
};
use crate::{
    channels::{BALANCE, routing},
    stages::order_validation::{METHODS, withdrawal::PAYOUT_METHOD},
};

/// What `channel add` is given: a sandbox-protocol channel over HTTP.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    pub base_url: String,
    /// What its webhooks are signed with.
    pub webhook_secret: String,
    pub methods: Vec<String>,
    pub fee_rate: Decimal,
    /// After this time of day (business zone) it reverses nothing paid that day.
    pub reversal_cutoff: Option<NaiveTime>,
}

/// A routing row as the commands show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ChannelView {
    pub name: String,
    pub kind: String,
    pub base_url: Option<String>,
    pub methods: Vec<String>,
    pub fee_rate: Decimal,
    /// `active`, or `disabled` by hand.
    pub status: String,
    pub status_reason: Option<String>,
    pub reversal_cutoff: Option<NaiveTime>,
    pub created_at: DateTime<Utc>,
    /// The circuit breaker: `closed`, `open`, or `unknown` while Redis
    /// does not answer (the wallet has none).
    #[sqlx(skip)]
    pub breaker: Option<&'static str>,
}

/// Checks what `add` is given; the refusal names the option.
fn check(new: &NewChannel) -> Result<()> {
    let usable = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !usable(&new.name) || new.name == BALANCE {
        return Err(Error::refused(format!(
            "channel name `{}`: 1 to 64 letters, digits, - or _, and not `{BALANCE}` (the wallet)",
            new.name
        )));
    }
    let url = reqwest::Url::parse(&new.base_url)
        .map_err(|e| Error::refused(format!("--base-url `{}`: {e}", new.base_url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::refused(format!(
            "--base-url `{}`: an http(s) URL with a host",
            new.base_url
        )));
    }
    if new.webhook_secret.trim().len() < 16 {
        return Err(Error::refused(
            "--webhook-secret-file: the secret must hold at least 16 characters",
        ));
    }
    // its payment methods, and payouts (it pays withdrawals out)
    let takes: Vec<&str> = METHODS
        .iter()
        .copied()
        .filter(|m| *m != BALANCE)
        .chain([PAYOUT_METHOD])
        .collect();
    if new.methods.is_empty() || new.methods.iter().any(|m| !takes.contains(&m.as_str())) {
        return Err(Error::refused(format!(
            "--methods {}: one or more of {}",
            new.methods.join(","),
            takes.join(", ")
        )));
    }
    if new.fee_rate < Decimal::ZERO || new.fee_rate >= Decimal::ONE || new.fee_rate.scale() > 4 {
        return Err(Error::refused(format!(
            "--fee-rate {}: a rate from 0 up to (not including) 1, at most 4 decimals",
            new.fee_rate
        )));
    }
    Ok(())
}

const COLUMNS: &str =
    "name, kind, base_url, methods, fee_rate, status, status_reason, reversal_cutoff, created_at";

async fn view(conn: &mut PgConnection, name: &str) -> Result<ChannelView> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM channels WHERE name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::not_found(format!("no channel `{name}`")))
}

const CHANNEL_ACTIONS: Audited = Audited {
    table: "channel_actions",
    subject: "channel",
};

/// Adds a channel to the routing table, active.
pub async fn add(pool: &PgPool, new: &NewChannel, acting: &Acting<'_>) -> Result<ChannelView> {
    check(new)?;
    let mut tx = pool.begin().await?;
    let methods: Vec<&str> = new.methods.iter().map(String::as_str).collect();
    let channel = crate::seed::sandbox_channel(
        &new.name,
        &new.base_url,
        new.webhook_secret.trim(),
        &methods,
        new.fee_rate,
    )
    .reversal_cutoff(new.reversal_cutoff);
    let created = crate::seed::channels(&mut tx, &[channel]).await?;
    if created.is_empty() {
        // (the transaction, and the writer's update of the existing row, roll back)
        return Err(Error::refused(format!(
            "channel `{}` already exists: `payfleet channel list`",
            new.name
        )));
    }
    let added = view(&mut tx, &new.name).await?;
    CHANNEL_ACTIONS
        .record(
            &mut tx,
            &new.name,
            "add",
            acting,
            None::<&ChannelView>,
            &added,
        )
        .await?;
    tx.commit().await?;
    Ok(added)
}

/// Takes a channel out of routing (`enabled = false`) or puts it back.
/// Payments already at it finish there; the wallet is never disabled.
pub async fn set_enabled(
    pool: &PgPool,
    name: &str,
    enabled: bool,
    acting: &Acting<'_>,
) -> Result<ChannelView> {
    if name == BALANCE {
        return Err(Error::refused(
            "the wallet channel is always routed: disable a payment method at its merchants instead",
        ));
    }
    let (to, action) = if enabled {
        ("active", "enable")
    } else {
        ("disabled", "disable")
    };
    let mut tx = pool.begin().await?;
    let before = view(&mut tx, name).await?;
    if before.status == to {
        return Err(Error::refused(format!("channel `{name}` is already {to}")));
    }
    sqlx::query("UPDATE channels SET status = $2, status_reason = $3 WHERE name = $1")
        .bind(name)
        .bind(to)
        .bind((!enabled).then_some(acting.reason))
        .execute(&mut *tx)
        .await?;
    let after = view(&mut tx, name).await?;
    CHANNEL_ACTIONS
        .record(&mut tx, name, action, acting, Some(&before), &after)
        .await?;
    tx.commit().await?;
    Ok(after)
}

/// The routing table by name, each channel with its breaker's state when
/// `breakers` (the fleet's locks and key prefix) is given.
pub async fn list(pool: &PgPool, breakers: Option<(&Locks, &str)>) -> Result<Vec<ChannelView>> {
    let mut channels: Vec<ChannelView> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM channels ORDER BY name"))
            .fetch_all(pool)
            .await?;
    if let Some((redis, prefix)) = breakers {
        let mut ping = redis::pipe();
        ping.cmd("PING");
        let answers = redis.query::<(String,)>(&ping).await.is_ok();
        for channel in channels.iter_mut().filter(|c| c.name != BALANCE) {
            channel.breaker = Some(match answers {
                false => "unknown",
                true if routing::healthy(redis, prefix, &channel.name).await => "closed",
                true => "open",
            });
        }
    }
    Ok(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, url: &str, methods: &[&str], fee: &str) -> NewChannel {
        NewChannel {
            name: name.into(),
            base_url: url.into(),
            webhook_secret: "a-long-enough-secret".into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            fee_rate: fee.parse().unwrap(),
            reversal_cutoff: None,
        }
    }

    #[test]
    fn what_add_is_given_is_checked_with_the_option_named() {
        assert!(
            check(&new(
                "acme-card",
                "https://acme.example",
                &["card"],
                "0.0120"
            ))
            .is_ok()
        );
        let refused = |c: NewChannel| check(&c).unwrap_err().to_string();
        assert!(
            refused(new("balance", "https://a.example", &["card"], "0"))
                .starts_with("channel name")
        );
        assert!(
            refused(new("a b", "https://a.example", &["card"], "0")).starts_with("channel name")
        );
        assert!(refused(new("a", "ftp://a.example", &["card"], "0")).starts_with("--base-url"));
        assert!(refused(new("a", "https://a.example", &["balance"], "0")).starts_with("--methods"));
        assert!(refused(new("a", "https://a.example", &[], "0")).starts_with("--methods"));
        assert!(refused(new("a", "https://a.example", &["card"], "1")).starts_with("--fee-rate"));
        let mut short = new("a", "https://a.example", &["card"], "0");
        short.webhook_secret = "short".into();
        assert!(refused(short).starts_with("--webhook-secret-file"));
    }
}
