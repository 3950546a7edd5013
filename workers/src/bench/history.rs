//! `payfleet bench --history N`: N payments of history (25 days of them,
//! with every row the fleet writes for a payment) loaded set-based into the
//! shadow catalogue database that every run copies, then vacuumed and
//! analyzed, so that a database after months of service is measured in
//! minutes.

use payfleet_common::Settings;
use sqlx::{Connection, PgConnection, PgPool};

use crate::seed;

/// The history script (also loaded by the growth test).
pub const SQL: &str = include_str!("history.sql");

/// The merchant the history's payments belong to.
const HISTORY_SHOP: &str = "shop";

/// Loads `payments` of history, with the merchant and channels it refers
/// to, into the database of `settings`; the caller vacuums and analyzes.
pub async fn load(settings: &Settings, pool: &PgPool, payments: u64) -> anyhow::Result<()> {
    // The script's merchant and channels, as the live catalogue has them.
    seed::Catalogue {
        merchants: vec![seed::merchant(HISTORY_SHOP, "shop-secret").name("History shop")],
        channels: crate::demo::sandbox_channels("http://127.0.0.1:9"),
        ..Default::default()
    }
    .seed(pool)
    .await?;
    load_script(&settings.database_url, payments).await
}

/// Runs the history script for `payments` on one session with triggers off
/// for the bulk load (see the script's header); the catalogue it refers to
/// must be seeded first.
pub async fn load_script(database_url: &str, payments: u64) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::raw_sql(&format!(
        "SET session_replication_role = replica; SET growth.payments = {payments}"
    ))
    .execute(&mut conn)
    .await?;
    sqlx::raw_sql(SQL).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}
