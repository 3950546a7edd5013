//! The six stages of the payment chain and the processes that run them.

pub mod bench;
pub mod channels;
pub mod demo;
// A stage reads as decode → guard → one transaction → emit: no function of
// the stages or the domain runs past the threshold of clippy.toml.
#[deny(clippy::too_many_lines)]
pub mod domain;
pub mod ingress;
pub mod invariants;
pub mod jobs;
#[cfg(test)]
mod layout;
pub mod ops;
pub mod seed;
pub mod signals;
#[deny(clippy::too_many_lines)]
pub mod stages;
pub mod status_requests;
pub mod upstream_user;

use domain::step::OnPayment;
use jobs::{refunds, sweeper};
use payfleet_common::{Fleet, Settings, Topology, fleet::FleetError};
use stages::{callback, channel_call, fund_freeze, notification, order_validation, settlement};

/// Every stage, in chain order.
pub const STAGES: [&str; 6] = domain::handoff::STAGES;

/// What `payfleet worker` may run: the stages, and the status-requests
/// consumer that answers upstream's status requests outside the chain.
pub const WORKERS: [&str; 7] = [
    STAGES[0],
    STAGES[1],
    STAGES[2],
    STAGES[3],
    STAGES[4],
    STAGES[5],
    status_requests::NAME,
];

/// Declares the committed topology on the vhost of `amqp_url` (idempotent).
/// One connection to the broker of `settings` for a command, failing fast
/// with the vhost it tried.
pub async fn connect_broker(settings: &Settings, name: &str) -> anyhow::Result<lapin::Connection> {
    use anyhow::Context;
    payfleet_common::broker::connect_once(
        &payfleet_common::broker::Endpoint::from_settings(settings)?,
        name,
    )
    .await
    .with_context(|| {
        format!(
            "connecting to RabbitMQ at amqp_url (vhost {})",
            settings.amqp_vhost()
        )
    })
}

pub async fn apply_topology(
    settings: &Settings,
) -> anyhow::Result<payfleet_common::topology::ApplyReport> {
    let topology = Topology::from_settings(settings)?;
    let connection = connect_broker(settings, "payfleet-setup").await?;
    let report = topology.apply(&connection).await;
    let _ = connection.close(200, "applied".into()).await;
    Ok(report?)
}

/// A fleet process running `stages` (all when empty; the status-requests
/// consumer counts as one), with the outbox relay, the dead-letter keeper,
/// the expiry sweeper, the balance roll-up and the webhook sender.
pub async fn fleet(settings: Settings, stages: &[&str], http: bool) -> Result<Fleet, FleetError> {
    let topology =
        Topology::from_settings(&settings).map_err(|e| FleetError::UnknownStage(e.to_string()))?;
    let mut fleet = Fleet::connect(settings.clone(), topology).await?;
    let wanted = |name: &str| stages.is_empty() || stages.contains(&name);
    if wanted(order_validation::NAME) {
        let redis = fleet.shared().locks.clone();
        fleet = fleet
            .stage(order_validation::OrderValidation::new(&settings, redis))?
            .background("request-receipts", order_validation::run_receipt_pruning);
    }
    if wanted(fund_freeze::NAME) {
        fleet = fleet.stage(OnPayment(fund_freeze::FundFreeze::new(&settings)))?;
    }
    if wanted(channel_call::NAME) {
        let redis = fleet.shared().locks.clone();
        let topology = fleet.shared().topology.clone();
        fleet = fleet.calling_stage(channel_call::ChannelCall::new(&settings, topology, redis))?;
        fleet = fleet.background("refund-sender", refunds::run);
    }
    if wanted(callback::NAME) {
        fleet = fleet.stage(OnPayment(callback::Callback))?;
    }
    if wanted(settlement::NAME) {
        fleet = fleet.stage(OnPayment(settlement::Settlement))?;
    }
    if wanted(notification::NAME) {
        fleet = fleet
            .stage(notification::Notification)?
            .background("webhooks", notification::run_webhooks);
    }
    if wanted(status_requests::NAME) {
        fleet = status_requests::serve(fleet, &settings);
    }
    signals::collector::describe();
    signals::collector::record_build_info();
    fleet = fleet
        .with_keeper()
        .background("signals", signals::collector::run)
        .background("expiry-sweeper", sweeper::run)
        .background("balance-roll-up", sweeper::run_roll_up)
        .background("daily-payouts", jobs::payouts::run);
    if http {
        let ingress = ingress::router(fleet.shared().clone());
        fleet = fleet.with_http().with_ingress(ingress);
    }
    Ok(fleet)
}
