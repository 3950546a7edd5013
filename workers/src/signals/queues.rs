//! Queue depths and consumers by AMQP passive declares: the broker's own
//! figures for each queue of the topology, with no management plugin.

use payfleet_common::Topology;
use serde::Serialize;

/// What a queue is to its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// `payfleet.ingress`, read by the ingress stage.
    Ingress,
    /// A stage's work queue (the status-requests queue counts as one).
    Work,
    /// A delay level.
    Retry,
    /// A stage's dead-letter queue.
    Dlq,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Work => "work",
            Self::Retry => "retry",
            Self::Dlq => "dlq",
        }
    }
}

/// One queue's figures.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFigures {
    pub queue: String,
    pub stage: String,
    pub kind: QueueKind,
    /// The delay level of a retry queue.
    pub level: Option<usize>,
    /// Messages ready for delivery (not those delivered and unacked).
    pub messages: i64,
    pub consumers: i64,
    /// False when the queue is not declared (counted as empty, unread).
    pub declared: bool,
}

/// Every queue of `topology`, each by a passive declare on one channel.
pub async fn read_queues(
    connection: &lapin::Connection,
    topology: &Topology,
) -> Result<Vec<QueueFigures>, lapin::Error> {
    let mut wanted = vec![(
        topology.spec.ingress.queue.clone(),
        topology.spec.ingress.stage.clone(),
        QueueKind::Ingress,
        None,
    )];
    for stage in topology.stages() {
        wanted.push((
            Topology::work_queue(stage),
            stage.clone(),
            QueueKind::Work,
            None,
        ));
        for level in 0..topology.retry_delays.len() {
            wanted.push((
                Topology::retry_queue(stage, level),
                stage.clone(),
                QueueKind::Retry,
                Some(level),
            ));
        }
        wanted.push((
            Topology::dead_letter_queue(stage),
            stage.clone(),
            QueueKind::Dlq,
            None,
        ));
    }
    wanted.push((
        topology.spec.status_requests.queue.clone(),
        crate::status_requests::NAME.to_owned(),
        QueueKind::Work,
        None,
    ));
    let mut channel = connection.create_channel().await?;
    let mut figures = Vec::with_capacity(wanted.len());
    for (queue, stage, kind, level) in wanted {
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
        let (messages, consumers, declared) = match declared {
            Ok(q) => (
                i64::from(q.message_count()),
                i64::from(q.consumer_count()),
                true,
            ),
            // A missing queue closes the channel: count it as empty and
            // unread, and go on with a new channel.
            Err(_) if connection.status().connected() => {
                channel = connection.create_channel().await?;
                (0, 0, false)
            }
            Err(error) => return Err(error),
        };
        figures.push(QueueFigures {
            queue,
            stage,
            kind,
            level,
            messages,
            consumers,
            declared,
        });
    }
    let _ = channel.close(200, "read".into()).await;
    Ok(figures)
}
