//! Third-party channels end to end: the fleet (with its webhook ingress)
//! and the sandbox gateway talk over real HTTP; each scenario asserts exact
//! statuses, charges at the gateway, postings and events, then the invariants.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{SHOP, WAIT, d};
use payfleet_common::{
    PaymentId, broker,
    messages::{self, SCHEMA_VERSION},
};
use payfleet_sandbox_gateway::{Notice, TradeStatus, sign_notice};
use payfleet_tests::{TestEnv, wait_until};
use payfleet_workers::{
    channels::{
        registry::{AdapterError, Adapters},
        routing,
    },
    invariants,
};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use fleet::sandbox::{CARD, NEW_CARD, NEW_WALLET, WALLET, World, postings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_sync_channel_payments_settle_through_the_clearing_account() -> anyhow::Result<()>
{
    let mut world = World::new("chansettle", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let async_payment = world.pay("async", "wallet", "tok_success").await?;
    let sync_payment = world.pay("sync", "card", "tok_success").await?;
    world.reaches(async_payment, "settled").await?;
    world.reaches(sync_payment, "settled").await?;

    let (attempt, channel, status) = world.attempt(async_payment).await?;
    assert_eq!((channel.as_str(), status.as_str()), (WALLET, "succeeded"));
    assert_eq!(world.charges(WALLET, attempt), 1);
    let directions: Vec<String> = sqlx::query_scalar(
        "SELECT direction FROM integration_log WHERE attempt_id = $1 ORDER BY id",
    )
    .bind(attempt)
    .fetch_all(world.pool())
    .await?;
    assert_eq!(directions.first().map(String::as_str), Some("request"));
    assert!(
        directions.contains(&"callback".to_owned()),
        "the webhook's raw payload is logged: {directions:?}"
    );
    // 80.00 paid at the wallet channel (fee 0.40): m1 30*2 less 1 %, m2 20, the shop's fees
    assert_eq!(
        postings(world.pool(), async_payment).await?,
        vec![
            ("channel-costs:sandbox-wallet".into(), d("-0.32")),
            ("clearing:sandbox-wallet".into(), d("-79.68")),
            ("fees".into(), d("0.60")),
            ("m1".into(), d("59.40")),
            ("m2".into(), d("20.00")),
        ]
    );
    let (attempt, channel, _) = world.attempt(sync_payment).await?;
    assert_eq!(channel, CARD);
    assert_eq!(world.charges(CARD, attempt), 1);
    let card_fee: Decimal = sqlx::query_scalar("SELECT channel_fee FROM payments WHERE id = $1")
        .bind(sync_payment)
        .fetch_one(world.pool())
        .await?;
    assert_eq!(card_fee, d("0.96"));
    assert_eq!(world.events(sync_payment).await?, vec!["payment.succeeded"]);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_fails_the_payment_and_releases_the_stock() -> anyhow::Result<()> {
    let mut world = World::new("decline", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let id = world.pay("declined", "card", "tok_decline").await?;
    let reason = world.reaches(id, "failed").await?;
    assert_eq!(reason.as_deref(), Some("card_declined"));
    let stock: (i32, i32) =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'tea'")
            .fetch_one(world.pool())
            .await?;
    assert_eq!(stock, (100, 0));
    let (attempt, _, status) = world.attempt(id).await?;
    assert_eq!(status, "failed");
    assert_eq!(world.charges(CARD, attempt), 0);
    assert!(postings(world.pool(), id).await?.is_empty());
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_channel_call_counts_once_in_the_circuit_breaker() -> anyhow::Result<()> {
    let mut world = World::new("breakerretry", |_| {}, Duration::from_millis(200)).await?;
    // The first result of a call fails to commit (after the channel answered),
    // so channel-call handles the message again: the same call, asked again.
    // A sequence, not a table: its count survives the rollback it causes.
    sqlx::raw_sql(
        "CREATE SEQUENCE fault_once;
         CREATE FUNCTION fail_first_response() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.direction = 'response' AND nextval('fault_once') = 1 THEN
             RAISE EXCEPTION 'injected: the result commit failed' USING ERRCODE = '40001';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_first_response BEFORE INSERT ON integration_log
           FOR EACH ROW EXECUTE FUNCTION fail_first_response();",
    )
    .execute(world.pool())
    .await?;
    world.start(&[]).await?;
    let id = world.pay("declined-twice", "card", "tok_decline").await?;
    let reason = world.reaches(id, "failed").await?;
    assert_eq!(reason.as_deref(), Some("card_declined"));
    let (attempt, _, status) = world.attempt(id).await?;
    assert_eq!(status, "failed");
    let requests: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM integration_log WHERE attempt_id = $1 AND direction = 'request'",
    )
    .bind(attempt)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(requests, 2, "the charge was handled twice");

    let locks = payfleet_common::lock::Locks::new(
        &world.env.settings.redis_url,
        &world.env.settings.redis_key_prefix,
        Duration::from_secs(5),
    )?;
    let mut redis = locks.pool().get().await?;
    let key = format!("{}:breaker:{CARD}", world.env.settings.redis_key_prefix);
    let counted: i64 = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut *redis)
        .await?;
    assert_eq!(counted, 1, "one call at the channel, counted once");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_or_a_5xx_after_charging_is_resolved_by_a_status_query_with_one_charge()
-> anyhow::Result<()> {
    let mut world = World::new("unknown", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let timed_out = world.pay("timeout", "card", "tok_timeout").await?;
    let erred = world.pay("5xx", "card", "tok_5xx_after_charge").await?;
    world.reaches(timed_out, "settled").await?;
    world.reaches(erred, "settled").await?;
    for id in [timed_out, erred] {
        let (attempt, _, status) = world.attempt(id).await?;
        assert_eq!(status, "succeeded");
        assert_eq!(
            world.charges(CARD, attempt),
            1,
            "the sandbox shows one charge"
        );
        let attempts: i64 =
            sqlx::query_scalar("SELECT count(*) FROM payment_attempts WHERE payment_id = $1")
                .bind(id)
                .fetch_one(world.pool())
                .await?;
        assert_eq!(attempts, 1, "never a second attempt");
        let queries: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM integration_log WHERE attempt_id = $1 AND direction = 'query'",
        )
        .bind(attempt)
        .fetch_one(world.pool())
        .await?;
        assert!(queries >= 1, "a status query decided");
        assert_eq!(world.events(id).await?, vec!["payment.succeeded"]);
    }
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_out_of_order_webhooks_change_nothing() -> anyhow::Result<()> {
    let mut world = World::new("dupwebhook", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let duplicated = world.pay("dup", "wallet", "tok_duplicate_webhook").await?;
    let reordered = world.pay("ooo", "wallet", "tok_out_of_order").await?;
    world.reaches(duplicated, "settled").await?;
    world.reaches(reordered, "settled").await?;
    // let the second webhooks arrive and be handled
    tokio::time::sleep(Duration::from_millis(800)).await;
    world.env.wait_drained(WAIT).await?;
    for id in [duplicated, reordered] {
        let callbacks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM integration_log WHERE payment_id = $1 AND direction = 'callback'",
        )
        .bind(id)
        .fetch_one(world.pool())
        .await?;
        assert_eq!(callbacks, 2, "both webhooks arrived and were logged");
        assert_eq!(
            world.status(id).await?.map(|s| s.0).as_deref(),
            Some("settled")
        );
        assert_eq!(postings(world.pool(), id).await?.len(), 5, "settled once");
        assert_eq!(world.events(id).await?, vec!["payment.succeeded"]);
    }
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_before_the_attempt_commit_is_retried_not_lost() -> anyhow::Result<()> {
    let mut world = World::new("early", |_| {}, Duration::from_millis(200)).await?;
    // channel-call is not running: the payment waits frozen, with no attempt yet
    world
        .start(&[
            "order-validation",
            "fund-freeze",
            "callback",
            "settlement",
            "notification",
        ])
        .await?;
    let id = world.pay("early", "wallet", "tok_success").await?;
    wait_until(WAIT, "the payment frozen", || async {
        Ok(world.status(id).await?.map(|s| s.0).as_deref() == Some("frozen"))
    })
    .await?;
    // The channel really charged (no webhook of its own), and its notice
    // reaches us before our attempt is committed.
    let attempt = Uuid::now_v7();
    let gateway_url: String = sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
        .bind(WALLET)
        .fetch_one(world.pool())
        .await?;
    let trade: Value = reqwest::Client::new()
        .post(format!("{gateway_url}/channels/{WALLET}/payments"))
        .json(
            &serde_json::json!({"out_trade_no": attempt.to_string(), "amount": "80.00",
                                  "currency": "CNY", "payer_token": "tok_no_webhook"}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let notice = Notice {
        channel: WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: trade["trade_no"].as_str().unwrap_or_default().to_owned(),
        status: TradeStatus::Succeeded,
        amount: d("80.00"),
        currency: "CNY".into(),
        reason: None,
        occurred_at: Utc::now(),
    };
    assert_eq!(
        world
            .webhook(WALLET, "wallet-secret", id, &notice, Utc::now().timestamp())
            .await?,
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        world.status(id).await?.map(|s| s.0).as_deref(),
        Some("frozen"),
        "nothing moves before its attempt exists"
    );
    // channel-call commits its attempt (as its first transaction would)
    sqlx::query("INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status) VALUES ($1, $2, $3, 80.00, 'CNY', 'sending')")
        .bind(attempt)
        .bind(id)
        .bind(WALLET)
        .execute(world.pool())
        .await?;
    world.reaches(id, "settled").await?;
    assert!(
        world.env.dead_letters().await?.is_empty(),
        "the early webhook was retried, not dead-lettered"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_mismatch_is_held_as_an_exception() -> anyhow::Result<()> {
    let mut world = World::new("mismatch", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let id = world
        .pay("mismatch", "wallet", "tok_amount_mismatch")
        .await?;
    let reason = world.reaches(id, "exception").await?;
    assert!(reason.unwrap_or_default().starts_with("amount_mismatch"));
    assert_eq!(world.events(id).await?, vec!["payment.exception"]);
    assert!(
        postings(world.pool(), id).await?.is_empty(),
        "nothing settled"
    );
    let reserved: i32 = sqlx::query_scalar("SELECT reserved FROM stock WHERE sku = 'tea'")
        .fetch_one(world.pool())
        .await?;
    assert_eq!(
        reserved, 2,
        "held for review: the reservation stays until ops decide"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_currency_the_channel_did_not_charge_in_sends_the_payment_to_exception()
-> anyhow::Result<()> {
    let mut world = World::new("currency", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    // 100.00 CNY at the sync card channel, which answers in the response
    // that it charged 100.00 USD: the same figure, another currency.
    let id = world
        .pay_for("usd", "card", "tok_currency_mismatch", 2)
        .await?;
    world.reaches(id, "exception").await?;
    assert_eq!(world.events(id).await?, vec!["payment.exception"]);
    let asked: (Decimal, String) =
        sqlx::query_as("SELECT amount, currency::text FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(world.pool())
            .await?;
    assert_eq!(asked, (d("100.00"), "CNY".to_owned()));
    let (attempt, channel, _) = world.attempt(id).await?;
    assert_eq!(channel, CARD);
    let trade = world
        .gateway
        .trade(CARD, &attempt.to_string())
        .expect("the trade exists at the gateway");
    assert_eq!(
        (trade.status, trade.amount, trade.currency.as_str()),
        (TradeStatus::Succeeded, d("100.00"), "USD")
    );
    let answer: Value = sqlx::query_scalar(
        "SELECT payload FROM integration_log WHERE attempt_id = $1 AND direction = 'response'",
    )
    .bind(attempt)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(
        (
            answer["status"].as_str(),
            answer["amount"].as_str(),
            answer["currency"].as_str()
        ),
        (Some("SUCCEEDED"), Some("100.00"), Some("USD")),
        "the channel's answer: {answer}"
    );
    assert!(
        postings(world.pool(), id).await?.is_empty(),
        "nothing settled"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_webhooks_get_401_and_change_nothing() -> anyhow::Result<()> {
    let mut world = World::new("forged", |_| {}, Duration::from_secs(30)).await?;
    world.start(&[]).await?;
    let id = world.pay("forged", "wallet", "tok_success").await?;
    wait_until(WAIT, "the attempt pending", || async {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM payment_attempts WHERE status = 'pending'",
        )
        .fetch_one(world.pool())
        .await?
            == 1)
    })
    .await?;
    let (attempt, _, _) = world.attempt(id).await?;
    let notice = Notice {
        channel: WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: "x".into(),
        status: TradeStatus::Succeeded,
        amount: d("80.00"),
        currency: "CNY".into(),
        reason: None,
        occurred_at: Utc::now(),
    };
    let logged_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM integration_log WHERE direction = 'callback'")
            .fetch_one(world.pool())
            .await?;
    assert_eq!(
        world
            .webhook(
                WALLET,
                "not-the-secret",
                id,
                &notice,
                Utc::now().timestamp()
            )
            .await?,
        401
    );
    assert_eq!(
        world
            .webhook(
                WALLET,
                "wallet-secret",
                id,
                &notice,
                Utc::now().timestamp() - 3_600
            )
            .await?,
        401
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM integration_log WHERE direction = 'callback'")
            .fetch_one(world.pool())
            .await?;
    assert_eq!(logged_after, logged_before, "nothing stored");
    assert_eq!(
        world.status(id).await?.map(|s| s.0).as_deref(),
        Some("frozen")
    );
    world.stop().await;
    world.gateway_stop.cancel();
    world.fleet.env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_resolves_only_its_own_payments_attempt_at_its_own_channel() -> anyhow::Result<()>
{
    // Webhooks come after 30 s and status queries after 20 s: the attempts
    // stay open while misdirected notices are posted.
    let mut world =
        World::with_open_attempts("misdirected", |_| {}, Duration::from_secs(30)).await?;
    world.start(&[]).await?;
    let a = world.pay("a", "wallet", "tok_success").await?;
    let b = world.pay("b", "wallet", "tok_success").await?;
    wait_until(WAIT, "both attempts pending", || async {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM payment_attempts WHERE status = 'pending'",
        )
        .fetch_one(world.pool())
        .await?
            == 2)
    })
    .await?;
    let genuine = |payment: PaymentId| {
        let world = &world;
        async move {
            let (attempt, _, _) = world.attempt(payment).await?;
            let trade = world
                .gateway
                .trade(WALLET, &attempt.to_string())
                .expect("the trade exists at the gateway");
            anyhow::Ok(Notice {
                channel: WALLET.into(),
                out_trade_no: attempt.to_string(),
                trade_no: trade.trade_no,
                status: TradeStatus::Succeeded,
                amount: trade.amount,
                currency: trade.currency,
                reason: None,
                occurred_at: Utc::now(),
            })
        }
    };
    let now = Utc::now().timestamp();

    // B's genuine notice, posted at A's address
    let of_b = genuine(b).await?;
    let code = world
        .webhook(WALLET, "wallet-secret", a, &of_b, now)
        .await?;
    assert!(
        (400..500).contains(&code),
        "another payment's notice is refused, got {code}"
    );
    // a notice from the card channel about A's attempt at the wallet channel
    let mut from_card = genuine(a).await?;
    from_card.channel = CARD.into();
    let code = world
        .webhook(CARD, "card-secret", a, &from_card, now)
        .await?;
    assert!(
        (400..500).contains(&code),
        "another channel's notice is refused, got {code}"
    );
    // a notice naming the wallet channel, posted and signed as the card channel
    let of_a = genuine(a).await?;
    let code = world.webhook(CARD, "card-secret", a, &of_a, now).await?;
    assert!(
        (400..500).contains(&code),
        "a notice for another channel than its address is refused, got {code}"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM integration_log WHERE direction = 'callback' AND payment_id IN ($1, $2)",
    )
    .bind(a)
    .bind(b)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(
        logged, 0,
        "a refused notice is in no payment's integration log"
    );
    for id in [a, b] {
        assert_eq!(
            world.status(id).await?.map(|s| s.0).as_deref(),
            Some("frozen"),
            "nothing resolved payment {id}"
        );
        assert_eq!(world.attempt(id).await?.2, "pending");
    }
    assert!(world.env.dead_letters().await?.is_empty());

    // The channel charges both; each notice at its own address settles its payment.
    for id in [a, b] {
        let (attempt, _, _) = world.attempt(id).await?;
        world
            .gateway
            .charge_late(WALLET, &attempt.to_string())
            .expect("the trade");
        let notice = genuine(id).await?;
        assert_eq!(
            world
                .webhook(WALLET, "wallet-secret", id, &notice, Utc::now().timestamp())
                .await?,
            200
        );
    }
    world.reaches(a, "settled").await?;
    world.reaches(b, "settled").await?;
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_from_another_channel_than_the_attempts_is_dead_lettered_unapplied()
-> anyhow::Result<()> {
    let mut world =
        World::with_open_attempts("otherchannel", |_| {}, Duration::from_secs(30)).await?;
    world.start(&[]).await?;
    let id = world.pay("wallet", "wallet", "tok_success").await?;
    wait_until(WAIT, "the attempt pending", || async {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM payment_attempts WHERE status = 'pending'",
        )
        .fetch_one(world.pool())
        .await?
            == 1)
    })
    .await?;
    let (attempt, _, _) = world.attempt(id).await?;
    // past the ingress: a result on the stage's queue, as the card channel's
    let result = messages::ChannelResult {
        schema_version: SCHEMA_VERSION,
        payment_id: id,
        attempt_id: attempt,
        channel: CARD.into(),
        status: messages::ChannelStatus::Succeeded,
        amount: d("80.00"),
        currency: "CNY".into(),
        channel_reference: None,
        reason: None,
        reported_at: Utc::now(),
    };
    world
        .env
        .publish_raw(
            &world.env.topology.exchanges().stages.clone(),
            "callback",
            &serde_json::to_vec(&result)?,
            broker::properties(
                &Uuid::now_v7().to_string(),
                Some(&id.to_string()),
                Some(messages::kind::CHANNEL_RESULT),
            ),
        )
        .await?;
    wait_until(WAIT, "the result dead-lettered", || async {
        Ok(world
            .env
            .dead_letters()
            .await?
            .iter()
            .any(|dl| dl.stage == "callback" && dl.error_message.contains("refused")))
    })
    .await?;
    assert_eq!(
        world.status(id).await?.map(|s| s.0).as_deref(),
        Some("frozen")
    );
    assert_eq!(world.attempt(id).await?.2, "pending");

    // the wallet channel's own notice settles it
    world
        .gateway
        .charge_late(WALLET, &attempt.to_string())
        .expect("the trade");
    let trade = world
        .gateway
        .trade(WALLET, &attempt.to_string())
        .expect("the trade");
    let notice = Notice {
        channel: WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: trade.trade_no,
        status: TradeStatus::Succeeded,
        amount: trade.amount,
        currency: trade.currency,
        reason: None,
        occurred_at: Utc::now(),
    };
    assert_eq!(
        world
            .webhook(WALLET, "wallet-secret", id, &notice, Utc::now().timestamp())
            .await?,
        200
    );
    world.reaches(id, "settled").await?;
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_added_while_the_fleet_runs_is_routed_to_and_charged() -> anyhow::Result<()> {
    let mut world = World::new("newcard", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    // Added after start-up: a card channel cheaper than the first, and a
    // cheaper still that no adapter can call (a sandbox row with no base_url).
    world
        .add_channel(NEW_CARD, "new-card-webhook-secret", "card", "0.0060")
        .await?;
    sqlx::query(
        "INSERT INTO channels (name, kind, methods, fee_rate) VALUES ('sandbox-nowhere', 'sandbox', ARRAY['card'], 0.0010)",
    )
    .execute(world.pool())
    .await?;
    let id = world.pay("new-card", "card", "tok_success").await?;
    world.reaches(id, "settled").await?;
    let (attempt, channel, status) = world.attempt(id).await?;
    assert_eq!(
        (channel.as_str(), status.as_str()),
        (NEW_CARD, "succeeded"),
        "the new channel, never the one without an adapter"
    );
    assert_eq!(world.charges(NEW_CARD, attempt), 1);
    let fee: Decimal = sqlx::query_scalar("SELECT channel_fee FROM payments WHERE id = $1")
        .bind(id)
        .fetch_one(world.pool())
        .await?;
    assert_eq!(fee, d("0.48"));
    assert!(world.env.dead_letters().await?.is_empty());
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_added_while_the_fleet_runs_closes_an_expired_trade_and_refunds_a_late_charge()
-> anyhow::Result<()> {
    // The gateway would only send its webhook after 30 s; the payment expires after 1.5 s.
    let mut world = World::with_open_attempts(
        "newwallet",
        |s| s.payment_ttl = std::time::Duration::from_millis(1_500),
        Duration::from_secs(30),
    )
    .await?;
    world.start(&[]).await?;
    world
        .add_channel(NEW_WALLET, "new-wallet-secret", "wallet", "0.0020")
        .await?;
    let id = world.pay("new-wallet", "wallet", "tok_success").await?;
    let reason = world.reaches(id, "cancelled").await?;
    assert_eq!(reason.as_deref(), Some("expired"));
    let (attempt, channel, status) = world.attempt(id).await?;
    assert_eq!((channel.as_str(), status.as_str()), (NEW_WALLET, "closed"));
    let trade = world
        .gateway
        .trade(NEW_WALLET, &attempt.to_string())
        .expect("the trade exists at the new channel");
    assert_eq!(
        trade.status,
        TradeStatus::Closed,
        "closed at the new channel"
    );

    world
        .gateway
        .charge_late(NEW_WALLET, &attempt.to_string())
        .expect("the trade");
    let late = Notice {
        channel: NEW_WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: trade.trade_no.clone(),
        status: TradeStatus::Succeeded,
        amount: trade.amount,
        currency: trade.currency.clone(),
        reason: None,
        occurred_at: Utc::now(),
    };
    assert_eq!(
        world
            .webhook(
                NEW_WALLET,
                "new-wallet-secret",
                id,
                &late,
                Utc::now().timestamp()
            )
            .await?,
        200
    );
    wait_until(
        WAIT,
        "the late charge refunded at the new channel",
        || async {
            Ok(sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM refunds WHERE status = 'succeeded' AND channel = $1",
            )
            .bind(NEW_WALLET)
            .fetch_one(world.pool())
            .await?
                == 1)
        },
    )
    .await?;
    assert_eq!(
        world
            .gateway
            .trade(NEW_WALLET, &attempt.to_string())
            .map(|t| t.refunded),
        Some(d("80.00"))
    );
    assert!(world.env.dead_letters().await?.is_empty());
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_is_built_when_first_needed_and_again_when_its_row_changes() -> anyhow::Result<()>
{
    let env = TestEnv::new("adapters").await?;
    let adapters = Adapters::new(Duration::from_secs(1));
    assert!(matches!(
        adapters.get(&env.pool, NEW_CARD).await,
        Err(AdapterError::Unknown(_))
    ));
    sqlx::query(
        "INSERT INTO channels (name, kind, base_url, webhook_secret, methods) VALUES ($1, 'sandbox', 'http://127.0.0.1:8701', 's', ARRAY['card'])",
    )
    .bind(NEW_CARD)
    .execute(&env.pool)
    .await?;
    let first = adapters.get(&env.pool, NEW_CARD).await?;
    assert_eq!(first.name(), NEW_CARD);
    let again = adapters.get(&env.pool, NEW_CARD).await?;
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "kept while its row is unchanged"
    );
    let relocate = |url: Option<&'static str>| {
        sqlx::query("UPDATE channels SET base_url = $2 WHERE name = $1")
            .bind(NEW_CARD)
            .bind(url)
            .execute(&env.pool)
    };
    relocate(Some("http://127.0.0.1:8702")).await?;
    let moved = adapters.get(&env.pool, NEW_CARD).await?;
    assert!(
        !std::sync::Arc::ptr_eq(&first, &moved),
        "built anew for the changed row"
    );
    relocate(None).await?;
    assert!(matches!(
        adapters.get(&env.pool, NEW_CARD).await,
        Err(AdapterError::Unbuildable { .. })
    ));
    sqlx::query("DELETE FROM channels WHERE name = $1")
        .bind(NEW_CARD)
        .execute(&env.pool)
        .await?;
    assert!(matches!(
        adapters.get(&env.pool, NEW_CARD).await,
        Err(AdapterError::Unknown(_))
    ));
    let report = invariants::all(&env.pool).await?;
    assert!(report.ok(), "invariants broken: {:?}", report.failures());
    env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_the_trade_first_and_a_late_success_is_owed_back() -> anyhow::Result<()> {
    // The gateway would only answer after 30 s; the payment expires after 1.5 s.
    let mut world = World::with_open_attempts(
        "expiryclose",
        |s| s.payment_ttl = std::time::Duration::from_millis(1_500),
        Duration::from_secs(30),
    )
    .await?;
    world.start(&[]).await?;
    let id = world.pay("expiring", "wallet", "tok_success").await?;
    let reason = world.reaches(id, "cancelled").await?;
    assert_eq!(reason.as_deref(), Some("expired"));
    let (attempt, _, status) = world.attempt(id).await?;
    assert_eq!(status, "closed");
    let trade = world
        .gateway
        .trade(WALLET, &attempt.to_string())
        .expect("the trade exists at the gateway");
    assert_eq!(
        trade.status,
        TradeStatus::Closed,
        "closed at the gateway before the release"
    );
    let stock: (i32, i32) =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'tea'")
            .fetch_one(world.pool())
            .await?;
    assert_eq!(stock, (100, 0), "released");

    // A channel that ignored the close charges anyway and says so: the money is owed back.
    world
        .gateway
        .charge_late(WALLET, &attempt.to_string())
        .expect("the trade");
    let late = Notice {
        channel: WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: trade.trade_no.clone(),
        status: TradeStatus::Succeeded,
        amount: d("80.00"),
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
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM refunds WHERE status = 'succeeded' AND amount = 80.00",
        )
        .fetch_one(world.pool())
        .await?
            == 1)
    })
    .await?;
    assert_eq!(
        world
            .gateway
            .trade(WALLET, &attempt.to_string())
            .map(|t| t.refunded),
        Some(d("80.00")),
        "refunded once, in full"
    );
    wait_until(WAIT, "the exception reported", || async {
        Ok(world
            .events(id)
            .await?
            .contains(&"payment.exception".to_owned()))
    })
    .await?;
    assert_eq!(
        world.status(id).await?.map(|s| s.0).as_deref(),
        Some("cancelled"),
        "the money stays released"
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_channel_is_skipped_and_the_other_ones_fee_is_posted() -> anyhow::Result<()> {
    let mut world = World::new("routing", |_| {}, Duration::from_millis(200)).await?;
    // both channels take cards; the wallet channel is cheaper
    sqlx::query("UPDATE channels SET methods = ARRAY['wallet', 'card'] WHERE name = $1")
        .bind(WALLET)
        .execute(world.pool())
        .await?;
    world.start(&[]).await?;
    let cheap = world.pay("cheap", "card", "tok_success").await?;
    world.reaches(cheap, "settled").await?;
    assert_eq!(
        world.attempt(cheap).await?.1,
        WALLET,
        "the cheaper channel while healthy"
    );

    // recent timeouts at the wallet channel open its breaker
    let redis = payfleet_common::lock::Locks::new(
        &world.env.settings.redis_url,
        &world.env.settings.redis_key_prefix,
        Duration::from_secs(5),
    )?;
    for _ in 0..routing::MIN_CALLS {
        routing::record(
            &redis,
            &world.env.settings.redis_key_prefix,
            WALLET,
            &Uuid::now_v7().to_string(),
            true,
        )
        .await;
    }
    let rerouted = world.pay("rerouted", "card", "tok_success").await?;
    world.reaches(rerouted, "settled").await?;
    assert_eq!(
        world.attempt(rerouted).await?.1,
        CARD,
        "the unhealthy channel is skipped"
    );
    let fees: Vec<(String, Decimal)> = postings(world.pool(), rerouted)
        .await?
        .into_iter()
        .filter(|p| p.0.starts_with("channel-costs"))
        .collect();
    assert_eq!(
        fees,
        vec![("channel-costs:sandbox-card".into(), d("-0.96"))]
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_follow_a_payment_through_every_stage_and_resolve_an_exception_through_cancel()
-> anyhow::Result<()> {
    let mut world = World::new("opspayment", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let settled = world.pay("followed", "wallet", "tok_success").await?;
    let held = world.pay("held", "wallet", "tok_amount_mismatch").await?;
    world.reaches(settled, "settled").await?;
    world.reaches(held, "exception").await?;

    let (code, out, err) = world
        .cli(&["payment", "show", &format!("{SHOP}:followed")])
        .await?;
    assert_eq!(code, 0, "{err}");
    for stage in [
        "order-validation",
        "fund-freeze",
        "channel-call",
        "integration-log",
        "settlement",
        "notification",
    ] {
        assert!(out.contains(stage), "`payment show` lacks {stage}:\n{out}");
    }
    assert!(
        out.contains("callback"),
        "the webhook's payload is in the story:\n{out}"
    );

    let (code, _, err) = world
        .cli(&[
            "payment",
            "resolve",
            &format!("{SHOP}:held"),
            "--as",
            "failed",
            "--reason",
            "",
        ])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("--reason"), "{err}");
    let (code, out, err) = world
        .cli(&[
            "payment",
            "resolve",
            &format!("{SHOP}:held"),
            "--as",
            "failed",
            "--reason",
            "channel confirmed no charge",
        ])
        .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resolved payment"), "{out}");
    assert_eq!(
        world.status(held).await?.map(|s| s.0).as_deref(),
        Some("failed")
    );
    let reservation: String =
        sqlx::query_scalar("SELECT status FROM reservations WHERE payment_id = $1")
            .bind(held)
            .fetch_one(world.pool())
            .await?;
    assert_eq!(reservation, "cancelled", "released through TCC Cancel");
    let stock: (i32, i32) =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = 'tea'")
            .fetch_one(world.pool())
            .await?;
    assert_eq!(stock, (98, 0), "only the settled payment's tea is gone");
    let (operator, before, after): (String, Value, Value) =
        sqlx::query_as("SELECT operator, before, after FROM manual_actions WHERE payment_id = $1")
            .bind(held)
            .fetch_one(world.pool())
            .await?;
    assert_eq!(operator, "oncall-test");
    assert_eq!(
        (before["status"].as_str(), after["status"].as_str()),
        (Some("exception"), Some("failed"))
    );
    wait_until(WAIT, "the failed event", || async {
        Ok(world
            .events(held)
            .await?
            .contains(&"payment.failed".to_owned()))
    })
    .await?;
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_every_planted_mismatch_and_nothing_else() -> anyhow::Result<()> {
    let mut world = World::new("reconcile", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let card = world.pay("card-ok", "card", "tok_success").await?;
    let declined = world.pay("card-declined", "card", "tok_decline").await?;
    let wallet = world.pay("wallet-ok", "wallet", "tok_success").await?;
    let short = world
        .pay("wallet-short", "wallet", "tok_amount_mismatch")
        .await?;
    world.reaches(card, "settled").await?;
    world.reaches(declined, "failed").await?;
    world.reaches(wallet, "settled").await?;
    world.reaches(short, "exception").await?;
    world.env.wait_drained(WAIT).await?;

    // missing on our side: a trade the channel has and we never made
    let gateway_url: String = sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
        .bind(CARD)
        .fetch_one(world.pool())
        .await?;
    let stranger = Uuid::now_v7();
    reqwest::Client::new()
        .post(format!("{gateway_url}/channels/{CARD}/payments"))
        .json(&serde_json::json!({"out_trade_no": stranger.to_string(), "amount": "5.00", "currency": "CNY"}))
        .send()
        .await?
        .error_for_status()?;
    world.planted_trades.push(stranger.to_string());
    let (card_attempt, _, _) = world.attempt(card).await?;
    // missing on theirs: an attempt we believe succeeded that the channel never saw
    let phantom = Uuid::now_v7();
    sqlx::query("INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status) VALUES ($1, $2, $3, 80.00, 'CNY', 'succeeded')")
        .bind(phantom)
        .bind(card)
        .bind(CARD)
        .execute(world.pool())
        .await?;
    // status mismatch: our record of the wallet payment's attempt disagrees with the channel
    let (wallet_attempt, _, _) = world.attempt(wallet).await?;
    sqlx::query("UPDATE payment_attempts SET status = 'failed' WHERE id = $1")
        .bind(wallet_attempt)
        .execute(world.pool())
        .await?;

    // fee mismatch: the channel took another fee than the one we booked
    sqlx::query("UPDATE payment_attempts SET fee = fee + 0.01 WHERE id = $1")
        .bind(card_attempt)
        .execute(world.pool())
        .await?;
    // currency mismatch: our record says another currency than the channel's
    let (declined_attempt, _, _) = world.attempt(declined).await?;
    sqlx::query("UPDATE payment_attempts SET currency = 'USD' WHERE id = $1")
        .bind(declined_attempt)
        .execute(world.pool())
        .await?;

    let today = Utc::now().date_naive().to_string();
    let (code, out, err) = world
        .cli(&["reconcile", "--date", &today, "--json"])
        .await?;
    assert_eq!(code, 1, "a mismatch exits non-zero: {err}");
    let mut found: Vec<(String, String)> = Vec::new();
    let mut matched = 0;
    for summary in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let summary = summary?;
        matched += summary["counts"]["matched"].as_i64().unwrap_or(0);
        for m in summary["mismatches"].as_array().into_iter().flatten() {
            found.push((
                m["kind"].as_str().unwrap_or("").to_owned(),
                m["attempt_id"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    found.sort();
    let (short_attempt, _, _) = world.attempt(short).await?;
    let mut expected = vec![
        ("amount_mismatch".to_owned(), short_attempt.to_string()),
        ("missing_ours".to_owned(), stranger.to_string()),
        ("missing_theirs".to_owned(), phantom.to_string()),
        ("status_mismatch".to_owned(), wallet_attempt.to_string()),
        ("fee_mismatch".to_owned(), card_attempt.to_string()),
        ("currency_mismatch".to_owned(), declined_attempt.to_string()),
    ];
    expected.sort();
    assert_eq!(found, expected, "every planted mismatch, and nothing else");
    assert_eq!(matched, 0, "every trade carries a planted mismatch");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconciliation_items WHERE kind <> 'matched'")
            .fetch_one(world.pool())
            .await?;
    assert_eq!(stored, 6, "the result is stored");
    // the planted rows are not the fleet's doing: put them back before the invariants
    sqlx::query("DELETE FROM payment_attempts WHERE id = $1")
        .bind(phantom)
        .execute(world.pool())
        .await?;
    sqlx::query("UPDATE payment_attempts SET fee = fee - 0.01 WHERE id = $1")
        .bind(card_attempt)
        .execute(world.pool())
        .await?;
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_fee_is_the_platforms_cost_even_above_its_platform_fee() -> anyhow::Result<()> {
    // On a fresh database, the first card payment: 80.00 with a card fee of
    // 0.96 and platform fees of only 0.60 (m1's 1 % of 60.00). The platform
    // loses 0.36 on it, its cost account goes below zero, and the roll-up of
    // every other account goes on regardless.
    let mut world = World::new("channelcost", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let id = world.pay("first-card", "card", "tok_success").await?;
    world.reaches(id, "settled").await?;
    assert_eq!(
        postings(world.pool(), id).await?,
        vec![
            ("channel-costs:sandbox-card".into(), d("-0.96")),
            ("clearing:sandbox-card".into(), d("-79.04")),
            ("fees".into(), d("0.60")),
            ("m1".into(), d("59.40")),
            ("m2".into(), d("20.00")),
        ]
    );
    wait_until(WAIT, "every posting rolled up", || async {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM postings WHERE NOT rolled_up")
                .fetch_one(world.pool())
                .await?
                == 0,
        )
    })
    .await?;
    let balances: Vec<(String, String, Decimal)> = sqlx::query_as(
        "SELECT owner_kind, owner_id, total FROM accounts
         WHERE owner_kind IN ('platform', 'platform_cost', 'merchant') ORDER BY owner_kind, owner_id",
    )
    .fetch_all(world.pool())
    .await?;
    assert_eq!(
        balances,
        vec![
            ("merchant".into(), "m1".into(), d("59.40")),
            ("merchant".into(), "m2".into(), d("20.00")),
            ("platform".into(), "fees".into(), d("0.60")),
            (
                "platform_cost".into(),
                "channel-costs:sandbox-card".into(),
                d("-0.96")
            ),
        ]
    );
    world.finish().await
}

/// Resolves `payment` by hand through the CLI.
async fn resolve_by_hand(world: &World, order: &str, to: &str) -> anyhow::Result<String> {
    let (code, out, err) = world
        .cli(&[
            "payment",
            "resolve",
            &format!("{SHOP}:{order}"),
            "--as",
            to,
            "--reason",
            "checked with the channel",
        ])
        .await?;
    anyhow::ensure!(code == 0, "resolve {order} as {to}: {err}");
    Ok(out)
}

/// Waits until the channel shows `amount` refunded on `payment`'s trade.
async fn refunded_at_the_channel(
    world: &World,
    payment: PaymentId,
    amount: Decimal,
) -> anyhow::Result<()> {
    let (attempt, channel, _) = world.attempt(payment).await?;
    wait_until(WAIT, &format!("{amount} refunded at {channel}"), || async {
        Ok(world
            .gateway
            .trade(&channel, &attempt.to_string())
            .is_some_and(|t| t.refunded == amount))
    })
    .await?;
    wait_until(WAIT, "the refund recorded", || async {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM refunds WHERE payment_id = $1 AND status = 'succeeded' AND amount = $2",
        )
        .bind(payment)
        .bind(amount)
        .fetch_one(world.pool())
        .await?
            == 1)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_payment_is_resolved_by_what_the_channel_holds() -> anyhow::Result<()> {
    let mut world = World::new("mismatchexit", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    // 79.99 charged for 80.00, three ways out; 80.01 charged for 80.00.
    let refused = world
        .pay("short-failed", "wallet", "tok_amount_mismatch")
        .await?;
    let accepted = world
        .pay("short-paid", "wallet", "tok_amount_mismatch")
        .await?;
    let over = world.pay("over-paid", "wallet", "tok_over_charge").await?;
    for id in [refused, accepted, over] {
        world.reaches(id, "exception").await?;
        let (_, _, status) = world.attempt(id).await?;
        assert_eq!(status, "succeeded", "the channel took money for it");
    }

    // Failed: the channel holds 79.99 of the payer's: all of it goes back.
    resolve_by_hand(&world, "short-failed", "failed").await?;
    refunded_at_the_channel(&world, refused, d("79.99")).await?;
    assert_eq!(
        world.status(refused).await?.map(|s| s.0).as_deref(),
        Some("failed")
    );

    // Paid with a shortfall: what was charged is settled, the 0.01 short
    // taken from the sub-orders by exact allocation (m1 60.00, m2 20.00).
    resolve_by_hand(&world, "short-paid", "paid").await?;
    world.reaches(accepted, "settled").await?;
    let details: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
        "SELECT seller_id, amount, fee_amount FROM transaction_details WHERE payment_id = $1 ORDER BY seller_id",
    )
    .bind(accepted)
    .fetch_all(world.pool())
    .await?;
    assert_eq!(
        details
            .iter()
            .map(|(_, amount, _)| *amount)
            .sum::<Decimal>(),
        d("79.99"),
        "the sub-orders settle what was charged: {details:?}"
    );
    let merchant_credits: Decimal = postings(world.pool(), accepted)
        .await?
        .iter()
        .filter(|(owner, _)| owner == "m1" || owner == "m2" || owner == "fees")
        .map(|(_, amount)| *amount)
        .sum();
    assert_eq!(merchant_credits, d("79.99"));

    // Over-charged: the payment's 80.00 is settled, the 0.01 excess refunded.
    resolve_by_hand(&world, "over-paid", "paid").await?;
    world.reaches(over, "settled").await?;
    refunded_at_the_channel(&world, over, d("0.01")).await?;
    let over_credits: Decimal = postings(world.pool(), over)
        .await?
        .iter()
        .filter(|(owner, _)| owner == "m1" || owner == "m2" || owner == "fees")
        .map(|(_, amount)| *amount)
        .sum();
    assert_eq!(over_credits, d("80.00"));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_in_another_currency_cannot_settle_and_is_refunded_in_its_currency()
-> anyhow::Result<()> {
    let mut world = World::new("othercurrency", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let id = world.pay("in-usd", "card", "tok_currency_mismatch").await?;
    world.reaches(id, "exception").await?;
    let (code, _, err) = world
        .cli(&[
            "payment",
            "resolve",
            &format!("{SHOP}:in-usd"),
            "--as",
            "paid",
            "--reason",
            "try",
        ])
        .await?;
    assert_ne!(code, 0, "a USD charge cannot settle a CNY payment");
    assert!(err.contains("cannot be settled"), "{err}");
    assert_eq!(
        world.status(id).await?.map(|s| s.0).as_deref(),
        Some("exception"),
        "a refused resolve changes nothing"
    );
    resolve_by_hand(&world, "in-usd", "failed").await?;
    refunded_at_the_channel(&world, id, d("80.00")).await?;
    let refund_currency: String =
        sqlx::query_scalar("SELECT currency::text FROM refunds WHERE payment_id = $1")
            .bind(id)
            .fetch_one(world.pool())
            .await?;
    assert_eq!(refund_currency, "USD", "refunded in what was charged");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postings_are_append_only_and_a_correction_is_a_new_entry() -> anyhow::Result<()> {
    let mut world = World::new("appendonly", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let id = world.pay("booked", "card", "tok_success").await?;
    world.reaches(id, "settled").await?;
    let entry: i64 = sqlx::query_scalar("SELECT id FROM journal_entries WHERE reference = $1")
        .bind(id.to_string())
        .fetch_one(world.pool())
        .await?;
    for change in [
        "UPDATE postings SET amount = amount * 2 WHERE entry_id = $1",
        "UPDATE postings SET account_id = (SELECT min(id) FROM accounts) WHERE entry_id = $1",
        "DELETE FROM postings WHERE entry_id = $1",
    ] {
        let refused = sqlx::query(change).bind(entry).execute(world.pool()).await;
        let error = refused.expect_err(change).to_string();
        assert!(error.contains("append-only"), "{change}: {error}");
    }
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_refuses_to_vouch_for_a_charge_the_channel_has_not_answered() -> anyhow::Result<()>
{
    // The webhook comes after 3 s, the first status query after 20 s: the
    // attempt is still open when ops try to resolve the payment.
    let mut world = World::with_open_attempts("vouch", |_| {}, Duration::from_secs(3)).await?;
    world.start(&[]).await?;
    let id = world.pay("open", "wallet", "tok_success").await?;
    wait_until(WAIT, "the attempt pending", || async {
        Ok(world
            .attempt(id)
            .await
            .map(|a| a.2 == "pending")
            .unwrap_or(false))
    })
    .await?;
    let (code, _, err) = world
        .cli(&[
            "payment",
            "resolve",
            &format!("{SHOP}:open"),
            "--as",
            "paid",
            "--reason",
            "the shop says it was paid",
        ])
        .await?;
    assert_ne!(code, 0, "nothing is settled on an unanswered charge");
    assert!(err.contains("requery"), "{err}");
    // The channel's own answer then settles it, once.
    world.reaches(id, "settled").await?;
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_are_checked_against_each_trade_and_currency_not_only_daily_totals()
-> anyhow::Result<()> {
    let mut world = World::new("pertrade", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let first = world.pay("first", "card", "tok_success").await?;
    let second = world.pay("second", "card", "tok_success").await?;
    world.reaches(first, "settled").await?;
    world.reaches(second, "settled").await?;
    world.env.wait_drained(WAIT).await?;
    let since = chrono::DateTime::<Utc>::UNIX_EPOCH;
    assert!(
        invariants::against_channel_statements(world.pool(), since)
            .await?
            .ok(),
        "the honest books match"
    );
    // A trade the channel made that we never booked (0.40 CNY, too small for
    // a fee), and its money booked by mistake on another trade: the day's
    // totals still agree, each trade does not.
    let gateway_url: String = sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
        .bind(CARD)
        .fetch_one(world.pool())
        .await?;
    reqwest::Client::new()
        .post(format!("{gateway_url}/channels/{CARD}/payments"))
        .json(&serde_json::json!({"out_trade_no": Uuid::now_v7().to_string(), "amount": "0.40", "currency": "CNY"}))
        .send()
        .await?
        .error_for_status()?;
    let (a, _, _) = world.attempt(first).await?;
    let account = |kind: &'static str, owner: &'static str| {
        let pool = world.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM accounts WHERE owner_kind = $1 AND owner_id = $2 AND currency = 'CNY'",
            )
            .bind(kind)
            .bind(owner)
            .fetch_one(&pool)
            .await
        }
    };
    let clearing = account("external", "clearing:sandbox-card").await?;
    let fees = account("platform", "fees").await?;
    let mut tx = world.pool().begin().await?;
    let entry: i64 = sqlx::query_scalar(
        "INSERT INTO journal_entries (reference, kind, attempt_id) VALUES ('misbooked', 'correction', $1) RETURNING id",
    )
    .bind(a)
    .fetch_one(&mut *tx)
    .await?;
    for (account, amount) in [(clearing, "-0.40"), (fees, "0.40")] {
        sqlx::query("INSERT INTO postings (entry_id, account_id, amount, currency) VALUES ($1, $2, $3, 'CNY')")
            .bind(entry)
            .bind(account)
            .bind(d(amount))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let report = invariants::against_channel_statements(world.pool(), since).await?;
    let failures = report.failures();
    assert!(
        failures.iter().any(|f| f.contains("sandbox-card")),
        "the wrong bookings are seen: {failures:?}"
    );
    // The planted entries cannot be taken back (postings are append-only):
    // this scenario ends here, its books knowingly wrong.
    world.stop().await;
    world.gateway_stop.cancel();
    world.fleet.env.teardown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_notice_is_kept_as_received_and_verifies_again_from_the_stored_bytes()
-> anyhow::Result<()> {
    let mut world = World::new("evidence", |_| {}, Duration::from_millis(200)).await?;
    world.start(&[]).await?;
    let id = world.pay("evidence", "wallet", "tok_success").await?;
    world.reaches(id, "settled").await?;
    // The same notice again, laid out as a channel may lay it out: spacing
    // and key order that re-encoded JSON does not keep.
    let (attempt, _, _) = world.attempt(id).await?;
    let reference: String =
        sqlx::query_scalar("SELECT channel_reference FROM payment_attempts WHERE id = $1")
            .bind(attempt)
            .fetch_one(world.pool())
            .await?;
    let notice = Notice {
        channel: WALLET.into(),
        out_trade_no: attempt.to_string(),
        trade_no: reference,
        status: TradeStatus::Succeeded,
        amount: d("80.00"),
        currency: "CNY".into(),
        reason: None,
        occurred_at: Utc::now(),
    };
    let body = serde_json::to_vec_pretty(&notice)?;
    let timestamp = Utc::now().timestamp();
    let status = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/callbacks/{WALLET}/{id}",
            world.ingress_port()
        ))
        .header("x-sandbox-timestamp", timestamp.to_string())
        .header(
            "x-sandbox-signature",
            sign_notice("wallet-secret", timestamp, &body),
        )
        .body(body.clone())
        .send()
        .await?
        .status();
    assert_eq!(status.as_u16(), 200);

    type Kept = (Value, Option<Vec<u8>>, Option<String>, Option<String>);
    let kept: Vec<Kept> = sqlx::query_as(
        "SELECT payload, raw_body, signed_timestamp, signature FROM integration_log
         WHERE payment_id = $1 AND direction = 'callback' ORDER BY id",
    )
    .bind(id)
    .fetch_all(world.pool())
    .await?;
    assert_eq!(kept.len(), 2, "the gateway's notice and ours");
    for (payload, raw, timestamp, signature) in &kept {
        let (Some(raw), Some(timestamp), Some(signature)) = (raw, timestamp, signature) else {
            panic!("a notice kept without its raw bytes or headers: {payload}");
        };
        let timestamp: i64 = timestamp.parse()?;
        assert!(
            payfleet_common::messages::verify_hex(
                &sign_notice("wallet-secret", timestamp, raw),
                signature
            ),
            "the stored notice verifies again from its stored bytes"
        );
    }
    let (_, raw, _, signature) = &kept[1];
    assert_eq!(raw.as_deref(), Some(body.as_slice()), "kept byte for byte");
    let reencoded = serde_json::to_vec(&kept[1].0)?;
    assert!(
        !payfleet_common::messages::verify_hex(
            &sign_notice("wallet-secret", timestamp, &reencoded),
            signature.as_deref().unwrap_or_default()
        ),
        "re-encoded JSON would not have verified"
    );
    let (code, out, err) = world
        .cli(&["payment", "show", &format!("{SHOP}:evidence")])
        .await?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "signature {}",
            kept[1].3.as_deref().unwrap_or_default()
        )) && out.contains(&format!("timestamp {timestamp}")),
        "`payment show` shows the evidence:\n{out}"
    );
    world.finish().await
}
