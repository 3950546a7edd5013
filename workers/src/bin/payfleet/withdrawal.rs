//! `payfleet withdrawal list | show | requery`: users' withdrawals for ops.

use clap::Subcommand;
use payfleet_common::{Settings, db};
use payfleet_workers::ops::{
    self,
    withdrawal::{Answer, WithdrawalRow, WithdrawalStory},
};

#[derive(Subcommand)]
pub(crate) enum WithdrawalCommand {
    /// Withdrawals, newest first.
    #[command(
        after_help = "Examples:\n  payfleet withdrawal list\n  payfleet withdrawal list --status exception --json"
    )]
    List {
        /// Only withdrawals in this status (requested, refused, frozen, sending, unknown, succeeded, failed, exception, returned).
        #[arg(long)]
        status: Option<String>,
        /// Only this user's withdrawals.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One withdrawal: its payout calls and notices, postings, events, webhooks and ops actions.
    #[command(
        after_help = "Examples:\n  payfleet withdrawal show 5d3e0a7c-…\n  payfleet withdrawal show demo-wallet-app:20261206-wd001"
    )]
    Show {
        /// `<withdrawal id>` or `<requester id>:<request id>`.
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Ask the payout channel now about a withdrawal still open there (sending, unknown, exception)
    /// or paid (succeeded: a bank's return whose notice never came); a final answer goes to the
    /// callback stage, which books it. Nothing is sent again; audited.
    #[command(
        after_help = "Examples:\n  payfleet withdrawal requery demo-wallet-app:20261206-wd009\n  payfleet withdrawal requery 5d3e0a7c-… --send-again --operator anna"
    )]
    Requery {
        reference: String,
        /// For an exception the channel has never heard of: send the payout again under the
        /// same id (the channel's idempotency key; a second payout is impossible).
        #[arg(long)]
        send_again: bool,
        #[arg(long)]
        operator: Option<String>,
    },
}

pub(crate) async fn withdrawal(
    settings: &Settings,
    command: WithdrawalCommand,
) -> anyhow::Result<()> {
    let pool = db::connect(settings).await?;
    match command {
        WithdrawalCommand::List {
            status,
            user,
            limit,
            json,
        } => {
            let rows =
                ops::withdrawal::list(&pool, status.as_deref(), user.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for w in &rows {
                    println!("{}", line(w));
                }
                println!("{} withdrawal(s)", rows.len());
            }
        }
        WithdrawalCommand::Show { reference, json } => {
            let id = ops::withdrawal::parse_reference(&reference)?;
            let story = ops::withdrawal::show(&pool, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&story)?);
            } else {
                show(&story);
            }
        }
        WithdrawalCommand::Requery {
            reference,
            send_again,
            operator,
        } => {
            let id = ops::withdrawal::parse_reference(&reference)?;
            let operator = ops::operator(operator);
            let answer =
                ops::withdrawal::requery(settings, &pool, id, &operator, send_again).await?;
            println!(
                "withdrawal {id}: {}",
                match answer {
                    Answer::Final { result, reason } => format!(
                        "the channel says {result}{}; handed to callback",
                        reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    ),
                    Answer::AsBooked { result } =>
                        format!("the channel says {result}, as the books do; nothing moved"),
                    Answer::NeverReceived =>
                        "the channel has no payout of this id: it never reached it; nothing moved \
                         (--send-again sends it again under its id)"
                            .to_owned(),
                    Answer::NoAnswer { why } => format!("no final answer ({why}); nothing moved"),
                }
            );
        }
    }
    Ok(())
}

fn line(w: &WithdrawalRow) -> String {
    format!(
        "{}  {}  {}:{}  {:<16} {:>10} {} (fee {})  {:<9}{}",
        w.created_at.format("%Y-%m-%d %H:%M:%S"),
        w.id,
        w.requester_id,
        w.request_id,
        w.user_id,
        w.amount,
        w.currency,
        w.fee,
        w.status,
        w.detail
            .as_ref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default()
    )
}

fn show(story: &WithdrawalStory) {
    let w = &story.withdrawal;
    println!("{}", line(w));
    println!(
        "  payout channel {} · channel fee {} · sent {} time(s){}",
        w.channel.as_deref().unwrap_or("none"),
        w.channel_fee
            .map(|f| f.to_string())
            .unwrap_or_else(|| "not stated".to_owned()),
        w.sends,
        w.last_error
            .as_ref()
            .map(|e| format!(" · last error: {e}"))
            .unwrap_or_default()
    );
    for line in &story.timeline {
        println!(
            "  {}  {}",
            line.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            line.what
        );
    }
}
