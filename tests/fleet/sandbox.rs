//! A scenario's world with third-party channels: the fleet (with its
//! webhook ingress) and the sandbox gateway it calls over real HTTP, the
//! gateway's own statement checked against the books at the end. Used by
//! the channel and the refund tests.

use std::time::Duration;

use chrono::Utc;
use payfleet_common::{
    AttemptId, CancellationToken, PaymentId, Settings,
    messages::{PaymentRequested, RequestedItem, SCHEMA_VERSION},
};
use payfleet_sandbox_gateway::{
    ChannelConfig, Gateway, GatewayConfig, Mode, Notice, sign_notice, standard_reversal_cutoff,
};
use payfleet_workers::{invariants, seed, stages::order_validation};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

use super::{Harness, SHOP, SHOP_KEY, d};
use crate::fleet;

pub const WALLET: &str = "sandbox-wallet";
pub const CARD: &str = "sandbox-card";
/// Served by the gateway, but in the routing table only once a test adds them.
pub const NEW_CARD: &str = "sandbox-card-new";
pub const NEW_WALLET: &str = "sandbox-wallet-new";

/// A scenario's fleet (with its HTTP listener) and the sandbox gateway it
/// calls, serving the routing table's channels.
pub struct World {
    pub fleet: Harness,
    pub gateway: Gateway,
    pub gateway_stop: CancellationToken,
    /// Trades a test planted at the gateway behind the fleet's back: left
    /// out of the books-against-statement check (reconcile must find them).
    pub planted_trades: Vec<String>,
}

fleet::on_harness!(World);

impl World {
    pub async fn new(
        tag: &str,
        adjust: impl FnOnce(&mut Settings),
        webhook_delay: Duration,
    ) -> anyhow::Result<Self> {
        let fleet = Harness::new(tag, true, |s| {
            s.channel_timeout = std::time::Duration::from_millis(1_000);
            s.status_query_delays = payfleet_common::config::millis(&[200, 400, 800]);
            s.max_attempts = 8;
            adjust(s);
        })
        .await?;
        let gateway = Gateway::new(GatewayConfig {
            channels: vec![
                ChannelConfig {
                    name: WALLET.into(),
                    secret: "wallet-secret".into(),
                    mode: Mode::Async,
                    fee_rate: d("0.0040"),
                    reversal_cutoff: Some(standard_reversal_cutoff()),
                },
                ChannelConfig {
                    name: CARD.into(),
                    secret: "card-secret".into(),
                    mode: Mode::Sync,
                    fee_rate: d("0.0120"),
                    reversal_cutoff: Some(standard_reversal_cutoff()),
                },
                ChannelConfig {
                    name: NEW_CARD.into(),
                    secret: "new-card-webhook-secret".into(),
                    mode: Mode::Sync,
                    fee_rate: d("0.0060"),
                    reversal_cutoff: Some(standard_reversal_cutoff()),
                },
                ChannelConfig {
                    name: NEW_WALLET.into(),
                    secret: "new-wallet-secret".into(),
                    mode: Mode::Async,
                    fee_rate: d("0.0020"),
                    reversal_cutoff: Some(standard_reversal_cutoff()),
                },
            ],
            webhook_delay,
            slow: Duration::from_millis(300),
            timeout_hold: Duration::from_secs(3),
            ..GatewayConfig::standard()
        });
        let gateway_stop = CancellationToken::new();
        let (bound, _) = gateway
            .serve("127.0.0.1:0".parse()?, gateway_stop.clone())
            .await?;
        seed(fleet.pool(), &format!("http://{bound}")).await?;
        Ok(Self {
            fleet,
            gateway,
            gateway_stop,
            planted_trades: Vec::new(),
        })
    }

    /// A world whose first status query comes after 20 s, so an attempt
    /// stays open until its webhook (after `webhook_delay`) or the test acts.
    pub async fn with_open_attempts(
        tag: &str,
        adjust: impl FnOnce(&mut Settings),
        webhook_delay: Duration,
    ) -> anyhow::Result<Self> {
        Self::new(
            tag,
            |s| {
                s.retry_delays = payfleet_common::config::millis(&[200, 400, 800, 20_000]);
                s.status_query_delays = payfleet_common::config::millis(&[20_000]);
                adjust(s);
            },
            webhook_delay,
        )
        .await
    }

    /// The port the fleet's operators' listener (`/metrics`, health) is on.
    pub fn http_port(&self) -> u16 {
        self.fleet.http_port.expect("the world's fleet listens")
    }

    /// The port the fleet's webhook ingress is on (the channels' webhooks).
    pub fn ingress_port(&self) -> u16 {
        self.fleet.ingress_port.expect("the world's fleet listens")
    }

    /// `payfleet worker channel-call` against the scenario, on a listener
    /// of its own: a process a test can kill mid-call.
    pub fn channel_call_process(&self) -> anyhow::Result<tokio::process::Child> {
        Ok(fleet::payfleet(&self.env)
            .args(["worker", "channel-call"])
            .env(
                "PAYFLEET_HTTP_ADDR",
                format!("127.0.0.1:{}", payfleet_tests::free_port()),
            )
            // the in-process fleet holds the world's webhook ingress
            .env("PAYFLEET_INGRESS_ADDR", "127.0.0.1:0")
            .kill_on_drop(true)
            .spawn()?)
    }

    /// Adds a channel to the routing table, at the gateway the others use.
    pub async fn add_channel(
        &self,
        name: &str,
        secret: &str,
        method: &str,
        fee_rate: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO channels (name, kind, base_url, webhook_secret, methods, fee_rate)
             SELECT $1, 'sandbox', base_url, $2, ARRAY[$3], $4::numeric FROM channels WHERE name = $5",
        )
        .bind(name)
        .bind(secret)
        .bind(method)
        .bind(fee_rate)
        .bind(CARD)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Two teas and a fan: 80.00 CNY.
    pub async fn pay(&self, order: &str, method: &str, token: &str) -> anyhow::Result<PaymentId> {
        self.pay_for(order, method, token, 1).await
    }

    /// Two teas (30.00 each) and `fans` fans (20.00 each), in CNY.
    pub async fn pay_for(
        &self,
        order: &str,
        method: &str,
        token: &str,
        fans: u32,
    ) -> anyhow::Result<PaymentId> {
        let request = PaymentRequested {
            schema_version: SCHEMA_VERSION,
            merchant_id: SHOP.into(),
            merchant_order_id: order.into(),
            user_id: "alice".into(),
            currency: "CNY".into(),
            items: vec![
                RequestedItem {
                    sku: "tea".into(),
                    quantity: 2,
                },
                RequestedItem {
                    sku: "fan".into(),
                    quantity: fans,
                },
            ],
            coupon_code: None,
            payment_method: method.into(),
            payer_token: Some(token.into()),
            expected_amount: d("60.00") + d("20.00") * Decimal::from(fans),
            notify_url: None,
            requested_at: Utc::now(),
        };
        self.publish(&request).await?;
        Ok(order_validation::payment_id(SHOP, order))
    }

    pub async fn attempt(&self, id: PaymentId) -> anyhow::Result<(AttemptId, String, String)> {
        Ok(sqlx::query_as("SELECT id, channel, status FROM payment_attempts WHERE payment_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(id)
            .fetch_one(self.pool())
            .await?)
    }

    pub fn charges(&self, channel: &str, attempt: AttemptId) -> u32 {
        self.gateway
            .trade(channel, &attempt.to_string())
            .map(|t| t.charges)
            .unwrap_or(0)
    }

    /// Posts a webhook to the fleet's ingress as `channel` (signed with `secret`).
    pub async fn webhook(
        &self,
        channel: &str,
        secret: &str,
        payment: PaymentId,
        notice: &Notice,
        timestamp: i64,
    ) -> anyhow::Result<u16> {
        let body = serde_json::to_vec(notice)?;
        let response = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/callbacks/{channel}/{payment}",
                self.ingress_port()
            ))
            .header("x-sandbox-timestamp", timestamp.to_string())
            .header("x-sandbox-signature", sign_notice(secret, timestamp, &body))
            .body(body)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Publishes `body` of message `kind` (`refund.requested`,
    /// `payment.reverse`, …) to the ingress as the shop would: signed with
    /// its key, under a new message id.
    pub async fn publish_signed(
        &self,
        kind: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<()> {
        self.publish_signed_with(SHOP_KEY, kind, body).await
    }

    /// Publishes `body` of message `kind` signed with `key`, under a new message id.
    pub async fn publish_signed_with(
        &self,
        key: &str,
        kind: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(body)?;
        let mut headers = lapin::types::FieldTable::default();
        payfleet_common::broker::set_header(
            &mut headers,
            payfleet_common::messages::SIGNATURE_HEADER,
            payfleet_common::messages::sign(key, &body),
        );
        let props = payfleet_common::broker::properties(
            &uuid::Uuid::now_v7().to_string(),
            None,
            Some(kind),
        )
        .with_headers(headers);
        self.env
            .publish_raw("payfleet.ingress", kind, &body, props)
            .await?;
        Ok(())
    }

    /// Waits until refund (or reversal) `id` is finished — succeeded,
    /// failed or refused — with its event emitted; its status and detail.
    pub async fn refund_finished(
        &self,
        id: uuid::Uuid,
    ) -> anyhow::Result<(String, Option<String>)> {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            let row: Option<(String, Option<String>, bool)> = sqlx::query_as(
                "SELECT status, detail, EXISTS (SELECT 1 FROM payment_events e WHERE e.refund_id = f.id)
                 FROM refunds f WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
            match row {
                Some((status, detail, true))
                    if ["succeeded", "failed", "refused"].contains(&status.as_str()) =>
                {
                    return Ok((status, detail));
                }
                row if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!("refund {id} not finished within {:?}: {row:?}", super::WAIT)
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn events(&self, id: PaymentId) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT event_type FROM payment_events WHERE payment_id = $1 ORDER BY event_type",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_and_check().await?;
        self.assert_books_match_the_channels_statements().await?;
        if self.planted_trades.is_empty() {
            let since = chrono::DateTime::<Utc>::UNIX_EPOCH;
            let report = invariants::against_channel_statements(self.pool(), since).await?;
            assert!(
                report.ok(),
                "books against statements: {:?}",
                report.failures()
            );
        }
        self.gateway_stop.cancel();
        self.fleet.env.teardown().await
    }

    /// The books against the independent party: for each channel, the
    /// sandbox's own statement (its store, never our rows) says what it
    /// handed over — Σ (amount − fee) of its succeeded trades — what it kept
    /// as its fee and what it paid back as refunds. Our clearing account
    /// must show exactly that received and paid back, the channel's fee
    /// must be the platform's cost, and the platform's accounts together
    /// must hold the platform fees of settled payments less those costs.
    pub async fn assert_books_match_the_channels_statements(&self) -> anyhow::Result<()> {
        use std::collections::BTreeMap;
        // per currency: what each channel kept as its fee
        let mut channel_fees: BTreeMap<String, Decimal> = BTreeMap::new();
        let channels: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, base_url FROM channels WHERE kind = 'sandbox' AND base_url IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await?;
        for (channel, base_url) in channels {
            // per currency: (handed over, fees, refunded) as the channel says
            let mut theirs: BTreeMap<String, (Decimal, Decimal, Decimal)> = BTreeMap::new();
            // per currency: (paid out of what it holds for us, its fees) on payouts
            let mut their_payouts: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
            let today = Utc::now().date_naive();
            for day in [today.pred_opt().unwrap_or(today), today] {
                let statement: Value = reqwest::get(format!(
                    "{base_url}/channels/{channel}/statement?date={day}"
                ))
                .await?
                .error_for_status()?
                .json()
                .await?;
                for trade in statement["trades"].as_array().into_iter().flatten() {
                    let out = trade["out_trade_no"].as_str().unwrap_or_default();
                    if trade["status"] != "SUCCEEDED"
                        || self.planted_trades.iter().any(|p| p == out)
                    {
                        continue;
                    }
                    let money = |field: &str| -> anyhow::Result<Decimal> {
                        Ok(trade[field].as_str().unwrap_or_default().parse()?)
                    };
                    let currency = trade["currency"].as_str().unwrap_or_default().to_owned();
                    let sums = theirs.entry(currency.clone()).or_default();
                    sums.0 += money("amount")? - money("fee")?;
                    sums.1 += money("fee")?;
                    sums.2 += money("refunded")?;
                    *channel_fees.entry(currency).or_default() += money("fee")?;
                }
                for payout in statement["payouts"].as_array().into_iter().flatten() {
                    let money = |field: &str| -> anyhow::Result<Decimal> {
                        Ok(payout[field].as_str().unwrap_or_default().parse()?)
                    };
                    let currency = payout["currency"].as_str().unwrap_or_default().to_owned();
                    let sums = their_payouts.entry(currency.clone()).or_default();
                    // a returned payout's money came back; the channel kept its fee
                    if payout["status"] == "SUCCEEDED" {
                        sums.0 += money("amount")?;
                    }
                    sums.0 += money("fee")?;
                    sums.1 += money("fee")?;
                    *channel_fees.entry(currency).or_default() += money("fee")?;
                }
            }
            let our_payouts: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
                "SELECT a.currency::text,
                        COALESCE(sum(p.amount) FILTER (WHERE a.owner_kind = 'external'), 0),
                        COALESCE(-sum(p.amount) FILTER (WHERE a.owner_kind = 'platform_cost'), 0)
                 FROM postings p JOIN accounts a ON a.id = p.account_id JOIN journal_entries j ON j.id = p.entry_id
                 WHERE a.owner_id IN ('clearing:' || $1, 'channel-costs:' || $1)
                   AND j.kind IN ('withdrawal', 'withdrawal_returned')
                 GROUP BY a.currency",
            )
            .bind(&channel)
            .fetch_all(self.pool())
            .await?;
            let our_payouts: BTreeMap<String, (Decimal, Decimal)> = our_payouts
                .into_iter()
                .map(|(currency, paid_out, fees)| (currency, (paid_out, fees)))
                .collect();
            assert_eq!(
                our_payouts, their_payouts,
                "{channel}: per currency, the clearing account paid out the payouts (and their fees) and the platform \
                 bore the fees, as the channel's statement lists them"
            );
            let ours: Vec<(String, Decimal, Decimal, Decimal)> = sqlx::query_as(
                "SELECT a.currency::text,
                        COALESCE(-sum(p.amount) FILTER (WHERE a.owner_kind = 'external' AND p.amount < 0), 0),
                        COALESCE(-sum(p.amount) FILTER (WHERE a.owner_kind = 'platform_cost'), 0),
                        COALESCE(sum(p.amount) FILTER (WHERE a.owner_kind = 'external' AND p.amount > 0), 0)
                 FROM postings p JOIN accounts a ON a.id = p.account_id JOIN journal_entries j ON j.id = p.entry_id
                 WHERE a.owner_id IN ('clearing:' || $1, 'channel-costs:' || $1)
                   AND j.kind NOT IN ('withdrawal', 'withdrawal_returned')
                   -- a reversed trade is listed REVERSED, with nothing moved: its payment and
                   -- reversal entries net to nothing (checked trade by trade by the invariants)
                   AND NOT EXISTS (SELECT 1 FROM refunds v WHERE v.kind = 'reversal' AND v.status = 'succeeded'
                                    AND v.attempt_id = j.attempt_id)
                 GROUP BY a.currency",
            )
            .bind(&channel)
            .fetch_all(self.pool())
            .await?;
            let ours: BTreeMap<String, (Decimal, Decimal, Decimal)> = ours
                .into_iter()
                .map(|(currency, received, fees, paid_back)| {
                    (currency, (received, fees, paid_back))
                })
                .filter(|(_, sums)| *sums != Default::default())
                .collect();
            assert_eq!(
                ours, theirs,
                "{channel}: per currency, the clearing account received (charge - fee), the platform bore the fee, \
                 and the clearing account paid back the refunds, as the channel's statement says"
            );
        }
        let platform: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
            "SELECT c.currency::text,
                    (SELECT COALESCE(sum(p.amount), 0) FROM postings p JOIN accounts a ON a.id = p.account_id
                      WHERE a.owner_kind IN ('platform', 'platform_cost') AND a.currency = c.currency),
                    (SELECT COALESCE(sum(d.fee_amount), 0) FROM transaction_details d
                      JOIN payments p ON p.id = d.payment_id WHERE p.status = 'settled' AND d.currency = c.currency)
                    - (SELECT COALESCE(sum(r.fee_back), 0) FROM refund_allocations r
                        WHERE r.status = 'booked' AND r.currency = c.currency)
                    -- the withdrawal fees of payouts made and not returned
                    + (SELECT COALESCE(sum(w.fee), 0) FROM withdrawals w
                        WHERE w.status = 'succeeded' AND w.currency = c.currency)
             FROM (SELECT DISTINCT currency FROM accounts WHERE owner_kind IN ('platform', 'platform_cost')) c",
        )
        .fetch_all(self.pool())
        .await?;
        for (currency, earned, seller_fees) in platform {
            assert_eq!(
                earned,
                seller_fees - channel_fees.get(&currency).copied().unwrap_or_default(),
                "{currency}: the platform earned its fees (less the shares given back with refunds) less the channels' fees"
            );
        }
        Ok(())
    }
}

/// The shop, sellers m1 (fee 1 %) and m2 (no fee), alice (no wallet), tea
/// and fans, and the wallet and card channels at `gateway_url`.
pub async fn seed(pool: &PgPool, gateway_url: &str) -> anyhow::Result<()> {
    let product =
        |sku, seller, name, price| seed::product(sku, seller, d(price)).name(name).stock(100);
    seed::Catalogue {
        merchants: vec![
            // the shop doubles as the platform's wallet application
            seed::merchant(SHOP, SHOP_KEY).name("Shop").acts_for_users(),
            seed::merchant("m1", "k1").name("M1").fee_rate(d("0.0100")),
            seed::merchant("m2", "k2").name("M2"),
        ],
        users: vec![seed::user("alice").name("Alice")],
        products: vec![
            product("tea", "m1", "Tea", "30.00"),
            product("fan", "m2", "Fan", "20.00"),
        ],
        coupons: Vec::new(),
        channels: vec![
            seed::sandbox_channel(
                WALLET,
                gateway_url,
                "wallet-secret",
                &["wallet"],
                d("0.0040"),
            )
            .reversal_cutoff(Some(standard_reversal_cutoff())),
            seed::sandbox_channel(CARD, gateway_url, "card-secret", &["card"], d("0.0120"))
                .reversal_cutoff(Some(standard_reversal_cutoff())),
        ],
    }
    .seed(pool)
    .await
}

pub async fn postings(pool: &PgPool, payment: PaymentId) -> anyhow::Result<Vec<(String, Decimal)>> {
    Ok(sqlx::query_as(
        "SELECT a.owner_id, p.amount FROM postings p JOIN accounts a ON a.id = p.account_id
         JOIN journal_entries j ON j.id = p.entry_id WHERE j.reference = $1 ORDER BY a.owner_id",
    )
    .bind(payment.to_string())
    .fetch_all(pool)
    .await?)
}
