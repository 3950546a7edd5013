//! `payfleet bench` works end to end on a small load: the null pipeline and
//! the fleet both run, every payment of every kind settles, the invariants
//! hold, and the shadow environment is gone afterwards. No timing is
//! asserted: the figures are printed for the reader.

use payfleet_tests::{TestEnv, rabbitmqctl};
use payfleet_workers::bench::{self, Kind, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_bench_of_every_kind_settles_everything_and_leaves_nothing_behind()
-> anyhow::Result<()> {
    let env = TestEnv::new("bench").await?;
    let options = Options {
        payments: 60,
        mix: vec![
            Kind::Wallet,
            Kind::Card,
            Kind::Async,
            Kind::Carts,
            Kind::Coupons,
        ],
        hot: false,
        runs: 1,
        rate: None,
        keep: false,
        seed: 7,
        history: 0,
    };
    let report = bench::run(&env.settings, options, |_| {}).await?;
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    let run = &report.fleet[0];
    assert_eq!(run.settled, 60, "every payment of every kind settles");
    assert!(run.invariant_checks > 0);
    assert!(report.null_median > 0.0 && report.fleet_median > 0.0);
    assert!(run.commits_per_payment > 0.0, "commits are counted");
    assert!(
        run.handle_ms.len() == payfleet_workers::STAGES.len(),
        "every stage's handling time is reported: {:?}",
        run.handle_ms
    );

    // Open loop, hot: one shop and one SKU, published at a rate, over a
    // small history (every invariant then covers the history's rows too).
    let hot = Options {
        payments: 30,
        mix: vec![Kind::Wallet],
        hot: true,
        runs: 1,
        rate: Some(40.0),
        keep: false,
        seed: 8,
        history: 2_000,
    };
    let report = bench::run(&env.settings, hot, |_| {}).await?;
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.fleet[0].settled, 30);

    let vhosts = rabbitmqctl(&["list_vhosts"]).await?;
    assert!(
        !vhosts.lines().any(|v| v.starts_with(bench::shadow::PREFIX)),
        "the shadow vhosts are removed: {vhosts}"
    );
    let databases = env
        .scalar_i64("SELECT count(*) FROM pg_database WHERE datname LIKE 'bench\\_%'")
        .await?;
    assert_eq!(databases, 0, "the shadow databases are removed");
    env.teardown().await
}

#[tokio::test]
async fn bad_bench_arguments_get_one_line_and_a_non_zero_exit() -> anyhow::Result<()> {
    for args in [
        &["bench", "--payments", "0"][..],
        &["bench", "--mix", "cash"][..],
        &["bench", "--rate", "0"][..],
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_payfleet"))
            .args(args)
            .env(
                "PAYFLEET_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/payfleet_never_used",
            )
            .output()
            .await?;
        assert!(!output.status.success(), "{args:?} fails");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("payments") || stderr.contains("cash") || stderr.contains("rate"),
            "{args:?} names what is wrong: {stderr}"
        );
    }
    Ok(())
}
