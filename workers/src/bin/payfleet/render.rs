//! How the operator commands show what `payfleet_workers::ops` returns:
//! tables and text for people (`--json` output is the value itself,
//! serialized where the command runs), and the live progress of the demo
//! and the benchmark. `ops`, the demo and the benchmark return data and
//! report progress; only the binary prints.

use std::io::Write;

use payfleet_workers::ops::{
    dlq,
    payment::{Resolution, Story},
    reconcile::Summary,
    status::FleetStatus,
    webhook,
};
use payfleet_workers::{bench, demo::Live};

/// `dlq list` (and a replay's dry run): one dead letter a line.
pub(crate) fn dead_letters(rows: &[dlq::Row]) {
    println!(
        "{:>6}  {:<16} {:<12} {:<10} {:>4}  {:<8}  {:<20}  {:<36}  error",
        "id", "stage", "kind", "status", "att", "age", "last failure", "payment"
    );
    let now = chrono::Utc::now();
    for r in rows {
        let age = now - r.first_failed_at;
        let age = if age.num_hours() >= 24 {
            format!("{}d", age.num_days())
        } else if age.num_minutes() >= 60 {
            format!("{}h", age.num_hours())
        } else {
            format!("{}m", age.num_minutes())
        };
        println!(
            "{:>6}  {:<16} {:<12} {:<10} {:>4}  {:<8}  {:<20}  {:<36}  {}",
            r.id,
            r.stage,
            r.error_kind,
            r.status,
            r.attempts,
            age,
            r.last_failed_at.format("%Y-%m-%d %H:%M:%S"),
            r.correlation_id.as_deref().unwrap_or("-"),
            r.error_message.chars().take(80).collect::<String>()
        );
    }
    println!("{} dead letter(s)", rows.len());
}

/// `dlq show`: headers and the pretty-printed body.
pub(crate) fn dead_letter(d: &dlq::DeadLetter) -> anyhow::Result<()> {
    println!(
        "dead letter {}: stage {}, {}, {}, message id {}",
        d.id, d.stage, d.error_kind, d.status, d.message_id
    );
    println!(
        "properties: {}",
        serde_json::to_string_pretty(&d.properties)?
    );
    println!("headers: {}", serde_json::to_string_pretty(&d.headers)?);
    match serde_json::from_slice::<serde_json::Value>(&d.body) {
        Ok(value) => println!(
            "body ({} bytes, JSON):\n{}",
            d.body.len(),
            serde_json::to_string_pretty(&value)?
        ),
        Err(_) => println!(
            "body ({} bytes, not JSON): {}",
            d.body.len(),
            String::from_utf8_lossy(&d.body)
        ),
    }
    Ok(())
}

/// `webhook list` (and a resend's dry run): one delivery a line.
pub(crate) fn webhooks(rows: &[webhook::Delivery]) {
    println!(
        "{:<36}  {:<16} {:<18} {:<10} {:>4}  {:<20}  {:<40}  last error",
        "payment, withdrawal or transfer", "merchant", "event", "status", "att", "created", "url"
    );
    for d in rows {
        println!(
            "{:<36}  {:<16} {:<18} {:<10} {:>4}  {:<20}  {:<40}  {}",
            d.payment_id
                .map(|id| id.to_string())
                .or_else(|| d.withdrawal_id.map(|id| id.to_string()))
                .or_else(|| d.transfer_id.map(|id| id.to_string()))
                .unwrap_or_default(),
            d.merchant_id,
            d.event_type,
            d.status,
            d.attempts,
            d.created_at.format("%Y-%m-%d %H:%M:%S"),
            d.url,
            d.last_error
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(80)
                .collect::<String>()
        );
    }
    println!("{} webhook(s)", rows.len());
}

/// `payment show`: the payment, then its timeline.
pub(crate) fn story(story: &Story) {
    println!(
        "payment {}: {}:{}, user {}, {} {}, channel {}, status {}{}",
        story.id,
        story.merchant_id,
        story.merchant_order_id,
        story.user_id,
        story.amount,
        story.currency,
        story.channel.as_deref().unwrap_or("-"),
        story.status,
        story
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    for event in &story.timeline {
        println!(
            "{}  {:<16} {}",
            event.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            event.stage,
            event.what
        );
    }
}

/// `refund list`: one refund per line.
pub(crate) fn refunds(rows: &[payfleet_workers::ops::refund::RefundRow]) {
    for r in rows {
        println!(
            "{}  {}  {:<9} {:<8} {:>10} {}  {:<9}  payment {}  {}{}",
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.id,
            r.origin,
            r.kind,
            r.amount,
            r.currency,
            r.status,
            r.payment_id,
            match (&r.merchant_id, &r.merchant_refund_id) {
                (Some(m), Some(no)) => format!("{m}:{no}"),
                _ => r.reason.clone(),
            },
            r.detail
                .as_ref()
                .map(|d| format!(" — {d}"))
                .unwrap_or_default()
        );
    }
    println!("{} refund(s)", rows.len());
}

/// `refund show`: the refund, its parts per seller, then its story.
pub(crate) fn refund_story(story: &payfleet_workers::ops::refund::RefundStory) {
    let r = &story.refund;
    println!(
        "{} {} ({}{}): {} {} of payment {} at {}, status {}{}, fee share back {}, sent {} time(s){}",
        r.kind,
        r.id,
        r.origin,
        r.merchant_refund_id
            .as_ref()
            .map(|no| format!(" {}:{no}", r.merchant_id.as_deref().unwrap_or("-")))
            .unwrap_or_default(),
        r.amount,
        r.currency,
        r.payment_id,
        r.channel,
        r.status,
        r.detail
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        r.fee_back,
        r.sends,
        r.last_error
            .as_ref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    for part in &story.parts {
        println!(
            "  seller {:<16} {:>10} less fee share {:>8}  {}",
            part.seller_id, part.amount, part.fee_back, part.status
        );
    }
    for line in &story.timeline {
        println!("{}  {}", line.at.format("%Y-%m-%d %H:%M:%S%.3f"), line.what);
    }
}

/// `payment resolve`: the payment's state before and after, as recorded.
pub(crate) fn resolution(
    resolution: &Resolution,
    outcome: &str,
    operator: &str,
) -> anyhow::Result<()> {
    println!(
        "resolved payment {} as {outcome} by {operator}: {} → {}",
        resolution.payment_id,
        serde_json::to_string(&resolution.before)?,
        serde_json::to_string(&resolution.after)?
    );
    Ok(())
}

/// `reconcile`: a channel's day in counts, then each mismatch.
pub(crate) fn reconciliation(summary: &Summary) {
    let counts: Vec<String> = summary
        .counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "{} {}: {}",
        summary.channel,
        summary.day,
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

/// `status`: the fleet at a glance.
pub(crate) fn status(status: &FleetStatus) {
    let s = &status.signals;
    println!(
        "payfleet on vhost {} — ingress ready {}",
        status.vhost,
        status.ingress_ready()
    );
    println!(
        "{:<18} {:>7} {:>9}  {:<24} {:>6} {:>7}",
        "stage", "ready", "consumers", "retrying (per level)", "dlq", "parked"
    );
    for row in status.stage_rows() {
        let retrying: Vec<String> = row.retrying.iter().map(i64::to_string).collect();
        println!(
            "{:<18} {:>7} {:>9}  {:<24} {:>6} {:>7}",
            row.stage,
            row.ready,
            row.consumers,
            retrying.join("/"),
            row.dlq_ready,
            row.parked
        );
    }
    println!(
        "outbox: {} unsent{}",
        s.outbox_unsent,
        s.outbox_oldest_seconds
            .map(|a| format!(", oldest {a:.1} s"))
            .unwrap_or_default()
    );
    let payments: Vec<String> = status
        .payments_by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "payments: {}",
        if payments.is_empty() {
            "none".into()
        } else {
            payments.join(", ")
        }
    );
    if let Some(oldest) = &s.oldest_open_payment {
        println!(
            "oldest open payment: {} ({}, {:.0} s)",
            oldest.payment_id, oldest.status, oldest.age_seconds
        );
    }
    println!(
        "exceptions: {} payment(s), {} refund(s), {} withdrawal(s); refunds owed: {}; transfers stuck: {}",
        s.payments_in_exception,
        s.refunds_in_exception,
        s.withdrawals_in_exception,
        s.refunds_owed,
        s.transfers_stuck
    );
    let breakers: Vec<String> = s
        .breakers_open
        .iter()
        .map(|(channel, open)| format!("{channel} {}", if *open { "OPEN" } else { "closed" }))
        .collect();
    if !breakers.is_empty() {
        println!("breakers: {}", breakers.join(", "));
    }
    println!(
        "redis: {}",
        if s.redis_degraded {
            "degraded (PostgreSQL leases)"
        } else {
            "ok"
        }
    );
    if status.attention.is_empty() {
        println!("ok: nothing needs attention");
    } else {
        for line in &status.attention {
            println!("ATTENTION: {line}");
        }
    }
}

/// `run --demo`: its opening line, then one progress line drawn over itself.
pub(crate) fn demo_live(live: Live<'_>) {
    match live {
        Live::Started { run_id, requests } => println!(
            "payfleet demo {run_id}: {requests} requests, catalogue seeded, fleet starting"
        ),
        Live::Tick(t) => {
            print!(
                "\r[{:>6.1}s] published {}/{} · payments {}/{} terminal (settled {}, failed {}, rejected {}) · refused {} · dead letters {}   ",
                t.elapsed.as_secs_f64(),
                t.published,
                t.requests,
                t.progress.terminal,
                t.expected_payments,
                t.progress.settled,
                t.progress.failed,
                t.progress.rejected,
                t.progress.refused,
                t.progress.dead,
            );
            let _ = std::io::stdout().flush();
        }
        Live::Ended => println!(),
        Live::Refunds {
            elapsed,
            asked,
            finished,
        } => {
            print!(
                "\r[{:>6.1}s] refunds, withdrawals, top-ups, payouts and transfers asked {asked} · ended {finished}/{asked}   ",
                elapsed.as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        }
    }
}

/// `bench`: a line per measured run, and a fleet run's progress drawn over itself.
pub(crate) fn bench_live(live: bench::Live<'_>) {
    match live {
        bench::Live::CatalogueReady { history, took } => println!(
            "  catalogue{} ready in {:.1} s; every fleet run starts from a copy",
            if history > 0 {
                format!(" with {history} payments of history")
            } else {
                String::new()
            },
            took.as_secs_f64()
        ),
        bench::Live::NullRun { run, per_second } => {
            println!("  null  run {run}: {per_second:.0} messages/s through 6 hops");
        }
        bench::Live::FleetTick {
            run_id,
            done,
            payments,
            elapsed,
        } => {
            print!(
                "\r  fleet {run_id}: {done}/{payments} payments final · {:.1} s   ",
                elapsed.as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        }
        bench::Live::FleetDone => println!(),
        bench::Live::FleetRun { run, measured } => println!(
            "  fleet run {run}: {:.0} payments/s, {} of {} settled",
            measured.per_second, measured.settled, measured.payments
        ),
    }
}

/// A merchant in two lines: who, status, fee, where its webhooks go, its key.
pub(crate) fn merchant(m: &payfleet_workers::ops::merchant::MerchantView) {
    println!(
        "merchant {} ({}): {}{} · fee rate {} · webhooks to {}{}",
        m.id,
        m.name,
        m.status,
        m.status_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        m.fee_rate,
        m.notify_url
            .as_deref()
            .unwrap_or("each payment's notify URL"),
        if m.acts_for_users {
            " · acts for users (may withdraw from their wallets)"
        } else {
            ""
        }
    );
    if let Some(account) = &m.payout_account {
        println!("  pays out to {account}");
    }
    println!(
        "  request key {}{}",
        m.key_fingerprint,
        match (&m.previous_key_fingerprint, m.previous_key_expires_at) {
            (Some(previous), Some(until)) if until > chrono::Utc::now() =>
                format!(" · previous key {previous} valid until {until}"),
            _ => String::new(),
        }
    );
}

/// `channel list` (and what `add`, `disable`, `enable` leave): one channel per line.
pub(crate) fn channels(rows: &[payfleet_workers::ops::channel::ChannelView]) {
    for c in rows {
        println!(
            "{:<16} {:<8} {:<12} fee {:<7} {:<8}{} reversal cut-off {} · breaker {}",
            c.name,
            c.kind,
            c.methods.join(","),
            c.fee_rate,
            c.status,
            c.status_reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            c.reversal_cutoff
                .map_or_else(|| "none".to_owned(), |t| t.to_string()),
            c.breaker.unwrap_or("-")
        );
    }
}
