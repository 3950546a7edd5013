//! Wallet top-ups end to end over the real services and the sandbox
//! gateway: by card (a synchronous answer) and at the wallet platform (an
//! asynchronous webhook), a call that times out (credited once, after a
//! status query), a decline, duplicate and conflicting requests, and
//! refusals by the parties. Every scenario ends with the invariants and
//! the books against the channel's own statement.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{
    SHOP, WAIT, d,
    sandbox::{CARD, WALLET, World},
    types_of,
};
use payfleet_common::{
    PaymentId,
    messages::{self, SCHEMA_VERSION, TopUpRequested},
};
use payfleet_sandbox_gateway::{Notice, TradeStatus};
use payfleet_tests::wait_until;
use payfleet_workers::{domain::ledger, stages::order_validation::top_up::top_up_id};
use rust_decimal::Decimal;
use serde_json::Value;

/// What alice's CNY wallet holds when a scenario starts.
const WALLET_BALANCE: &str = "10.00";

async fn world(tag: &str) -> anyhow::Result<World> {
    let world = World::new(tag, |_| {}, Duration::from_millis(100)).await?;
    started(world).await
}

/// `world` with alice's wallet filled a little and the fleet started.
async fn started(mut world: World) -> anyhow::Result<World> {
    world.bind_events().await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(
        &mut tx,
        "alice",
        "CNY",
        d(WALLET_BALANCE),
        "top-up-test-wallet",
    )
    .await?;
    tx.commit().await?;
    world.start(&[]).await?;
    Ok(world)
}

fn top_up(request_id: &str, amount: &str, method: &str, token: &str) -> TopUpRequested {
    TopUpRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: SHOP.into(),
        request_id: request_id.into(),
        user_id: "alice".into(),
        amount: d(amount),
        currency: "CNY".into(),
        payment_method: method.into(),
        payer_token: Some(token.into()),
        notify_url: None,
        requested_at: Utc::now(),
    }
}

/// Publishes a top-up request as the wallet application would: signed, a
/// new message id.
async fn ask(world: &World, request: &TopUpRequested) -> anyhow::Result<PaymentId> {
    world
        .publish_signed(messages::kind::TOPUP_REQUESTED, request)
        .await?;
    Ok(top_up_id(SHOP, &request.request_id))
}

/// (total, available, frozen) of alice's CNY wallet.
async fn wallet(world: &World) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
    fleet::wallet_of(world.pool(), "alice", "CNY").await
}

/// The postings of top-up `id`'s entries: (entry kind, account, amount).
async fn postings(world: &World, id: PaymentId) -> anyhow::Result<Vec<(String, String, Decimal)>> {
    fleet::entry_postings(world.pool(), id).await
}

/// The top-up events BI received, in order.
async fn events(world: &World) -> anyhow::Result<Vec<Value>> {
    world.fleet.events_of("topup.").await
}

/// The wallet gained `amount`, through one `top_up` entry from the
/// channel's clearing account with the channel's `fee` on the platform.
async fn assert_credited(
    world: &World,
    id: PaymentId,
    channel: &str,
    amount: &str,
    fee: &str,
) -> anyhow::Result<()> {
    let (amount, fee) = (d(amount), d(fee));
    let mut expected = vec![
        ("top_up".to_owned(), "alice".to_owned(), amount),
        (
            "top_up".to_owned(),
            format!("channel-costs:{channel}"),
            -fee,
        ),
        (
            "top_up".to_owned(),
            format!("clearing:{channel}"),
            -(amount - fee),
        ),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(postings(world, id).await?, expected);
    let balance = d(WALLET_BALANCE) + amount;
    assert_eq!(wallet(world).await?, (balance, balance, d("0")));
    // The wallet's statement says where the money came from.
    let line: (String, Decimal, Decimal) = sqlx::query_as(
        "SELECT s.kind, s.amount, s.available_after FROM account_statements s
         JOIN accounts a ON a.id = s.account_id WHERE a.owner_id = 'alice' AND s.payment_id = $1",
    )
    .bind(id)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(line, ("top_up".to_owned(), amount, balance));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_top_up_credits_the_wallet_once_with_the_channel_fee_on_the_platform()
-> anyhow::Result<()> {
    let world = world("tucard").await?;
    let id = ask(&world, &top_up("tu-card", "200.00", "card", "tok_success")).await?;
    world.reaches(id, "settled").await?;
    // The card channel takes 1.20 % (2.40); the user gets all 200.00.
    assert_credited(&world, id, CARD, "200.00", "2.40").await?;
    let (attempt, channel, _) = world.attempt(id).await?;
    assert_eq!(channel, CARD);
    assert_eq!(world.charges(CARD, attempt), 1);
    world.env.wait_drained(WAIT).await?;
    let events = events(&world).await?;
    assert_eq!(types_of(&events), ["topup.succeeded"]);
    assert_eq!(events[0]["top_up_id"], Value::from(id.to_string()));
    assert_eq!(events[0]["request_id"], "tu-card");
    assert_eq!(events[0]["amount"], "200.00");
    // A top-up is not a payment of goods: a refund of it is refused.
    world
        .publish_signed(
            messages::kind::REFUND_REQUESTED,
            &serde_json::json!({
                "schema_version": SCHEMA_VERSION, "merchant_id": SHOP, "merchant_refund_id": "rf-top-up",
                "payment_id": id.to_string(), "amount": "200.00", "currency": "CNY",
                "reason": "customer_request", "requested_at": Utc::now(),
            }),
        )
        .await?;
    world
        .fleet
        .wait_refused("unknown_payment", "merchant_refund_id", "rf-top-up")
        .await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world).await?.0, d("210.00"), "nothing taken back");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_at_the_async_wallet_channel_is_credited_on_its_webhook() -> anyhow::Result<()> {
    let world = world("tuwallet").await?;
    let id = ask(
        &world,
        &top_up("tu-wallet", "50.00", "wallet", "tok_success"),
    )
    .await?;
    world.reaches(id, "settled").await?;
    // The wallet platform takes 0.40 % (0.20).
    assert_credited(&world, id, WALLET, "50.00", "0.20").await?;
    let (attempt, _, _) = world.attempt(id).await?;
    let directions: Vec<String> = sqlx::query_scalar(
        "SELECT direction FROM integration_log WHERE attempt_id = $1 ORDER BY id",
    )
    .bind(attempt)
    .fetch_all(world.pool())
    .await?;
    assert!(
        directions.contains(&"callback".to_owned()),
        "credited on the channel's webhook: {directions:?}"
    );
    world.env.wait_drained(WAIT).await?;
    assert_eq!(types_of(&events(&world).await?), ["topup.succeeded"]);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_whose_call_times_out_is_credited_once_after_a_query() -> anyhow::Result<()> {
    let world = world("tutimeout").await?;
    let id = ask(&world, &top_up("tu-slow", "80.00", "card", "tok_timeout")).await?;
    world.reaches(id, "settled").await?;
    let (attempt, _, _) = world.attempt(id).await?;
    assert_eq!(world.charges(CARD, attempt), 1, "charged once");
    let queried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM integration_log WHERE attempt_id = $1 AND payload->>'call' = 'query'",
    )
    .bind(attempt)
    .fetch_one(world.pool())
    .await?;
    assert!(queried >= 1, "its answer was lost: a status query found it");
    assert_credited(&world, id, CARD, "80.00", "0.96").await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(types_of(&events(&world).await?), ["topup.succeeded"]);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_top_up_credits_nothing() -> anyhow::Result<()> {
    let world = world("tudecline").await?;
    let id = ask(
        &world,
        &top_up("tu-declined", "70.00", "card", "tok_decline"),
    )
    .await?;
    world.reaches(id, "failed").await?;
    assert!(postings(&world, id).await?.is_empty(), "no money moved");
    let balance = d(WALLET_BALANCE);
    assert_eq!(wallet(&world).await?, (balance, balance, d("0")));
    world.env.wait_drained(WAIT).await?;
    let events = events(&world).await?;
    assert_eq!(types_of(&events), ["topup.failed"]);
    assert_eq!(events[0]["status"], "failed");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_is_one_top_up_and_other_content_is_a_conflict() -> anyhow::Result<()> {
    let world = world("tudup").await?;
    let request = top_up("tu-dup", "100.00", "card", "tok_success");
    let id = ask(&world, &request).await?;
    world.reaches(id, "settled").await?;
    ask(&world, &request).await?;
    ask(
        &world,
        &TopUpRequested {
            amount: d("900.00"),
            ..request.clone()
        },
    )
    .await?;
    world
        .fleet
        .wait_refused("idempotency_conflict", "top_up_request_id", "tu-dup")
        .await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(
        world
            .env
            .scalar_i64("SELECT count(*) FROM payments WHERE kind = 'top_up'")
            .await?,
        1
    );
    let (attempt, _, _) = world.attempt(id).await?;
    assert_eq!(world.charges(CARD, attempt), 1, "charged once");
    assert_credited(&world, id, CARD, "100.00", "1.20").await?;
    let events = events(&world).await?;
    assert_eq!(types_of(&events), ["topup.succeeded", "topup.failed"]);
    let conflict = &events[1];
    assert_eq!(conflict["status"], "rejected");
    assert!(
        conflict["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("idempotency_conflict")
    );
    assert_ne!(
        conflict["top_up_id"],
        Value::from(id.to_string()),
        "the refusal does not report on the top-up that succeeded"
    );
    // The same id as a merchant order of the shop is another namespace:
    // the payment is taken on its own.
    world.pay("tu-dup", "card", "tok_success").await?;
    assert_eq!(world.outcome("tu-dup").await?.0, "settled");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_top_ups_move_nothing_and_say_why() -> anyhow::Result<()> {
    let world = world("turefused").await?;
    // A seller's key never reaches users' wallets.
    world
        .publish_signed_with(
            "k1",
            messages::kind::TOPUP_REQUESTED,
            &TopUpRequested {
                requester_id: "m1".into(),
                ..top_up("tu-seller", "20.00", "card", "tok_success")
            },
        )
        .await?;
    let unknown = ask(
        &world,
        &TopUpRequested {
            user_id: "nobody".into(),
            ..top_up("tu-nobody", "20.00", "card", "tok_success")
        },
    )
    .await?;
    assert_eq!(
        world.reaches(unknown, "rejected").await?.as_deref(),
        Some("unknown_user: nobody")
    );
    world
        .fleet
        .wait_refused("requester_not_permitted", "top_up_request_id", "tu-seller")
        .await?;
    world.env.wait_drained(WAIT).await?;
    let balance = d(WALLET_BALANCE);
    assert_eq!(wallet(&world).await?, (balance, balance, d("0")));
    assert_eq!(
        world
            .env
            .scalar_i64("SELECT count(*) FROM payment_attempts")
            .await?,
        0,
        "no channel was asked"
    );
    let mut reasons: Vec<String> = events(&world)
        .await?
        .iter()
        .map(|e| {
            let reason = e["reason"].as_str().unwrap_or_default();
            reason.split(':').next().unwrap_or_default().to_owned()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["requester_not_permitted", "unknown_user"]);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_top_up_opens_the_wallet_and_a_frozen_wallet_takes_none() -> anyhow::Result<()> {
    let world = world("tuopen").await?;
    let usd = |id: &str| TopUpRequested {
        currency: "USD".into(),
        ..top_up(id, "20.00", "card", "tok_success")
    };
    // alice has no USD wallet: her first USD top-up opens it
    let first = ask(&world, &usd("tu-usd-1")).await?;
    world.reaches(first, "settled").await?;
    let opened = fleet::wallet_of(world.pool(), "alice", "USD").await?;
    assert_eq!(opened, (d("20.00"), d("20.00"), d("0")));
    // a wallet frozen by ops takes no money in
    sqlx::query("UPDATE accounts SET status = 'frozen' WHERE owner_kind = 'user' AND owner_id = 'alice' AND currency = 'USD'")
        .execute(world.pool())
        .await?;
    let refused = ask(&world, &usd("tu-usd-2")).await?;
    assert_eq!(
        world.reaches(refused, "rejected").await?.as_deref(),
        Some("wallet_not_active: wallet is frozen")
    );
    world.env.wait_drained(WAIT).await?;
    assert_eq!(
        fleet::wallet_of(world.pool(), "alice", "USD").await?,
        opened
    );
    assert_eq!(
        types_of(&events(&world).await?),
        ["topup.succeeded", "topup.failed"]
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_top_up_is_closed_at_the_channel_and_a_late_charge_is_owed_back_not_credited()
-> anyhow::Result<()> {
    // The wallet platform would answer after 30 s; the top-up expires after 1.5 s.
    let world = World::with_open_attempts(
        "tuexpiry",
        |s| s.payment_ttl = std::time::Duration::from_millis(1_500),
        Duration::from_secs(30),
    )
    .await?;
    let world = started(world).await?;
    let id = ask(&world, &top_up("tu-late", "60.00", "wallet", "tok_success")).await?;
    assert_eq!(
        world.reaches(id, "cancelled").await?.as_deref(),
        Some("expired")
    );
    let (attempt, _, status) = world.attempt(id).await?;
    assert_eq!(status, "closed");
    let trade = world
        .gateway
        .trade(WALLET, &attempt.to_string())
        .expect("the trade at the gateway");
    assert_eq!(
        trade.status,
        TradeStatus::Closed,
        "closed before anything else"
    );
    // The channel charges anyway and says so: the money goes back to the
    // payer, never into the wallet of a top-up that was given up.
    world
        .gateway
        .charge_late(WALLET, &attempt.to_string())
        .expect("the trade");
    let late = Notice {
        channel: WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: trade.trade_no.clone(),
        status: TradeStatus::Succeeded,
        amount: d("60.00"),
        currency: "CNY".into(),
        reason: None,
        occurred_at: Utc::now(),
    };
    assert_eq!(
        world
            .webhook(WALLET, "wallet-secret", id, &late, Utc::now().timestamp())
            .await?,
        200
    );
    wait_until(WAIT, "the late charge refunded at the channel", || async {
        Ok(world
            .gateway
            .trade(WALLET, &attempt.to_string())
            .is_some_and(|t| t.refunded == d("60.00")))
    })
    .await?;
    world.env.wait_drained(WAIT).await?;
    let balance = d(WALLET_BALANCE);
    assert_eq!(
        wallet(&world).await?,
        (balance, balance, d("0")),
        "never credited"
    );
    assert!(
        !postings(&world, id)
            .await?
            .iter()
            .any(|(kind, ..)| kind == "top_up"),
        "no top_up entry"
    );
    assert_eq!(
        types_of(&events(&world).await?),
        ["topup.failed", "topup.exception"],
        "expired, then the late charge reported for ops"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_an_operator_attests_is_a_top_up_at_the_deposit_channel() -> anyhow::Result<()> {
    let world = world("tudeposit").await?;
    let attest = |reference: &'static str, amount: &'static str| {
        let world = &world;
        async move {
            world
                .cli(&[
                    "wallet",
                    "top-up",
                    "alice",
                    "--amount",
                    amount,
                    "--currency",
                    "CNY",
                    "--reference",
                    reference,
                    "--operator",
                    "ops-anna",
                ])
                .await
        }
    };
    let (code, out, err) = attest("bank-2026-001", "300.00").await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("credited"), "{out}");
    let id = top_up_id("payfleet-ops", "bank-2026-001");
    world.reaches(id, "settled").await?;
    // through the top-up path: one entry from the deposit channel's
    // clearing account, no fee, and the wallet's statement line
    assert_eq!(
        postings(&world, id).await?,
        [
            ("top_up".to_owned(), "alice".to_owned(), d("300.00")),
            ("top_up".to_owned(), "clearing:ops".to_owned(), d("-300.00")),
        ]
    );
    let balance = d(WALLET_BALANCE) + d("300.00");
    assert_eq!(wallet(&world).await?, (balance, balance, d("0")));
    // attested again, the same deposit: nothing more
    let (code, out, _) = attest("bank-2026-001", "300.00").await?;
    assert_eq!(code, 0);
    assert!(out.contains("attested before"), "{out}");
    // the same reference for another amount, an unknown user, a bad amount: refused
    let (code, _, err) = attest("bank-2026-001", "30.00").await?;
    assert_ne!(code, 0);
    assert!(err.contains("attested before for another deposit"), "{err}");
    let (code, _, err) = attest("bank-2026-002", "0.001").await?;
    assert_ne!(code, 0);
    assert!(err.contains("--amount"), "{err}");
    let (code, _, err) = world
        .cli(&[
            "wallet",
            "top-up",
            "nobody",
            "--amount",
            "5.00",
            "--reference",
            "bank-x",
        ])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("no user `nobody`"), "{err}");
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world).await?.0, balance, "credited once");
    let audited: Vec<(String, String)> =
        sqlx::query_as("SELECT action, operator FROM manual_actions WHERE payment_id = $1")
            .bind(id)
            .fetch_all(world.pool())
            .await?;
    assert_eq!(audited, [("deposit".to_owned(), "ops-anna".to_owned())]);
    assert_eq!(types_of(&events(&world).await?), ["topup.succeeded"]);
    world.finish().await
}
