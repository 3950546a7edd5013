//! `payfleet`: the one binary of the fleet.

mod args;
mod commands;
mod onboarding;
mod render;
mod wallet;
mod withdrawal;

use std::process::ExitCode;

use anyhow::Context;
use args::{Cli, Command, TopologyCommand};
use clap::Parser;
use commands::{bench, dlq, payment, refund, webhook};
use onboarding::{catalogue, channel, merchant, user};
use payfleet_common::{Settings, Topology, db, telemetry};
use wallet::wallet;

fn main() -> ExitCode {
    // One rustls crypto provider for every TLS client in the process.
    payfleet_common::tls::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            error.exit()
        }
        Err(error) => {
            // One line: what is wrong; `--help` has the rest.
            let rendered = error.render().to_string();
            let mut lines = rendered.lines();
            let mut first = lines
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ")
                .to_owned();
            // A list that follows (the missing arguments) belongs to the line.
            if first.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|line| line.starts_with(' '))
                    .map(str::trim)
                    .collect();
                first = format!("{first} {}", listed.join(", "));
            }
            eprintln!("payfleet: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
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
        Err(error) if error.downcast_ref::<NeedsAttention>().is_some() => {
            ExitCode::from(NEEDS_ATTENTION)
        }
        Err(error) => {
            eprintln!(
                "payfleet: {}",
                payfleet_common::config::redact(&format!("{error:#}"))
            );
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
            let created = db::ensure_database_with(&db::connect_options(&settings)?).await?;
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
            let report = payfleet_workers::apply_topology(&settings).await?;
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
        Command::Topology(TopologyCommand::UpstreamUser {
            user,
            password,
            vhost,
            print,
            create,
        }) => {
            let topology = Topology::from_settings(&settings)?;
            let vhost = vhost.unwrap_or_else(|| settings.amqp_vhost());
            let user_spec = payfleet_workers::upstream_user::UpstreamUser::new(
                &user,
                &vhost,
                &topology.exchanges().ingress,
            );
            if print {
                let shown = password.as_deref().unwrap_or("<password>");
                for command in user_spec.commands(shown) {
                    println!("{}", payfleet_workers::upstream_user::shell_line(&command));
                }
            } else if create {
                let password = password.context("--create needs --password")?;
                for line in user_spec.create(&password)? {
                    println!("{line}");
                }
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
            let (finished, verdict) =
                payfleet_workers::demo::carry(settings, requests, render::demo_live).await?;
            println!("{}", verdict.summary);
            verdict.outcome(finished)?;
        }
        Command::Run { demo: None } => {
            db::migrate(&settings).await?;
            payfleet_workers::apply_topology(&settings).await?;
            let fleet = payfleet_workers::fleet(settings, &[], true).await?;
            fleet.run(payfleet_common::shutdown::on_signal()).await?;
        }
        Command::Bench(args) => bench(&settings, args).await?,
        Command::SandboxGateway {
            listen,
            webhook_delay_ms,
        } => {
            let mut config = payfleet_sandbox_gateway::GatewayConfig::standard();
            config.webhook_delay = std::time::Duration::from_millis(webhook_delay_ms);
            config.business_zone = settings.business_zone();
            let channels: Vec<String> = config
                .channels
                .iter()
                .map(|c| format!("{} ({:?}, fee {})", c.name, c.mode, c.fee_rate))
                .collect();
            let gateway = payfleet_sandbox_gateway::Gateway::new(config);
            let stop = payfleet_common::shutdown::on_signal();
            let (bound, served) = gateway
                .serve(listen, stop)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("sandbox gateway on http://{bound}: {}", channels.join(", "));
            served.await?;
        }
        Command::Dlq(command) => dlq(&settings, command).await?,
        Command::Status {
            json,
            watch,
            outbox_lag,
            stuck_after,
        } => {
            let pool = db::connect(&settings).await?;
            let thresholds = payfleet_workers::ops::status::Thresholds {
                outbox_lag,
                stuck: match stuck_after {
                    Some(age) => age,
                    None => chrono::Duration::from_std(settings.stuck_payment_after)?,
                },
            };
            loop {
                let status =
                    payfleet_workers::ops::status::collect(&settings, &pool, &thresholds).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    if watch {
                        print!("\x1b[2J\x1b[H");
                    }
                    render::status(&status);
                }
                if !watch {
                    if !status.attention.is_empty() {
                        return Err(NeedsAttention.into());
                    }
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
        Command::Payment(command) => payment(&settings, command).await?,
        Command::Refund(command) => refund(&settings, command).await?,
        Command::Withdrawal(command) => withdrawal::withdrawal(&settings, command).await?,
        Command::Merchant(command) => merchant(&settings, command).await?,
        Command::Channel(command) => channel(&settings, command).await?,
        Command::User(command) => user(&settings, command).await?,
        Command::Catalogue(command) => catalogue(&settings, command).await?,
        Command::Wallet(command) => wallet(&settings, command).await?,
        Command::Webhook(command) => webhook(&settings, command).await?,
        Command::Reconcile {
            date,
            channel,
            json,
        } => {
            let pool = db::connect(&settings).await?;
            let channels = match channel {
                Some(channel) => vec![channel],
                None => payfleet_workers::ops::reconcile::statement_channels(&pool).await?,
            };
            let mut clean = true;
            for channel in channels {
                let summary = payfleet_workers::ops::reconcile::reconcile(
                    &pool,
                    &channel,
                    date,
                    settings.business_zone(),
                )
                .await?;
                clean &= summary.clean();
                if json {
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                } else {
                    render::reconciliation(&summary);
                }
            }
            if !clean {
                anyhow::bail!("the statement and our records disagree");
            }
        }
        Command::Publish { file, sign } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let pool = if sign {
                Some(db::connect(&settings).await?)
            } else {
                None
            };
            let message_id =
                payfleet_workers::ops::publish::publish(&settings, pool.as_ref(), body, sign)
                    .await?;
            println!(
                "published {} as message {message_id} (confirmed)",
                file.display()
            );
        }
        Command::Config => {
            // Passwords in URLs and secrets are never shown.
            let shown: Settings = serde_json::from_value(settings.redacted())?;
            print!("{}", toml::to_string_pretty(&shown)?);
        }
    }
    Ok(())
}

/// The exit code of `status` when something needs attention: apart from
/// 1 (a failure) and 2 (a usage error).
const NEEDS_ATTENTION: u8 = 3;

/// `status` found something that needs attention (exit code 3).
#[derive(Debug)]
struct NeedsAttention;

impl std::fmt::Display for NeedsAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("something needs attention")
    }
}

impl std::error::Error for NeedsAttention {}
