//! `payfleet status`: the fleet at a glance, from the broker and from
//! PostgreSQL; a non-zero exit when something needs attention (parked dead
//! letters, an outbox lagging, a payment stuck), so it can drive an alert.
//!
//! Queue figures come from the RabbitMQ management API when it is enabled,
//! and otherwise from AMQP passive declares, which give ready and consumer
//! counts but not unacked ones: those are then shown as unavailable.

use std::collections::BTreeMap;

use payfleet_common::{Settings, Topology};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::Result;

#[derive(Debug, Default, Serialize)]
pub struct StageStatus {
    pub ready: i64,
    /// Only the management API knows it; `None` without it.
    pub unacked: Option<i64>,
    pub consumers: i64,
    /// Messages waiting in each delay level.
    pub retrying: Vec<i64>,
    pub dlq_ready: i64,
    pub dead_letters_parked: i64,
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub vhost: String,
    /// Where the queue figures came from: `management_api` or `amqp`.
    pub queue_source: &'static str,
    /// What could not be shown, and why.
    pub unavailable: Vec<String>,
    pub stages: BTreeMap<String, StageStatus>,
    pub ingress_ready: i64,
    pub outbox_backlog: i64,
    pub outbox_oldest_seconds: Option<f64>,
    pub payments_by_status: BTreeMap<String, i64>,
    pub oldest_open_payment: Option<OpenPayment>,
    pub refunds_owed: i64,
    /// Merchants' refunds whose status queries ran out: reserved, for ops.
    pub refunds_in_exception: i64,
    pub attention: Vec<String>,
}

/// The payment open longest (its fields in the order `--json` has always
/// shown them).
#[derive(Debug, Serialize)]
pub struct OpenPayment {
    pub age_seconds: f64,
    pub payment_id: payfleet_common::PaymentId,
    pub status: String,
}

pub struct Thresholds {
    pub outbox_lag: chrono::Duration,
    pub stuck: chrono::Duration,
}

pub async fn collect(
    settings: &Settings,
    pool: &PgPool,
    thresholds: &Thresholds,
) -> Result<FleetStatus> {
    let topology = Topology::from_settings(settings)?;
    let vhost = settings.amqp_vhost();
    let mut unavailable = Vec::new();
    let queues = match from_management_api(settings, &vhost).await {
        Ok(queues) => queues,
        Err(why) => {
            unavailable.push(format!(
                "unacked counts: {why}; enable it with `rabbitmq-plugins enable rabbitmq_management`"
            ));
            from_passive_declares(settings, &topology).await?
        }
    };
    let count = |queue: &str| queues.get(queue).copied().unwrap_or_default();

    let parked: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stage, count(*) FROM dead_letters WHERE status = 'parked' GROUP BY stage",
    )
    .fetch_all(pool)
    .await?;
    let mut stages = BTreeMap::new();
    for stage in topology.stages() {
        let work = Topology::work_queue(stage);
        stages.insert(
            stage.clone(),
            StageStatus {
                ready: count(&work).ready,
                unacked: count(&work).unacked,
                consumers: count(&work).consumers,
                retrying: (0..topology.retry_delays.len())
                    .map(|level| count(&Topology::retry_queue(stage, level)).ready)
                    .collect(),
                dlq_ready: count(&Topology::dead_letter_queue(stage)).ready,
                dead_letters_parked: parked
                    .iter()
                    .find(|(s, _)| s == stage)
                    .map(|(_, n)| *n)
                    .unwrap_or(0),
            },
        );
    }
    let (backlog, oldest): (i64, Option<f64>) =
        sqlx::query_as("SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await?;
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM payments GROUP BY status")
            .fetch_all(pool)
            .await?;
    let oldest_open: Option<(payfleet_common::PaymentId, String, f64)> = sqlx::query_as(
        "SELECT id, status, extract(epoch FROM now() - created_at)::float8 FROM payments
         WHERE status IN ('validated', 'frozen', 'paid') ORDER BY created_at LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let (refunds_owed, refunds_in_exception): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM refunds WHERE status = 'owed'),
                (SELECT count(*) FROM refunds WHERE status = 'exception')",
    )
    .fetch_one(pool)
    .await?;

    let mut attention = Vec::new();
    let parked_total: i64 = parked.iter().map(|(_, n)| n).sum();
    if parked_total > 0 {
        attention.push(format!(
            "{parked_total} dead letter(s) parked (payfleet dlq list)"
        ));
    }
    if let Some(age) = oldest.filter(|age| *age > thresholds.outbox_lag.num_seconds() as f64) {
        attention.push(format!(
            "outbox lagging: oldest unsent row is {age:.0} s old"
        ));
    }
    if let Some((id, status, age)) = &oldest_open {
        if *age > thresholds.stuck.num_seconds() as f64 {
            attention.push(format!("payment {id} stuck in {status} for {age:.0} s"));
        }
    }
    if refunds_owed > 0 {
        attention.push(format!(
            "{refunds_owed} refund(s) owed after a late success"
        ));
    }
    if refunds_in_exception > 0 {
        attention.push(format!(
            "{refunds_in_exception} refund(s) unresolved at their channel, still reserved (payfleet refund list --status exception)"
        ));
    }
    Ok(FleetStatus {
        ingress_ready: count(&topology.spec.ingress.queue).ready,
        vhost,
        queue_source: if unavailable.is_empty() {
            "management_api"
        } else {
            "amqp"
        },
        unavailable,
        stages,
        outbox_backlog: backlog,
        outbox_oldest_seconds: oldest,
        payments_by_status: by_status.into_iter().collect(),
        oldest_open_payment: oldest_open.map(|(payment_id, status, age_seconds)| OpenPayment {
            age_seconds,
            payment_id,
            status,
        }),
        refunds_owed,
        refunds_in_exception,
        attention,
    })
}

/// One queue's figures.
#[derive(Debug, Default, Clone, Copy)]
struct QueueCounts {
    ready: i64,
    unacked: Option<i64>,
    consumers: i64,
}

/// Every queue of the vhost from the management API, or why it could not
/// be asked.
async fn from_management_api(
    settings: &Settings,
    vhost: &str,
) -> Result<BTreeMap<String, QueueCounts>, String> {
    let (user, password) = settings.amqp_credentials();
    let url = format!(
        "{}/api/queues/{}",
        settings.management_url.trim_end_matches('/'),
        encode(vhost)
    );
    let unreachable = |e: reqwest::Error| {
        format!("the RabbitMQ management API at management_url ({url}) answered no: {e}")
    };
    let queues: Vec<Value> = reqwest::Client::new()
        .get(&url)
        .basic_auth(user, Some(password))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unreachable)?
        .json()
        .await
        .map_err(unreachable)?;
    let field = |q: &Value, name: &str| q.get(name).and_then(Value::as_i64);
    Ok(queues
        .iter()
        .filter_map(|q| {
            let counts = QueueCounts {
                ready: field(q, "messages_ready").unwrap_or(0),
                unacked: Some(field(q, "messages_unacknowledged").unwrap_or(0)),
                consumers: field(q, "consumers").unwrap_or(0),
            };
            Some((q.get("name")?.as_str()?.to_owned(), counts))
        })
        .collect())
}

/// The topology's queues by AMQP passive declares: ready and consumer
/// counts, straight from the broker, without the management plugin.
async fn from_passive_declares(
    settings: &Settings,
    topology: &Topology,
) -> Result<BTreeMap<String, QueueCounts>> {
    let connection = crate::connect_broker(settings, "payfleet-status").await?;
    let mut queues = vec![topology.spec.ingress.queue.clone()];
    for stage in topology.stages() {
        queues.push(Topology::work_queue(stage));
        queues.push(Topology::dead_letter_queue(stage));
        for level in 0..topology.retry_delays.len() {
            queues.push(Topology::retry_queue(stage, level));
        }
    }
    let mut counts = BTreeMap::new();
    let mut channel = connection.create_channel().await?;
    for queue in queues {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => {
                counts.insert(
                    queue,
                    QueueCounts {
                        ready: i64::from(q.message_count()),
                        unacked: None,
                        consumers: i64::from(q.consumer_count()),
                    },
                );
            }
            // A missing queue closes the channel: count it as empty (as the
            // management API's listing would, by leaving it out) and go on.
            Err(_) => channel = connection.create_channel().await?,
        }
    }
    let _ = connection.close(200, "status read".into()).await;
    Ok(counts)
}

fn encode(vhost: &str) -> String {
    vhost
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
