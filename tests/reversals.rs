//! Same-day reversals asked for by upstream (`payment.reverse`), end to end
//! over the real services and the sandbox gateway: a reversal before the
//! channel's cut-off (the channel reverses once, every leg of the payment
//! is undone, a duplicate is one reversal); after the cut-off, refused by
//! the fleet or by the channel with the documented reason; a reversal
//! racing a refund (one wins); a reversal whose answer times out (a status
//! query resolves it, one reversal at the channel). Every scenario ends
//! with the invariants and the books against the channel's own statement.

mod fleet;

use std::time::Duration;

use chrono::{NaiveTime, Utc};
use fleet::{
    SHOP, d,
    sandbox::{CARD, World},
};
use payfleet_common::{
    PaymentId,
    messages::{self, PaymentReverse, RefundRequested, SCHEMA_VERSION},
};
use payfleet_sandbox_gateway::TradeStatus;
use payfleet_workers::domain::{
    ledger,
    refund::record::{reversal_id, upstream_id},
};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

async fn world(tag: &str) -> anyhow::Result<World> {
    let mut world = World::new(tag, |_| {}, Duration::from_millis(100)).await?;
    world.bind_events().await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(&mut tx, "alice", "CNY", d("500.00"), "reversal-test-wallet").await?;
    tx.commit().await?;
    world.start(&[]).await?;
    Ok(world)
}

/// A settled payment of 80.00 (two teas of m1, a fan of m2) for `order`.
async fn paid(world: &World, order: &str, method: &str, token: &str) -> anyhow::Result<PaymentId> {
    let id = world.pay(order, method, token).await?;
    assert_eq!(world.outcome(order).await?.0, "settled", "{order}");
    Ok(id)
}

fn reversal(reversal_no: &str, order: &str) -> PaymentReverse {
    PaymentReverse {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_reversal_id: reversal_no.into(),
        merchant_order_id: Some(order.into()),
        payment_id: None,
        reason: "order_cancelled_by_customer".into(),
        requested_at: Utc::now(),
    }
}

async fn publish(world: &World, kind: &str, body: &impl serde::Serialize) -> anyhow::Result<()> {
    world.publish_signed(kind, body).await
}

async fn reverse(world: &World, request: &PaymentReverse) -> anyhow::Result<Uuid> {
    publish(world, messages::kind::PAYMENT_REVERSE, request).await?;
    Ok(reversal_id(SHOP, &request.merchant_reversal_id))
}

async fn finished(world: &World, id: Uuid) -> anyhow::Result<(String, Option<String>)> {
    world.refund_finished(id).await
}

/// The total of an account in CNY, rolled up first (zero when it has none).
async fn total(world: &World, kind: &str, owner: &str) -> anyhow::Result<Decimal> {
    fleet::roll_up_all(world.pool()).await?;
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(total), 0) FROM accounts WHERE owner_kind = $1 AND owner_id = $2 AND currency = 'CNY'",
    )
    .bind(kind)
    .bind(owner)
    .fetch_one(world.pool())
    .await?)
}

async fn attempt_of(world: &World, payment: PaymentId) -> anyhow::Result<String> {
    let attempt: Uuid = sqlx::query_scalar(
        "SELECT id FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'",
    )
    .bind(payment)
    .fetch_one(world.pool())
    .await?;
    Ok(attempt.to_string())
}

async fn events_of_type(world: &World, event_type: &str) -> anyhow::Result<Vec<Value>> {
    Ok(world
        .fleet
        .events()
        .await?
        .into_iter()
        .filter(|e| e["event_type"] == event_type)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_before_the_cut_off_undoes_every_leg_once() -> anyhow::Result<()> {
    let world = world("reverse").await?;
    sqlx::query("UPDATE merchants SET notify_url = 'https://shop.example/hooks' WHERE id = $1")
        .bind(SHOP)
        .execute(world.pool())
        .await?;
    let payment = paid(&world, "c-rev", "card", "tok_success").await?;
    let attempt = attempt_of(&world, payment).await?;
    let fee = world.gateway.trade(CARD, &attempt).expect("the trade").fee;
    assert!(fee > Decimal::ZERO, "the card channel charged a fee");
    assert_eq!(
        total(&world, "platform_cost", &format!("channel-costs:{CARD}")).await?,
        -fee
    );

    let request = reversal("rv-1", "c-rev");
    let id = reverse(&world, &request).await?;
    // the same request again, as a retrying upstream sends it
    publish(&world, messages::kind::PAYMENT_REVERSE, &request).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "succeeded", "{detail:?}");

    // The channel, the independent party: the trade reversed once, no fee kept.
    let trade = world.gateway.trade(CARD, &attempt).expect("the trade");
    assert_eq!(trade.status, TradeStatus::Reversed);
    assert_eq!(trade.fee, Decimal::ZERO);
    assert_eq!(world.gateway.reversals_of(CARD, &attempt).len(), 1);

    // Every leg undone: the sellers gave back what they got, the platform
    // its fee, the channel's fee is no longer the platform's cost, and the
    // channel owes us nothing for the trade.
    for (kind, owner) in [
        ("merchant", "m1".to_owned()),
        ("merchant", "m2".to_owned()),
        ("platform", "fees".to_owned()),
        ("platform_cost", format!("channel-costs:{CARD}")),
        ("external", format!("clearing:{CARD}")),
    ] {
        assert_eq!(
            total(&world, kind, &owner).await?,
            Decimal::ZERO,
            "{kind} {owner}"
        );
    }
    let stock: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, available::bigint FROM stock ORDER BY sku")
            .fetch_all(world.pool())
            .await?;
    assert_eq!(
        stock,
        vec![("fan".into(), 100), ("tea".into(), 100)],
        "stock back"
    );
    let entry: String = sqlx::query_scalar("SELECT kind FROM journal_entries WHERE reference = $1")
        .bind(id.to_string())
        .fetch_one(world.pool())
        .await?;
    assert_eq!(entry, "reversal");

    let reversed = events_of_type(&world, messages::event::REVERSED).await?;
    assert_eq!(reversed.len(), 1, "one event for the duplicate pair");
    assert_eq!(reversed[0]["merchant_reversal_id"], "rv-1");
    assert_eq!(reversed[0]["amount"], "80.00");
    let webhooks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE refund_id = $1 AND event_type = 'payment.reversed'",
    )
    .bind(id)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(webhooks, 1);
    let (code, shown, _) = world
        .cli(&["refund", "show", &format!("{SHOP}:rv-1")])
        .await?;
    assert_eq!(code, 0);
    assert!(
        shown.starts_with("reversal ") && shown.contains("event payment.reversed"),
        "{shown}"
    );

    // A refund after it finds nothing left to give back.
    let late_refund = RefundRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_refund_id: "rf-after-reversal".into(),
        merchant_order_id: Some("c-rev".into()),
        payment_id: None,
        amount: d("10.00"),
        currency: "CNY".into(),
        reason: "goodwill".into(),
        return_stock: false,
        requested_at: Utc::now(),
    };
    publish(&world, messages::kind::REFUND_REQUESTED, &late_refund).await?;
    let refund = finished(&world, upstream_id(SHOP, "rf-after-reversal")).await?;
    assert_eq!(refund.0, "refused");

    // reconcile matches the reversal and the reversed trade
    let today = Utc::now().date_naive().to_string();
    let (code, out, err) = world
        .cli(&["reconcile", "--date", &today, "--channel", CARD, "--json"])
        .await?;
    assert_eq!(code, 0, "clean: {out}{err}");
    let summary: Value = serde_json::from_str(&out)?;
    let summary = summary.as_array().map_or(&summary, |all| &all[0]);
    assert_eq!(summary["counts"]["reversal_matched"], 1, "{summary:#}");
    assert_eq!(summary["counts"]["matched"], 1, "{summary:#}");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_cut_off_a_reversal_is_refused_and_the_payment_is_refunded_instead()
-> anyhow::Result<()> {
    let world = world("reverselate").await?;
    let early = paid(&world, "c-late", "card", "tok_success").await?;
    paid(&world, "c-channel-late", "card", "tok_success").await?;
    paid(&world, "w-wallet", "balance", "tok_success").await?;

    // The fleet knows the card channel's cut-off has passed: refused at once.
    sqlx::query("UPDATE channels SET reversal_cutoff = '00:00:00' WHERE name = $1")
        .bind(CARD)
        .execute(world.pool())
        .await?;
    let id = reverse(&world, &reversal("rv-late", "c-late")).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "refused");
    let detail = detail.unwrap_or_default();
    assert!(
        detail.starts_with("reversal_window_closed") && detail.contains("refund"),
        "{detail}"
    );
    let failed = events_of_type(&world, messages::event::REVERSAL_FAILED).await?;
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("reversal_window_closed")),
        "{failed:?}"
    );
    assert!(
        world
            .gateway
            .reversals_of(CARD, &attempt_of(&world, early).await?)
            .is_empty(),
        "nothing asked of the channel"
    );

    // The channel's own cut-off has the last word: it refuses, the
    // reservation is released, and the reason is the same.
    sqlx::query("UPDATE channels SET reversal_cutoff = '23:59:59' WHERE name = $1")
        .bind(CARD)
        .execute(world.pool())
        .await?;
    world
        .gateway
        .set_reversal_cutoff(CARD, NaiveTime::from_hms_opt(0, 0, 0));
    let id = reverse(&world, &reversal("rv-channel-late", "c-channel-late")).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "failed");
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.starts_with("reversal_window_closed")),
        "{detail:?}"
    );
    let frozen: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(frozen), 0) FROM accounts WHERE owner_kind = 'merchant'",
    )
    .fetch_one(world.pool())
    .await?;
    assert_eq!(frozen, Decimal::ZERO, "the reservation is released");

    // A wallet payment is never reversed.
    let id = reverse(&world, &reversal("rv-wallet", "w-wallet")).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "refused");
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.starts_with("not_reversible")),
        "{detail:?}"
    );

    // The way left: a refund of the payment.
    let refund = RefundRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_refund_id: "rf-instead".into(),
        merchant_order_id: Some("c-late".into()),
        payment_id: None,
        amount: d("80.00"),
        currency: "CNY".into(),
        reason: "order_cancelled_by_customer".into(),
        return_stock: true,
        requested_at: Utc::now(),
    };
    publish(&world, messages::kind::REFUND_REQUESTED, &refund).await?;
    let (status, _) = finished(&world, upstream_id(SHOP, "rf-instead")).await?;
    assert_eq!(status, "succeeded");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_racing_a_refund_one_wins_and_nothing_is_doubled() -> anyhow::Result<()> {
    let world = world("reverserace").await?;
    let payment = paid(&world, "c-race", "card", "tok_success").await?;
    let refund = RefundRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_refund_id: "rf-race".into(),
        merchant_order_id: Some("c-race".into()),
        payment_id: None,
        amount: d("30.00"),
        currency: "CNY".into(),
        reason: "customer_returned_goods".into(),
        return_stock: false,
        requested_at: Utc::now(),
    };
    let request = reversal("rv-race", "c-race");
    tokio::try_join!(
        publish(&world, messages::kind::REFUND_REQUESTED, &refund),
        publish(&world, messages::kind::PAYMENT_REVERSE, &request),
    )?;
    let refund = finished(&world, upstream_id(SHOP, "rf-race")).await?;
    let reversal = finished(&world, reversal_id(SHOP, "rv-race")).await?;
    let winners = [&refund, &reversal]
        .iter()
        .filter(|(status, _)| status == "succeeded")
        .count();
    assert_eq!(winners, 1, "refund {refund:?}, reversal {reversal:?}");
    let attempt = attempt_of(&world, payment).await?;
    let trade = world.gateway.trade(CARD, &attempt).expect("the trade");
    let reversed = world.gateway.reversals_of(CARD, &attempt).len();
    if reversal.0 == "succeeded" {
        assert_eq!((reversed, trade.refunded), (1, Decimal::ZERO));
        assert!(
            refund
                .1
                .as_deref()
                .unwrap_or_default()
                .starts_with("exceeds_refundable")
        );
    } else {
        assert_eq!((reversed, trade.refunded), (0, d("30.00")));
        let why = reversal.1.as_deref().unwrap_or_default();
        assert!(why.starts_with("already_refunded"), "{why}");
    }
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_whose_answer_times_out_is_resolved_by_a_query_and_sent_once()
-> anyhow::Result<()> {
    let world = world("reversetimeout").await?;
    let payment = paid(&world, "c-timeout", "card", "tok_reversal_timeout").await?;
    let id = reverse(&world, &reversal("rv-timeout", "c-timeout")).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    let attempt = attempt_of(&world, payment).await?;
    assert_eq!(
        world.gateway.reversals_of(CARD, &attempt).len(),
        1,
        "reversed once"
    );
    let calls: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'call' FROM integration_log WHERE payload->>'refund_no' = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(world.pool())
    .await?;
    assert_eq!(
        calls.first().map(String::as_str),
        Some("reversal"),
        "{calls:?}"
    );
    assert!(
        calls[1..].iter().all(|c| c == "reversal_query") && calls.len() >= 2,
        "{calls:?}"
    );
    world.finish().await
}
