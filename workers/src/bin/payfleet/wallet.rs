//! `payfleet wallet`: a user's wallets and statement, the deposits an
//! operator attests (`wallet top-up`), which go through the top-up path at
//! the deposit channel, never as a direct balance edit, and an operator
//! freezing a wallet and reopening it (`wallet freeze|unfreeze`).

use std::time::Duration;

use clap::Subcommand;
use payfleet_common::{Settings, db};
use payfleet_workers::ops::{self, deposit::Deposit, merchant::Acting};

#[derive(Subcommand)]
pub(crate) enum WalletCommand {
    /// Balances per currency and the latest statement lines, newest first.
    Show {
        user: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Stop a wallet's money moving: it pays nothing and receives no
    /// transfer, top-up or withdrawal until it is unfrozen. Audited.
    Freeze {
        user: String,
        #[arg(long, default_value = "CNY")]
        currency: String,
        #[arg(long)]
        reason: String,
        /// Who freezes it, for the audit (default: $USER).
        #[arg(long)]
        operator: Option<String>,
    },
    /// Let a frozen wallet's money move again. Audited.
    Unfreeze {
        user: String,
        #[arg(long, default_value = "CNY")]
        currency: String,
        #[arg(long)]
        reason: String,
        /// Who unfreezes it, for the audit (default: $USER).
        #[arg(long)]
        operator: Option<String>,
    },
    /// Credit a deposit the user paid the platform outside any channel (a
    /// bank transfer, cash), attested by you: a top-up at the deposit
    /// channel `ops`, keyed by your reference, audited.
    TopUp {
        user: String,
        /// What was received, e.g. 250.00.
        #[arg(long)]
        amount: rust_decimal::Decimal,
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// Your reference of the money received (the bank transfer's):
        /// the same reference again is the same deposit.
        #[arg(long)]
        reference: String,
        #[arg(long, default_value = "attested deposit")]
        reason: String,
        /// Who attests, for the audit (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        /// How long to wait for the fleet to credit it (0s: do not wait).
        #[arg(long, default_value = "30s", value_parser = ops::parse_age)]
        wait: chrono::Duration,
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn wallet(settings: &Settings, command: WalletCommand) -> anyhow::Result<()> {
    let pool = db::connect(settings).await?;
    let freezing = matches!(command, WalletCommand::Freeze { .. });
    match command {
        WalletCommand::Show { user, limit, json } => show(&pool, &user, limit, json).await,
        WalletCommand::Freeze {
            user,
            currency,
            reason,
            operator,
        }
        | WalletCommand::Unfreeze {
            user,
            currency,
            reason,
            operator,
        } => {
            let operator = ops::operator(operator);
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            let w =
                ops::user::set_wallet_status(&pool, &user, &currency, freezing, &acting).await?;
            println!(
                "wallet {} of {user}: {} (total {} · available {} · frozen {})",
                w.currency, w.status, w.total, w.available, w.frozen
            );
            Ok(())
        }
        WalletCommand::TopUp {
            user,
            amount,
            currency,
            reference,
            reason,
            operator,
            wait,
            json,
        } => {
            let operator = ops::operator(operator);
            let deposit = Deposit {
                user_id: user,
                amount,
                currency,
                reference,
            };
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            let mut view = ops::deposit::attest(&pool, settings, &deposit, &acting).await?;
            let deadline = tokio::time::Instant::now() + wait.to_std().unwrap_or_default();
            let finished = [
                "settled",
                "failed",
                "cancelled",
                "rejected",
                "challenged",
                "exception",
            ];
            while !finished.contains(&view.status.as_str())
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                (view.status, view.reason) = ops::deposit::standing(&pool, view.top_up_id).await?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!(
                    "top-up {} of {} {} for {}{}: {}{}",
                    view.top_up_id,
                    deposit.amount,
                    deposit.currency,
                    deposit.user_id,
                    if view.new { "" } else { " (attested before)" },
                    match view.status.as_str() {
                        "settled" => "credited",
                        "validated" | "frozen" | "paid" =>
                            "on its way: the fleet credits it when it runs",
                        other => other,
                    },
                    view.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

/// Shows a user's wallets and its latest statement lines.
async fn show(pool: &sqlx::PgPool, user: &str, limit: i64, json: bool) -> anyhow::Result<()> {
    let story = ops::user::wallet(pool, user, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&story)?);
        return Ok(());
    }
    let u = &story.user;
    println!(
        "user {} ({}): {}{}",
        u.id,
        u.name,
        u.status,
        if u.blocked {
            ", on the risk block list"
        } else {
            ""
        }
    );
    if story.wallets.is_empty() {
        println!("  no wallet yet: one opens with its first top-up");
    }
    for w in &story.wallets {
        println!(
            "  wallet {}: total {} · available {} · frozen {} ({})",
            w.currency, w.total, w.available, w.frozen, w.status
        );
    }
    for line in &story.statement {
        println!(
            "  {}  {:<8} {:>10} {}  available {} · frozen {}{}",
            line.at.format("%Y-%m-%d %H:%M:%S"),
            line.kind,
            line.amount,
            line.currency,
            line.available_after,
            line.frozen_after,
            match (line.payment_id, line.withdrawal_id, line.transfer_id) {
                (Some(p), _, _) => format!(" · payment {p}"),
                (_, Some(w), _) => format!(" · withdrawal {w}"),
                (_, _, Some(t)) => format!(" · transfer {t}"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}
