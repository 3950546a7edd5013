//! A merchant's request keys: the current one, and during a rotation's
//! grace period the one before it. Every signed request (payments,
//! refunds, reversals, status queries) is checked against both.

use chrono::{DateTime, Utc};
use payfleet_common::messages;
use sqlx::PgConnection;

/// What a signature is checked against, and the merchant's status.
#[derive(Debug, Clone)]
pub struct RequestKeys {
    pub status: String,
    current: String,
    previous: Option<(String, DateTime<Utc>)>,
}

impl RequestKeys {
    /// Merchant `id`'s keys as of now; `None` when there is no such merchant.
    pub async fn load(conn: &mut PgConnection, id: &str) -> Result<Option<Self>, sqlx::Error> {
        type Row = (String, String, Option<String>, Option<DateTime<Utc>>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT status, signing_key, previous_signing_key, previous_key_expires_at
             FROM merchants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await?;
        Ok(row.map(|(status, current, previous, until)| RequestKeys {
            status,
            current,
            previous: previous.zip(until),
        }))
    }

    /// Whether `signature` signs `body` with the current key, or with the
    /// previous one while its grace period lasts.
    pub fn verify(&self, body: &[u8], signature: &str, now: DateTime<Utc>) -> bool {
        messages::verify(&self.current, body, signature)
            || self
                .previous
                .as_ref()
                .is_some_and(|(key, until)| now < *until && messages::verify(key, body, signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_key_signs_only_within_its_grace_period() {
        let now = Utc::now();
        let keys = RequestKeys {
            status: "active".into(),
            current: "new".into(),
            previous: Some(("old".into(), now + chrono::Duration::seconds(60))),
        };
        let body = b"{}";
        assert!(keys.verify(body, &messages::sign("new", body), now));
        assert!(keys.verify(body, &messages::sign("old", body), now));
        let later = now + chrono::Duration::seconds(61);
        assert!(!keys.verify(body, &messages::sign("old", body), later));
        assert!(!keys.verify(body, &messages::sign("other", body), now));
    }
}
