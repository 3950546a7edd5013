//! The gateway's webhooks: a notice POSTed to the receiver's URL, signed
//! with the channel's secret over `"{timestamp}.{body}"`.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;

use super::{Gateway, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_notice};

impl Gateway {
    /// POSTs a webhook body to `url`, signed with the channel's `secret`
    /// over `"{timestamp}.{body}"`. The answer is ignored: the sandbox does
    /// not send a webhook again (a status query finds what one missed).
    pub(crate) async fn post_signed(
        &self,
        url: &str,
        secret: &str,
        notice: &impl serde::Serialize,
    ) {
        let _ = self.post_signed_once(url, secret, notice).await;
    }

    /// POSTs a webhook body as [`Gateway::post_signed`] does, again and
    /// again (signed afresh each time) until the receiver takes it with a
    /// 2xx, for about two minutes: for a notice no status query would find
    /// later — a payout the bank sent back after it was paid.
    pub(crate) async fn post_signed_until_taken(
        &self,
        url: &str,
        secret: &str,
        notice: &impl serde::Serialize,
    ) {
        let tries = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(15))
            .with_max_times(14)
            .with_jitter();
        let _ = (|| self.post_signed_once(url, secret, notice))
            .retry(tries)
            .await;
    }

    async fn post_signed_once(
        &self,
        url: &str,
        secret: &str,
        notice: &impl serde::Serialize,
    ) -> Result<(), reqwest::Error> {
        let body = serde_json::to_vec(notice).unwrap_or_default();
        let timestamp = Utc::now().timestamp();
        self.http
            .post(url)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, sign_notice(secret, timestamp, &body))
            .timeout(Duration::from_secs(5))
            .body(body)
            .send()
            .await?
            .error_for_status()
            .map(drop)
    }
}
