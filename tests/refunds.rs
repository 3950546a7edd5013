//! Refunds asked for by upstream, end to end over the real services and
//! the sandbox gateway: full and partial refunds of wallet and channel
//! payments, partial refunds in pieces, racing refunds, duplicates, a
//! channel that refuses, times out or is left mid-call by a killed
//! process, and a merchant whose balance is short. Every scenario ends with
//! the invariants and the books against the channel's own statement.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{
    SHOP, WAIT, d,
    sandbox::{CARD, World},
};
use payfleet_common::{
    PaymentId,
    messages::{self, RefundRequested, SCHEMA_VERSION},
};
use payfleet_tests::wait_until;
use payfleet_workers::domain::{ledger, refund::record::upstream_id};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

/// Two teas (m1, 30.00 each, 1 % fee) and a fan (m2, 20.00, no fee) = 80.00.
const PAID: &str = "80.00";

async fn world(tag: &str) -> anyhow::Result<World> {
    world_with(tag, |_| {}).await
}

async fn world_with(
    tag: &str,
    adjust: impl FnOnce(&mut payfleet_common::Settings),
) -> anyhow::Result<World> {
    let mut world = World::new(tag, adjust, Duration::from_millis(100)).await?;
    world.bind_events().await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(&mut tx, "alice", "CNY", d("500.00"), "refund-test-wallet").await?;
    tx.commit().await?;
    world.start(&[]).await?;
    Ok(world)
}

/// A settled payment of 80.00 for `order`, paid with `method` (`balance`
/// or `card`) and the sandbox scenario `token`.
async fn paid(world: &World, order: &str, method: &str, token: &str) -> anyhow::Result<PaymentId> {
    let id = world.pay(order, method, token).await?;
    assert_eq!(world.outcome(order).await?.0, "settled", "{order}");
    Ok(id)
}

fn refund(refund_no: &str, order: &str, amount: &str) -> RefundRequested {
    RefundRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_refund_id: refund_no.into(),
        merchant_order_id: Some(order.into()),
        payment_id: None,
        amount: d(amount),
        currency: "CNY".into(),
        reason: "customer_returned_goods".into(),
        return_stock: false,
        requested_at: Utc::now(),
    }
}

/// Publishes a refund request as the shop would: signed, a new message id.
async fn ask(world: &World, request: &RefundRequested) -> anyhow::Result<Uuid> {
    world
        .publish_signed(messages::kind::REFUND_REQUESTED, request)
        .await?;
    Ok(upstream_id(SHOP, &request.merchant_refund_id))
}

/// Waits until refund `id` is finished (booked, or refused) with its event
/// emitted; its status and detail.
async fn finished(world: &World, id: Uuid) -> anyhow::Result<(String, Option<String>)> {
    world.refund_finished(id).await
}

/// (total, available, frozen) of an account in CNY, rolled up first.
async fn balance(
    world: &World,
    kind: &str,
    owner: &str,
) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
    fleet::roll_up_all(world.pool()).await?;
    Ok(sqlx::query_as(
        "SELECT total, available, frozen FROM accounts WHERE owner_kind = $1 AND owner_id = $2 AND currency = 'CNY'",
    )
    .bind(kind)
    .bind(owner)
    .fetch_one(world.pool())
    .await?)
}

async fn refund_events(world: &World) -> anyhow::Result<Vec<Value>> {
    Ok(world
        .fleet
        .events()
        .await?
        .into_iter()
        .filter(|e| {
            e["event_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("refund."))
        })
        .collect())
}

async fn refunded_at_the_channel(world: &World, payment: PaymentId) -> anyhow::Result<Decimal> {
    let attempt: Uuid = sqlx::query_scalar(
        "SELECT id FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'",
    )
    .bind(payment)
    .fetch_one(world.pool())
    .await?;
    Ok(world
        .gateway
        .trade(CARD, &attempt.to_string())
        .map(|t| t.refunded)
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_and_channel_payments_are_refunded_in_full_and_in_part() -> anyhow::Result<()> {
    let world = world("refundfull").await?;
    paid(&world, "w-full", "balance", "tok_success").await?;
    assert_eq!(balance(&world, "user", "alice").await?.0, d("420.00"));
    let full = ask(
        &world,
        &RefundRequested {
            return_stock: true,
            ..refund("rf-w-full", "w-full", PAID)
        },
    )
    .await?;
    assert_eq!(finished(&world, full).await?.0, "succeeded");
    assert_eq!(
        balance(&world, "user", "alice").await?,
        (d("500.00"), d("500.00"), d("0")),
        "the wallet has it all back"
    );
    assert_eq!(
        balance(&world, "merchant", "m1").await?.0,
        d("0.00"),
        "m1 gave back 60.00 less its 0.60 fee"
    );
    assert_eq!(balance(&world, "merchant", "m2").await?.0, d("0.00"));
    assert_eq!(
        balance(&world, "platform", "fees").await?.0,
        d("0.00"),
        "the whole fee given back"
    );
    let stock: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, available::bigint FROM stock ORDER BY sku")
            .fetch_all(world.pool())
            .await?;
    assert_eq!(
        stock,
        vec![("fan".into(), 100), ("tea".into(), 100)],
        "the stock is back"
    );

    let card = paid(&world, "c-part", "card", "tok_success").await?;
    let part = ask(&world, &refund("rf-c-part", "c-part", "20.00")).await?;
    assert_eq!(finished(&world, part).await?.0, "succeeded");
    assert_eq!(
        refunded_at_the_channel(&world, card).await?,
        d("20.00"),
        "refunded once, at the original channel"
    );
    // 20.00 split by what each sub-order has left (60 : 20): 15.00 and 5.00;
    // m1 keeps its fee share 0.15 of the refunded part back from the platform.
    assert_eq!(balance(&world, "merchant", "m1").await?.0, d("44.55"));
    assert_eq!(balance(&world, "merchant", "m2").await?.0, d("15.00"));
    assert_eq!(balance(&world, "platform", "fees").await?.0, d("0.45"));
    let events = refund_events(&world).await?;
    let mut kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["merchant_refund_id"].as_str().unwrap_or(""),
                e["event_type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("rf-c-part", "refund.succeeded"),
            ("rf-w-full", "refund.succeeded")
        ]
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_partial_refunds_are_three_events_three_webhooks_and_three_wallet_credits()
-> anyhow::Result<()> {
    let world = world("refundthree").await?;
    sqlx::query("UPDATE merchants SET notify_url = 'https://shop.example/hooks' WHERE id = $1")
        .bind(SHOP)
        .execute(world.pool())
        .await?;
    let payment = paid(&world, "w-three", "balance", "tok_success").await?;
    let mut ids = Vec::new();
    for (no, amount) in [("rf-1", "20.00"), ("rf-2", "30.00"), ("rf-3", "30.00")] {
        let id = ask(&world, &refund(no, "w-three", amount)).await?;
        assert_eq!(finished(&world, id).await?.0, "succeeded", "{no}");
        ids.push(id);
    }
    let events = refund_events(&world).await?;
    assert_eq!(events.len(), 3, "one event per refund: {events:?}");
    let totals: Vec<&str> = events
        .iter()
        .map(|e| e["refunded_total"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(totals, vec!["20.00", "50.00", "80.00"]);
    let webhooks: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT refund_id) FROM webhook_deliveries WHERE payment_id = $1 AND event_type = 'refund.succeeded'",
    )
    .bind(payment)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(webhooks, 3);
    let credits: Vec<Decimal> = sqlx::query_scalar(
        "SELECT s.amount FROM account_statements s JOIN accounts a ON a.id = s.account_id
         WHERE a.owner_id = 'alice' AND s.kind = 'refund' ORDER BY s.id",
    )
    .fetch_all(world.pool())
    .await?;
    assert_eq!(credits, vec![d("20.00"), d("30.00"), d("30.00")]);
    assert_eq!(balance(&world, "user", "alice").await?.0, d("500.00"));
    assert_eq!(
        balance(&world, "platform", "fees").await?.0,
        d("0.00"),
        "in pieces, exactly the whole fee back"
    );
    // Ops see them: listed, each with its parts, and in the payment's story.
    let (code, listed, _) = world.cli(&["refund", "list", "--merchant", SHOP]).await?;
    assert_eq!(code, 0);
    assert_eq!(listed.matches(" succeeded ").count(), 3, "{listed}");
    let (code, shown, _) = world
        .cli(&["refund", "show", &format!("{SHOP}:rf-2")])
        .await?;
    assert_eq!(code, 0);
    assert!(
        shown.contains("seller m1") && shown.contains("seller m2"),
        "{shown}"
    );
    assert!(shown.contains("posting user:alice 30.00 CNY"), "{shown}");
    assert!(shown.contains("event refund.succeeded"), "{shown}");
    let (_, story, _) = world
        .cli(&["payment", "show", &payment.to_string()])
        .await?;
    assert_eq!(story.matches("(rf-").count(), 3, "{story}");
    let (code, _, refused) = world.cli(&["refund", "list", "--status", "lost"]).await?;
    assert_ne!(code, 0);
    assert!(
        refused.contains("--status `lost` is not a refund status"),
        "{refused}"
    );
    // Nothing is left: a fourth refund is refused for what it asks.
    let fourth = ask(&world, &refund("rf-4", "w-three", "0.01")).await?;
    let (status, detail) = finished(&world, fourth).await?;
    assert_eq!(status, "refused");
    assert!(detail.unwrap_or_default().starts_with("exceeds_refundable"));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partial_refunds_racing_for_more_than_is_left_one_wins() -> anyhow::Result<()> {
    let world = world("refundrace").await?;
    let payment = paid(&world, "c-race", "card", "tok_success").await?;
    let (first, second) = (
        refund("rf-a", "c-race", "50.00"),
        refund("rf-b", "c-race", "50.00"),
    );
    let (a, b) = tokio::try_join!(ask(&world, &first), ask(&world, &second))?;
    let mut outcomes = [finished(&world, a).await?, finished(&world, b).await?];
    outcomes.sort();
    assert_eq!(outcomes[0].0, "refused");
    assert!(
        outcomes[0]
            .1
            .as_deref()
            .unwrap_or_default()
            .starts_with("exceeds_refundable")
    );
    assert_eq!(outcomes[1].0, "succeeded");
    assert_eq!(refunded_at_the_channel(&world, payment).await?, d("50.00"));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_refund_request_is_one_refund_and_other_content_is_a_conflict()
-> anyhow::Result<()> {
    let world = world("refunddup").await?;
    let payment = paid(&world, "c-dup", "card", "tok_success").await?;
    let request = refund("rf-dup", "c-dup", "20.00");
    let id = ask(&world, &request).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    ask(&world, &request).await?;
    ask(
        &world,
        &RefundRequested {
            amount: d("21.00"),
            ..request.clone()
        },
    )
    .await?;
    wait_until(WAIT, "the conflict refused", || async {
        Ok(world
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections WHERE reason = 'idempotency_conflict'",
            )
            .await?
            == 1)
    })
    .await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(
        world.env.scalar_i64("SELECT count(*) FROM refunds").await?,
        1
    );
    assert_eq!(
        refunded_at_the_channel(&world, payment).await?,
        d("20.00"),
        "refunded once"
    );
    let events = refund_events(&world).await?;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "refund.succeeded").count(),
        1
    );
    let conflict = events
        .iter()
        .find(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("idempotency_conflict"))
        })
        .expect("the conflict is reported");
    assert_eq!(conflict["status"], "refused");
    assert_ne!(
        conflict["refund_id"],
        Value::from(id.to_string()),
        "the refusal does not report on the refund that succeeded"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_channel_refuses_releases_its_reservation() -> anyhow::Result<()> {
    let world = world("refundfail").await?;
    let payment = paid(&world, "c-fail", "card", "tok_refund_fails").await?;
    let before = (
        balance(&world, "merchant", "m1").await?,
        balance(&world, "merchant", "m2").await?,
    );
    let id = ask(&world, &refund("rf-fail", "c-fail", "30.00")).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "failed");
    assert!(detail.unwrap_or_default().starts_with("refund_declined"));
    assert_eq!(refunded_at_the_channel(&world, payment).await?, d("0"));
    let after = (
        balance(&world, "merchant", "m1").await?,
        balance(&world, "merchant", "m2").await?,
    );
    assert_eq!(
        after, before,
        "the sellers' reservations are released, nothing moved"
    );
    assert_eq!(after.0, (d("59.40"), d("59.40"), d("0.00")));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_short_of_balance_is_refused() -> anyhow::Result<()> {
    let world = world("refundshort").await?;
    paid(&world, "w-short", "balance", "tok_success").await?;
    // m1's balance leaves it (a payout, booked as a correction) ...
    move_out_of_m1(&world, "m1-payout", d("-59.40")).await?;
    let id = ask(&world, &refund("rf-short", "w-short", PAID)).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "refused");
    assert!(
        detail
            .unwrap_or_default()
            .starts_with("insufficient_merchant_balance"),
        "refused for m1"
    );
    assert_eq!(
        balance(&world, "merchant", "m2").await?,
        (d("20.00"), d("20.00"), d("0.00")),
        "m2 reserved nothing"
    );
    assert_eq!(balance(&world, "user", "alice").await?.0, d("420.00"));
    // ... and comes back (the payout bounced), so the books close.
    move_out_of_m1(&world, "m1-payout-returned", d("59.40")).await?;
    world.finish().await
}

/// A balanced correction entry: m1 gains `amount` (negative: gives), the
/// outside world the opposite.
async fn move_out_of_m1(world: &World, reference: &str, amount: Decimal) -> anyhow::Result<()> {
    sqlx::query(
        "WITH e AS (INSERT INTO journal_entries (reference, kind) VALUES ($1, 'correction') RETURNING id)
         INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up)
         SELECT e.id, a.id, CASE WHEN a.owner_kind = 'merchant' THEN $2 ELSE -$2 END, 'CNY', false
         FROM e, accounts a WHERE a.currency = 'CNY' AND ((a.owner_kind = 'merchant' AND a.owner_id = 'm1')
                                                        OR (a.owner_kind = 'external' AND a.owner_id = 'world'))",
    )
    .bind(reference)
    .bind(amount)
    .execute(world.pool())
    .await?;
    fleet::roll_up_all(world.pool()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_whose_channel_times_out_is_resolved_by_a_query_and_sent_once()
-> anyhow::Result<()> {
    let world = world("refundtimeout").await?;
    let payment = paid(&world, "c-timeout", "card", "tok_refund_timeout").await?;
    let id = ask(&world, &refund("rf-timeout", "c-timeout", PAID)).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    assert_eq!(
        refunded_at_the_channel(&world, payment).await?,
        d(PAID),
        "refunded once"
    );
    let calls: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'call' FROM integration_log WHERE payload->>'refund_no' = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(world.pool())
    .await?;
    assert_eq!(calls.first().map(String::as_str), Some("refund"));
    assert!(
        calls[1..].iter().all(|c| c == "refund_query") && calls.len() >= 2,
        "{calls:?}"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_between_the_refund_call_and_its_result_refunds_once() -> anyhow::Result<()>
{
    let mut world = world("refundkill").await?;
    let payment = paid(&world, "c-kill", "card", "tok_refund_timeout").await?;
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
    let id = ask(&world, &refund("rf-kill", "c-kill", "25.00")).await?;
    // The channel has the refund (it holds its answer), we have only our intent.
    wait_until(
        WAIT,
        "the refund at the channel, ours still sending",
        || async {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM refunds WHERE id = $1")
                    .bind(id)
                    .fetch_optional(world.pool())
                    .await?;
            Ok(status.as_deref() == Some("sending")
                && world.gateway.refund(CARD, &id.to_string()).is_some())
        },
    )
    .await?;
    let mut caller = caller;
    caller.kill().await?;
    let _ = caller.wait().await;
    let mut caller = world.channel_call_process()?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    assert_eq!(
        refunded_at_the_channel(&world, payment).await?,
        d("25.00"),
        "one refund at the sandbox"
    );
    let calls: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'call' FROM integration_log WHERE payload->>'refund_no' = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(world.pool())
    .await?;
    assert!(
        calls.iter().all(|c| c == "refund_query") && !calls.is_empty(),
        "the killed call left no result; the one after it only asked: {calls:?}"
    );
    world.env.wait_drained(WAIT).await?;
    caller.kill().await?;
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_never_reached_the_channel_is_sent_again_under_its_id() -> anyhow::Result<()>
{
    let world = world_with("refundresend", |s| {
        s.status_query_delays = payfleet_common::config::millis(&[300, 600, 1_200, 2_400, 4_800]);
    })
    .await?;
    let payment = paid(&world, "c-resend", "card", "tok_success").await?;
    // The channel is unreachable when the refund is first sent ...
    let base_url: String = sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
        .bind(CARD)
        .fetch_one(world.pool())
        .await?;
    set_base_url(
        &world,
        &format!("http://127.0.0.1:{}", payfleet_tests::free_port()),
    )
    .await?;
    let id = ask(&world, &refund("rf-resend", "c-resend", "40.00")).await?;
    wait_until(WAIT, "the refund unknown", || async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM refunds WHERE id = $1")
            .bind(id)
            .fetch_optional(world.pool())
            .await?;
        Ok(status.as_deref() == Some("unknown"))
    })
    .await?;
    // ... and back: it has never heard of the refund, so it is sent again.
    set_base_url(&world, &base_url).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    assert_eq!(refunded_at_the_channel(&world, payment).await?, d("40.00"));
    world.finish().await
}

async fn set_base_url(world: &World, url: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE channels SET base_url = $2 WHERE name = $1")
        .bind(CARD)
        .bind(url)
        .execute(world.pool())
        .await?;
    Ok(())
}

/// A seller's account held by a refund's transaction (its Try holds it
/// until the batch commits) does not hold the roll-up up: it folds every
/// other account and leaves that one's postings for its next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roll_up_never_waits_on_an_account_a_refund_holds() -> anyhow::Result<()> {
    let mut world = world("refundrollup").await?;
    paid(&world, "w-held", "balance", "tok_success").await?;
    world.stop().await;
    fleet::roll_up_all(world.pool()).await?;
    let mut holder = world.pool().begin().await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT id FROM accounts WHERE owner_kind = 'merchant' AND owner_id = 'm1' FOR NO KEY UPDATE",
    )
    .fetch_one(&mut *holder)
    .await?;
    booked_by_hand(&world, "rollup-test", Decimal::ONE).await?;
    let folded = tokio::time::timeout(
        Duration::from_secs(5),
        ledger::roll_up(world.pool(), 1_000_000),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the roll-up waited on the held account"))??;
    assert!(folded > 0, "the other accounts were folded");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postings WHERE NOT rolled_up AND account_id = $1")
            .bind(held)
            .fetch_one(world.pool())
            .await?;
    assert_eq!(
        left, 1,
        "the held account's posting waits for the next pass"
    );
    holder.rollback().await?;
    booked_by_hand(&world, "rollup-test-reversed", -Decimal::ONE).await?;
    world.finish().await
}

/// A balanced correction by hand: m1 gains `sign` × 1.00, m2 × 2.00, the
/// outside world the opposite; postings to roll up (a second one with the
/// opposite sign takes it back, so the books close).
async fn booked_by_hand(world: &World, reference: &str, sign: Decimal) -> anyhow::Result<()> {
    sqlx::query(
        "WITH e AS (INSERT INTO journal_entries (reference, kind) VALUES ($1, 'correction') RETURNING id)
         INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up)
         SELECT e.id, a.id, $2 * CASE a.owner_id WHEN 'm1' THEN 1.00 WHEN 'm2' THEN 2.00 ELSE -3.00 END, 'CNY', false
         FROM e, accounts a WHERE a.currency = 'CNY' AND a.owner_id IN ('m1', 'm2', 'world')
           AND a.owner_kind IN ('merchant', 'external')",
    )
    .bind(reference)
    .bind(sign)
    .execute(world.pool())
    .await?;
    Ok(())
}

/// `payfleet reconcile` matches the refunds the channel paid back with
/// ours by refund id, and finds one the channel paid that we never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_matches_refunds_and_finds_one_we_never_asked() -> anyhow::Result<()> {
    let mut world = world("refundrecon").await?;
    let payment = paid(&world, "c-recon", "card", "tok_success").await?;
    let id = ask(&world, &refund("rf-recon", "c-recon", "30.00")).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    // Behind the fleet's back: a refund of the same trade at the channel.
    let attempt: Uuid = sqlx::query_scalar(
        "SELECT id FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'",
    )
    .bind(payment)
    .fetch_one(world.pool())
    .await?;
    let base_url: String = sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
        .bind(CARD)
        .fetch_one(world.pool())
        .await?;
    reqwest::Client::new()
        .post(format!("{base_url}/channels/{CARD}/refunds"))
        .json(&serde_json::json!({"out_trade_no": attempt.to_string(), "refund_no": "planted-refund", "amount": "5.00"}))
        .send()
        .await?
        .error_for_status()?;
    let today = Utc::now().date_naive().to_string();
    let (code, out, _) = world
        .cli(&["reconcile", "--date", &today, "--channel", CARD, "--json"])
        .await?;
    assert_eq!(code, 1, "a mismatch: {out}");
    let summary: Value = serde_json::from_str(&out)?;
    let summary = summary.as_array().map_or(&summary, |all| &all[0]);
    assert_eq!(summary["counts"]["refund_matched"], 1, "{summary:#}");
    let mismatches: Vec<(&str, &str)> = summary["mismatches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["kind"].as_str().unwrap_or(""),
                m["attempt_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(mismatches, vec![("refund_missing_ours", "planted-refund")]);
    // The books against the statement would fail on the planted refund, as
    // they should: the invariants of our own books still hold.
    world.stop_and_check().await?;
    world.gateway_stop.cancel();
    world.fleet.env.teardown().await
}

/// A refund the channel finishes later is reported by the channel's
/// webhook, which resolves it long before the first status query would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_channel_finishes_later_is_resolved_by_its_webhook() -> anyhow::Result<()> {
    let world = world_with("refundhook", |s| {
        // a delay level of 20 s for the first query (as channels.rs's open attempts)
        s.retry_delays = payfleet_common::config::millis(&[200, 400, 800, 20_000]);
        s.status_query_delays = payfleet_common::config::millis(&[20_000]);
    })
    .await?;
    let payment = paid(&world, "c-hook", "card", "tok_refund_pending").await?;
    let id = ask(&world, &refund("rf-hook", "c-hook", "35.00")).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    assert_eq!(refunded_at_the_channel(&world, payment).await?, d("35.00"));
    let notices: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM integration_log WHERE direction = 'callback' AND payload->>'refund_no' = $1",
    )
    .bind(id.to_string())
    .fetch_one(world.pool())
    .await?;
    assert_eq!(notices, 1, "resolved by the channel's webhook");
    let (_, shown, _) = world.cli(&["refund", "show", &id.to_string()]).await?;
    assert!(shown.contains("callback SUCCEEDED"), "{shown}");
    world.finish().await
}
