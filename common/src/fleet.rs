//! One fleet process: the stage consumers it was given, the outbox relay,
//! the dead-letter keeper and the HTTP endpoints (the operators' and, on
//! an address of its own, the public webhook ingress), started together and
//! stopped in order (consumers drain, then the relay flushes, then the
//! connections close), within a bounded time.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{self, Publisher},
    config::Settings,
    db,
    lock::Locks,
    outbox::{self, RelayConfig},
    retention,
    runtime::{
        CallingStage, Shared, Stage,
        batch::BatchSettings,
        consumer::{self, ConsumerSpec, DeliveryProcessor},
        dead_letter::Keeper,
        handling::{Calling, Handler, StageProcessor, Transactional},
    },
    telemetry::{self, Health},
    topology::Topology,
};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{0}")]
    Tls(String),
    #[error("stage `{0}` is not in the topology")]
    UnknownStage(String),
    #[error("HTTP endpoint on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;
type Starter = Box<dyn FnOnce(Health, CancellationToken) -> Task + Send>;
type Background = Box<dyn FnOnce(Arc<Shared>, CancellationToken) -> Task + Send>;

/// How long the relay may take to flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the runtime's tables are pruned past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Fleet {
    shared: Arc<Shared>,
    /// Cancelled last, once the outbox is flushed: ends reconnect loops of the publisher.
    final_stop: CancellationToken,
    health: Health,
    consumers: Vec<(String, Starter)>,
    background: Vec<(String, Background)>,
    keeper: bool,
    http: bool,
    /// The public webhook ingress, served on `ingress_addr`.
    ingress: Option<axum::Router>,
    /// What this process's stages hand their relay; `None` without one.
    handed: Option<outbox::HandedRows>,
    /// Batching set here rather than by `batch_size` / `batch_wait_ms`
    /// (stages outside the shipped topology, such as tests' probes).
    batch_overrides: std::collections::HashMap<String, BatchSettings>,
}

impl Fleet {
    /// Connects the pool and Redis pool; the broker connects when running.
    pub async fn connect(settings: Settings, topology: Topology) -> Result<Self, FleetError> {
        let final_stop = CancellationToken::new();
        // The recorder first, so that everything registered from here on is kept.
        telemetry::metrics_handle();
        // Services may come up after the fleet (a compose start, a failover):
        // wait for PostgreSQL with backoff rather than fail at once.
        let pool = (|| db::connect(&settings))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .with_max_times(15),
            )
            .notify(
                |error, delay| tracing::warn!(%error, ?delay, "PostgreSQL unreachable; retrying"),
            )
            .await?;
        let extra_ca = settings
            .extra_ca()
            .map_err(|e| FleetError::Tls(e.to_string()))?;
        let locks = Locks::with_extra_ca(
            &settings.redis_url,
            &settings.redis_key_prefix,
            settings.lock_ttl,
            &extra_ca,
        )?
        .with_fallback(pool.clone());
        let publisher = Publisher::new(
            broker::Endpoint {
                url: settings.amqp_url.clone(),
                tls: extra_ca.clone(),
            },
            "payfleet-publisher",
            final_stop.clone(),
        );
        let outbox_wake = Arc::new(Notify::new());
        let (outbox, handed) = outbox::Handoff::new(settings.outbox_lease, outbox_wake.clone());
        Ok(Self {
            final_stop,
            shared: Arc::new(Shared {
                settings,
                topology,
                pool,
                locks,
                extra_ca,
                publisher,
                outbox_wake,
                outbox,
            }),
            health: Health::default(),
            consumers: Vec::new(),
            background: Vec::new(),
            keeper: false,
            http: false,
            ingress: None,
            handed: Some(handed),
            batch_overrides: Default::default(),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Adds a consumer of a one-transaction stage.
    pub fn stage<S: Stage>(self, stage: S) -> Result<Self, FleetError> {
        self.handler(Transactional(stage))
    }

    /// Adds a consumer of a one-transaction stage that batches as `batch`
    /// says, whatever the settings say.
    pub fn stage_batched<S: Stage>(
        mut self,
        stage: S,
        batch: BatchSettings,
    ) -> Result<Self, FleetError> {
        self.batch_overrides.insert(stage.name().to_owned(), batch);
        self.handler(Transactional(stage))
    }

    /// Adds a consumer of a stage that calls a third party.
    pub fn calling_stage<S: CallingStage>(self, stage: S) -> Result<Self, FleetError> {
        self.handler(Calling(stage))
    }

    fn handler<H: Handler>(mut self, handler: H) -> Result<Self, FleetError> {
        let name = handler.name().to_owned();
        if !self.shared.topology.has_stage(&name) {
            return Err(FleetError::UnknownStage(name));
        }
        let batch = self
            .batch_overrides
            .get(&name)
            .copied()
            .unwrap_or_else(|| self.shared.settings.batch_for(&name));
        let mut spec = self.spec(&name, self.shared.topology.input_queues(&name));
        if batch.size > 1 {
            // One batch committing while the next fills.
            let room = batch.size * crate::runtime::batch::CONCURRENT_BATCHES;
            spec.max_in_flight = spec.max_in_flight.max(room);
            spec.prefetch = spec.prefetch.max(u16::try_from(room).unwrap_or(u16::MAX));
        }
        let processor = StageProcessor::new(handler, self.shared.clone(), batch);
        self.consumers.push((name, starter(spec, processor)));
        Ok(self)
    }

    /// Adds a consumer outside the chain (no stage: no retries, inbox or
    /// outbox), whose `processor` acks every delivery itself, with a
    /// prefetch and an in-flight bound of its own rather than the stages'.
    pub fn consumer<P: DeliveryProcessor>(
        mut self,
        name: &str,
        queues: Vec<String>,
        prefetch: u16,
        max_in_flight: usize,
        processor: Arc<P>,
    ) -> Self {
        let mut spec = self.spec(name, queues);
        spec.prefetch = prefetch;
        spec.max_in_flight = max_in_flight;
        self.consumers
            .push((name.to_owned(), starter(spec, processor)));
        self
    }

    /// Adds a background task (a sweeper, a roll-up) that runs until the
    /// stop signal and is awaited before the outbox is flushed.
    pub fn background<F, Fut>(mut self, name: &str, task: F) -> Self
    where
        F: FnOnce(Arc<Shared>, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background.push((
            name.to_owned(),
            Box::new(move |shared, stop| Box::pin(task(shared, stop))),
        ));
        self
    }

    /// Also drains every stage's DLQ into the dead-letter store.
    pub fn with_keeper(mut self) -> Self {
        self.keeper = true;
        self
    }

    /// Also serves `/metrics`, `/healthz`, `/readyz` on `http_addr`.
    pub fn with_http(mut self) -> Self {
        self.http = true;
        self
    }

    /// Serves these public routes (the webhook ingress) on `ingress_addr`,
    /// a listener apart from the operators' endpoints.
    pub fn with_ingress(mut self, routes: axum::Router) -> Self {
        self.ingress = Some(match self.ingress.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// Leaves the outbox to other processes.
    pub fn without_relay(mut self) -> Self {
        // With no receiver, stages write their rows unclaimed for any relay.
        self.handed = None;
        self
    }

    fn spec(&self, name: &str, queues: Vec<String>) -> ConsumerSpec {
        let s = &self.shared.settings;
        ConsumerSpec {
            name: name.to_owned(),
            amqp: broker::Endpoint {
                url: s.amqp_url.clone(),
                tls: self.shared.extra_ca.clone(),
            },
            queues,
            prefetch: s.prefetch,
            max_in_flight: s.max_in_flight,
            shutdown_timeout: s.shutdown_timeout,
        }
    }

    /// Runs until `stop` fires, then shuts down in order: consumers finish
    /// what is in flight, the relay flushes the outbox, connections close.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), FleetError> {
        let final_stop = self.final_stop.clone();
        let shared = self.shared.clone();
        if self.keeper {
            let queues = shared
                .topology
                .stages()
                .iter()
                .map(|s| Topology::dead_letter_queue(s))
                .collect();
            let spec = self.spec("dead-letter-keeper", queues);
            self.consumers.push((
                "dead-letter-keeper".into(),
                starter(spec, Keeper::new(shared.pool.clone())),
            ));
        }
        if self.http {
            let addr = shared.settings.http_socket_addr();
            let bound = telemetry::serve_ops(
                addr,
                self.health.clone(),
                shared.pool.clone(),
                shared.locks.clone(),
                final_stop.clone(),
            )
            .await
            .map_err(|source| FleetError::Http { addr, source })?;
            tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
        }
        if let Some(routes) = self.ingress.take() {
            let addr = shared.settings.ingress_socket_addr();
            let bound = telemetry::serve_routes(addr, routes, final_stop.clone())
                .await
                .map_err(|source| FleetError::Http { addr, source })?;
            tracing::info!(%bound, "serving the webhook ingress");
        }

        let mut consumers = JoinSet::new();
        for (name, start) in self.consumers {
            self.health.expect(&name);
            consumers.spawn(start(self.health.clone(), stop.clone()));
        }
        let relay = self.handed.map(|handed| {
            let config = RelayConfig {
                batch_size: shared.settings.outbox_batch_size,
                lease: shared.settings.outbox_lease,
                poll: shared.settings.outbox_poll,
                flush_timeout: FLUSH_TIMEOUT,
            };
            let relay_stop = CancellationToken::new();
            let handle = tokio::spawn(outbox::run_relay(
                shared.pool.clone(),
                shared.publisher.clone(),
                shared.outbox_wake.clone(),
                handed,
                config,
                relay_stop.clone(),
            ));
            (relay_stop, handle)
        });
        let maintenance = tokio::spawn(retention::run(
            shared.pool.clone(),
            shared.settings.clone(),
            PRUNE_EVERY,
            stop.clone(),
        ));
        let mut background = JoinSet::new();
        for (name, start) in self.background {
            tracing::info!(task = %name, "starting background task");
            background.spawn(start(shared.clone(), stop.clone()));
        }

        stop.cancelled().await;
        // Consumers finish what is in flight (each bounded by shutdown_timeout).
        while consumers.join_next().await.is_some() {}
        let bound = shared.settings.shutdown_timeout;
        if tokio::time::timeout(bound, async {
            while background.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("background tasks still running at the shutdown bound; stopping them");
            background.abort_all();
        }
        if let Some((relay_stop, handle)) = relay {
            relay_stop.cancel();
            let _ = handle.await;
        }
        maintenance.abort();
        shared.publisher.close().await;
        final_stop.cancel();
        shared.pool.close().await;
        tracing::info!("fleet stopped");
        Ok(())
    }
}

fn starter<P: DeliveryProcessor>(spec: ConsumerSpec, processor: Arc<P>) -> Starter {
    Box::new(move |health, stop| Box::pin(consumer::consume(spec, processor, health, stop)))
}
