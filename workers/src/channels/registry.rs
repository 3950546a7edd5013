//! Channel adapters, built on demand from the live `channels` table. The
//! first call for a channel builds its adapter from the channel's row and
//! keeps it; a later call that finds the row changed (another kind or
//! base_url) builds it anew. A channel added while the fleet runs is served
//! without a restart, and routing offers only channels an adapter can call
//! ([`buildable`]), so no payment is routed where it could not be charged,
//! queried, closed or refunded.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use payfleet_common::runtime::StageError;
use sqlx::PgExecutor;

use crate::channels::{ChannelAdapter, DEPOSIT_CHANNEL, SandboxChannel, WALLET_CHANNEL};

/// What an adapter is built from: a channel's row, as far as it matters.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChannelRow {
    pub kind: String,
    pub base_url: Option<String>,
    pub webhook_secret: Option<String>,
}

/// Whether an adapter can be built for a channel of `kind` at `base_url`:
/// the wallet needs nothing, a sandbox channel needs where to call.
pub fn buildable(kind: &str, base_url: Option<&str>) -> bool {
    match kind {
        super::BALANCE | super::DEPOSIT => true,
        "sandbox" => base_url.is_some_and(|url| !url.trim().is_empty()),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("channel `{0}` is not in the routing table")]
    Unknown(String),
    #[error(
        "channel `{channel}` of kind `{kind}` has no adapter (a sandbox channel needs a base_url)"
    )]
    Unbuildable { channel: String, kind: String },
    #[error("building the adapter of channel `{channel}`: {error}")]
    Build { channel: String, error: String },
    #[error("reading channel `{channel}`: {error}")]
    Database {
        channel: String,
        #[source]
        error: sqlx::Error,
    },
}

impl From<AdapterError> for StageError {
    /// A channel that is missing or cannot be called stays so: permanent.
    /// Reading its row is classified like any database error.
    fn from(error: AdapterError) -> Self {
        match error {
            AdapterError::Database { channel, error } => match StageError::from(error) {
                StageError::Transient(e) => {
                    StageError::Transient(format!("reading channel `{channel}`: {e}"))
                }
                StageError::Permanent(e) => {
                    StageError::Permanent(format!("reading channel `{channel}`: {e}"))
                }
                StageError::Contention(e) => {
                    StageError::Contention(format!("reading channel `{channel}`: {e}"))
                }
                StageError::LockWait(e) => {
                    StageError::LockWait(format!("reading channel `{channel}`: {e}"))
                }
            },
            other => StageError::permanent(other),
        }
    }
}

type Built = (ChannelRow, Arc<dyn ChannelAdapter>);

/// The adapters built so far, by channel name.
pub struct Adapters {
    timeout: Duration,
    built: Mutex<HashMap<String, Built>>,
    /// The wallet's adapter, built once (see [`Adapters::get`]).
    wallet: Arc<dyn ChannelAdapter>,
}

impl Adapters {
    /// `timeout` bounds every HTTP call of the adapters built.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            built: Mutex::new(HashMap::new()),
            wallet: Arc::new(WALLET_CHANNEL),
        }
    }

    /// The adapter for `channel` as its row reads now.
    pub async fn get<'e>(
        &self,
        db: impl PgExecutor<'e>,
        channel: &str,
    ) -> Result<Arc<dyn ChannelAdapter>, AdapterError> {
        // The wallet is the platform's own: its adapter needs nothing from
        // its row, which ops can neither add, change nor disable
        // (`ops::channel`), so its hot path reads no row.
        if channel == super::BALANCE {
            return Ok(self.wallet.clone());
        }
        let row: Option<ChannelRow> =
            sqlx::query_as("SELECT kind, base_url, webhook_secret FROM channels WHERE name = $1")
                .bind(channel)
                .fetch_optional(db)
                .await
                .map_err(|error| AdapterError::Database {
                    channel: channel.to_owned(),
                    error,
                })?;
        // The map is whole after every statement, so a poisoned lock is still usable.
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(row) = row else {
            built.remove(channel);
            return Err(AdapterError::Unknown(channel.to_owned()));
        };
        if let Some((seen, adapter)) = built.get(channel) {
            if *seen == row {
                return Ok(adapter.clone());
            }
        }
        let adapter = build(channel, &row, self.timeout)?;
        built.insert(channel.to_owned(), (row, adapter.clone()));
        Ok(adapter)
    }
}

fn build(
    channel: &str,
    row: &ChannelRow,
    timeout: Duration,
) -> Result<Arc<dyn ChannelAdapter>, AdapterError> {
    if !buildable(&row.kind, row.base_url.as_deref()) {
        return Err(AdapterError::Unbuildable {
            channel: channel.to_owned(),
            kind: row.kind.clone(),
        });
    }
    match (row.kind.as_str(), row.base_url.as_deref()) {
        ("sandbox", Some(url)) => {
            SandboxChannel::new(channel, url, row.webhook_secret.as_deref(), timeout)
                .map(|adapter| Arc::new(adapter) as Arc<dyn ChannelAdapter>)
                .map_err(|e| AdapterError::Build {
                    channel: channel.to_owned(),
                    error: e.to_string(),
                })
        }
        (super::DEPOSIT, _) => Ok(Arc::new(DEPOSIT_CHANNEL)),
        _ => Ok(Arc::new(WALLET_CHANNEL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, base_url: Option<&str>) -> ChannelRow {
        ChannelRow {
            kind: kind.into(),
            base_url: base_url.map(str::to_owned),
            webhook_secret: None,
        }
    }

    #[test]
    fn an_adapter_is_built_exactly_for_what_routing_may_offer() {
        let timeout = Duration::from_secs(1);
        for (kind, url) in [
            (crate::channels::BALANCE, None),
            ("sandbox", Some("http://127.0.0.1:8700")),
            ("sandbox", None),
            ("sandbox", Some(" ")),
            ("acquirer", Some("http://127.0.0.1:8700")),
        ] {
            assert_eq!(
                build("c", &row(kind, url), timeout).is_ok(),
                buildable(kind, url),
                "{kind} at {url:?}"
            );
        }
    }

    #[test]
    fn a_channel_that_cannot_be_called_is_a_permanent_error() {
        let error = build("c", &row("sandbox", None), Duration::from_secs(1))
            .err()
            .map(StageError::from);
        assert!(
            matches!(&error, Some(StageError::Permanent(m)) if m.contains("`c`")),
            "{error:?}"
        );
    }
}
