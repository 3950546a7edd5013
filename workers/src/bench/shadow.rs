//! The shadow environment a benchmark runs in: a vhost, a database and a
//! Redis key prefix of its own, all named `bench_…`, on the servers the
//! settings name — never the production vhost or database. Removed
//! afterwards unless kept.

use anyhow::{Context, bail};
use payfleet_common::{Settings, db, rabbitmqctl::rabbitmqctl};
use sqlx::{Connection, PgConnection};

/// Where a benchmark's names start; nothing else is ever created or removed.
pub const PREFIX: &str = "bench_";

pub struct Shadow {
    /// The settings pointed at the shadow vhost, database and prefix.
    pub settings: Settings,
    pub name: String,
}

impl Shadow {
    /// Creates vhost `name` (open to the broker user of `amqp_url`) and
    /// database `name` (migrated), with the Redis prefix `name`.
    pub async fn create(base: &Settings, name: &str) -> anyhow::Result<Self> {
        Self::create_from(base, name, None).await
    }

    /// As [`Shadow::create`], the database a copy of shadow database
    /// `template` (which must have no open connection): its rows, indexes
    /// and statistics, copied file by file.
    pub async fn create_from(
        base: &Settings,
        name: &str,
        template: Option<&str>,
    ) -> anyhow::Result<Self> {
        if !name.starts_with(PREFIX) {
            bail!("a shadow environment is named {PREFIX}…, not {name}");
        }
        if let Some(template) = template {
            if !template.starts_with(PREFIX) {
                bail!("a shadow database is copied only from {PREFIX}…, not {template}");
            }
            let mut admin = admin(base).await?;
            sqlx::query(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\" STRATEGY FILE_COPY"
            ))
            .execute(&mut admin)
            .await
            .with_context(|| format!("copying shadow database {template} to {name}"))?;
        }
        let amqp = url::Url::parse(&base.amqp_url).context("amqp_url")?;
        let user = if amqp.username().is_empty() {
            "guest".to_owned()
        } else {
            percent_encoding::percent_decode_str(amqp.username())
                .decode_utf8_lossy()
                .into_owned()
        };
        rabbitmqctl(&["add_vhost", name]).await?;
        rabbitmqctl(&["set_permissions", "-p", name, &user, ".*", ".*", ".*"]).await?;
        let mut settings = base.clone();
        settings.amqp_url = with_path(&base.amqp_url, name, "amqp_url")?;
        settings.database_url = with_path(&base.database_url, name, "database_url")?;
        settings.redis_key_prefix = name.to_owned();
        db::migrate(&settings)
            .await
            .context("creating and migrating the shadow database")?;
        Ok(Self {
            settings,
            name: name.to_owned(),
        })
    }

    /// Drops the database and the vhost, and deletes the prefix's Redis keys.
    pub async fn remove(self) -> anyhow::Result<()> {
        remove(&self.settings, &self.name).await
    }
}

/// Removes what [`Shadow::create`] made under `name`.
pub async fn remove(settings: &Settings, name: &str) -> anyhow::Result<()> {
    if !name.starts_with(PREFIX) {
        bail!("only {PREFIX}… environments are removed, not {name}");
    }
    let _ = rabbitmqctl(&["delete_vhost", name]).await;
    let mut admin = admin(settings).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    let client = redis::Client::open(settings.redis_url.as_str())?;
    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{name}:*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
        }
    }
    Ok(())
}

/// A connection to the server's `postgres` database, to create and drop others.
async fn admin(settings: &Settings) -> anyhow::Result<PgConnection> {
    let admin_url = with_path(&settings.database_url, "postgres", "database_url")?;
    PgConnection::connect(&admin_url)
        .await
        .context("connecting to the postgres database to create or drop a shadow one")
}

/// `url` with its path (vhost or database) replaced by `name`.
fn with_path(url: &str, name: &str, setting: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url).with_context(|| format!("{setting} is not a URL"))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}
