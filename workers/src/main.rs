//! `payfleet`: the one binary of the fleet.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use payfleet_common::{Settings, Topology, broker, db, telemetry};

#[derive(Parser)]
#[command(
    name = "payfleet",
    version,
    about = "A fleet of workers that carries payments through RabbitMQ",
    long_about = "A fleet of workers that carries payments through RabbitMQ: order-validation → fund-freeze → \
channel-call → callback → settlement → notification.\n\nSettings come from PAYFLEET_* environment variables, \
over an optional TOML file (--config or PAYFLEET_CONFIG), over defaults that point at RabbitMQ, PostgreSQL and \
Redis on 127.0.0.1."
)]
struct Cli {
    /// TOML settings file (environment variables still win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database when missing and apply pending migrations.
    #[command(
        after_help = "Example:\n  PAYFLEET_DATABASE_URL=postgres://postgres@127.0.0.1/payfleet payfleet migrate"
    )]
    Migrate,
    /// Declare or export the RabbitMQ topology (exchanges, queues, delay levels, DLQs).
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Run one or more stages as a worker process (with the outbox relay, the
    /// dead-letter keeper, the expiry sweeper and the balance roll-up).
    #[command(
        after_help = "Examples:\n  payfleet worker order-validation fund-freeze\n  payfleet worker settlement   # scale one stage by starting more of these"
    )]
    Worker {
        /// Stages to run in this process.
        #[arg(required = true, value_parser = clap::builder::PossibleValuesParser::new(payfleet_workers::STAGES))]
        stages: Vec<String>,
    },
    /// Run every stage and the HTTP endpoints in one process, until stopped;
    /// with --demo, seed a demo catalogue, publish N mixed payments and summarise.
    #[command(after_help = "Examples:\n  payfleet run --demo 2000\n  payfleet run")]
    Run {
        /// Publish this many demo payment requests, wait for every outcome, print a summary and exit.
        #[arg(long, value_name = "N")]
        demo: Option<usize>,
    },
    /// Run the sandbox payment gateway: a separate third-party stand-in with
    /// its own store, several channels, signed webhooks and test scenarios.
    #[command(
        after_help = "Example:\n  payfleet sandbox-gateway --listen 127.0.0.1:8700\n  curl -s 127.0.0.1:8700/channels/sandbox-card/statement?date=2026-12-02"
    )]
    SandboxGateway {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8700")]
        listen: std::net::SocketAddr,
        /// Delay before asynchronous webhooks are sent, in milliseconds.
        #[arg(long, default_value_t = 300)]
        webhook_delay_ms: u64,
    },
    /// Print the effective settings (defaults, file and environment merged).
    #[command(after_help = "Example:\n  PAYFLEET_PREFETCH=64 payfleet config")]
    Config,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Declare every exchange, queue and binding on the vhost of amqp_url; idempotent.
    #[command(
        after_help = "Example:\n  payfleet topology apply\n  PAYFLEET_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/staging payfleet topology apply"
    )]
    Apply,
    /// Write the topology as RabbitMQ definitions JSON (for `rabbitmqctl import_definitions`).
    #[command(
        after_help = "Example:\n  payfleet topology export --vhost payfleet > definitions.json\n  rabbitmqctl import_definitions definitions.json"
    )]
    Export {
        /// Vhost named in the definitions (default: the vhost of amqp_url).
        #[arg(long)]
        vhost: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("payfleet: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("payfleet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config)?;
    if matches!(cli.command, Command::Run { demo: Some(_) })
        && std::env::var_os("PAYFLEET_LOG_FILTER").is_none()
    {
        // The demo's progress line and summary are its output; logs only for trouble.
        settings.log_filter = "error,lapin=off".into();
    }
    telemetry::init_tracing(&settings);
    match cli.command {
        Command::Migrate => {
            let created = db::ensure_database(&settings.database_url).await?;
            let applied = db::migrate(&settings).await?;
            let database =
                payfleet_common::config::database_name(&settings.database_url).unwrap_or_default();
            if created {
                println!("created database {database}");
            }
            if applied.is_empty() {
                println!("database {database} is up to date");
            } else {
                for version in &applied {
                    println!("applied migration {version}");
                }
            }
        }
        Command::Topology(TopologyCommand::Apply) => {
            let topology = Topology::from_settings(&settings)?;
            let connection = broker::connect_once(&settings.amqp_url, "payfleet-topology")
                .await
                .with_context(|| {
                    format!(
                        "connecting to RabbitMQ at amqp_url (vhost {})",
                        settings.amqp_vhost()
                    )
                })?;
            let report = topology.apply(&connection).await?;
            let _ = connection.close(200, "done".into()).await;
            for line in &report.created {
                println!("created {line}");
            }
            println!(
                "vhost {}: {} created, {} already present, {} bindings ensured",
                settings.amqp_vhost(),
                report.created.len(),
                report.existing.len(),
                report.bindings
            );
        }
        Command::Topology(TopologyCommand::Export { vhost, output }) => {
            let topology = Topology::from_settings(&settings)?;
            let vhost = vhost.unwrap_or_else(|| settings.amqp_vhost());
            let json = serde_json::to_string_pretty(&topology.export(&vhost))?;
            match output {
                Some(path) => std::fs::write(&path, json + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{json}"),
            }
        }
        Command::Worker { stages } => {
            let stages: Vec<&str> = stages.iter().map(String::as_str).collect();
            let fleet = payfleet_workers::fleet(settings, &stages, true).await?;
            fleet.run(payfleet_common::shutdown::on_signal()).await?;
        }
        Command::Run {
            demo: Some(requests),
        } => {
            payfleet_workers::demo::run(settings, requests).await?;
        }
        Command::Run { demo: None } => {
            db::migrate(&settings).await?;
            let topology = Topology::from_settings(&settings)?;
            let connection = broker::connect_once(&settings.amqp_url, "payfleet-setup")
                .await
                .with_context(|| {
                    format!(
                        "connecting to RabbitMQ at amqp_url (vhost {})",
                        settings.amqp_vhost()
                    )
                })?;
            topology.apply(&connection).await?;
            let _ = connection.close(200, "applied".into()).await;
            let fleet = payfleet_workers::fleet(settings, &[], true).await?;
            fleet.run(payfleet_common::shutdown::on_signal()).await?;
        }
        Command::SandboxGateway {
            listen,
            webhook_delay_ms,
        } => {
            let mut config = payfleet_workers::sandbox_gateway::GatewayConfig::standard();
            config.webhook_delay = std::time::Duration::from_millis(webhook_delay_ms);
            let channels: Vec<String> = config
                .channels
                .iter()
                .map(|c| format!("{} ({:?}, fee {})", c.name, c.mode, c.fee_rate))
                .collect();
            let gateway = payfleet_workers::sandbox_gateway::Gateway::new(config);
            let stop = payfleet_common::shutdown::on_signal();
            let (bound, served) = gateway
                .serve(listen, stop)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("sandbox gateway on http://{bound}: {}", channels.join(", "));
            served.await?;
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&settings)?);
        }
    }
    Ok(())
}
