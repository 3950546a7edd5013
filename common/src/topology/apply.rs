//! The declarations of [`Topology`] put to use: applied to a broker
//! (`topology apply`) or written as definitions JSON (`topology export`).

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::json;

use super::{ApplyReport, Args, Topology, TopologyError};

impl Topology {
    /// Declares everything; idempotent. A queue that exists with different
    /// arguments is an error naming it (RabbitMQ refuses to change arguments).
    pub async fn apply(&self, connection: &Connection) -> Result<ApplyReport, TopologyError> {
        let mut report = ApplyReport::default();
        let declare_err = |kind: &'static str, name: &str| {
            let name = name.to_owned();
            move |source| TopologyError::Declare { kind, name, source }
        };
        let channel = open(connection, "exchange", "(channel)").await?;
        for exchange in self.exchange_decls() {
            // A passive declare that fails closes its channel: probe on a throwaway one.
            let probe = open(connection, "exchange", &exchange.name).await?;
            let exists = probe
                .exchange_declare(
                    exchange.name.as_str().into(),
                    exchange_kind(exchange.kind),
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            let _ = probe.close(200, "probe done".into()).await;
            channel
                .exchange_declare(
                    exchange.name.as_str().into(),
                    exchange_kind(exchange.kind),
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    field_table(&exchange.args),
                )
                .await
                .map_err(declare_err("exchange", &exchange.name))?;
            let line = format!("exchange {} ({})", exchange.name, exchange.kind);
            if exists {
                report.existing.push(line)
            } else {
                report.created.push(line)
            }
        }
        for queue in self.queue_decls() {
            let probe = open(connection, "queue", &queue.name).await?;
            let exists = probe
                .queue_declare(
                    queue.name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            let _ = probe.close(200, "probe done".into()).await;
            channel
                .queue_declare(
                    queue.name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    field_table(&queue.args),
                )
                .await
                .map_err(declare_err("queue", &queue.name))?;
            let line = format!("queue {}", queue.name);
            if exists {
                report.existing.push(line)
            } else {
                report.created.push(line)
            }
        }
        for binding in self.binding_decls() {
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(declare_err(
                    "binding",
                    &format!("{} -> {}", binding.exchange, binding.queue),
                ))?;
            report.bindings += 1;
        }
        let _ = channel.close(200, "topology applied".into()).await;
        Ok(report)
    }

    /// RabbitMQ definitions JSON for `vhost`, accepted by
    /// `rabbitmqctl import_definitions` and the management API.
    pub fn export(&self, vhost: &str) -> serde_json::Value {
        let args_json = |args: &Args| -> serde_json::Value {
            serde_json::Value::Object(
                args.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.json()))
                    .collect(),
            )
        };
        let exchanges: Vec<_> = self
            .exchange_decls()
            .iter()
            .map(|e| {
                json!({"name": e.name, "vhost": vhost, "type": e.kind, "durable": true,
                       "auto_delete": false, "internal": false, "arguments": args_json(&e.args)})
            })
            .collect();
        let queues: Vec<_> = self
            .queue_decls()
            .iter()
            .map(|q| {
                json!({"name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                       "arguments": args_json(&q.args)})
            })
            .collect();
        let bindings: Vec<_> = self
            .binding_decls()
            .iter()
            .map(|b| {
                json!({"source": b.exchange, "vhost": vhost, "destination": b.queue,
                       "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}})
            })
            .collect();
        json!({
            "vhosts": [{"name": vhost}],
            "exchanges": exchanges,
            "queues": queues,
            "bindings": bindings,
        })
    }
}

async fn open(
    connection: &Connection,
    kind: &'static str,
    name: &str,
) -> Result<Channel, TopologyError> {
    connection
        .create_channel()
        .await
        .map_err(|source| TopologyError::Declare {
            kind,
            name: name.to_owned(),
            source,
        })
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Direct,
    }
}

fn field_table(args: &Args) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.amqp());
    }
    table
}
