//! The onboarding commands: `payfleet merchant`, `channel`, `user` and
//! `catalogue` (`wallet` is in `wallet.rs`) — setting payfleet up for real use without SQL.
//! Their arguments and how each runs; the work is in `payfleet_workers::ops`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use payfleet_common::{Settings, db};
use payfleet_workers::ops::parse_age;

use crate::render;

#[derive(Subcommand)]
pub(crate) enum MerchantCommand {
    /// Onboard a merchant: active, with a new request key, shown once.
    Add {
        /// Its id: what its requests name as `merchant_id`.
        id: String,
        #[arg(long)]
        name: String,
        /// The platform's fee on its sales (0.0060 = 0.6 %).
        #[arg(long, default_value = "0")]
        fee_rate: rust_decimal::Decimal,
        /// Where its webhooks go (else each payment's own notify URL).
        #[arg(long)]
        notify_url: Option<String>,
        /// The platform's wallet application: it may ask to move users'
        /// wallets (withdrawals). A merchant selling goods never may.
        #[arg(long)]
        acts_for_users: bool,
        /// The bank account its settled balance is paid out to.
        #[arg(long)]
        payout_account: Option<String>,
        #[arg(long, default_value = "onboarding")]
        reason: String,
        /// Who acts, for the audit (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Refuse a merchant's requests from now on (`merchant_suspended`).
    Suspend {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
    /// Take a suspended merchant's requests again.
    Activate {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
    /// A merchant, its request key's fingerprint, and every action on it.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// What a merchant holds per currency: available, reserved for refunds, in flight, settled today.
    Balance {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// A new request key, shown once; the one before stays valid for the grace period.
    RotateKey {
        id: String,
        /// How long the previous key stays valid (0 ends it now, as for a leaked key; at most 7d).
        #[arg(long, default_value = "24h", value_parser = parse_age)]
        grace: chrono::Duration,
        #[arg(long, default_value = "key rotation")]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ChannelCommand {
    /// Add a channel (the sandbox gateway's HTTP protocol), active.
    Add {
        name: String,
        /// Where its API is.
        #[arg(long)]
        base_url: String,
        /// A file holding the secret its webhooks are signed with (kept out of the process list).
        #[arg(long, value_name = "FILE")]
        webhook_secret_file: PathBuf,
        /// The payment methods it takes, comma-separated (card, wallet).
        #[arg(long, value_delimiter = ',', required = true)]
        methods: Vec<String>,
        /// Its fee on what it charges (0.0120 = 1.2 %).
        #[arg(long)]
        fee_rate: rust_decimal::Decimal,
        /// The time of day (business zone) after which it reverses nothing paid that day; none: it does not reverse.
        #[arg(long, value_parser = parse_time_of_day)]
        reversal_cutoff: Option<chrono::NaiveTime>,
        #[arg(long, default_value = "onboarding")]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
    /// Take a channel out of routing (payments already there finish there).
    Disable {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
    /// Put a disabled channel back into routing.
    Enable {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
    /// The routing table: methods, fees, status, reversal cut-off and circuit breaker.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// `22:00` or `22:00:00`.
fn parse_time_of_day(text: &str) -> Result<chrono::NaiveTime, String> {
    chrono::NaiveTime::parse_from_str(text, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(text, "%H:%M"))
        .map_err(|_| format!("`{text}` is not a time of day (22:00 or 22:00:00)"))
}

#[derive(Subcommand)]
pub(crate) enum CatalogueCommand {
    /// Check the file whole, then write it in one transaction; says what changed (nothing, the second time).
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Register a payer, active; its wallets open with their first top-up.
    Add {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "onboarding")]
        reason: String,
        #[arg(long)]
        operator: Option<String>,
    },
}

pub(crate) async fn merchant(settings: &Settings, command: MerchantCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops::{
        self,
        merchant::{Acting, NewMerchant},
    };
    let pool = db::connect(settings).await?;
    match command {
        MerchantCommand::Add {
            id,
            name,
            fee_rate,
            notify_url,
            acts_for_users,
            payout_account,
            reason,
            operator,
            json,
        } => {
            let operator = ops::operator(operator);
            let new = NewMerchant {
                id,
                name,
                fee_rate,
                notify_url,
                acts_for_users,
                payout_account,
            };
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            let (merchant, keys) = ops::merchant::add(&pool, &new, &acting).await?;
            if json {
                let mut shown = serde_json::to_value(&merchant)?;
                shown["request_key"] = serde_json::Value::from(keys.request_key);
                shown["webhook_secret"] = serde_json::Value::from(keys.webhook_secret);
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                render::merchant(&merchant);
                println!(
                    "request key (shown once; sign requests with it): {}",
                    keys.request_key
                );
                println!(
                    "webhook secret (shown once; check our webhooks with it): {}",
                    keys.webhook_secret
                );
            }
        }
        MerchantCommand::Suspend {
            id,
            reason,
            operator,
        } => {
            let operator = ops::operator(operator);
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            render::merchant(&ops::merchant::set_active(&pool, &id, false, &acting).await?);
        }
        MerchantCommand::Activate {
            id,
            reason,
            operator,
        } => {
            let operator = ops::operator(operator);
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            render::merchant(&ops::merchant::set_active(&pool, &id, true, &acting).await?);
        }
        MerchantCommand::Show { id, json } => {
            let story = ops::merchant::show(&pool, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&story)?);
            } else {
                render::merchant(&story.merchant);
                for action in &story.actions {
                    println!(
                        "  {}  {:<10} by {}: {}",
                        action.at.format("%Y-%m-%d %H:%M:%S"),
                        action.action,
                        action.operator,
                        action.reason
                    );
                }
            }
        }
        MerchantCommand::Balance { id, json } => {
            let today = payfleet_workers::domain::business_day::day_bounds(
                chrono::Utc::now()
                    .with_timezone(&settings.business_zone())
                    .date_naive(),
                settings.business_zone(),
            );
            let balances = ops::merchant::balance(&pool, &id, today).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&balances)?);
            } else if balances.is_empty() {
                println!("merchant {id}: no balance yet");
            } else {
                for b in &balances {
                    println!(
                        "merchant {id} {}: available {} · reserved for refunds {} · in flight {} · settled today {} · paying out {} · paid out {}",
                        b.currency,
                        b.available,
                        b.reserved,
                        b.in_flight,
                        b.settled_today,
                        b.paying_out,
                        b.paid_out
                    );
                }
            }
        }
        MerchantCommand::RotateKey {
            id,
            grace,
            reason,
            operator,
        } => {
            let operator = ops::operator(operator);
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            let (merchant, key) = ops::merchant::rotate_key(&pool, &id, grace, &acting).await?;
            render::merchant(&merchant);
            println!("new request key (shown once): {key}");
        }
    }
    Ok(())
}

pub(crate) async fn channel(settings: &Settings, command: ChannelCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops::{self, channel::NewChannel, merchant::Acting};
    let pool = db::connect(settings).await?;
    match command {
        ChannelCommand::Add {
            name,
            base_url,
            webhook_secret_file,
            methods,
            fee_rate,
            reversal_cutoff,
            reason,
            operator,
        } => {
            let webhook_secret =
                std::fs::read_to_string(&webhook_secret_file).with_context(|| {
                    format!("--webhook-secret-file {}", webhook_secret_file.display())
                })?;
            let operator = ops::operator(operator);
            let new = NewChannel {
                name,
                base_url,
                webhook_secret,
                methods,
                fee_rate,
                reversal_cutoff,
            };
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            render::channels(&[ops::channel::add(&pool, &new, &acting).await?]);
        }
        ChannelCommand::Disable {
            name,
            reason,
            operator,
        } => {
            let operator = ops::operator(operator);
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            render::channels(&[ops::channel::set_enabled(&pool, &name, false, &acting).await?]);
        }
        ChannelCommand::Enable {
            name,
            reason,
            operator,
        } => {
            let operator = ops::operator(operator);
            let acting = Acting {
                operator: &operator,
                reason: &reason,
            };
            render::channels(&[ops::channel::set_enabled(&pool, &name, true, &acting).await?]);
        }
        ChannelCommand::List { json } => {
            let redis = payfleet_common::lock::Locks::with_extra_ca(
                &settings.redis_url,
                &settings.redis_key_prefix,
                settings.lock_ttl,
                &settings.extra_ca()?,
            )?;
            let channels =
                ops::channel::list(&pool, Some((&redis, &settings.redis_key_prefix))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&channels)?);
            } else {
                render::channels(&channels);
            }
        }
    }
    Ok(())
}

pub(crate) async fn user(settings: &Settings, command: UserCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops::{self, merchant::Acting};
    let pool = db::connect(settings).await?;
    let UserCommand::Add {
        id,
        name,
        reason,
        operator,
    } = command;
    let operator = ops::operator(operator);
    let acting = Acting {
        operator: &operator,
        reason: &reason,
    };
    let user = ops::user::add(&pool, &id, &name, &acting).await?;
    println!("user {} ({}): {}", user.id, user.name, user.status);
    Ok(())
}

pub(crate) async fn catalogue(
    settings: &Settings,
    command: CatalogueCommand,
) -> anyhow::Result<()> {
    let CatalogueCommand::Import { file, json } = command;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let pool = db::connect(settings).await?;
    let report = payfleet_workers::ops::catalogue::import(&pool, &text)
        .await
        .with_context(|| format!("{}", file.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !report.changed_anything() {
        println!(
            "{}: nothing changed ({} products, {} coupons as they were)",
            file.display(),
            report.products_unchanged,
            report.coupons_unchanged
        );
    } else {
        println!(
            "{}: products {} added, {} updated, {} unchanged · {} stock units added · price tiers {} set, {} removed · coupons {} added, {} unchanged",
            file.display(),
            report.products_added,
            report.products_updated,
            report.products_unchanged,
            report.stock_units_added,
            report.tiers_set,
            report.tiers_removed,
            report.coupons_added,
            report.coupons_unchanged
        );
    }
    Ok(())
}
