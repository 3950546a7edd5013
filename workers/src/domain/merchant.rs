//! A merchant's request keys: the current one, and during a rotation's
//! grace period the one before it. Every signed request (payments,
//! refunds, reversals, status queries) is checked against both.

use payfleet_common::messages;
use sqlx::PgConnection;

/// What a signature is checked against, and the merchant's status.
#[derive(Debug, Clone)]
pub struct RequestKeys {
    pub status: String,
    current: String,
    /// The key before the last rotation, while its grace period lasts (by
    /// the database's clock, the one that set it).
    previous: Option<String>,
}

impl RequestKeys {
    /// Merchant `id`'s keys as of now; `None` when there is no such merchant.
    pub async fn load(conn: &mut PgConnection, id: &str) -> Result<Option<Self>, sqlx::Error> {
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT status, signing_key,
                    CASE WHEN previous_key_expires_at > now() THEN previous_signing_key END
             FROM merchants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await?;
        Ok(row.map(|(status, current, previous)| RequestKeys {
            status,
            current,
            previous,
        }))
    }

    /// Whether `signature` signs `body` with the current key, or with the
    /// previous one while its grace period lasts.
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        messages::verify(&self.current, body, signature)
            || self
                .previous
                .as_ref()
                .is_some_and(|key| messages::verify(key, body, signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_key_and_the_previous_one_in_its_grace_period_sign() {
        let body = b"{}";
        let mut keys = RequestKeys {
            status: "active".into(),
            current: "new".into(),
            previous: Some("old".into()),
        };
        assert!(keys.verify(body, &messages::sign("new", body)));
        assert!(keys.verify(body, &messages::sign("old", body)));
        assert!(!keys.verify(body, &messages::sign("other", body)));
        keys.previous = None;
        assert!(!keys.verify(body, &messages::sign("old", body)));
    }
}
