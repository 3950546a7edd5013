//! The consumer runtime against real RabbitMQ, PostgreSQL and Redis, with
//! fleets running in the test process: duplicates, retries, dead letters,
//! poison messages, locks and unroutable outbox messages.

use std::time::Duration;

use payfleet_common::broker::{self, header};
use payfleet_tests::{Behaviour, TestEnv, TRANSFER_STAGE, transfer, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_flows_through_both_stages() -> anyhow::Result<()> {
    let env = TestEnv::new("flow").await?;
    env.add_account("alice").await?;
    let fleet = env.start_fleet().await?;
    for i in 0..20 {
        env.publish_transfer(&transfer("alice", "1.25"), &format!("m-{i}")).await?;
    }
    wait_until(WAIT, "20 receipted transfers", || async {
        Ok(env.scalar_i64("SELECT count(*) FROM probe_transfers WHERE status = 'receipted'").await? == 20)
    })
    .await?;
    fleet.stop().await;
    assert_eq!(env.assert_quiet_invariants().await?, 20);
    let balance: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT balance FROM probe_accounts WHERE account = 'alice'").fetch_one(&env.pool).await?;
    assert_eq!(balance, "25.00".parse()?);
    env.teardown().await
}
