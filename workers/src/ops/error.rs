//! What can go wrong in an ops command: what was named is not there, what
//! was asked is refused as things stand, or a step failed (the database,
//! the broker, a channel), with what it was doing. The message is the
//! operator's: the binary shows it, then its causes.

use std::fmt::Display;

/// Any cause, kept with its own chain of causes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers to what was named (a payment, a dead letter).
    #[error("{0}")]
    NotFound(String),
    /// What was asked cannot be done as things stand; the message says why
    /// and what to do instead.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A step failed: what it was doing, then (as the source) why.
    #[error("{doing}")]
    Step {
        doing: String,
        #[source]
        source: BoxError,
    },
    /// The broker, a channel, the settings or the topology failed.
    #[error(transparent)]
    Other(BoxError),
}

impl Error {
    pub(crate) fn not_found(message: impl Display) -> Self {
        Self::NotFound(message.to_string())
    }

    pub(crate) fn refused(message: impl Display) -> Self {
        Self::Refused(message.to_string())
    }

    /// A failure told in one line: its message only, not its causes.
    pub(crate) fn told(message: impl Display) -> Self {
        Self::Other(message.to_string().into())
    }
}

macro_rules! caused_by {
    ($($cause:ty),* $(,)?) => {
        $(impl From<$cause> for Error {
            fn from(cause: $cause) -> Self {
                Self::Other(Box::new(cause))
            }
        })*
    };
}

caused_by!(
    lapin::Error,
    reqwest::Error,
    serde_json::Error,
    payfleet_common::config::ConfigError,
    payfleet_common::topology::TopologyError,
    payfleet_common::broker::PublishError,
    crate::channels::registry::AdapterError,
    crate::signals::SignalsError,
    payfleet_common::lock::LockError,
);

impl From<anyhow::Error> for Error {
    fn from(cause: anyhow::Error) -> Self {
        Self::Other(cause.into())
    }
}

/// Says what a step was doing when it failed (`anyhow`'s `context`, typed).
pub(crate) trait Doing<T> {
    fn doing(self, what: impl Display) -> Result<T>;
    fn doing_with<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<BoxError>> Doing<T> for std::result::Result<T, E> {
    fn doing(self, what: impl Display) -> Result<T> {
        self.map_err(|source| Error::Step {
            doing: what.to_string(),
            source: source.into(),
        })
    }

    fn doing_with<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|source| Error::Step {
            doing: what().to_string(),
            source: source.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Doing, Error};

    #[test]
    fn a_step_shows_what_it_was_doing_then_its_causes() {
        let failed: Result<(), std::io::Error> = Err(std::io::Error::other("refused"));
        let error = anyhow::Error::from(failed.doing("connecting").unwrap_err());
        assert_eq!(format!("{error:#}"), "connecting: refused");
        let told = anyhow::Error::from(Error::refused("--reason must say why"));
        assert_eq!(format!("{told:#}"), "--reason must say why");
    }
}
