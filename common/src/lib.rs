//! What every payfleet stage shares: configuration, the RabbitMQ topology,
//! the broker connections, the consumer runtime (locks, inbox, outbox,
//! retries, dead letters), PostgreSQL and telemetry.

pub mod broker;
pub mod config;
pub mod db;
pub mod fault;
pub mod fleet;
pub mod ids;
pub mod lock;
pub mod messages;
pub mod money;
pub mod outbox;
pub mod rabbitmqctl;
pub mod retention;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod transition;

pub use config::Settings;
pub use fleet::Fleet;
pub use ids::{AttemptId, PaymentId};
pub use tokio_util::sync::CancellationToken;
pub use topology::Topology;
