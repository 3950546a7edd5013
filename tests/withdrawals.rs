//! Withdrawals end to end over the real services and the sandbox gateway:
//! a payout that succeeds, one the channel refuses (unfrozen), one whose
//! answer times out (found by a query, paid once), one whose queries run
//! out (still frozen, an exception, one payout at the sandbox), one the
//! payee's bank returns later (credited back once), a process killed
//! between the payout call and its result (one payout), refusals by the
//! balance, the limits and the parties, and duplicate requests. Every
//! scenario ends with the invariants and the books against the channel's
//! own statement, its payouts included.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{
    SHOP, WAIT, d,
    sandbox::{CARD, World},
    types_of,
};
use payfleet_common::messages::{self, SCHEMA_VERSION, WithdrawalRequested};
use payfleet_tests::wait_until;
use payfleet_workers::domain::{ledger, withdrawal::withdrawal_id};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

/// What alice's CNY wallet holds when a scenario starts.
const WALLET: &str = "1000.00";

async fn world(tag: &str) -> anyhow::Result<World> {
    world_with(tag, |_| {}).await
}

/// A world whose card channel also pays payees out, with alice's wallet filled.
async fn world_with(
    tag: &str,
    adjust: impl FnOnce(&mut payfleet_common::Settings),
) -> anyhow::Result<World> {
    let mut world = World::new(tag, adjust, Duration::from_millis(100)).await?;
    world.bind_events().await?;
    sqlx::query("UPDATE channels SET methods = methods || ARRAY['payout'] WHERE name = $1")
        .bind(CARD)
        .execute(world.pool())
        .await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(&mut tx, "alice", "CNY", d(WALLET), "withdrawal-test-wallet").await?;
    tx.commit().await?;
    world.start(&[]).await?;
    Ok(world)
}

fn withdrawal(request_id: &str, amount: &str, payee_account: &str) -> WithdrawalRequested {
    WithdrawalRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: SHOP.into(),
        request_id: request_id.into(),
        user_id: "alice".into(),
        amount: d(amount),
        currency: "CNY".into(),
        payee_account: payee_account.into(),
        notify_url: None,
        requested_at: Utc::now(),
    }
}

/// Publishes a withdrawal request as the shop would: signed, a new message id.
async fn ask(world: &World, request: &WithdrawalRequested) -> anyhow::Result<Uuid> {
    world
        .publish_signed(messages::kind::WITHDRAWAL_REQUESTED, request)
        .await?;
    Ok(withdrawal_id(SHOP, &request.request_id))
}

/// Waits until withdrawal `id` reaches one of `statuses` with everything
/// it has to book booked; its status and detail.
async fn reaches(
    world: &World,
    id: Uuid,
    statuses: &[&str],
) -> anyhow::Result<(String, Option<String>)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row: Option<(String, Option<String>, bool)> = sqlx::query_as(
            "SELECT status, detail,
                    CASE status WHEN 'succeeded' THEN booked_at IS NOT NULL
                                WHEN 'failed' THEN booked_at IS NOT NULL
                                WHEN 'returned' THEN returned_booked_at IS NOT NULL
                                ELSE true END
             FROM withdrawals WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(world.pool())
        .await?;
        match row {
            Some((status, detail, true)) if statuses.contains(&status.as_str()) => {
                return Ok((status, detail));
            }
            row if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("withdrawal {id} not {statuses:?} within {WAIT:?}: {row:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// (total, available, frozen) of alice's CNY wallet.
async fn wallet(world: &World) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
    fleet::wallet_of(world.pool(), "alice", "CNY").await
}

/// The postings of withdrawal `id`'s entries: (entry kind, account, amount).
async fn postings(world: &World, id: Uuid) -> anyhow::Result<Vec<(String, String, Decimal)>> {
    fleet::entry_postings(world.pool(), id).await
}

/// The withdrawal events BI received, in order.
async fn events(world: &World) -> anyhow::Result<Vec<Value>> {
    world.fleet.events_of("withdrawal.").await
}

/// The payout of withdrawal `id` at the sandbox: (status, amount, fee), as
/// the gateway's own store has it.
fn at_the_sandbox(world: &World, id: Uuid) -> Option<(String, Decimal, Decimal)> {
    world.gateway.payout(CARD, &id.to_string()).map(|p| {
        (
            serde_json::to_value(p.status)
                .ok()
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default(),
            p.amount,
            p.fee,
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_is_paid_out_once_and_booked_with_its_fees() -> anyhow::Result<()> {
    let world = world("wdpaid").await?;
    let id = ask(&world, &withdrawal("wd-1", "250.00", "acct_success")).await?;
    assert_eq!(reaches(&world, id, &["succeeded"]).await?.0, "succeeded");
    // 10 basis points of 250.00: the payee receives 249.75; the card
    // channel takes 1.20 % of what it paid out (2.997 → 3.00 at the sandbox).
    let (status, paid, channel_fee) = at_the_sandbox(&world, id).expect("a payout at the sandbox");
    assert_eq!((status.as_str(), paid), ("SUCCEEDED", d("249.75")));
    assert_eq!(channel_fee, d("3.00"));
    assert_eq!(wallet(&world).await?, (d("750.00"), d("750.00"), d("0")));
    let clearing = format!("clearing:{CARD}");
    let costs = format!("channel-costs:{CARD}");
    let mut expected = vec![
        ("withdrawal".to_owned(), "alice".to_owned(), d("-250.00")),
        ("withdrawal".to_owned(), costs, d("-3.00")),
        ("withdrawal".to_owned(), clearing, d("252.75")),
        ("withdrawal".to_owned(), "fees".to_owned(), d("0.25")),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(postings(&world, id).await?, expected);
    world.env.wait_drained(WAIT).await?;
    let events = events(&world).await?;
    assert_eq!(types_of(&events), ["withdrawal.succeeded"]);
    assert_eq!(events[0]["withdrawal_id"], Value::from(id.to_string()));
    assert_eq!(
        (events[0]["amount"].as_str(), events[0]["fee"].as_str()),
        (Some("250.00"), Some("0.25"))
    );
    let sends: i32 = sqlx::query_scalar("SELECT sends FROM withdrawals WHERE id = $1")
        .bind(id)
        .fetch_one(world.pool())
        .await?;
    assert_eq!(sends, 1);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_is_one_withdrawal_and_other_content_is_a_conflict()
-> anyhow::Result<()> {
    let world = world("wddup").await?;
    let request = withdrawal("wd-dup", "100.00", "acct_success");
    let id = ask(&world, &request).await?;
    assert_eq!(reaches(&world, id, &["succeeded"]).await?.0, "succeeded");
    ask(&world, &request).await?;
    ask(
        &world,
        &WithdrawalRequested {
            amount: d("900.00"),
            ..request.clone()
        },
    )
    .await?;
    wait_until(WAIT, "the conflict refused", || async {
        Ok(world
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections WHERE reason = 'idempotency_conflict' AND withdrawal_request_id = 'wd-dup'",
            )
            .await?
            == 1)
    })
    .await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(
        world
            .env
            .scalar_i64("SELECT count(*) FROM withdrawals")
            .await?,
        1
    );
    assert_eq!(wallet(&world).await?.0, d("900.00"), "debited once");
    let events = events(&world).await?;
    assert_eq!(
        types_of(&events),
        ["withdrawal.succeeded", "withdrawal.failed"]
    );
    let conflict = &events[1];
    assert_eq!(conflict["status"], "refused");
    assert!(
        conflict["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("idempotency_conflict")
    );
    assert_ne!(
        conflict["withdrawal_id"],
        Value::from(id.to_string()),
        "the refusal does not report on the withdrawal that succeeded"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_the_channel_refuses_unfreezes_the_amount() -> anyhow::Result<()> {
    let world = world("wdfail").await?;
    let id = ask(&world, &withdrawal("wd-bad", "300.00", "acct_invalid")).await?;
    let (status, detail) = reaches(&world, id, &["failed"]).await?;
    assert_eq!(status, "failed");
    assert_eq!(detail.as_deref(), Some("payout_declined: account_invalid"));
    assert_eq!(
        wallet(&world).await?,
        (d(WALLET), d(WALLET), d("0")),
        "all of it back"
    );
    assert!(postings(&world, id).await?.is_empty(), "no money moved");
    world.env.wait_drained(WAIT).await?;
    let events = events(&world).await?;
    assert_eq!(types_of(&events), ["withdrawal.failed"]);
    assert_eq!(events[0]["status"], "failed");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_whose_answer_times_out_is_found_by_a_query_and_paid_once() -> anyhow::Result<()> {
    let world = world("wdtimeout").await?;
    let id = ask(&world, &withdrawal("wd-slow", "200.00", "acct_timeout")).await?;
    assert_eq!(reaches(&world, id, &["succeeded"]).await?.0, "succeeded");
    let calls: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'call' FROM withdrawal_log WHERE withdrawal_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(world.pool())
    .await?;
    assert_eq!(
        calls.first().map(String::as_str),
        Some("payout"),
        "{calls:?}"
    );
    assert!(
        calls[1..].iter().all(|c| c == "payout_query") && calls.len() >= 2,
        "sent once, then asked: {calls:?}"
    );
    assert_eq!(
        at_the_sandbox(&world, id).map(|p| p.0),
        Some("SUCCEEDED".into())
    );
    assert_eq!(wallet(&world).await?, (d("800.00"), d("800.00"), d("0")));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_whose_queries_run_out_stays_frozen_as_an_exception_until_the_channel_says()
-> anyhow::Result<()> {
    let world = world_with("wdpending", |s| {
        s.status_query_delays = payfleet_common::config::millis(&[100, 200]);
    })
    .await?;
    let id = ask(&world, &withdrawal("wd-pending", "400.00", "acct_pending")).await?;
    let (status, detail) = reaches(&world, id, &["exception"]).await?;
    assert_eq!(status, "exception");
    assert!(detail.unwrap_or_default().contains("still frozen"));
    // Still frozen: releasing it would let the money leave twice.
    assert_eq!(wallet(&world).await?, (d(WALLET), d("600.00"), d("400.00")));
    world.env.wait_drained(WAIT).await?;
    let (status, ..) = at_the_sandbox(&world, id).expect("the payout at the sandbox");
    assert_eq!(status, "PROCESSING");
    let sends: i32 = sqlx::query_scalar("SELECT sends FROM withdrawals WHERE id = $1")
        .bind(id)
        .fetch_one(world.pool())
        .await?;
    assert_eq!(sends, 1, "one payout, then only queries");
    assert!(events(&world).await?.is_empty(), "nothing is final yet");
    assert!(postings(&world, id).await?.is_empty());
    // Ops ask again by hand while the channel still has not decided:
    // nothing moves.
    let reference = format!("{SHOP}:wd-pending");
    let (code, out, err) = world
        .cli(&[
            "withdrawal",
            "requery",
            &reference,
            "--operator",
            "ops-anna",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no final answer"), "{out}");
    assert_eq!(reaches(&world, id, &["exception"]).await?.0, "exception");
    // The payee's bank pays it at last; asked by hand, the channel says so
    // and the withdrawal is booked once, out of its freeze.
    assert!(world.gateway.pay_pending_payout(CARD, &id.to_string()));
    let (code, out, err) = world
        .cli(&[
            "withdrawal",
            "requery",
            &reference,
            "--operator",
            "ops-anna",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("says succeeded"), "{out}");
    reaches(&world, id, &["succeeded"]).await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world).await?, (d("600.00"), d("600.00"), d("0")));
    assert_eq!(types_of(&events(&world).await?), ["withdrawal.succeeded"]);
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT operator FROM manual_actions WHERE withdrawal_id = $1 AND action = 'requery'",
    )
    .bind(id)
    .fetch_all(world.pool())
    .await?;
    assert_eq!(audited, ["ops-anna", "ops-anna"]);
    let (code, out, _) = world.cli(&["withdrawal", "show", &reference]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("ops requery by ops-anna"), "{out}");
    // Asked again, the channel says what the books say: nothing moves.
    let (code, out, _) = world.cli(&["withdrawal", "requery", &reference]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("as the books do"), "{out}");
    // A refused withdrawal has nothing at any channel: a requery is refused.
    let refused = ask(
        &world,
        &withdrawal("wd-too-much", "9000.00", "acct_success"),
    )
    .await?;
    reaches(&world, refused, &["refused"]).await?;
    let (code, _, err) = world
        .cli(&["withdrawal", "requery", &format!("{SHOP}:wd-too-much")])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("is refused"), "{err}");
    // Its bank sends it back; the channel's notice gives no reason. The
    // event must not carry what the exception once said.
    let (_, payout, _) = at_the_sandbox(&world, id).expect("the payout at the sandbox");
    assert!(world.gateway.return_payout_quietly(CARD, &id.to_string()));
    let notice = returned_notice(id, payout, "CNY");
    assert_eq!(notify(&world, id, serde_json::to_vec(&notice)?).await?, 200);
    reaches(&world, id, &["returned"]).await?;
    world.env.wait_drained(WAIT).await?;
    let returned = events(&world)
        .await?
        .into_iter()
        .find(|e| e["event_type"] == "withdrawal.returned")
        .expect("withdrawal.returned");
    assert!(
        !returned["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exception"),
        "{returned}"
    );
    assert_eq!(wallet(&world).await?, (d(WALLET), d(WALLET), d("0")));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_the_channel_never_received_is_sent_again_by_ops_under_its_id()
-> anyhow::Result<()> {
    let world = world_with("wdsendagain", |s| {
        s.status_query_delays = payfleet_common::config::millis(&[100, 200]);
    })
    .await?;
    // The channel's payouts are down for the whole query schedule: every
    // send is refused with a 503 and no query finds a payout.
    world.gateway.set_payouts_down(true);
    let id = ask(&world, &withdrawal("wd-lost", "300.00", "acct_success")).await?;
    reaches(&world, id, &["exception"]).await?;
    assert_eq!(wallet(&world).await?, (d(WALLET), d("700.00"), d("300.00")));
    assert_eq!(at_the_sandbox(&world, id), None);
    world.gateway.set_payouts_down(false);
    let reference = id.to_string();
    let (code, out, err) = world.cli(&["withdrawal", "requery", &reference]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("never reached it"), "{out}");
    assert_eq!(reaches(&world, id, &["exception"]).await?.0, "exception");
    // Sent again under the same id: paid once, booked once out of the freeze.
    let (code, out, err) = world
        .cli(&["withdrawal", "requery", &reference, "--send-again"])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("says succeeded"), "{out}");
    reaches(&world, id, &["succeeded"]).await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world).await?, (d("700.00"), d("700.00"), d("0")));
    let (status, ..) = at_the_sandbox(&world, id).expect("one payout at the sandbox");
    assert_eq!(status, "SUCCEEDED");
    // Once paid, sending again is refused: it is no exception any more.
    let (code, _, err) = world
        .cli(&["withdrawal", "requery", &reference, "--send-again"])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("not an exception"), "{err}");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_returned_by_the_bank_is_credited_back_once() -> anyhow::Result<()> {
    let world = world("wdreturn").await?;
    let id = ask(&world, &withdrawal("wd-back", "500.00", "acct_returned")).await?;
    let (status, detail) = reaches(&world, id, &["returned"]).await?;
    assert_eq!(status, "returned");
    assert_eq!(detail.as_deref(), Some("account_closed"));
    // The whole amount is back; the channel kept its fee on the payout.
    assert_eq!(wallet(&world).await?, (d(WALLET), d(WALLET), d("0")));
    // The channel's notice again (a duplicate webhook) credits nothing more.
    let notice = sqlx::query_as::<_, (Vec<u8>,)>(
        "SELECT raw_body FROM withdrawal_log WHERE withdrawal_id = $1 AND direction = 'callback' LIMIT 1",
    )
    .bind(id)
    .fetch_optional(world.pool())
    .await?;
    if let Some((body,)) = notice {
        assert_eq!(notify(&world, id, body).await?, 200);
    }
    // Nor does the same result reaching callback as a new message (a
    // status query's answer racing the webhook), past the inbox's dedup.
    let mut again = messages::WithdrawalStep::new(id);
    again.result = Some(messages::WithdrawalResult::Returned);
    again.reason = Some("account_closed".into());
    world
        .env
        .publish_raw(
            &world.env.topology.exchanges().stages.clone(),
            payfleet_workers::domain::handoff::CALLBACK,
            &serde_json::to_vec(&again)?,
            payfleet_common::broker::properties(
                &Uuid::now_v7().to_string(),
                Some(&id.to_string()),
                Some(messages::kind::WITHDRAWAL_RESULT),
            ),
        )
        .await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(
        wallet(&world).await?,
        (d(WALLET), d(WALLET), d("0")),
        "credited once"
    );
    let kinds: Vec<String> = postings(&world, id)
        .await?
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "withdrawal_returned").count(),
        3,
        "one return entry: clearing, fees, wallet: {kinds:?}"
    );
    let events = events(&world).await?;
    assert_eq!(
        types_of(&events),
        ["withdrawal.succeeded", "withdrawal.returned"]
    );
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        ["succeeded", "returned"],
        "each event its own status"
    );
    world.finish().await
}

/// The card channel's notice that the payee's bank sent payout `id` of
/// `amount` in `currency` back (no fee, no reason: add them where wanted).
fn returned_notice(id: Uuid, amount: Decimal, currency: &str) -> Value {
    serde_json::json!({
        "channel": CARD, "payout_no": id.to_string(), "status": "RETURNED",
        "amount": amount.to_string(), "currency": currency, "occurred_at": Utc::now(),
    })
}

/// Posts a payout notice `body` to the fleet's ingress as the card
/// channel, signed with its secret; the HTTP status it gets.
async fn notify(world: &World, id: Uuid, body: Vec<u8>) -> anyhow::Result<u16> {
    let timestamp = Utc::now().timestamp();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/callbacks/{CARD}/payouts/{id}",
            world.ingress_port()
        ))
        .header("x-sandbox-timestamp", timestamp.to_string())
        .header(
            "x-sandbox-signature",
            payfleet_sandbox_gateway::sign_notice("card-secret", timestamp, &body),
        )
        .body(body)
        .send()
        .await?;
    Ok(answer.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_notice_of_another_amount_or_currency_moves_nothing() -> anyhow::Result<()> {
    let world = world("wdforged").await?;
    let id = ask(&world, &withdrawal("wd-forged", "500.00", "acct_success")).await?;
    reaches(&world, id, &["succeeded"]).await?;
    let paid = wallet(&world).await?;
    assert_eq!(paid, (d("500.00"), d("500.00"), d("0")));
    // Genuinely signed by the channel, but not about the payout we asked
    // for: a return of 100.00, and a return of the right figure in dollars.
    let payout = at_the_sandbox(&world, id).map(|p| p.1);
    for (amount, currency) in [(Some(d("100.00")), "CNY"), (payout, "USD")] {
        let mut notice = returned_notice(id, amount.unwrap_or_default(), currency);
        notice["fee"] = "1.00".into();
        notice["reason"] = "account_closed".into();
        let status = notify(&world, id, serde_json::to_vec(&notice)?).await?;
        assert_eq!(status, 422, "{amount:?} {currency} refused");
    }
    world.env.wait_drained(WAIT).await?;
    let (status, _) = reaches(&world, id, &["succeeded", "returned"]).await?;
    assert_eq!(status, "succeeded");
    assert_eq!(wallet(&world).await?, paid, "nothing credited back");
    // Both kept in the payouts' log for ops, as received.
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM withdrawal_log WHERE withdrawal_id = $1 AND direction = 'callback'
            AND payload->>'status' = 'RETURNED'",
    )
    .bind(id)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(logged, 2);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_told_without_the_known_fee_or_never_told_is_credited_back_once()
-> anyhow::Result<()> {
    let world = world("wdquietreturn").await?;
    // The bank sends a paid payout back; the channel's notice states the
    // payout's amount and currency but not the fee it told us already.
    let id = ask(
        &world,
        &withdrawal("wd-back-nofee", "500.00", "acct_success"),
    )
    .await?;
    reaches(&world, id, &["succeeded"]).await?;
    let (_, payout, _) = at_the_sandbox(&world, id).expect("the payout at the sandbox");
    assert!(world.gateway.return_payout_quietly(CARD, &id.to_string()));
    let mut notice = returned_notice(id, payout, "CNY");
    notice["reason"] = "account_closed".into();
    assert_eq!(notify(&world, id, serde_json::to_vec(&notice)?).await?, 200);
    reaches(&world, id, &["returned"]).await?;
    // Another one comes back and the channel never says so: ops ask.
    let quiet = ask(
        &world,
        &withdrawal("wd-back-quiet", "200.00", "acct_success"),
    )
    .await?;
    reaches(&world, quiet, &["succeeded"]).await?;
    let reference = format!("{SHOP}:wd-back-quiet");
    let (code, out, err) = world.cli(&["withdrawal", "requery", &reference]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("as the books do"), "{out}");
    assert!(
        world
            .gateway
            .return_payout_quietly(CARD, &quiet.to_string())
    );
    let (code, out, err) = world.cli(&["withdrawal", "requery", &reference]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("says returned"), "{out}");
    reaches(&world, quiet, &["returned"]).await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(
        wallet(&world).await?,
        (d(WALLET), d(WALLET), d("0")),
        "both credited back, once"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_past_the_balance_the_limits_or_the_parties_are_refused_with_reasons()
-> anyhow::Result<()> {
    let world = world_with("wdrefused", |s| {
        s.withdrawal_limit_per_withdrawal.insert("CNY".into(), 600);
        s.withdrawal_limit_per_day.insert("CNY".into(), 800);
    })
    .await?;
    let cases = [
        ("wd-over-limit", "700.00", "alice", "over_limit"),
        ("wd-nobody", "10.00", "nobody", "unknown_user"),
    ];
    for (request_id, amount, user, reason) in cases {
        let id = ask(
            &world,
            &WithdrawalRequested {
                user_id: user.into(),
                ..withdrawal(request_id, amount, "acct_success")
            },
        )
        .await?;
        let (status, detail) = reaches(&world, id, &["refused"]).await?;
        assert_eq!(status, "refused");
        assert!(
            detail.unwrap_or_default().starts_with(reason),
            "{request_id}"
        );
    }
    // Nothing to withdraw: refused without keeping a withdrawal.
    ask(&world, &withdrawal("wd-nothing", "0.00", "acct_success")).await?;
    wait_until(WAIT, "a zero amount refused", || async {
        Ok(world
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections WHERE reason = 'invalid_amount' AND withdrawal_request_id = 'wd-nothing'",
            )
            .await?
            == 1)
    })
    .await?;
    // 600 of today's 800 leave; 300 more would pass the daily limit.
    let first = ask(&world, &withdrawal("wd-day-1", "600.00", "acct_success")).await?;
    assert_eq!(reaches(&world, first, &["succeeded"]).await?.0, "succeeded");
    let second = ask(&world, &withdrawal("wd-day-2", "300.00", "acct_success")).await?;
    let (_, detail) = reaches(&world, second, &["refused"]).await?;
    assert!(detail.unwrap_or_default().starts_with("over_daily_limit"));
    // More than the wallet holds (400.00 left), under every limit.
    let short = ask(&world, &withdrawal("wd-short", "450.00", "acct_success")).await?;
    let (_, detail) = reaches(&world, short, &["refused"]).await?;
    let detail = detail.unwrap_or_default();
    assert!(
        detail.starts_with("over_daily_limit") || detail.starts_with("insufficient_balance"),
        "{detail}"
    );
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world).await?, (d("400.00"), d("400.00"), d("0")));
    let events = events(&world).await?;
    assert_eq!(
        types_of(&events)
            .iter()
            .filter(|t| **t == "withdrawal.failed")
            .count(),
        5,
        "every refusal reported: {events:?}"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_not_acting_for_users_cannot_withdraw_from_a_wallet() -> anyhow::Result<()> {
    let world = world("wdstranger").await?;
    // m1 sells goods: its key is genuine, but it may not move alice's money.
    let request = WithdrawalRequested {
        requester_id: "m1".into(),
        ..withdrawal("wd-by-m1", "100.00", "acct_success")
    };
    world
        .publish_signed_with("k1", messages::kind::WITHDRAWAL_REQUESTED, &request)
        .await?;
    wait_until(WAIT, "the request refused", || async {
        Ok(world
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections
                 WHERE reason = 'requester_not_permitted' AND merchant_id = 'm1' AND withdrawal_request_id = 'wd-by-m1'",
            )
            .await?
            == 1)
    })
    .await?;
    world.env.wait_drained(WAIT).await?;
    let kept = world
        .env
        .scalar_i64("SELECT count(*) FROM withdrawals")
        .await?;
    assert_eq!(kept, 0, "nothing kept, nothing frozen");
    assert_eq!(wallet(&world).await?, (d(WALLET), d(WALLET), d("0")));
    assert_eq!(
        at_the_sandbox(&world, withdrawal_id("m1", "wd-by-m1")),
        None
    );
    let events = events(&world).await?;
    assert_eq!(types_of(&events), ["withdrawal.failed"]);
    assert!(
        events[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("requester_not_permitted")),
        "{events:?}"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_withdrawals_asked_at_once_cannot_both_slip_under_the_daily_limit() -> anyhow::Result<()>
{
    let world = world_with("wdrace", |s| {
        s.withdrawal_limit_per_withdrawal.insert("CNY".into(), 600);
        s.withdrawal_limit_per_day.insert("CNY".into(), 800);
    })
    .await?;
    // Each alone is under the limit and the balance; together they are not
    // under the limit. Both are published before either is judged.
    let (first, second) = (
        withdrawal("wd-race-a", "500.00", "acct_success"),
        withdrawal("wd-race-b", "500.00", "acct_success"),
    );
    let (a, b) = tokio::try_join!(ask(&world, &first), ask(&world, &second))?;
    let (a, b) = tokio::try_join!(
        reaches(&world, a, &["succeeded", "refused"]),
        reaches(&world, b, &["succeeded", "refused"]),
    )?;
    let mut statuses = [a.0.as_str(), b.0.as_str()];
    statuses.sort_unstable();
    assert_eq!(statuses, ["refused", "succeeded"], "{a:?} {b:?}");
    let refusal = if a.0 == "refused" { a.1 } else { b.1 };
    assert!(
        refusal
            .as_deref()
            .unwrap_or_default()
            .starts_with("over_daily_limit"),
        "{refusal:?}"
    );
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world).await?, (d("500.00"), d("500.00"), d("0")));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_the_balance_is_refused_by_try() -> anyhow::Result<()> {
    let world = world("wdshort").await?;
    let id = ask(
        &world,
        &withdrawal("wd-too-much", "1000.01", "acct_success"),
    )
    .await?;
    let (status, detail) = reaches(&world, id, &["refused"]).await?;
    assert_eq!(status, "refused");
    assert!(
        detail
            .unwrap_or_default()
            .starts_with("insufficient_balance")
    );
    assert_eq!(wallet(&world).await?, (d(WALLET), d(WALLET), d("0")));
    assert!(at_the_sandbox(&world, id).is_none(), "never sent");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_between_the_payout_call_and_its_result_pays_once() -> anyhow::Result<()> {
    let mut world = world("wdkill").await?;
    // channel-call moves to a process of its own, to be killed mid-call.
    world.stop().await;
    world
        .start(&[
            "order-validation",
            "fund-freeze",
            "callback",
            "settlement",
            "notification",
        ])
        .await?;
    let caller = world.channel_call_process()?;
    // acct_timeout: the sandbox pays at once and answers only later.
    let id = ask(&world, &withdrawal("wd-kill", "250.00", "acct_timeout")).await?;
    wait_until(
        WAIT,
        "the payout at the channel, ours still sending",
        || async {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM withdrawals WHERE id = $1")
                    .bind(id)
                    .fetch_optional(world.pool())
                    .await?;
            Ok(status.as_deref() == Some("sending") && at_the_sandbox(&world, id).is_some())
        },
    )
    .await?;
    let mut caller = caller;
    caller.kill().await?;
    let _ = caller.wait().await;
    let mut caller = world.channel_call_process()?;
    assert_eq!(reaches(&world, id, &["succeeded"]).await?.0, "succeeded");
    let calls: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'call' FROM withdrawal_log WHERE withdrawal_id = $1 AND direction = 'request' ORDER BY id",
    )
    .bind(id)
    .fetch_all(world.pool())
    .await?;
    assert!(
        calls.iter().all(|c| c == "payout_query") && !calls.is_empty(),
        "the killed call left no result; the one after it only asked: {calls:?}"
    );
    assert_eq!(wallet(&world).await?.0, d("750.00"), "debited once");
    world.env.wait_drained(WAIT).await?;
    caller.kill().await?;
    world.finish().await
}

/// `payfleet reconcile` matches the day's payouts with our withdrawals by
/// payout_no — one paid out, one the payee's bank returned — and keeps
/// quiet about the exception whose queries ran out: the channel still
/// holds it PROCESSING, so it is not listed, and it is not paid out in our
/// books either (a listed one would be a status mismatch, for ops to
/// settle). The items are stored by payout_no, naming no payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_matches_payouts_and_leaves_out_an_exception_the_channel_never_paid()
-> anyhow::Result<()> {
    let world = world_with("wdrecon", |s| {
        s.status_query_delays = payfleet_common::config::millis(&[100, 200]);
    })
    .await?;
    let paid = ask(
        &world,
        &withdrawal("wd-recon-paid", "250.00", "acct_success"),
    )
    .await?;
    let back = ask(
        &world,
        &withdrawal("wd-recon-back", "300.00", "acct_returned"),
    )
    .await?;
    let stuck = ask(
        &world,
        &withdrawal("wd-recon-stuck", "200.00", "acct_pending"),
    )
    .await?;
    assert_eq!(reaches(&world, paid, &["succeeded"]).await?.0, "succeeded");
    assert_eq!(reaches(&world, back, &["returned"]).await?.0, "returned");
    assert_eq!(reaches(&world, stuck, &["exception"]).await?.0, "exception");
    world.env.wait_drained(WAIT).await?;
    let today = Utc::now().date_naive().to_string();
    let (code, out, err) = world
        .cli(&["reconcile", "--date", &today, "--channel", CARD, "--json"])
        .await?;
    let summary: Value = serde_json::from_str(&out)?;
    let summary = summary.as_array().map_or(&summary, |all| &all[0]);
    assert_eq!(summary["counts"]["payout_matched"], 2, "{summary:#}");
    let payout_mismatches: Vec<&Value> = summary["mismatches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["kind"]
                .as_str()
                .is_some_and(|kind| kind.starts_with("payout_"))
        })
        .collect();
    assert!(payout_mismatches.is_empty(), "{payout_mismatches:#?}");
    assert_eq!(code, 0, "nothing disagrees: {out}{err}");
    let mut stored: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT kind, attempt_id, payment_id IS NULL FROM reconciliation_items WHERE kind LIKE 'payout_%'",
    )
    .fetch_all(world.pool())
    .await?;
    stored.sort();
    let mut expected = vec![
        ("payout_matched".to_owned(), paid.to_string(), true),
        ("payout_matched".to_owned(), back.to_string(), true),
    ];
    expected.sort();
    assert_eq!(stored, expected);
    world.finish().await
}
