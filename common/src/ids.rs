//! Typed ids, so that the compiler rejects a payment's id where an
//! attempt's is wanted (and the other way round). On the wire and in SQL
//! each is its plain uuid: `serde(transparent)`, `sqlx(transparent)`, and
//! `Display`, `Debug` and `FromStr` print and read the bare uuid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The plain uuid, where an API takes one.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::from_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A payment's id (`payments.id`, `payment_id` in messages). Derived
    /// from the merchant and its order id by `order_validation::payment_id`.
    PaymentId
);

uuid_id!(
    /// A channel attempt's id (`payment_attempts.id`, `attempt_id` in
    /// messages; the `out_trade_no` at a channel).
    AttemptId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_and_write_as_plain_uuids() {
        let uuid = Uuid::now_v7();
        let id = PaymentId::from(uuid);
        assert_eq!(id.to_string(), uuid.to_string());
        assert_eq!(format!("{id:?}"), format!("{uuid:?}"));
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            serde_json::to_string(&uuid).unwrap()
        );
        let back: AttemptId = serde_json::from_str(&serde_json::to_string(&uuid).unwrap()).unwrap();
        assert_eq!(back.as_uuid(), uuid);
        assert_eq!(uuid.to_string().parse::<PaymentId>().unwrap(), id);
    }
}
