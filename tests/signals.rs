//! What pages the on-call engineer, over the real services: the alert
//! rules pass `promtool check rules` and their unit tests (one per alert);
//! a running fleet's `/metrics` (on its own listener, apart from the
//! webhook ingress) exports every metric the rules and the dashboard
//! name, each with help text and bounded labels; and `payfleet status`
//! reads the same figures and exits 3 with one line for each condition
//! that needs attention — 2 stays a usage error.

mod fleet;

use std::{collections::BTreeSet, path::PathBuf, process::Command, time::Duration};

use fleet::{WAIT, d, sandbox::CARD, sandbox::World};
use payfleet_common::lock::Locks;
use payfleet_tests::wait_until;
use payfleet_workers::{channels::routing, domain::ledger, seed};
use serde_json::Value;

fn ops_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(path)
}

/// Runs promtool (Debian's `prometheus` package; `.ci/run` installs it):
/// a machine without it fails here, it is not skipped.
fn promtool(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}): install Debian's `prometheus` package")
        });
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The `payfleet_…` metric names an expression (or a file of them) uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|token| token.starts_with("payfleet_"))
        .map(str::to_owned)
        .collect()
}

/// The expressions of every panel of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &Value, exprs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => exprs.push(expr.clone()),
                        _ => walk(v, exprs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(ops_file("grafana/payfleet.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    exprs
}

#[test]
fn the_alert_rules_pass_promtool_and_each_alert_has_a_unit_test() {
    let dir = ops_file("prometheus");
    let (ok, said) = promtool(&["check", "rules", "payfleet.rules.yml"], &dir);
    assert!(ok, "promtool check rules:\n{said}");
    let (ok, said) = promtool(&["test", "rules", "payfleet.rules.test.yml"], &dir);
    assert!(ok, "promtool test rules:\n{said}");
    let rules = std::fs::read_to_string(dir.join("payfleet.rules.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir.join("payfleet.rules.test.yml")).expect("tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    for wanted in [
        "PayfleetStageWithoutConsumers",
        "PayfleetQueueGrowing",
        "PayfleetOutboxLag",
        "PayfleetDeadLettersParked",
        "PayfleetOpenExceptions",
        "PayfleetStuckPayments",
        "PayfleetChannelBreakerOpen",
        "PayfleetRedisDegraded",
        "PayfleetEndToEndSlow",
    ] {
        assert!(alerts.contains(&wanted), "no alert {wanted}");
    }
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
    }
}

/// `/metrics`: the names with a sample, and the help text of each family.
fn exposition(text: &str) -> (BTreeSet<String>, std::collections::BTreeMap<String, String>) {
    let mut sampled = BTreeSet::new();
    let mut help = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), text.trim().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            sampled.insert(line[..end].to_owned());
        }
    }
    (sampled, help)
}

/// A histogram's series (`_bucket`, `_sum`, `_count`) belong to its family.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_fleet_exports_what_the_rules_and_the_dashboard_use() -> anyhow::Result<()> {
    let mut world = World::new(
        "signals",
        |s| s.signals_interval = Duration::from_millis(200),
        Duration::from_millis(100),
    )
    .await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(&mut tx, "alice", "CNY", d("500.00"), "signals-wallet").await?;
    tx.commit().await?;
    world.start(&[]).await?;
    let mut ids = Vec::new();
    for (order, method) in [("S-1", "balance"), ("S-2", "wallet"), ("S-3", "card")] {
        ids.push(world.pay(order, method, "tok_success").await?);
    }
    for order in ["S-1", "S-2", "S-3"] {
        assert_eq!(world.outcome(order).await?.0, "settled", "{order}");
    }
    let metrics_url = format!("http://127.0.0.1:{}/metrics", world.http_port());
    let mut used = metric_names(&std::fs::read_to_string(ops_file(
        "prometheus/payfleet.rules.yml",
    ))?);
    for expr in dashboard_exprs() {
        used.extend(metric_names(&expr));
    }
    // every name the rules and the dashboard use, read at least once
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = reqwest::get(&metrics_url).await?.text().await?;
        let (sampled, _) = exposition(&text);
        let families: BTreeSet<&str> = sampled.iter().map(|n| family(n)).collect();
        let missing: Vec<&String> = used
            .iter()
            .filter(|n| !sampled.contains(*n) && !families.contains(family(n)))
            .collect();
        if missing.is_empty() && text.contains(r#"payfleet_payments_open{status="validated"} 0"#) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not exported: {missing:?}; /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (sampled, help) = exposition(&text);
    for name in &used {
        let described = help.get(family(name)).or_else(|| help.get(name.as_str()));
        assert!(
            described.is_some_and(|h| !h.is_empty()),
            "{name} has no help text"
        );
    }
    for name in sampled.iter().filter(|n| n.starts_with("payfleet_")) {
        assert!(
            help.contains_key(family(name)) || help.contains_key(name),
            "{name} is exported without help text"
        );
    }
    // labels are bounded: never a payment id
    for id in &ids {
        assert!(!text.contains(&id.to_string()), "{id} in a label");
    }
    for line in [
        r#"payfleet_queue_consumers{stage="settlement",kind="work"} 1"#,
        r#"payfleet_queue_consumers{stage="order-validation",kind="ingress"} 1"#,
        r#"payfleet_channel_breaker_open{channel="sandbox-card"} 0"#,
        r#"payfleet_exceptions_open{kind="payment"} 0"#,
        r#"payfleet_payment_outcomes_total{status="settled",reason="none",channel="sandbox-card"} 1"#,
        r#"payfleet_payment_end_to_end_seconds_count{status="settled"} 3"#,
        r#"payfleet_build_info{version=""#,
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }

    // the operators' listener and the public ingress are two
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", world.http_port())).await?;
    assert_eq!(ready.status(), 200);
    let said = ready.text().await?;
    assert!(
        said.contains("PostgreSQL: ok") && said.contains("redis: ok"),
        "{said}"
    );
    let on_ingress =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", world.ingress_port())).await?;
    assert_eq!(on_ingress.status(), 404, "/metrics is not public");
    let callback_on_ops = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/callbacks/{CARD}/{}",
            world.http_port(),
            ids[2]
        ))
        .body("{}")
        .send()
        .await?;
    assert_eq!(
        callback_on_ops.status(),
        404,
        "no webhook on the operators' side"
    );
    world.finish().await
}

/// `payfleet status` with extra environment; its exit code and stdout.
async fn status(
    world: &World,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(i32, String)> {
    let output = fleet::payfleet(&world.env)
        .arg("status")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await?;
    Ok((
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

/// Waits until `status` exits 3 and says `line`; what it said.
async fn attention(world: &World, line: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, out) = status(world, &[], env).await?;
        if code == 3
            && out
                .lines()
                .any(|l| l.starts_with("ATTENTION:") && l.contains(line))
        {
            return Ok(out);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "status never said `{line}` with exit 3 (exit {code}):\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_3_with_a_line_for_each_condition_that_needs_attention() -> anyhow::Result<()>
{
    let mut world = World::new("attention", |_| {}, Duration::from_millis(100)).await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(&mut tx, "alice", "CNY", d("500.00"), "attention-wallet").await?;
    tx.commit().await?;
    seed::Catalogue {
        users: vec![seed::user("bob").wallet("CNY", d("1.00"), "attention-bob")],
        ..Default::default()
    }
    .seed(world.pool())
    .await?;
    world.start(&[]).await?;
    let (code, out) = status(&world, &[], &[]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: nothing needs attention"), "{out}");

    // a payment held for review
    let held = world.pay("A-1", "card", "tok_amount_mismatch").await?;
    world.reaches(held, "exception").await?;
    attention(&world, "1 payment(s) in exception", &[]).await?;

    // a dead letter parked (an undecodable request)
    world.fleet.publish_raw(b"{not json", Some("sig")).await?;
    attention(&world, "1 dead letter(s) parked", &[]).await?;

    // a channel failing: the breaker the routing reads opens
    let settings = &world.env.settings;
    let locks = Locks::new(
        &settings.redis_url,
        &settings.redis_key_prefix,
        settings.lock_ttl,
    )?;
    for call in 0..routing::MIN_CALLS {
        routing::record(
            &locks,
            &settings.redis_key_prefix,
            CARD,
            &format!("call-{call}"),
            true,
        )
        .await;
    }
    attention(
        &world,
        "channel sandbox-card's circuit breaker is open",
        &[],
    )
    .await?;

    // Redis away, as this process sees it
    attention(
        &world,
        "Redis does not answer",
        &[("PAYFLEET_REDIS_URL", "redis://127.0.0.1:1/0")],
    )
    .await?;

    // only order-validation runs: the other stages have no consumer, and
    // a validated payment stays open
    world.stop().await;
    world.start(&["order-validation"]).await?;
    let open = world.pay("A-2", "balance", "tok_success").await?;
    wait_until(WAIT, "A-2 validated", || async {
        Ok(world
            .status(open)
            .await?
            .is_some_and(|(s, _)| s == "validated"))
    })
    .await?;
    let out = attention(&world, "no consumer reads fund-freeze's queue", &[]).await?;
    assert!(
        out.contains("no consumer reads settlement's queue"),
        "{out}"
    );
    assert!(
        !out.contains("no consumer reads order-validation's queue"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    attention(
        &world,
        &format!("1 payment(s) open longer than 1 s; oldest {open} in validated"),
        &[("PAYFLEET_STUCK_PAYMENT_AFTER_MS", "1000")],
    )
    .await?;
    // a transfer accepted while fund-freeze and settlement are down
    let transfer = payfleet_common::messages::TransferRequested {
        schema_version: payfleet_common::messages::SCHEMA_VERSION,
        requester_id: fleet::SHOP.into(),
        request_id: "T-1".into(),
        payer_user_id: "alice".into(),
        payee_user_id: "bob".into(),
        amount: d("12.00"),
        currency: "CNY".into(),
        memo: None,
        notify_url: None,
        requested_at: chrono::Utc::now(),
    };
    world
        .publish_signed(
            payfleet_common::messages::kind::TRANSFER_REQUESTED,
            &transfer,
        )
        .await?;
    wait_until(WAIT, "T-1 kept", || async {
        Ok(world
            .env
            .scalar_i64(
                "SELECT count(*) FROM transfers WHERE request_id = 'T-1' AND status = 'requested'",
            )
            .await?
            == 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    attention(
        &world,
        "1 transfer(s) accepted but unfinished longer than 1 s",
        &[("PAYFLEET_STUCK_PAYMENT_AFTER_MS", "1000")],
    )
    .await?;
    let (code, out) = status(&world, &["--stuck-after", "1s", "--json"], &[]).await?;
    assert_eq!(code, 3, "{out}");
    let json: Value = serde_json::from_str(&out)?;
    assert_eq!(json["transfers_stuck"], 1, "{out}");
    assert_eq!(json["payments_open"]["validated"]["stuck"], 1, "{out}");
    assert_eq!(json["payments_in_exception"], 1, "{out}");

    // no relay: an unsent outbox row ages
    world.stop().await;
    sqlx::query(
        "INSERT INTO outbox (message_id, exchange, routing_key, body, created_at)
         VALUES ('attention-lag', 'payfleet.events', 'test.lag', '\\x7b7d', now() - interval '5 minutes')",
    )
    .execute(world.pool())
    .await?;
    attention(&world, "outbox lagging: oldest unsent row is", &[]).await?;

    // a usage error is 2, not "needs attention"
    let (code, out) = status(&world, &["--stuck-after", "soon"], &[]).await?;
    assert_eq!(code, 2, "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");

    // let the fleet finish what is open, then the closing checks
    sqlx::query("DELETE FROM outbox WHERE message_id = 'attention-lag'")
        .execute(world.pool())
        .await?;
    world.start(&[]).await?;
    assert_eq!(world.outcome("A-2").await?.0, "settled");
    wait_until(WAIT, "T-1 moved", || async {
        Ok(world
            .env
            .scalar_i64(
                "SELECT count(*) FROM transfers WHERE request_id = 'T-1' AND status = 'succeeded'",
            )
            .await?
            == 1)
    })
    .await?;
    world.finish().await
}
