//! The fleet over TLS to a PostgreSQL and a Redis of the test's own, both
//! with certificates from a test CA named in `tls_ca_file`: the demo load
//! runs end to end with every invariant holding, and the same servers are
//! refused without that CA.

use std::time::Duration;

use payfleet_common::{Settings, db, lock::Locks};
use payfleet_tests::{
    TestEnv, free_port,
    services::{OwnPostgres, OwnRedis, TempDir, TestCa},
};

/// `settings` with the database and Redis moved to the TLS servers.
fn over_tls(settings: &mut Settings, postgres: u16, redis: u16, ca: &TestCa) {
    let database = settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap_or("payfleet")
        .to_owned();
    settings.database_url =
        format!("postgres://postgres@localhost:{postgres}/{database}?sslmode=verify-full");
    settings.redis_url = format!("rediss://localhost:{redis}/0");
    settings.tls_ca_file = Some(ca.pem_file.display().to_string());
}

async fn lock_once(settings: &Settings) -> Result<bool, String> {
    let ca = settings.extra_ca().map_err(|e| e.to_string())?;
    let locks = Locks::with_extra_ca(
        &settings.redis_url,
        &settings.redis_key_prefix,
        Duration::from_secs(5),
        &ca,
    )
    .map_err(|e| e.to_string())?;
    match locks.try_acquire("tls-check", "key").await {
        Ok(guard) => {
            let held = guard.is_some();
            drop(guard);
            Ok(held)
        }
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_talks_tls_to_postgres_and_redis_with_the_configured_ca() -> anyhow::Result<()> {
    let dir = TempDir::new("tls")?;
    let trusted = TestCa::new(&dir.0, "trusted")?;
    let other = TestCa::new(&dir.0, "other")?;
    let postgres = OwnPostgres::start(Some(&trusted.issue("postgres")?))?;
    let redis = OwnRedis::start(Some((&trusted.issue("redis")?, &trusted))).await?;
    let (pg_port, redis_port) = (postgres.port, redis.port);
    let http_port = free_port();
    let env = TestEnv::with("tls", |s| {
        over_tls(s, pg_port, redis_port, &trusted);
        s.http_addr = format!("127.0.0.1:{http_port}");
    })
    .await?;

    // Refused: a plain connection (the server takes TLS only), the same
    // server with another CA, and with the platform's roots alone.
    let plain = Settings {
        database_url: env
            .settings
            .database_url
            .replace("sslmode=verify-full", "sslmode=disable"),
        ..env.settings.clone()
    };
    let refused = db::connect(&plain).await.err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("pg_hba") || e.contains("reject")),
        "a plain connection is refused: {refused:?}"
    );
    let mut other_ca = env.settings.clone();
    other_ca.tls_ca_file = Some(other.pem_file.display().to_string());
    let mut no_ca = env.settings.clone();
    no_ca.tls_ca_file = None;
    for (what, settings) in [("another CA", &other_ca), ("no CA", &no_ca)] {
        let refused = db::connect(settings).await.err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("certificate") || e.contains("UnknownIssuer")),
            "PostgreSQL with {what} is refused for its certificate: {refused:?}"
        );
        let refused = lock_once(settings).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("certificate") || e.contains("UnknownIssuer")),
            "Redis with {what} is refused for its certificate: {refused:?}"
        );
    }
    assert_eq!(
        lock_once(&env.settings).await,
        Ok(true),
        "Redis with the CA"
    );
    // sslmode=require encrypts without checking whom it talks to.
    let require = Settings {
        database_url: env
            .settings
            .database_url
            .replace("sslmode=verify-full", "sslmode=require"),
        tls_ca_file: None,
        ..env.settings.clone()
    };
    db::connect(&require).await?.close().await;

    // The demo load, end to end over TLS: it fails unless every payment is
    // terminal and every invariant holds.
    payfleet_workers::demo::run(env.settings.clone(), 40).await?;
    let settled = env
        .scalar_i64("SELECT count(*) FROM payments WHERE status = 'settled'")
        .await?;
    assert!(settled > 0, "payments settled over TLS: {settled}");
    let tls_sessions = env
        .scalar_i64("SELECT count(*) FROM pg_stat_ssl WHERE ssl")
        .await?;
    assert!(tls_sessions > 0, "the pool's sessions are TLS sessions");
    drop(redis);
    drop(postgres);
    env.teardown().await
}
