//! A fleet process running the probe stages, the outbox relay and the
//! dead-letter keeper, configured by `PAYFLEET_*` like any worker. Tests
//! start, kill and restart it to cause real crashes.

use std::time::Duration;

use payfleet_common::{Fleet, Settings, runtime::batch::BatchSettings, shutdown, telemetry};
use payfleet_tests::probe::{ReceiptStage, TransferStage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    telemetry::init_tracing(&settings);
    let topology = payfleet_tests::probe_topology(&settings)?;
    let fleet = Fleet::connect(settings, topology).await?;
    let pool = fleet.shared().pool.clone();
    let fleet = fleet
        // Batched as the shipped stages are, so that crashes hit batches too.
        .stage_batched(
            TransferStage {
                may_abort: true,
                pool,
            },
            BatchSettings {
                size: 16,
                wait: Duration::from_millis(2),
            },
        )?
        .stage(ReceiptStage)?
        .with_keeper()
        .with_http();
    let stop = shutdown::on_signal();
    fleet.run(stop).await?;
    Ok(())
}
