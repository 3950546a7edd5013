//! PostgreSQL: the pool, creating the database when missing, and the
//! embedded migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Settings;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database_url: {0}")]
    Url(String),
    #[error("creating database `{database}`: {source}")]
    Create {
        database: String,
        source: sqlx::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Creates the database named in `url` when it does not exist yet.
/// Returns whether it was created.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| DbError::Url(e.to_string()))?;
    ensure_database_with(&options).await
}

/// [`ensure_database`] with the connect options of [`connect_options`].
pub async fn ensure_database_with(options: &PgConnectOptions) -> Result<bool, DbError> {
    crate::tls::install_crypto_provider();
    let database = options
        .get_database()
        .ok_or_else(|| DbError::Url("the URL names no database".into()))?
        .to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(DbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await
            .map_err(DbError::Connect)?;
    if exists {
        return Ok(false);
    }
    let create = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
    match sqlx::query(&create).execute(&mut admin).await {
        Ok(_) => Ok(true),
        // another process created it first
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(source) => Err(DbError::Create { database, source }),
    }
}

/// How to reach `database_url`: TLS as its `sslmode` asks, trusting the
/// platform's roots and the CA of `tls_ca_file`.
pub fn connect_options(settings: &Settings) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(&settings.database_url)
        .map_err(|e| DbError::Url(e.to_string()))?;
    let extra_ca = settings
        .extra_ca()
        .map_err(|e| DbError::Tls(e.to_string()))?;
    Ok(match extra_ca.pem() {
        Some(pem) => options.ssl_root_cert_from_pem(pem.as_bytes().to_vec()),
        None => options,
    })
}

/// A pool on the configured database (which must exist).
pub async fn connect(settings: &Settings) -> Result<PgPool, DbError> {
    crate::tls::install_crypto_provider();
    let options = connect_options(settings)?;
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// Creates the database if needed and applies pending migrations.
/// Returns the versions applied by this call (empty when up to date).
pub async fn migrate(settings: &Settings) -> Result<Vec<i64>, DbError> {
    ensure_database_with(&connect_options(settings)?).await?;
    let pool = connect(settings).await?;
    let before: Vec<i64> = applied_versions(&pool).await;
    MIGRATOR.run(&pool).await?;
    let after = applied_versions(&pool).await;
    pool.close().await;
    Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
}

async fn applied_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}
