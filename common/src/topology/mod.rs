//! The RabbitMQ topology, loaded from `topology/topology.toml` and turned into
//! declarations: the same list is applied to a broker (`topology apply`) and
//! written as definitions JSON (`topology export`), so the two cannot differ.

mod apply;

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, LongString};
use serde::Deserialize;
use serde_json::json;

use crate::config::{QueueType, Settings};

/// The topology file, embedded so the binary works from any directory.
pub const TOPOLOGY_TOML: &str = include_str!("../../../topology/topology.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct ExchangeNames {
    pub ingress: String,
    pub stages: String,
    pub retry: String,
    pub dead_letters: String,
    pub events: String,
    pub events_unrouted: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngressSpec {
    pub queue: String,
    pub stage: String,
    pub routing_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UnroutedSpec {
    pub queue: String,
    pub max_length: u32,
}

/// Upstream's status requests: a queue bound to the ingress exchange, read
/// by the status-requests consumer (no stage), whose requests expire unread.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusRequestsSpec {
    pub queue: String,
    pub routing_key: String,
    pub message_ttl_ms: u32,
    pub max_length: u32,
}

/// The topology as data, before settings are applied.
#[derive(Debug, Clone, Deserialize)]
pub struct TopologySpec {
    pub exchanges: ExchangeNames,
    pub ingress: IngressSpec,
    pub events_unrouted: UnroutedSpec,
    pub status_requests: StatusRequestsSpec,
    pub stages: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology/topology.toml is invalid")]
    Parse(#[from] toml::de::Error),
    #[error("topology: {0}")]
    Invalid(String),
    #[error("declaring {kind} `{name}`: {source}")]
    Declare {
        kind: &'static str,
        name: String,
        source: lapin::Error,
    },
}

/// A queue argument value, convertible to both AMQP and JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

impl Arg {
    fn amqp(&self) -> AMQPValue {
        match self {
            Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        }
    }
    fn json(&self) -> serde_json::Value {
        match self {
            Arg::Str(s) => json!(s),
            Arg::Int(i) => json!(i),
        }
    }
}

pub type Args = BTreeMap<&'static str, Arg>;

#[derive(Debug, Clone)]
pub struct ExchangeDecl {
    pub name: String,
    pub kind: &'static str,
    pub args: Args,
}

#[derive(Debug, Clone)]
pub struct QueueDecl {
    pub name: String,
    pub args: Args,
}

#[derive(Debug, Clone)]
pub struct BindingDecl {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// Everything to declare, derived from the spec and the settings.
#[derive(Debug, Clone)]
pub struct Topology {
    pub spec: TopologySpec,
    pub queue_type: QueueType,
    pub retry_delays: Vec<std::time::Duration>,
    pub ingress_max_length: u32,
    pub quorum_delivery_limit: u32,
}

/// What `apply` did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub existing: Vec<String>,
    pub bindings: usize,
}

impl TopologySpec {
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let spec: TopologySpec = toml::from_str(text)?;
        if spec
            .ingress
            .routing_keys
            .contains(&spec.status_requests.routing_key)
        {
            return Err(TopologyError::Invalid(format!(
                "status requests' routing key `{}` would reach the ingress queue",
                spec.status_requests.routing_key
            )));
        }
        if spec.stages.is_empty() {
            return Err(TopologyError::Invalid("no stages".into()));
        }
        if !spec.stages.contains(&spec.ingress.stage) {
            return Err(TopologyError::Invalid(format!(
                "ingress stage `{}` is not one of the stages",
                spec.ingress.stage
            )));
        }
        for stage in &spec.stages {
            if stage.is_empty()
                || !stage
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(TopologyError::Invalid(format!(
                    "stage name `{stage}` must be lowercase letters, digits and dashes"
                )));
            }
        }
        Ok(spec)
    }
}

impl Topology {
    /// The committed topology with the given settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, TopologyError> {
        Ok(Self::new(TopologySpec::parse(TOPOLOGY_TOML)?, settings))
    }

    pub fn new(spec: TopologySpec, settings: &Settings) -> Self {
        Self {
            spec,
            queue_type: settings.queue_type,
            retry_delays: settings.retry_delays.clone(),
            ingress_max_length: settings.ingress_max_length,
            quorum_delivery_limit: settings.quorum_delivery_limit,
        }
    }

    /// Adds a stage (tests use this for their probe stages).
    pub fn with_stage(mut self, stage: &str) -> Self {
        if !self.spec.stages.iter().any(|s| s == stage) {
            self.spec.stages.push(stage.to_owned());
        }
        self
    }

    pub fn exchanges(&self) -> &ExchangeNames {
        &self.spec.exchanges
    }

    pub fn stages(&self) -> &[String] {
        &self.spec.stages
    }

    pub fn has_stage(&self, stage: &str) -> bool {
        self.spec.stages.iter().any(|s| s == stage)
    }

    pub fn work_queue(stage: &str) -> String {
        format!("payfleet.{stage}")
    }

    pub fn retry_queue(stage: &str, level: usize) -> String {
        format!("payfleet.{stage}.retry.{level}")
    }

    pub fn retry_routing_key(stage: &str, level: usize) -> String {
        format!("{stage}.{level}")
    }

    pub fn dead_letter_queue(stage: &str) -> String {
        format!("payfleet.{stage}.dlq")
    }

    /// Queues a stage consumes: the ingress queue (for the ingress stage) and
    /// its own work queue, where its retries and replays arrive.
    pub fn input_queues(&self, stage: &str) -> Vec<String> {
        let mut queues = Vec::new();
        if self.spec.ingress.stage == stage {
            queues.push(self.spec.ingress.queue.clone());
        }
        queues.push(Self::work_queue(stage));
        queues
    }

    /// The retry level for a given failed attempt (1-based); past the last
    /// level, the last level repeats.
    pub fn retry_level(&self, attempt: u32) -> usize {
        let index = attempt.saturating_sub(1) as usize;
        index.min(self.retry_delays.len() - 1)
    }

    /// The shortest delay level at least `delay` long (else the longest).
    pub fn level_for_delay(&self, delay: std::time::Duration) -> usize {
        self.retry_delays
            .iter()
            .position(|d| *d >= delay)
            .unwrap_or(self.retry_delays.len() - 1)
    }

    fn durable_args(&self) -> Args {
        let mut args = Args::new();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type", Arg::Str("quorum".into()));
        }
        args
    }

    /// Arguments of a queue whose rejected messages go to the stage's DLQ.
    fn consumed_args(&self, stage: &str) -> Args {
        let mut args = self.durable_args();
        args.insert(
            "x-dead-letter-exchange",
            Arg::Str(self.spec.exchanges.dead_letters.clone()),
        );
        args.insert("x-dead-letter-routing-key", Arg::Str(stage.to_owned()));
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit",
                Arg::Int(i64::from(self.quorum_delivery_limit)),
            );
            args.insert("x-dead-letter-strategy", Arg::Str("at-least-once".into()));
            // at-least-once dead-lettering requires reject-publish overflow
            args.insert("x-overflow", Arg::Str("reject-publish".into()));
        }
        args
    }

    pub fn exchange_decls(&self) -> Vec<ExchangeDecl> {
        let x = &self.spec.exchanges;
        let mut events_args = Args::new();
        events_args.insert("alternate-exchange", Arg::Str(x.events_unrouted.clone()));
        vec![
            ExchangeDecl {
                name: x.ingress.clone(),
                kind: "topic",
                args: Args::new(),
            },
            ExchangeDecl {
                name: x.stages.clone(),
                kind: "direct",
                args: Args::new(),
            },
            ExchangeDecl {
                name: x.retry.clone(),
                kind: "direct",
                args: Args::new(),
            },
            ExchangeDecl {
                name: x.dead_letters.clone(),
                kind: "direct",
                args: Args::new(),
            },
            ExchangeDecl {
                name: x.events_unrouted.clone(),
                kind: "fanout",
                args: Args::new(),
            },
            ExchangeDecl {
                name: x.events.clone(),
                kind: "topic",
                args: events_args,
            },
        ]
    }

    pub fn queue_decls(&self) -> Vec<QueueDecl> {
        let x = &self.spec.exchanges;
        let mut queues = Vec::new();

        let mut ingress = self.consumed_args(&self.spec.ingress.stage);
        ingress.insert("x-max-length", Arg::Int(i64::from(self.ingress_max_length)));
        ingress.insert("x-overflow", Arg::Str("reject-publish".into()));
        queues.push(QueueDecl {
            name: self.spec.ingress.queue.clone(),
            args: ingress,
        });

        for stage in &self.spec.stages {
            queues.push(QueueDecl {
                name: Self::work_queue(stage),
                args: self.consumed_args(stage),
            });
            for (level, delay) in self.retry_delays.iter().enumerate() {
                let mut args = self.durable_args();
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                args.insert("x-message-ttl", Arg::Int(delay_ms));
                args.insert("x-dead-letter-exchange", Arg::Str(x.stages.clone()));
                args.insert("x-dead-letter-routing-key", Arg::Str(stage.clone()));
                if self.queue_type == QueueType::Quorum {
                    args.insert("x-dead-letter-strategy", Arg::Str("at-least-once".into()));
                    args.insert("x-overflow", Arg::Str("reject-publish".into()));
                }
                queues.push(QueueDecl {
                    name: Self::retry_queue(stage, level),
                    args,
                });
            }
            queues.push(QueueDecl {
                name: Self::dead_letter_queue(stage),
                args: self.durable_args(),
            });
        }

        let mut unrouted = self.durable_args();
        unrouted.insert(
            "x-max-length",
            Arg::Int(i64::from(self.spec.events_unrouted.max_length)),
        );
        queues.push(QueueDecl {
            name: self.spec.events_unrouted.queue.clone(),
            args: unrouted,
        });
        queues.push(self.status_requests_decl());
        queues
    }

    /// Status requests wait at most `message_ttl_ms`, then vanish (no
    /// dead-letter exchange: a query changes nothing); a full queue refuses
    /// publishes rather than grow.
    fn status_requests_decl(&self) -> QueueDecl {
        let spec = &self.spec.status_requests;
        let mut args = self.durable_args();
        args.insert("x-message-ttl", Arg::Int(i64::from(spec.message_ttl_ms)));
        args.insert("x-max-length", Arg::Int(i64::from(spec.max_length)));
        args.insert("x-overflow", Arg::Str("reject-publish".into()));
        QueueDecl {
            name: spec.queue.clone(),
            args,
        }
    }

    pub fn binding_decls(&self) -> Vec<BindingDecl> {
        let x = &self.spec.exchanges;
        let mut bindings: Vec<BindingDecl> = self
            .spec
            .ingress
            .routing_keys
            .iter()
            .map(|key| BindingDecl {
                exchange: x.ingress.clone(),
                queue: self.spec.ingress.queue.clone(),
                routing_key: key.clone(),
            })
            .collect();
        for stage in &self.spec.stages {
            bindings.push(BindingDecl {
                exchange: x.stages.clone(),
                queue: Self::work_queue(stage),
                routing_key: stage.clone(),
            });
            for level in 0..self.retry_delays.len() {
                bindings.push(BindingDecl {
                    exchange: x.retry.clone(),
                    queue: Self::retry_queue(stage, level),
                    routing_key: Self::retry_routing_key(stage, level),
                });
            }
            bindings.push(BindingDecl {
                exchange: x.dead_letters.clone(),
                queue: Self::dead_letter_queue(stage),
                routing_key: stage.clone(),
            });
        }
        bindings.push(BindingDecl {
            exchange: x.events_unrouted.clone(),
            queue: self.spec.events_unrouted.queue.clone(),
            routing_key: String::new(),
        });
        bindings.push(BindingDecl {
            exchange: x.ingress.clone(),
            queue: self.spec.status_requests.queue.clone(),
            routing_key: self.spec.status_requests.routing_key.clone(),
        });
        bindings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::from_settings(&Settings::default()).expect("committed topology parses")
    }

    #[test]
    fn every_stage_has_work_delay_and_dead_letter_queues() {
        let t = topology();
        let names: Vec<String> = t.queue_decls().into_iter().map(|q| q.name).collect();
        for stage in [
            "order-validation",
            "fund-freeze",
            "channel-call",
            "callback",
            "settlement",
            "notification",
        ] {
            assert!(names.contains(&format!("payfleet.{stage}")));
            assert!(names.contains(&format!("payfleet.{stage}.dlq")));
            for level in 0..5 {
                assert!(names.contains(&format!("payfleet.{stage}.retry.{level}")));
            }
        }
        assert!(names.contains(&"payfleet.ingress".to_owned()));
        // 6 stages x (work + 5 delays + dlq) + ingress + unrouted events + status requests
        assert_eq!(names.len(), 6 * 7 + 3);
    }

    #[test]
    fn status_requests_come_through_the_ingress_exchange_and_expire() {
        let t = topology();
        let q = t
            .queue_decls()
            .into_iter()
            .find(|q| q.name == "payfleet.status-requests")
            .unwrap();
        assert_eq!(q.args["x-message-ttl"], Arg::Int(30_000));
        assert_eq!(q.args["x-overflow"], Arg::Str("reject-publish".into()));
        assert!(!q.args.contains_key("x-dead-letter-exchange"));
        let bound: Vec<_> = t
            .binding_decls()
            .into_iter()
            .filter(|b| b.queue == "payfleet.status-requests")
            .map(|b| (b.exchange, b.routing_key))
            .collect();
        assert_eq!(
            bound,
            vec![("payfleet.ingress".to_owned(), "status.request".to_owned())]
        );
    }

    #[test]
    fn delay_queues_dead_letter_back_to_their_stage() {
        let t = topology();
        let q = t
            .queue_decls()
            .into_iter()
            .find(|q| q.name == "payfleet.callback.retry.2")
            .unwrap();
        assert_eq!(q.args["x-message-ttl"], Arg::Int(30_000));
        assert_eq!(
            q.args["x-dead-letter-exchange"],
            Arg::Str("payfleet.stages".into())
        );
        assert_eq!(
            q.args["x-dead-letter-routing-key"],
            Arg::Str("callback".into())
        );
    }

    #[test]
    fn ingress_rejects_publishes_when_full() {
        let t = topology();
        let q = t
            .queue_decls()
            .into_iter()
            .find(|q| q.name == "payfleet.ingress")
            .unwrap();
        assert_eq!(q.args["x-overflow"], Arg::Str("reject-publish".into()));
        assert_eq!(q.args["x-max-length"], Arg::Int(100_000));
        assert_eq!(
            t.input_queues("order-validation"),
            vec!["payfleet.ingress", "payfleet.order-validation"]
        );
        assert_eq!(t.input_queues("settlement"), vec!["payfleet.settlement"]);
    }

    #[test]
    fn quorum_queues_carry_a_delivery_limit() {
        let settings = Settings {
            queue_type: QueueType::Quorum,
            ..Settings::default()
        };
        let t = Topology::from_settings(&settings).unwrap();
        let q = t
            .queue_decls()
            .into_iter()
            .find(|q| q.name == "payfleet.settlement")
            .unwrap();
        assert_eq!(q.args["x-queue-type"], Arg::Str("quorum".into()));
        assert_eq!(q.args["x-delivery-limit"], Arg::Int(20));
        assert_eq!(
            q.args["x-dead-letter-strategy"],
            Arg::Str("at-least-once".into())
        );
    }

    #[test]
    fn retry_levels_grow_then_repeat_the_last() {
        let t = topology();
        assert_eq!(t.retry_level(1), 0);
        assert_eq!(t.retry_level(2), 1);
        assert_eq!(t.retry_level(5), 4);
        assert_eq!(t.retry_level(9), 4);
    }
}
