//! What the demo asks once its payments have their outcomes: refunds and
//! reversals (see [`super::refunds`]), and through the platform's wallet
//! application withdrawals, top-ups and transfers, and a seller's payout;
//! then it waits until each has ended with its event.

use std::{
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use payfleet_common::{
    CancellationToken,
    broker::{self, Publisher},
    messages::kind,
};

use super::{
    Live, Load, WALLET_APP_KEY, payouts, publish_signed_by, refunds, report::quiet, top_ups,
    transfers, withdrawals,
};

impl Load {
    /// Asks for refunds of some of the run's settled payments (see
    /// [`refunds`]), the withdrawals, top-ups, payouts and transfers, and
    /// waits until each has ended with its event and nothing is in flight
    /// (`true`), or its deadline has passed.
    pub async fn refund(
        &self,
        stop: CancellationToken,
        mut live: impl FnMut(Live<'_>) + Send,
    ) -> anyhow::Result<bool> {
        let started = Instant::now();
        let requests = refunds::plan(&self.pool, &self.like).await?;
        let withdrawals = withdrawals::plan(&self.run_id);
        let top_ups = top_ups::plan(&self.run_id);
        let limits = crate::domain::withdrawal::Limits::new(&self.settings);
        let payouts = payouts::plan(&self.pool, &limits, &self.run_id).await?;
        transfers::prepare(&self.pool).await?;
        let transfers = transfers::plan(&self.run_id);
        let publisher = Publisher::new(
            broker::Endpoint::from_settings(&self.settings)?,
            "payfleet-demo-upstream-refunds",
            stop,
        );
        let published = AtomicU64::new(0);
        let exchange = &self.topology.exchanges().ingress;
        let mut sent = refunds::publish(&publisher, exchange, &requests, &published).await;
        let signed = [
            (
                kind::WITHDRAWAL_REQUESTED,
                WALLET_APP_KEY.to_owned(),
                as_json(&withdrawals)?,
            ),
            (
                kind::TOPUP_REQUESTED,
                WALLET_APP_KEY.to_owned(),
                as_json(&top_ups)?,
            ),
            (
                kind::PAYOUT_REQUESTED,
                payouts::seller_key(),
                as_json(&payouts)?,
            ),
            (
                kind::TRANSFER_REQUESTED,
                WALLET_APP_KEY.to_owned(),
                as_json(&transfers)?,
            ),
        ];
        for (kind, key, bodies) in &signed {
            if sent.is_ok() {
                let to = (exchange.as_str(), *kind);
                sent = publish_signed_by(&publisher, to, key, bodies, &published).await;
            }
        }
        publisher.close().await;
        sent?;
        let asked = requests.len()
            + withdrawals::expected(&withdrawals) as usize
            + top_ups::expected(&top_ups) as usize
            + payouts.len()
            + transfers::expected(&transfers) as usize;
        let top_ups_like = top_ups::like(&self.run_id);
        let payouts_like = payouts::like(&self.run_id);
        let transfers_like = transfers::like(&self.run_id);
        let deadline = started + Duration::from_secs(60 + requests.len() as u64 / 10);
        let finished = loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (refunds_ended, _) = refunds::finished(&self.pool, &self.like).await?;
            let (withdrawals_ended, _) = withdrawals::finished(&self.pool, &self.like).await?;
            let top_ups_ended = top_ups::finished(&self.pool, &top_ups_like).await?;
            let payouts_ended = payouts::finished(&self.pool, &payouts_like).await?;
            let transfers_ended = transfers::finished(&self.pool, &transfers_like).await?;
            let finished =
                refunds_ended + withdrawals_ended + top_ups_ended + payouts_ended + transfers_ended;
            live(Live::Refunds {
                elapsed: started.elapsed(),
                asked,
                finished,
            });
            if finished == asked as i64 && quiet(&self.pool, self.started_at).await? {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        live(Live::Ended);
        Ok(finished)
    }
}

/// Requests as JSON bodies, so that requests of every kind publish alike.
fn as_json<T: serde::Serialize>(requests: &[T]) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(requests
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?)
}
