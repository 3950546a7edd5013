//! The operator commands of `payfleet` (`dlq`, `webhook`, `payment`):
//! they call `payfleet_workers::ops` and show what it returns (render.rs).

use anyhow::Context;
use payfleet_common::{Settings, Topology, db};

use crate::{
    args::{BenchArgs, DlqCommand, PaymentCommand, RefundCommand, WebhookCommand},
    render,
};

pub(crate) async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
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
                render::dead_letters(&rows);
            }
        }
        DlqCommand::Show { id } => render::dead_letter(&ops::dlq::show(&pool, &id).await?)?,
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
            if dry_run {
                let rows = ops::dlq::select(&pool, &selection).await?;
                render::dead_letters(&rows);
                println!("dry run: {} dead letter(s) would be replayed", rows.len());
                return Ok(());
            }
            let operator = ops::operator(operator);
            let replayed = ops::dlq::replay(settings, &pool, &selection, &operator).await?;
            println!("replayed {replayed} dead letter(s) as {operator} (recorded in replay_audit)");
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

pub(crate) async fn webhook(settings: &Settings, command: WebhookCommand) -> anyhow::Result<()> {
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
                render::webhooks(&rows);
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
                render::webhooks(&rows);
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

pub(crate) async fn refund(settings: &Settings, command: RefundCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops;
    let pool = db::connect(settings).await?;
    match command {
        RefundCommand::List {
            status,
            merchant,
            limit,
            json,
        } => {
            let rows =
                ops::refund::list(&pool, status.as_deref(), merchant.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                render::refunds(&rows);
            }
        }
        RefundCommand::Show { reference, json } => {
            let ids = ops::refund::parse_reference(&reference)?;
            let story = ops::refund::show(&pool, &ids).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&story)?);
            } else {
                render::refund_story(&story);
            }
        }
    }
    Ok(())
}

pub(crate) async fn payment(settings: &Settings, command: PaymentCommand) -> anyhow::Result<()> {
    use payfleet_workers::ops;
    let pool = db::connect(settings).await?;
    match command {
        PaymentCommand::Show { reference } => {
            let id = ops::payment::parse_reference(&reference)?;
            render::story(&ops::payment::show(&pool, id).await?);
        }
        PaymentCommand::Resolve {
            reference,
            outcome,
            reason,
            operator,
        } => {
            let id = ops::payment::parse_reference(&reference)?;
            let operator = ops::operator(operator);
            let resolution =
                ops::payment::resolve(settings, &pool, id, outcome == "paid", &reason, &operator)
                    .await?;
            render::resolution(&resolution, &outcome, &operator)?;
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

pub(crate) async fn bench(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        anyhow::bail!("--rate must be a positive number of requests per second");
    }
    let options = payfleet_workers::bench::Options {
        payments: args.payments,
        mix: args.mix,
        hot: args.hot,
        runs: args.runs,
        rate: args.rate,
        keep: args.keep,
        seed: args.seed,
        history: args.history,
    };
    let progress = !args.json && std::io::stdout().is_terminal();
    let report = payfleet_workers::bench::run(settings, options, |live| {
        if progress {
            render::bench_live(live);
        }
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if !report.invariants_hold() {
        anyhow::bail!("invariants broken during the benchmark");
    }
    Ok(())
}
