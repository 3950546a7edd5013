//! The gauges of [`super::Signals`], refreshed every `signals_interval_ms`
//! by one background task of the fleet process, and the help text of every
//! metric the workers record. Gauges a reading no longer names (a channel
//! disabled, a stage's dead letters replayed) are set to zero, never left
//! stale.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge};
use payfleet_common::{CancellationToken, broker, runtime::Shared};

use super::{ERROR_KINDS, OPEN_STATUSES, QueueKind, Signals};

/// Gauge of the last reading's time; an alert fires when it stops moving.
pub const COLLECTED_GAUGE: &str = "payfleet_signals_collected_timestamp_seconds";

/// Help text of every metric of the workers and of these gauges; once per
/// process, before the first is recorded (idempotent).
pub fn describe() {
    describe_gauge!(
        "payfleet_build_info",
        "Always 1; the build's version in the label `version`"
    );
    describe_gauge!(
        "payfleet_queue_messages",
        "Messages ready in a queue of the chain, by stage, kind (ingress, work, retry, dlq) and delay level"
    );
    describe_gauge!(
        "payfleet_queue_consumers",
        "Consumers of a queue of the chain, by stage, kind (ingress, work, retry, dlq) and delay level"
    );
    describe_gauge!(
        "payfleet_outbox_unsent_rows",
        "Outbox rows not yet published"
    );
    describe_gauge!(
        "payfleet_outbox_oldest_unsent_age_seconds",
        "Age of the oldest unsent outbox row (0 when every row is sent)"
    );
    describe_gauge!(
        "payfleet_dead_letters_parked",
        "Dead letters parked in the store, by stage and error kind"
    );
    describe_gauge!(
        "payfleet_payments_open",
        "Payments under way (validated, frozen, paid), by status"
    );
    describe_gauge!(
        "payfleet_payments_stuck",
        "Payments open longer than stuck_payment_after_ms, by status"
    );
    describe_gauge!(
        "payfleet_payment_oldest_open_age_seconds",
        "Age of the payment open longest (0 when none is open)"
    );
    describe_gauge!(
        "payfleet_exceptions_open",
        "Held for ops: payments and refunds in exception, by kind (payment, refund)"
    );
    describe_gauge!(
        "payfleet_transfers_stuck",
        "Transfers accepted but unfinished (requested, or frozen on the payer's wallet) longer than stuck_payment_after_ms"
    );
    describe_gauge!(
        "payfleet_refunds_owed",
        "Refunds owed after a late success, waiting for the refund sender"
    );
    describe_gauge!(
        "payfleet_channel_breaker_open",
        "1 while a channel's circuit breaker is open (routing skips it), else 0"
    );
    describe_gauge!(
        COLLECTED_GAUGE,
        "When the signals collector last read RabbitMQ, PostgreSQL and Redis (Unix time)"
    );
    describe_counter!(
        "payfleet_signals_errors_total",
        "Readings of the signals collector that failed"
    );
    describe_counter!(
        "payfleet_payment_outcomes_total",
        "Payments finished (final event emitted), by status, reason code and channel"
    );
    describe_histogram!(
        "payfleet_payment_end_to_end_seconds",
        "From a payment request's receipt to its final event, by status"
    );
    describe_counter!(
        "payfleet_refunds_total",
        "Refunds and reversals at their channel by kind and result"
    );
    describe_counter!(
        "payfleet_status_requests_total",
        "Upstream status requests by result and code"
    );
    describe_counter!(
        "payfleet_status_replies_undelivered_total",
        "Status replies the broker could not route to their reply_to"
    );
}

/// Sets `payfleet_build_info`.
pub fn record_build_info() {
    gauge!("payfleet_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Reads the signals every `signals_interval_ms` and sets their gauges,
/// until `stop`. Keeps one broker connection, made again when lost.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.settings.signals_interval;
    if every.is_zero() {
        return;
    }
    let mut exported = Exported::default();
    let mut connection: Option<lapin::Connection> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match read(&shared, &mut connection).await {
            Ok(signals) => {
                exported.export(&signals);
                gauge!(COLLECTED_GAUGE).set(chrono::Utc::now().timestamp() as f64);
            }
            Err(error) => {
                metrics::counter!("payfleet_signals_errors_total").increment(1);
                tracing::warn!(error = %error, "signals not read; the gauges keep their last values");
            }
        }
    }
    if let Some(connection) = connection {
        let _ = connection.close(200, "stopping".into()).await;
    }
}

async fn read(
    shared: &Shared,
    connection: &mut Option<lapin::Connection>,
) -> anyhow::Result<Signals> {
    let live = match connection.take() {
        Some(c) if c.status().connected() => c,
        _ => {
            let endpoint = broker::Endpoint {
                url: shared.settings.amqp_url.clone(),
                tls: shared.extra_ca.clone(),
            };
            tokio::time::timeout(
                Duration::from_secs(10),
                broker::connect_once(&endpoint, "payfleet-signals"),
            )
            .await??
        }
    };
    let stuck_after = chrono::Duration::from_std(shared.settings.stuck_payment_after)?;
    let signals = super::collect(
        &shared.topology,
        &shared.pool,
        &live,
        &shared.locks,
        &shared.settings.redis_key_prefix,
        stuck_after,
    )
    .await;
    *connection = Some(live);
    Ok(signals?)
}

/// The label sets exported so far that a reading may no longer name.
#[derive(Default)]
struct Exported {
    channels: BTreeSet<String>,
    parked_stages: BTreeSet<String>,
}

impl Exported {
    fn export(&mut self, s: &Signals) {
        for q in &s.queues {
            let mut labels = vec![
                ("stage", q.stage.clone()),
                ("kind", q.kind.as_str().to_owned()),
            ];
            if let Some(level) = q.level {
                labels.push(("level", level.to_string()));
            }
            gauge!("payfleet_queue_messages", &labels).set(q.messages as f64);
            gauge!("payfleet_queue_consumers", &labels).set(q.consumers as f64);
        }
        gauge!("payfleet_outbox_unsent_rows").set(s.outbox_unsent as f64);
        gauge!("payfleet_outbox_oldest_unsent_age_seconds")
            .set(s.outbox_oldest_seconds.unwrap_or(0.0));
        let stages: BTreeSet<String> = s
            .queues
            .iter()
            .filter(|q| q.kind == QueueKind::Dlq)
            .map(|q| q.stage.clone())
            .chain(s.dead_letters_parked.keys().cloned())
            .chain(self.parked_stages.iter().cloned())
            .collect();
        for stage in &stages {
            let parked = s.dead_letters_parked.get(stage);
            for kind in ERROR_KINDS {
                let n = parked.and_then(|p| p.get(kind)).copied().unwrap_or(0);
                gauge!("payfleet_dead_letters_parked", "stage" => stage.clone(), "error_kind" => kind)
                    .set(n as f64);
            }
        }
        self.parked_stages = stages;
        for status in OPEN_STATUSES {
            let open = s.payments_open.get(status).copied().unwrap_or_default();
            gauge!("payfleet_payments_open", "status" => status).set(open.count as f64);
            gauge!("payfleet_payments_stuck", "status" => status).set(open.stuck as f64);
        }
        gauge!("payfleet_payment_oldest_open_age_seconds").set(
            s.oldest_open_payment
                .as_ref()
                .map_or(0.0, |p| p.age_seconds),
        );
        gauge!("payfleet_exceptions_open", "kind" => "payment").set(s.payments_in_exception as f64);
        gauge!("payfleet_exceptions_open", "kind" => "refund").set(s.refunds_in_exception as f64);
        gauge!("payfleet_exceptions_open", "kind" => "withdrawal")
            .set(s.withdrawals_in_exception as f64);
        gauge!("payfleet_refunds_owed").set(s.refunds_owed as f64);
        gauge!("payfleet_transfers_stuck").set(s.transfers_stuck as f64);
        for gone in self
            .channels
            .difference(&s.breakers_open.keys().cloned().collect())
        {
            gauge!("payfleet_channel_breaker_open", "channel" => gone.clone()).set(0.0);
        }
        for (channel, open) in &s.breakers_open {
            gauge!("payfleet_channel_breaker_open", "channel" => channel.clone()).set(if *open {
                1.0
            } else {
                0.0
            });
        }
        self.channels = s.breakers_open.keys().cloned().collect();
    }
}
