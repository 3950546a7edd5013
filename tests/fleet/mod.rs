//! The harness of the fleet tests: one scenario's own services (a
//! [`TestEnv`]: database, vhost, Redis prefix), the payfleet fleet started
//! and stopped in this process (all stages or some, with or without its
//! HTTP listener), a BI queue of every event, requests published to the
//! ingress as the shop would sign them, the waits on a payment, the
//! `payfleet` CLI against the scenario, and the closing checks: drained,
//! stopped, rolled up, every invariant holding.
//!
//! Each fleet test file includes it (`mod fleet;`) and wraps [`Harness`]
//! with what is its own (the chain's contract check, the channels' gateway).

// Each test file uses its own part of the harness.
#![allow(dead_code)]

pub mod sandbox;

use std::time::Duration;

use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use payfleet_common::{
    PaymentId, Settings, broker,
    messages::{self, PaymentRequested},
};
use payfleet_tests::{RunningFleet, TestEnv, free_ports, wait_until};
use payfleet_workers::{domain::ledger, invariants, stages::order_validation};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);
/// The shop every scenario's requests come from, and its signing key.
pub const SHOP: &str = "shop";
pub const SHOP_KEY: &str = "shop-secret";
/// BI's queue of every event (see [`Harness::bind_events`]).
const EVENTS_QUEUE: &str = "test.events";

/// The types of `events`, in order.
pub fn types_of(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default())
        .collect()
}

/// (total, available, frozen) of `user`'s wallet in `currency`.
pub async fn wallet_of(
    pool: &PgPool,
    user: &str,
    currency: &str,
) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
    Ok(sqlx::query_as(
        "SELECT total, available, frozen FROM accounts WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2",
    )
    .bind(user)
    .bind(currency)
    .fetch_one(pool)
    .await?)
}

/// The postings of the journal entries referencing `reference` (a
/// withdrawal's or a top-up's id): (entry kind, account, amount), in the
/// order of the entries, each by account.
pub async fn entry_postings(
    pool: &PgPool,
    reference: impl std::fmt::Display,
) -> anyhow::Result<Vec<(String, String, Decimal)>> {
    Ok(sqlx::query_as(
        "SELECT j.kind, a.owner_id, p.amount FROM postings p JOIN accounts a ON a.id = p.account_id
         JOIN journal_entries j ON j.id = p.entry_id WHERE j.reference = $1 ORDER BY j.id, a.owner_id",
    )
    .bind(reference.to_string())
    .fetch_all(pool)
    .await?)
}

/// Folds every posting into its account's balance, waiting out a roll-up
/// running elsewhere (it skips what another holds, so one pass may miss
/// what the fleet's own roll-up is folding at that moment).
pub async fn roll_up_all(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        payfleet_workers::domain::ledger::roll_up(pool, 1_000_000).await?;
        let pending: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM postings WHERE NOT rolled_up)")
                .fetch_one(pool)
                .await?;
        if !pending {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "postings still not rolled up after {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn d(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

/// Starts the payfleet fleet of `settings` in this process with these
/// stages (all when empty); with an HTTP listener on `http_port`, returns
/// once it answers ready.
pub async fn start_fleet(
    settings: Settings,
    stages: &[&str],
    http_port: Option<u16>,
) -> anyhow::Result<RunningFleet> {
    let fleet = payfleet_workers::fleet(settings, stages, http_port.is_some()).await?;
    let running = RunningFleet::start(fleet)?;
    if let Some(port) = http_port {
        let url = format!("http://127.0.0.1:{port}/readyz");
        wait_until(WAIT, "the fleet ready", || async {
            Ok(reqwest::get(&url)
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false))
        })
        .await?;
    }
    Ok(running)
}

/// A scenario's services and the fleet it runs in this process.
pub struct Harness {
    pub env: TestEnv,
    /// The port of the fleet's operators' listener (`/metrics`, health),
    /// when the fleet serves one.
    pub http_port: Option<u16>,
    /// The port of its webhook ingress (the channels' webhooks), then.
    pub ingress_port: Option<u16>,
    running: Option<RunningFleet>,
}

impl Harness {
    /// A scenario's own services, with a quick expiry sweep and roll-up;
    /// with `http`, the fleet will listen on a free port of its own.
    pub async fn new(
        tag: &str,
        http: bool,
        adjust: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        // Two distinct ports: the listeners must differ.
        let ports = http.then(free_ports::<2>);
        let (http_port, ingress_port) = (ports.map(|p| p[0]), ports.map(|p| p[1]));
        let env = TestEnv::with(tag, |s| {
            if let (Some(port), Some(ingress)) = (http_port, ingress_port) {
                s.http_addr = format!("127.0.0.1:{port}");
                s.ingress_addr = format!("127.0.0.1:{ingress}");
                s.callback_base_url = format!("http://127.0.0.1:{ingress}");
            }
            s.sweep_interval = std::time::Duration::from_millis(200);
            s.rollup_interval = std::time::Duration::from_millis(100);
            adjust(s);
        })
        .await?;
        Ok(Self {
            env,
            http_port,
            ingress_port,
            running: None,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.env.pool
    }

    /// Starts a fleet with these stages (all when empty); with the HTTP
    /// listener, returns once it answers ready.
    pub async fn start(&mut self, stages: &[&str]) -> anyhow::Result<()> {
        let settings = self.env.settings.clone();
        self.running = Some(start_fleet(settings, stages, self.http_port).await?);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Lets what is queued finish, stops the fleet, folds the balances and
    /// checks every invariant; the services stay up for the caller's checks.
    pub async fn stop_and_check(&mut self) -> anyhow::Result<()> {
        self.env.wait_drained(WAIT).await.ok();
        self.stop().await;
        ledger::roll_up(self.pool(), 1_000_000).await?;
        let report = invariants::all(self.pool()).await?;
        assert!(report.ok(), "invariants broken: {:?}", report.failures());
        Ok(())
    }

    /// Binds BI's queue to every event; before anything is published.
    pub async fn bind_events(&self) -> anyhow::Result<()> {
        let connection = self.env.amqp().await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                EVENTS_QUEUE.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                EVENTS_QUEUE.into(),
                "payfleet.events".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "bound".into()).await;
        Ok(())
    }

    /// Every event BI received so far.
    pub async fn events(&self) -> anyhow::Result<Vec<Value>> {
        let connection = self.env.amqp().await?;
        let channel = connection.create_channel().await?;
        let mut events = Vec::new();
        while let Some(message) = channel
            .basic_get(EVENTS_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            events.push(serde_json::from_slice(&message.delivery.data)?);
        }
        let _ = connection.close(200, "read".into()).await;
        Ok(events)
    }

    /// Waits until a request naming `id` in `column` of the rejections
    /// (`top_up_request_id`, `withdrawal_request_id`, `merchant_refund_id`)
    /// is refused `reason`, once.
    pub async fn wait_refused(&self, reason: &str, column: &str, id: &str) -> anyhow::Result<()> {
        let sql = format!(
            "SELECT count(*) FROM request_rejections WHERE reason = '{reason}' AND {column} = '{id}'"
        );
        wait_until(WAIT, &format!("{id} refused {reason}"), || async {
            Ok(self.env.scalar_i64(&sql).await? == 1)
        })
        .await
    }

    /// The events BI received whose type starts with `prefix`
    /// (`withdrawal.`, `topup.`), in order. Reading takes them off the queue.
    pub async fn events_of(&self, prefix: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter(|e| {
                e["event_type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(prefix))
            })
            .collect())
    }

    /// Publishes `request` to the ingress, signed by the shop.
    pub async fn publish(&self, request: &PaymentRequested) -> anyhow::Result<()> {
        self.env.publish_payment_request(SHOP_KEY, request).await
    }

    /// Publishes `body` to the ingress as a payment request, with this
    /// signature header (none when `None`).
    pub async fn publish_raw(&self, body: &[u8], signature: Option<&str>) -> anyhow::Result<()> {
        let mut props = broker::properties(
            &Uuid::now_v7().to_string(),
            None,
            Some(messages::kind::PAYMENT_REQUESTED),
        );
        if let Some(signature) = signature {
            let mut headers = FieldTable::default();
            broker::set_header(&mut headers, messages::SIGNATURE_HEADER, signature);
            props = props.with_headers(headers);
        }
        self.env
            .publish_raw(
                "payfleet.ingress",
                messages::kind::PAYMENT_REQUESTED,
                body,
                props,
            )
            .await
    }

    pub async fn status(&self, id: PaymentId) -> anyhow::Result<Option<(String, Option<String>)>> {
        Ok(
            sqlx::query_as("SELECT status, reason FROM payments WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Waits until payment `id` is in one of `statuses` with an event
    /// emitted; returns its status and reason.
    pub async fn wait_for(
        &self,
        id: PaymentId,
        statuses: &[&str],
        what: &str,
    ) -> anyhow::Result<(String, Option<String>)> {
        wait_until(WAIT, what, || async {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM payments p WHERE p.id = $1 AND p.status = ANY($2)
                   AND EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_id = p.id))",
            )
            .bind(id)
            .bind(statuses)
            .fetch_one(self.pool())
            .await?;
            Ok(done)
        })
        .await?;
        Ok(self.status(id).await?.unwrap_or_default())
    }

    /// Waits until the payment of the shop's `order` is terminal and
    /// notified; returns its status and reason.
    pub async fn outcome(&self, order: &str) -> anyhow::Result<(String, Option<String>)> {
        let id = order_validation::payment_id(SHOP, order);
        let terminal = [
            "settled",
            "failed",
            "cancelled",
            "rejected",
            "challenged",
            "exception",
        ];
        let what = format!("a terminal, notified payment for {order}");
        self.wait_for(id, &terminal, &what).await
    }

    /// Waits for `id` to reach `status` with its event emitted; returns its reason.
    pub async fn reaches(&self, id: PaymentId, status: &str) -> anyhow::Result<Option<String>> {
        let what = format!("payment {id} {status}");
        Ok(self.wait_for(id, &[status], &what).await?.1)
    }

    /// Runs the `payfleet` CLI against this scenario's services, as an
    /// operator; its exit code, stdout and stderr.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        cli(&self.env, args).await
    }
}

/// The `payfleet` binary set up against `env`'s services, as an operator runs it.
pub fn payfleet(env: &TestEnv) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_payfleet"));
    command
        .envs(env.worker_env())
        .env("RUST_LOG", "warn")
        .env("USER", "oncall-test")
        .stdin(std::process::Stdio::null());
    command
}

/// Runs `payfleet <args>` against `env`'s services; its exit code, stdout and stderr.
pub async fn cli(env: &TestEnv, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = payfleet(env).args(args).output().await?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Lets a scenario type whose field `fleet` is its [`Harness`] be used as
/// one (`world.start(..)`, `world.env`, …).
#[allow(unused_macros)]
macro_rules! on_harness {
    ($world:ty) => {
        impl std::ops::Deref for $world {
            type Target = fleet::Harness;

            fn deref(&self) -> &fleet::Harness {
                &self.fleet
            }
        }

        impl std::ops::DerefMut for $world {
            fn deref_mut(&mut self) -> &mut fleet::Harness {
                &mut self.fleet
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_harness;
