//! The command line of `payfleet`: its commands, flags and help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
// Ages (`30s`, `15m`, `2h`, `7d`) and times are read the one way ops reads them.
use payfleet_workers::ops::{parse_age, webhook::parse_time};

use crate::{
    onboarding::{CatalogueCommand, ChannelCommand, MerchantCommand, UserCommand},
    wallet::WalletCommand,
    withdrawal::WithdrawalCommand,
};

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
pub(crate) struct Cli {
    /// TOML settings file (environment variables still win).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// dead-letter keeper, the expiry sweeper and the balance roll-up);
    /// `status-requests` answers upstream's status requests.
    #[command(
        after_help = "Examples:\n  payfleet worker order-validation fund-freeze\n  payfleet worker settlement   # scale one stage by starting more of these\n  payfleet worker status-requests"
    )]
    Worker {
        /// Stages (or `status-requests`) to run in this process.
        #[arg(required = true, value_parser = clap::builder::PossibleValuesParser::new(payfleet_workers::WORKERS))]
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
    Bench(BenchArgs),
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
    /// Per stage ready / consumers / retrying, dead letters, outbox lag, open payments, exceptions, breakers, Redis: the figures of the fleet's gauges.
    ///
    /// Exit codes: 0 nothing needs attention; 3 something needs attention (each
    /// condition printed as an ATTENTION line: a stage without consumers, parked
    /// dead letters, an outbox lagging, stuck payments, payments or refunds in
    /// exception, refunds owed, a channel's breaker open, Redis degraded);
    /// 1 the status could not be read; 2 a usage error.
    #[command(
        after_help = "Examples:\n  payfleet status\n  payfleet status --json\n  payfleet status --watch\n  payfleet status --stuck-after 10m || page-oncall   # exit 3: needs attention"
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
        /// A payment open longer than this needs attention [default: stuck_payment_after_ms, 30m].
        #[arg(long, value_parser = parse_age)]
        stuck_after: Option<chrono::Duration>,
    },
    /// One payment's story, and the manual actions that unstick it.
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet payment show demo-shop:20261202-000042\n  payfleet payment resolve <id> --as failed --reason \"…\""
    )]
    Payment(PaymentCommand),
    /// Refunds: those merchants asked for and those the platform owes on its own.
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet refund list --status exception\n  payfleet refund show demo-shop:DS-RF-000001"
    )]
    Refund(RefundCommand),
    /// Users' withdrawals: list them, show one, ask the payout channel about one by hand.
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet withdrawal list --status exception\n  payfleet withdrawal requery <id>"
    )]
    Withdrawal(WithdrawalCommand),
    /// Merchants without SQL: onboard one, suspend or activate it, show it, rotate its request key.
    #[command(
        subcommand,
        after_help = "Examples:
  payfleet merchant add tea-house --name \"Tea House\" --fee-rate 0.0060 --notify-url https://tea.example/payfleet
  payfleet merchant suspend tea-house --reason \"chargebacks under review\"
  payfleet merchant rotate-key tea-house --grace 24h"
    )]
    Merchant(MerchantCommand),
    /// The routing table without SQL: add a channel, take it out of routing and back, list them with their breakers.
    #[command(
        subcommand,
        after_help = "Examples:\n  payfleet channel add acme-card --base-url https://pay.acme.example --webhook-secret-file /etc/payfleet/acme.secret --methods card --fee-rate 0.0120 --reversal-cutoff 22:00\n  payfleet channel disable acme-card --reason \"acquirer incident\"\n  payfleet channel list"
    )]
    Channel(ChannelCommand),
    /// Products, stock, price tiers and coupons from a JSON file (contracts/catalogue/catalogue.schema.json).
    #[command(
        subcommand,
        after_help = "Example:\n  payfleet catalogue import contracts/catalogue/example.json"
    )]
    Catalogue(CatalogueCommand),
    /// Payers without SQL: register one.
    #[command(
        subcommand,
        after_help = "Example:\n  payfleet user add u-1042 --name \"Li Wei\""
    )]
    User(UserCommand),
    /// A payer's wallets: balances and statement.
    #[command(subcommand, after_help = "Example:\n  payfleet wallet show u-1042")]
    Wallet(WalletCommand),
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
        /// The business day (in the `business_time_zone` setting, as the channel's statement counts it).
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
pub(crate) enum TopologyCommand {
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
pub(crate) enum DlqCommand {
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
pub(crate) struct WebhookSelection {
    /// A payment id or merchant-id:merchant-order-id.
    #[arg(long)]
    pub(crate) payment: Option<String>,
    #[arg(long)]
    pub(crate) merchant: Option<String>,
    /// Created at or after: an age (30m, 2h, 7d) or a time (RFC 3339, or a date).
    #[arg(long, value_parser = parse_time)]
    pub(crate) since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before: an age or a time.
    #[arg(long, value_parser = parse_time)]
    pub(crate) until: Option<chrono::DateTime<chrono::Utc>>,
}

impl WebhookSelection {
    pub(crate) fn filter(
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
pub(crate) enum WebhookCommand {
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
pub(crate) enum RefundCommand {
    /// Refunds, newest first.
    #[command(
        after_help = "Examples:\n  payfleet refund list\n  payfleet refund list --status exception --merchant demo-shop --json"
    )]
    List {
        /// Only refunds in this status (owed, sent, requested, reserved, sending, unknown, succeeded, failed, refused, exception).
        #[arg(long)]
        status: Option<String>,
        /// Only this merchant's refunds.
        #[arg(long)]
        merchant: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One refund: its parts per seller, its channel calls, postings, event and webhooks.
    #[command(
        after_help = "Examples:\n  payfleet refund show 5d3e0a7c-…\n  payfleet refund show demo-shop:DS-RF-000001"
    )]
    Show {
        /// `<refund id>` or `<merchant id>:<merchant refund id>`.
        reference: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum PaymentCommand {
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

/// What `payfleet bench` measures.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Payments per run.
    #[arg(long, default_value_t = 3000, value_name = "N")]
    pub payments: usize,
    /// Interleaved runs of the null pipeline and the fleet; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The kinds of payment, taken in turn.
    #[arg(long, value_delimiter = ',', default_value = "wallet")]
    pub mix: Vec<payfleet_workers::bench::Kind>,
    /// Send every payment to one shop and one SKU.
    #[arg(long)]
    pub hot: bool,
    /// Open loop: publish at this many requests per second while the fleet runs
    /// (default: drain, everything queued before the fleet starts).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Keep the shadow vhosts and databases.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Load this many payments of history (25 days of them, every row the
    /// fleet writes) once, with the catalogue; each fleet run starts from
    /// a copy of that database.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub history: u64,
}
