//! A fleet process running the probe stages, the outbox relay and the
//! dead-letter keeper, configured by `PAYFLEET_*` like any worker. Tests
//! start, kill and restart it to cause real crashes.

use payfleet_common::{Fleet, Settings, shutdown, telemetry};
use payfleet_tests::probe::{ReceiptStage, TransferStage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    telemetry::init_tracing(&settings);
    let topology = payfleet_tests::probe_topology(&settings)?;
    let fleet = Fleet::connect(settings, topology).await?;
    let pool = fleet.shared().pool.clone();
    let fleet = fleet
        .stage(TransferStage {
            may_abort: true,
            pool,
        })?
        .stage(ReceiptStage)?
        .with_keeper()
        .with_http();
    let stop = shutdown::on_signal();
    fleet.run(stop).await?;
    Ok(())
}
