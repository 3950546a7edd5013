//! `payfleet`: the one binary of the fleet.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use payfleet_common::{Settings, Topology, db, telemetry};

#[derive(Parser)]
#[command(
    name = "payfleet",
    version,
    after_help = "Examples:\n  payfleet run --demo 2000\n  payfleet worker settlement\n  payfleet status",
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
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet topology apply\n  payfleet topology export --vhost payfleet > definitions.json"
    )]
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
    /// Measure the fleet against the broker's own limit (a null pipeline of six
    /// pass-through hops), in a shadow environment: `bench_…` vhosts and
    /// databases of its own on the configured servers, removed afterwards.
    #[command(
        after_help = "Examples:\n  payfleet bench\n  payfleet bench --payments 5000 --runs 3\n  payfleet bench --hot\n  payfleet bench --mix wallet,card,async,carts,coupons\n  payfleet bench --rate 60 --payments 1800\n  payfleet bench --json > bench.json"
    )]
    Bench {
        /// Payments per run.
        #[arg(long, default_value_t = 3000, value_name = "N")]
        payments: usize,
        /// Interleaved runs of the null pipeline and the fleet; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The kinds of payment, taken in turn.
        #[arg(long, value_delimiter = ',', default_value = "wallet")]
        mix: Vec<payfleet_workers::bench::Kind>,
        /// Send every payment to one shop and one SKU.
        #[arg(long)]
        hot: bool,
        /// Open loop: publish at this many requests per second while the fleet runs
        /// (default: drain, everything queued before the fleet starts).
        #[arg(long, value_name = "PER_SECOND")]
        rate: Option<f64>,
        /// Keep the shadow vhosts and databases.
        #[arg(long)]
        keep: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Seed of the request mix.
        #[arg(long, default_value_t = 42)]
        seed: u64,
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
    /// Dead letters: list, show, replay to their stage, purge (the store is filled from every DLQ first).
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet dlq list --stage settlement\n  payfleet dlq replay --id 42"
    )]
    Dlq(DlqCommand),
    /// Merchant webhooks: list deliveries, send them again, rotate a merchant's webhook secret.
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet webhook list --merchant demo-shop --status exhausted --since 24h\n  payfleet webhook resend --payment demo-shop:DS-20261202-000042\n  payfleet webhook resend --merchant demo-shop --since 2026-12-02T00:00:00Z --until 2026-12-03T00:00:00Z\n  payfleet webhook rotate-secret --merchant demo-shop --grace 24h"
    )]
    Webhook(WebhookCommand),
    /// Per stage ready / unacked / retrying / consumers, dead letters, outbox lag, payments; exits 2 when something needs attention.
    #[command(
        after_help = "Examples:\n  payfleet status\n  payfleet status --json\n  payfleet status --watch"
    )]
    Status {
        #[arg(long)]
        json: bool,
        /// Refresh every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Outbox rows older than this need attention.
        #[arg(long, default_value = "60s", value_parser = parse_age)]
        outbox_lag: chrono::Duration,
        /// A payment open longer than this needs attention.
        #[arg(long, default_value = "30m", value_parser = parse_age)]
        stuck_after: chrono::Duration,
    },
    /// One payment's story, and the manual actions that unstick it.
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet payment show demo-shop:20261202-000042\n  payfleet payment resolve <id> --as failed --reason \"…\""
    )]
    Payment(PaymentCommand),
    /// Publish a payment request from a JSON file to the ingress exchange, with a publisher confirm.
    #[command(
        after_help = "Example:\n  payfleet publish --file contracts/v1/examples/payment.requested.json --sign"
    )]
    Publish {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Sign the body with the merchant's key from the database.
        #[arg(long)]
        sign: bool,
    },
    /// Compare a channel's statement for a day with our attempts; stores the result, exits 1 on any mismatch.
    #[command(
        after_help = "Examples:\n  payfleet reconcile --date 2026-12-02\n  payfleet reconcile --date 2026-12-02 --channel sandbox-card --json"
    )]
    Reconcile {
        #[arg(long)]
        date: chrono::NaiveDate,
        /// One channel (default: every channel with a statement).
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        json: bool,
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
    /// The RabbitMQ user for upstream systems: it may publish to the ingress
    /// exchange and do nothing else (no configure, no read, no other exchange).
    #[command(
        after_help = "Examples:\n  payfleet topology upstream-user --print\n  payfleet topology upstream-user --user shop-upstream --password \"$UPSTREAM_PW\" --create"
    )]
    UpstreamUser {
        /// The user's name.
        #[arg(long, default_value = "payfleet-upstream")]
        user: String,
        /// Its password (needed by --create; --print shows a placeholder without it).
        #[arg(long)]
        password: Option<String>,
        /// Vhost it is given (default: the vhost of amqp_url).
        #[arg(long)]
        vhost: Option<String>,
        /// Print the rabbitmqctl commands and change nothing.
        #[arg(long, conflicts_with = "create", required_unless_present = "create")]
        print: bool,
        /// Run them with the local rabbitmqctl (idempotent: an existing user gets the password and permissions).
        #[arg(long)]
        create: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters.
    #[command(
        after_help = "Examples:\n  payfleet dlq list\n  payfleet dlq list --stage settlement --error-kind exhausted --json"
    )]
    List {
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, value_parser = ["poison", "permanent", "exhausted", "crash-loop", "broker"])]
        error_kind: Option<String>,
        /// Only those of this payment id.
        #[arg(long)]
        payment: Option<String>,
        /// Also replayed and purged rows.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Headers and the pretty-printed body of one dead letter (store id or message id).
    #[command(after_help = "Example:\n  payfleet dlq show 42")]
    Show { id: String },
    /// Put parked dead letters back on their stage (attempt count reset, replay mark added).
    #[command(
        after_help = "Examples:\n  payfleet dlq replay --id 42 --id 43\n  payfleet dlq replay --stage fund-freeze --error-kind exhausted --dry-run\n  payfleet dlq replay --stage settlement --all --limit 500"
    )]
    Replay {
        /// These store ids (repeatable); not with --stage.
        #[arg(long = "id", conflicts_with_all = ["stage", "all"])]
        ids: Vec<i64>,
        /// The stage whose parked dead letters to replay; with --all, --error-kind or --older-than.
        #[arg(long)]
        stage: Option<String>,
        /// Every parked dead letter of the stage (requires --stage).
        #[arg(long, requires = "stage")]
        all: bool,
        /// Only those of this kind (requires --stage).
        #[arg(long, requires = "stage", value_parser = ["poison", "permanent", "exhausted", "crash-loop", "broker"])]
        error_kind: Option<String>,
        /// Only those that last failed longer ago than this (requires --stage).
        #[arg(long, requires = "stage", value_parser = parse_age)]
        older_than: Option<chrono::Duration>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// List what would be replayed; replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who replays, for the audit (default: $USER).
        #[arg(long)]
        operator: Option<String>,
    },
    /// Mark dead letters purged (they are kept); --delete-expired deletes purged rows past dead_letter_retention_days.
    #[command(
        after_help = "Examples:\n  payfleet dlq purge --id 42 --yes\n  payfleet dlq purge --stage notification --all --yes"
    )]
    Purge {
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[arg(long)]
        stage: Option<String>,
        /// Every dead letter of the stage (requires --stage).
        #[arg(long, requires = "stage")]
        all: bool,
        /// Confirms the purge.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        delete_expired: bool,
        #[arg(long)]
        operator: Option<String>,
    },
}

/// Which webhook deliveries, for `webhook list` and `webhook resend`.
#[derive(clap::Args)]
struct WebhookSelection {
    /// A payment id or merchant-id:merchant-order-id.
    #[arg(long)]
    payment: Option<String>,
    #[arg(long)]
    merchant: Option<String>,
    /// Created at or after: an age (30m, 2h, 7d) or a time (RFC 3339, or a date).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before: an age or a time.
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl WebhookSelection {
    fn filter(
        self,
        statuses: Vec<String>,
        limit: i64,
    ) -> anyhow::Result<payfleet_workers::ops::webhook::Filter> {
        Ok(payfleet_workers::ops::webhook::Filter {
            payment: self
                .payment
                .as_deref()
                .map(payfleet_workers::ops::payment::parse_reference)
                .transpose()?,
            merchant: self.merchant,
            since: self.since,
            until: self.until,
            statuses,
            limit,
        })
    }
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// List webhook deliveries with their status, attempts and last error.
    #[command(
        after_help = "Examples:\n  payfleet webhook list --status exhausted\n  payfleet webhook list --merchant demo-shop --since 2h --json\n  payfleet webhook list --payment demo-shop:DS-20261202-000042"
    )]
    List {
        #[command(flatten)]
        which: WebhookSelection,
        #[arg(long, value_parser = ["pending", "delivered", "exhausted", "refused"])]
        status: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Send webhooks again (by payment, merchant and/or time): each delivery is
    /// reset to pending with the same webhook-id, and its dead letter marked replayed.
    #[command(
        after_help = "Examples:\n  payfleet webhook resend --payment demo-shop:DS-20261202-000042\n  payfleet webhook resend --merchant demo-shop --since 24h --dry-run\n  payfleet webhook resend --merchant demo-shop --status delivered --since 2026-12-02 --until 2026-12-03"
    )]
    Resend {
        #[command(flatten)]
        which: WebhookSelection,
        /// Which deliveries to send again (default: exhausted).
        #[arg(long, value_parser = ["delivered", "exhausted", "refused"])]
        status: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        operator: Option<String>,
    },
    /// Give a merchant a new webhook secret; the previous ones stay active for
    /// the grace period (webhooks carry a signature with each meanwhile).
    #[command(
        after_help = "Example:\n  payfleet webhook rotate-secret --merchant demo-shop --grace 24h"
    )]
    RotateSecret {
        #[arg(long)]
        merchant: String,
        /// How long the previous secrets stay active (30m, 2h, 7d).
        #[arg(long, default_value = "24h", value_parser = parse_age)]
        grace: chrono::Duration,
    },
}

#[derive(Subcommand)]
enum PaymentCommand {
    /// Everything about one payment in time order.
    #[command(
        after_help = "Examples:\n  payfleet payment show 0195d3a2-…\n  payfleet payment show demo-shop:20261202-000042"
    )]
    Show { reference: String },
    /// Settle an exception (or a stuck payment) by hand through TCC Confirm or Cancel; audited.
    #[command(
        after_help = "Example:\n  payfleet payment resolve demo-shop:o-17 --as failed --reason \"channel confirmed no charge, ticket 4711\""
    )]
    Resolve {
        reference: String,
        #[arg(long = "as", value_parser = ["paid", "failed"])]
        outcome: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
    /// Ask the channel for the attempt's status now; a final answer goes to the callback stage.
    #[command(after_help = "Example:\n  payfleet payment requery demo-shop:o-17")]
    Requery {
        reference: String,
        #[arg(long)]
        operator: Option<String>,
    },
}

fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    payfleet_workers::ops::parse_age(text)
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    payfleet_workers::ops::webhook::parse_time(text)
}

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
        Err(error) if error.downcast_ref::<NeedsAttention>().is_some() => ExitCode::from(2),
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
            payfleet_workers::demo::run(settings, requests).await?;
        }
        Command::Run { demo: None } => {
            db::migrate(&settings).await?;
            payfleet_workers::apply_topology(&settings).await?;
            let fleet = payfleet_workers::fleet(settings, &[], true).await?;
            fleet.run(payfleet_common::shutdown::on_signal()).await?;
        }
        Command::Bench {
            payments,
            runs,
            mix,
            hot,
            rate,
            keep,
            json,
            seed,
        } => {
            if rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
                anyhow::bail!("--rate must be a positive number of requests per second");
            }
            use std::io::IsTerminal;
            let options = payfleet_workers::bench::Options {
                payments,
                mix,
                hot,
                runs,
                rate,
                keep,
                progress: !json && std::io::stdout().is_terminal(),
                seed,
            };
            let report = payfleet_workers::bench::run(&settings, options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            if !report.invariants_hold() {
                anyhow::bail!("invariants broken during the benchmark");
            }
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
                stuck: stuck_after,
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
                    payfleet_workers::ops::status::print(&status);
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
        Command::Webhook(command) => webhook(&settings, command).await?,
        Command::Reconcile {
            date,
            channel,
            json,
        } => {
            let pool = db::connect(&settings).await?;
            let channels: Vec<String> = match channel {
                Some(channel) => vec![channel],
                None => {
                    sqlx::query_scalar(
                        "SELECT name FROM channels WHERE base_url IS NOT NULL ORDER BY name",
                    )
                    .fetch_all(&pool)
                    .await?
                }
            };
            let mut clean = true;
            for channel in channels {
                let summary =
                    payfleet_workers::ops::reconcile::reconcile(&pool, &channel, date).await?;
                clean &= summary.clean();
                if json {
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                } else {
                    let counts: Vec<String> = summary
                        .counts
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect();
                    println!(
                        "{channel} {date}: {}",
                        if counts.is_empty() {
                            "no trades".into()
                        } else {
                            counts.join(", ")
                        }
                    );
                    for m in &summary.mismatches {
                        println!(
                            "  {} attempt {} ours {} theirs {}",
                            m["kind"], m["attempt_id"], m["ours"], m["theirs"]
                        );
                    }
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

/// `status` found something that needs attention (exit code 2).
#[derive(Debug)]
struct NeedsAttention;

impl std::fmt::Display for NeedsAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("something needs attention")
    }
}

impl std::error::Error for NeedsAttention {}

async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops::{self, dlq::Selection};
    let pool = db::connect(settings).await?;
    let topology = Topology::from_settings(settings)?;
    let mut stages: Vec<String> = topology.stages().to_vec();
    let named = match &command {
        DlqCommand::List { stage, .. }
        | DlqCommand::Replay { stage, .. }
        | DlqCommand::Purge { stage, .. } => stage.clone(),
        DlqCommand::Show { .. } => None,
    };
    if let Some(stage) = named {
        if !stages.contains(&stage) {
            stages.push(stage);
        }
    }
    let drained = ops::dlq::drain(settings, &pool, &stages).await?;
    if drained > 0 {
        eprintln!("moved {drained} dead letter(s) from the DLQs into the store");
    }
    match command {
        DlqCommand::List {
            stage,
            error_kind,
            payment,
            all,
            limit,
            json,
        } => {
            let statuses = if all {
                vec!["parked", "replayed", "purged"]
            } else {
                vec!["parked"]
            };
            let rows = ops::dlq::select(
                &pool,
                &Selection {
                    stage,
                    error_kind,
                    payment,
                    statuses,
                    limit,
                    ..Selection::default()
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                ops::dlq::print_table(&rows);
            }
        }
        DlqCommand::Show { id } => ops::dlq::show(&pool, &id).await?,
        DlqCommand::Replay {
            ids,
            stage,
            all,
            error_kind,
            older_than,
            limit,
            dry_run,
            operator,
        } => {
            if ids.is_empty() && stage.is_none() {
                anyhow::bail!(
                    "say what to replay: --id ID… or --stage S with --all, --error-kind K or --older-than D"
                );
            }
            if !ids.is_empty() && (stage.is_some() || all) {
                anyhow::bail!("--id cannot be combined with --stage or --all");
            }
            if stage.is_some() && !all && error_kind.is_none() && older_than.is_none() {
                anyhow::bail!("--stage needs --all, --error-kind K or --older-than D");
            }
            let selection = Selection {
                ids,
                stage,
                error_kind,
                older_than,
                statuses: vec!["parked"],
                limit,
                ..Selection::default()
            };
            let operator = ops::operator(operator);
            let replayed =
                ops::dlq::replay(settings, &pool, &selection, &operator, dry_run).await?;
            if !dry_run {
                println!(
                    "replayed {replayed} dead letter(s) as {operator} (recorded in replay_audit)"
                );
            }
        }
        DlqCommand::Purge {
            ids,
            stage,
            all,
            yes,
            delete_expired,
            operator,
        } => {
            if delete_expired {
                let days = settings.dead_letter_retention_days;
                let operator = ops::operator(operator);
                let deleted = ops::dlq::delete_purged(
                    &pool,
                    chrono::Duration::days(i64::from(days)),
                    &operator,
                )
                .await?;
                println!(
                    "deleted {deleted} purged dead letter(s) older than {days} days as {operator} (recorded in replay_audit)"
                );
                return Ok(());
            }
            if ids.is_empty() && !(stage.is_some() && all) {
                anyhow::bail!("say what to purge: --id ID… or --stage S --all");
            }
            if !yes {
                anyhow::bail!("purging needs --yes (rows are kept, marked purged)");
            }
            let selection = Selection {
                ids,
                stage,
                statuses: vec!["parked", "replayed"],
                limit: i64::MAX,
                ..Selection::default()
            };
            let operator = ops::operator(operator);
            let purged = ops::dlq::purge(&pool, &selection, &operator).await?;
            println!("purged {purged} dead letter(s) as {operator}; they stay in the store");
        }
    }
    Ok(())
}

async fn webhook(settings: &Settings, command: WebhookCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops;
    match command {
        WebhookCommand::List {
            which,
            status,
            limit,
            json,
        } => {
            let filter = which.filter(status, limit)?;
            let pool = db::connect(settings).await?;
            let rows = ops::webhook::list(&pool, &filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                ops::webhook::print_table(&rows);
            }
        }
        WebhookCommand::Resend {
            which,
            status,
            limit,
            dry_run,
            operator,
        } => {
            if which.payment.is_none()
                && which.merchant.is_none()
                && which.since.is_none()
                && which.until.is_none()
            {
                anyhow::bail!("say which webhooks: --payment, --merchant, --since and/or --until");
            }
            let statuses = if status.is_empty() {
                vec!["exhausted".to_owned()]
            } else {
                status
            };
            let filter = which.filter(statuses, limit)?;
            let pool = db::connect(settings).await?;
            let rows = ops::webhook::list(&pool, &filter).await?;
            if dry_run {
                ops::webhook::print_table(&rows);
                println!("dry run: {} webhook(s) would be sent again", rows.len());
                return Ok(());
            }
            let ids: Vec<uuid::Uuid> = rows.iter().map(|d| d.id).collect();
            let operator = ops::operator(operator);
            let reset = ops::webhook::resend(
                &pool,
                &ids,
                &operator,
                "webhook resend",
                serde_json::to_value(&filter)?,
            )
            .await?;
            println!(
                "resent {} webhook(s) as {operator} (recorded in webhook_resends)",
                reset.len()
            );
        }
        WebhookCommand::RotateSecret { merchant, grace } => {
            let pool = db::connect(settings).await?;
            let secret = payfleet_workers::stages::notification::rotate_webhook_secret(
                &pool, &merchant, grace,
            )
            .await
            .with_context(|| format!("rotating the webhook secret of `{merchant}`"))?;
            println!(
                "merchant {merchant}: new webhook secret {secret}; the previous ones stay active for {}h",
                grace.num_hours()
            );
        }
    }
    Ok(())
}

async fn payment(settings: &Settings, command: PaymentCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops;
    let pool = db::connect(settings).await?;
    match command {
        PaymentCommand::Show { reference } => {
            let id = ops::payment::parse_reference(&reference)?;
            for (at, stage, what) in ops::payment::show(&pool, id).await? {
                println!(
                    "{}  {:<16} {what}",
                    at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    stage
                );
            }
        }
        PaymentCommand::Resolve {
            reference,
            outcome,
            reason,
            operator,
        } => {
            let id = ops::payment::parse_reference(&reference)?;
            let operator = ops::operator(operator);
            let change =
                ops::payment::resolve(settings, &pool, id, outcome == "paid", &reason, &operator)
                    .await?;
            println!(
                "resolved payment {id} as {outcome} by {operator}: {} → {}",
                change["before"], change["after"]
            );
        }
        PaymentCommand::Requery {
            reference,
            operator,
        } => {
            let id = ops::payment::parse_reference(&reference)?;
            let answer =
                ops::payment::requery(settings, &pool, id, &ops::operator(operator)).await?;
            println!("payment {id}: the channel says {answer}");
        }
    }
    Ok(())
}
