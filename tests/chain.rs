//! The payment chain end to end for wallet payments, over the real
//! services: each scenario publishes upstream requests to the ingress
//! exchange, waits for the outcome, and asserts exact statuses, balances,
//! stock, ledger postings and events, then the invariants.

mod fleet;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use chrono::Utc;
use fleet::{Harness, SHOP, SHOP_KEY, WAIT, d};
use lapin::types::FieldTable;
use payfleet_common::{
    PaymentId, Settings, broker,
    messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION},
};
use payfleet_tests::wait_until;
use payfleet_workers::{
    seed::{self, CouponRule, LadderStep},
    stages::order_validation,
};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// One scenario's world: its own database, vhost and Redis prefix, a small
/// catalogue, BI's queue of every event, and the fleet running in this process.
struct Chain {
    fleet: Harness,
}

fleet::on_harness!(Chain);

impl Chain {
    async fn new(tag: &str) -> anyhow::Result<Self> {
        Self::with(tag, |_| {}).await
    }

    async fn with(tag: &str, adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let fleet = Harness::new(tag, false, adjust).await?;
        seed(fleet.pool()).await?;
        // A BI consumer of every event, bound before anything is published.
        fleet.bind_events().await?;
        Ok(Self { fleet })
    }

    /// Waits until `count` webhook deliveries are finished (delivered or
    /// exhausted); then each as (merchant order id, status, attempts).
    async fn finished_deliveries(&self, count: i64) -> anyhow::Result<Vec<(String, String, i32)>> {
        wait_until(WAIT, "the deliveries finished", || async {
            Ok(self.env.scalar_i64("SELECT count(*) FROM webhook_deliveries WHERE status IN ('delivered', 'exhausted')").await? == count)
        })
        .await?;
        Ok(sqlx::query_as(
            "SELECT p.merchant_order_id, d.status, d.attempts FROM webhook_deliveries d JOIN payments p ON p.id = d.payment_id ORDER BY 1",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Stops the fleet, folds the balances, checks every invariant, and
    /// checks every message the fleet put on the wire against the contract.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_and_check().await?;
        assert_emitted_messages_match_contracts(self.pool()).await?;
        self.fleet.env.teardown().await
    }

    /// Starts every stage but `held`, whose messages wait in its queue.
    async fn start_all_but(&mut self, held: &str) -> anyhow::Result<()> {
        let stages: Vec<&str> = STAGES.into_iter().filter(|s| *s != held).collect();
        self.start(&stages).await
    }

    async fn balance(
        &self,
        kind: &str,
        owner: &str,
    ) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
        Ok(sqlx::query_as("SELECT total, available, frozen FROM accounts WHERE owner_kind = $1 AND owner_id = $2 AND currency = 'CNY'")
            .bind(kind)
            .bind(owner)
            .fetch_one(self.pool())
            .await?)
    }

    async fn stock(&self, sku: &str) -> anyhow::Result<(i32, i32)> {
        Ok(
            sqlx::query_as("SELECT available, reserved FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_one(self.pool())
                .await?,
        )
    }
}

/// Every outbox row (each message a stage emitted, as published) validated
/// against `contracts/v1/<type>.schema.json`: the test fails when code and
/// the committed schemas drift.
async fn assert_emitted_messages_match_contracts(pool: &PgPool) -> anyhow::Result<()> {
    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT exchange, COALESCE(message_type, ''), body FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await?;
    let mut validators: std::collections::HashMap<String, jsonschema::Validator> =
        Default::default();
    for (exchange, message_type, body) in rows {
        let name = if exchange == "payfleet.events" {
            "payment.event".to_owned()
        } else {
            message_type.clone()
        };
        if !validators.contains_key(&name) {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../contracts/v1/{name}.schema.json"));
            let schema: Value = serde_json::from_slice(
                &std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )?;
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            validators.insert(name.clone(), validator);
        }
        let instance: Value = serde_json::from_slice(&body)?;
        let errors: Vec<String> = validators[&name]
            .iter_errors(&instance)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "emitted {message_type} does not match {name}.schema.json: {errors:?}\n{instance:#}"
        );
    }
    Ok(())
}

/// The stages in chain order.
const STAGES: [&str; 6] = [
    "order-validation",
    "fund-freeze",
    "channel-call",
    "callback",
    "settlement",
    "notification",
];

/// A cart across three sellers: tea (m1), fan (m2) and ink (m3), 83.33.
const CART: &[(&str, u32)] = &[("tea", 1), ("fan", 1), ("ink", 1)];

/// Two teas (60.00) with FULL50-8: 52.00.
fn coupon_order(order: &str) -> PaymentRequested {
    let mut r = request(order, "alice", &[("tea", 2)], "52.00");
    r.coupon_code = Some("FULL50-8".into());
    r
}

fn request(order: &str, user: &str, items: &[(&str, u32)], expected: &str) -> PaymentRequested {
    PaymentRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: SHOP.into(),
        merchant_order_id: order.into(),
        user_id: user.into(),
        currency: "CNY".into(),
        items: items
            .iter()
            .map(|(sku, quantity)| RequestedItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        coupon_code: None,
        payment_method: "balance".into(),
        payer_token: None,
        expected_amount: d(expected),
        notify_url: None,
        requested_at: Utc::now(),
    }
}

/// Merchants m1 (fee 1 %), m2 (fee 0.5 %), m3 (no fee); users alice (1000.00),
/// bob (5.00) and mallory (blocked); products and coupons of every kind.
async fn seed(pool: &PgPool) -> anyhow::Result<()> {
    let merchant = |id, name, key, fee| seed::merchant(id, key).name(name).fee_rate(d(fee));
    let user = |id, name, blocked, amount| {
        seed::user(id)
            .name(name)
            .blocked(blocked)
            .wallet("CNY", d(amount), &format!("seed:{id}"))
    };
    let product = |sku, seller, name, warehouse, price, stock| {
        seed::product(sku, seller, d(price))
            .name(name)
            .warehouse(warehouse)
            .stock(stock)
    };
    let coupon = |code, kind| seed::coupon(code, kind).limits(100, 5);
    seed::Catalogue {
        merchants: vec![
            merchant(SHOP, "Shop", SHOP_KEY, "0"),
            merchant("m1", "Merchant one", "k1", "0.0100"),
            merchant("m2", "Merchant two", "k2", "0.0050"),
            merchant("m3", "Merchant three", "k3", "0"),
        ],
        users: vec![
            user("alice", "Alice", false, "1000.00"),
            user("bob", "Bob", false, "5.00"),
            user("mallory", "Mallory", true, "1000.00"),
        ],
        products: vec![
            product("tea", "m1", "Tea", "east", "30.00", 100),
            product("cup", "m1", "Cup", "east", "10.00", 100),
            product("fan", "m2", "Fan", "west", "20.00", 100),
            product("ink", "m3", "Ink", "north", "33.33", 100),
            product("pen", "m3", "Pen", "north", "33.33", 100),
            product("cap", "m3", "Cap", "north", "33.34", 100),
            product("rare", "m2", "Rare seal", "west", "50.00", 1),
            product("gold", "m1", "Gold bar", "east", "600.00", 10),
        ],
        coupons: vec![
            coupon(
                "FULL50-8",
                CouponRule::FullReduction {
                    threshold: d("50"),
                    amount_off: d("8"),
                },
            ),
            coupon(
                "PCT15",
                CouponRule::Percentage {
                    percent_off: d("15"),
                    cap: Some(d("9.00")),
                },
            ),
            coupon(
                "LADDER",
                CouponRule::Ladder(vec![
                    LadderStep {
                        threshold: d("40.00"),
                        amount_off: d("4.00"),
                    },
                    LadderStep {
                        threshold: d("90.00"),
                        amount_off: d("10.00"),
                    },
                ]),
            ),
            coupon(
                "OLD",
                CouponRule::FullReduction {
                    threshold: d("10"),
                    amount_off: d("1"),
                },
            )
            .valid_days(-2, -1),
        ],
        channels: Vec::new(),
    }
    .seed(pool)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_payment_is_settled_with_every_cent_accounted_for() -> anyhow::Result<()> {
    let mut chain = Chain::new("balance").await?;
    chain.start(&[]).await?;
    chain
        .publish(&request("o-1", "alice", &[("tea", 2), ("cup", 1)], "70.00"))
        .await?;
    assert_eq!(chain.outcome("o-1").await?.0, "settled");
    fleet::roll_up_all(chain.pool()).await?;

    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("930.00"), d("930.00"), d("0.00"))
    );
    // m1 sells both lines: 70.00 less its 1 % fee
    assert_eq!(
        chain.balance("merchant", "m1").await?,
        (d("69.30"), d("69.30"), d("0.00"))
    );
    assert_eq!(chain.balance("platform", "fees").await?.0, d("0.70"));
    assert_eq!(chain.stock("tea").await?, (98, 0));
    assert_eq!(chain.stock("cup").await?, (99, 0));
    let postings: Vec<(String, Decimal)> = sqlx::query_as(
        "SELECT a.owner_id, p.amount FROM postings p JOIN accounts a ON a.id = p.account_id
         JOIN journal_entries j ON j.id = p.entry_id WHERE j.kind = 'payment' ORDER BY p.amount",
    )
    .fetch_all(chain.pool())
    .await?;
    assert_eq!(
        postings,
        vec![
            ("alice".into(), d("-70.00")),
            ("fees".into(), d("0.70")),
            ("m1".into(), d("69.30"))
        ]
    );
    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT s.kind FROM account_statements s JOIN accounts a ON a.id = s.account_id WHERE a.owner_id = 'alice' ORDER BY s.id",
    )
    .fetch_all(chain.pool())
    .await?;
    assert_eq!(statements, vec!["top_up", "freeze", "debit"]);
    let (order_status, attempt_status): (String, String) = sqlx::query_as(
        "SELECT o.status, a.status FROM orders o JOIN payment_attempts a ON a.payment_id = o.payment_id",
    )
    .fetch_one(chain.pool())
    .await?;
    assert_eq!(
        (order_status.as_str(), attempt_status.as_str()),
        ("paid", "succeeded")
    );
    let logged: i64 = chain
        .env
        .scalar_i64("SELECT count(*) FROM integration_log")
        .await?;
    assert_eq!(logged, 2, "the request and the response");

    let events = chain.events().await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "payment.succeeded");
    assert_eq!(events[0]["amount"], "70.00");
    assert_eq!(events[0]["currency"], "CNY");
    assert_eq!(events[0]["sub_orders"][0]["fee"], "0.70");
    chain.finish().await
}

/// A wallet charge has nobody outside to wait for: channel-call records
/// its intent, the wallet's answer and the result in one transaction, and
/// wallet charges arriving together share a batch's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_charges_are_one_transaction_each_and_share_batches() -> anyhow::Result<()> {
    let mut chain = Chain::new("walletbatch").await?;
    let orders: Vec<String> = (0..12).map(|i| format!("w-{i}")).collect();
    for order in &orders {
        chain
            .publish(&request(order, "alice", &[("cup", 1)], "10.00"))
            .await?;
    }
    chain.start(&[]).await?;
    for order in &orders {
        assert_eq!(chain.outcome(order).await?.0, "settled");
    }
    // The transaction that wrote each attempt's request and response logs.
    let written_in: Vec<(String, String)> = sqlx::query_as(
        "SELECT attempt_id::text, xmin::text FROM integration_log
         WHERE channel = 'balance' AND direction IN ('request', 'response')",
    )
    .fetch_all(chain.pool())
    .await?;
    let mut by_attempt: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (attempt, transaction) in written_in {
        by_attempt.entry(attempt).or_default().insert(transaction);
    }
    assert_eq!(by_attempt.len(), 12, "one wallet attempt per payment");
    assert!(
        by_attempt
            .values()
            .all(|transactions| transactions.len() == 1),
        "each wallet charge's request and response in one transaction: {by_attempt:?}"
    );
    // Rows written in savepoints carry the savepoint's own xid; which
    // charges shared a transaction shows in the messages channel-call
    // emitted for callback: a transaction's outbox rows share its start time.
    let ids: Vec<String> = orders
        .iter()
        .map(|order| order_validation::payment_id(SHOP, order).to_string())
        .collect();
    let (results, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT created_at) FROM outbox
         WHERE routing_key = 'callback' AND correlation_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(chain.pool())
    .await?;
    assert_eq!(results, 12, "one result for callback per charge");
    assert!(
        transactions < results,
        "channel-call took wallet charges that arrived together in one transaction: {results} results from {transactions} transactions"
    );
    fleet::roll_up_all(chain.pool()).await?;
    assert_eq!(
        chain.balance("user", "alice").await?.0,
        d("880.00"),
        "twelve 10.00 charges taken once each"
    );
    chain.finish().await
}

/// Paid wallet purchases that reach settlement together are confirmed
/// set-based, several with one statement per table, and their books are
/// what one Confirm at a time writes. The first burst meets merchants with
/// no account yet (its legs open them); the second is confirmed together,
/// with several payments of one wallet in one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_wallet_purchases_confirmed_together_book_as_one_at_a_time() -> anyhow::Result<()> {
    let mut chain = Chain::new("settletogether").await?;
    let bursts = [
        vec![
            request("w-0", "alice", CART, "83.33"),
            request("w-1", "alice", &[("cup", 1)], "10.00"),
        ],
        vec![
            request("p-0", "alice", &[("cup", 1)], "10.00"),
            request("p-1", "alice", &[("cup", 1)], "10.00"),
            request("p-2", "alice", &[("cup", 1)], "10.00"),
            request("p-3", "alice", &[("cup", 1)], "10.00"),
            request("p-4", "alice", &[("fan", 1)], "20.00"),
            request("p-5", "alice", &[("fan", 1)], "20.00"),
            request("p-6", "alice", CART, "83.33"),
            request("p-7", "alice", CART, "83.33"),
            coupon_order("p-8"),
        ],
    ];
    // Each burst is queued whole before the fleet starts, so that it
    // reaches settlement together.
    for burst in &bursts {
        for r in burst {
            chain.publish(r).await?;
        }
        chain.start(&[]).await?;
        for r in burst {
            assert_eq!(chain.outcome(&r.merchant_order_id).await?.0, "settled");
        }
        chain.fleet.stop().await;
    }
    let alice = wallet_account(&chain, "alice").await?;
    assert_some_written_together(
        &chain,
        &format!("account_statements WHERE account_id = {alice} AND kind = 'debit'"),
        "alice's debits",
    )
    .await?;

    fleet::roll_up_all(chain.pool()).await?;
    // 93.33 in the first burst, 298.66 in the second.
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("608.01"), d("608.01"), d("0.00"))
    );
    // Each seller gains its sub-orders less its fee; the platform the fees.
    assert_sellers_and_fees(
        &chain,
        &[("m1", "190.08"), ("m2", "99.50"), ("m3", "99.99")],
        "2.42",
    )
    .await?;
    for (sku, sold) in [("tea", 5), ("cup", 5), ("fan", 5), ("ink", 3)] {
        assert_eq!(chain.stock(sku).await?, (100 - sold, 0), "{sku}");
    }
    let unfinished: i64 = chain
        .env
        .scalar_i64(
            "SELECT (SELECT count(*) FROM orders WHERE status <> 'paid')
                  + (SELECT count(*) FROM transaction_details WHERE status <> 'paid')
                  + (SELECT count(*) FROM reservations WHERE status <> 'confirmed')
                  + (SELECT count(*) FROM coupon_redemptions WHERE status <> 'consumed')",
        )
        .await?;
    assert_eq!(
        unfinished, 0,
        "every order, sub-order, freeze and coupon use finished"
    );
    assert_statement_replays(chain.pool(), alice).await?;
    chain.finish().await
}

/// A stock bucket another transaction holds leaves only its own payment
/// to wait: the rest of the batch is confirmed together without waiting,
/// and the held one is confirmed alone once the bucket is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_held_elsewhere_keeps_only_its_payment_out_of_the_batch() -> anyhow::Result<()> {
    // A long wait for more, so that the four queued messages make one batch.
    let mut chain = Chain::with("settleheld", |s| {
        s.batch_wait_ms.insert("settlement".into(), 300);
    })
    .await?;
    let burst = [
        request("h-0", "alice", &[("cup", 1)], "10.00"),
        request("h-1", "alice", &[("cup", 1)], "10.00"),
        request("h-2", "alice", &[("fan", 1)], "20.00"),
        request("h-3", "alice", &[("ink", 1)], "33.33"),
    ];
    for r in &burst {
        chain.publish(r).await?;
    }
    // Everything but settlement: the four wait there, paid.
    chain.start_all_but("settlement").await?;
    wait_until(WAIT, "the four paid", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM payments WHERE status = 'paid'")
            .await?
            == 4)
    })
    .await?;
    chain.fleet.stop().await;
    let mut holder = chain.pool().begin().await?;
    sqlx::query("SELECT 1 FROM stock_buckets WHERE sku = 'ink' FOR UPDATE")
        .execute(&mut *holder)
        .await?;
    chain.start(&["settlement", "notification"]).await?;
    for r in &burst[..3] {
        assert_eq!(chain.outcome(&r.merchant_order_id).await?.0, "settled");
    }
    let held = order_validation::payment_id(SHOP, "h-3");
    assert_eq!(
        chain
            .status(held)
            .await?
            .map(|(status, _)| status)
            .as_deref(),
        Some("paid"),
        "the payment of the held bucket waits"
    );
    holder.commit().await?;
    assert_eq!(chain.outcome("h-3").await?.0, "settled");

    let alice = wallet_account(&chain, "alice").await?;
    // Which statement wrote each debit line: the three together, the held one alone.
    let written_by: Vec<(PaymentId, String)> = sqlx::query_as(
        "SELECT payment_id, xmin::text FROM account_statements
         WHERE account_id = $1 AND kind = 'debit' ORDER BY id",
    )
    .bind(alice)
    .fetch_all(chain.pool())
    .await?;
    let held_by: Vec<&String> = written_by
        .iter()
        .filter(|(id, _)| *id == held)
        .map(|(_, xmin)| xmin)
        .collect();
    let others: BTreeSet<&String> = written_by
        .iter()
        .filter(|(id, _)| *id != held)
        .map(|(_, xmin)| xmin)
        .collect();
    assert_eq!(written_by.len(), 4);
    assert_eq!(others.len(), 1, "the other three together: {written_by:?}");
    assert!(
        !others.contains(held_by[0]),
        "the held one alone: {written_by:?}"
    );
    fleet::roll_up_all(chain.pool()).await?;
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("926.67"), d("926.67"), d("0.00"))
    );
    assert_sellers_and_fees(
        &chain,
        &[("m1", "19.80"), ("m2", "19.90"), ("m3", "33.33")],
        "0.30",
    )
    .await?;
    for (sku, sold) in [("cup", 2), ("fan", 1), ("ink", 1)] {
        assert_eq!(chain.stock(sku).await?, (100 - sold, 0), "{sku}");
    }
    assert_statement_replays(chain.pool(), alice).await?;
    chain.finish().await
}

/// Wallet purchases that reach fund-freeze together are tried
/// set-based: their freezes, stock and details written with one statement
/// for all, and their books what one Try at a time writes. A shortfall, a
/// coupon and a SKU whose units no one bucket holds for the batch are
/// tried alone, each with its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_purchases_tried_together_reserve_as_one_at_a_time() -> anyhow::Result<()> {
    // A long wait for more, so that the queued messages make one batch
    // however busy the machine is.
    let mut chain = Chain::with("trytogether", |s| {
        s.batch_wait_ms.insert("fund-freeze".into(), 300);
    })
    .await?;
    let requests = [
        request("t-0", "alice", &[("cup", 1)], "10.00"),
        request("t-1", "alice", &[("cup", 2)], "20.00"),
        request("t-2", "alice", CART, "83.33"),
        request("t-3", "alice", CART, "83.33"),
        request("t-4", "alice", &[("fan", 1)], "20.00"),
        // bob has 5.00
        request("t-short", "bob", &[("cup", 1)], "10.00"),
        coupon_order("t-coupon"),
        // one seal in stock, two asked in the batch
        request("t-rare-0", "alice", &[("rare", 1)], "50.00"),
        request("t-rare-1", "alice", &[("rare", 1)], "50.00"),
    ];
    // fund-freeze is not running: the validated payments queue up for it
    chain.start_all_but("fund-freeze").await?;
    for r in &requests {
        chain.publish(r).await?;
    }
    wait_until(WAIT, "every payment validated", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM payments WHERE status = 'validated'")
            .await?
            == requests.len() as i64)
    })
    .await?;
    chain.fleet.stop().await;
    chain.start(&[]).await?;

    for order in ["t-0", "t-1", "t-2", "t-3", "t-4", "t-coupon"] {
        assert_eq!(chain.outcome(order).await?.0, "settled", "{order}");
    }
    let (status, reason) = chain.outcome("t-short").await?;
    assert_eq!(status, "failed");
    assert!(
        reason
            .unwrap_or_default()
            .starts_with("insufficient_balance")
    );
    let mut rare = Vec::new();
    for order in ["t-rare-0", "t-rare-1"] {
        let (status, reason) = chain.outcome(order).await?;
        rare.push(format!("{status} {}", reason.unwrap_or_default()));
    }
    rare.sort();
    assert_eq!(rare.len(), 2);
    assert!(
        rare[0].starts_with("failed out_of_stock") && rare[1] == "settled ",
        "one seal sold, the other out of stock: {rare:?}"
    );

    let alice = wallet_account(&chain, "alice").await?;
    assert_some_written_together(
        &chain,
        &format!("account_statements WHERE account_id = {alice} AND kind = 'freeze'"),
        "alice's freezes",
    )
    .await?;
    fleet::roll_up_all(chain.pool()).await?;
    // 10 + 20 + 83.33 * 2 + 20 + 52 (60 less 8) + 50
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("681.34"), d("681.34"), d("0.00"))
    );
    assert_eq!(
        chain.balance("user", "bob").await?,
        (d("5.00"), d("5.00"), d("0.00"))
    );
    for (sku, sold) in [("cup", 3), ("tea", 4), ("fan", 3), ("ink", 2)] {
        assert_eq!(chain.stock(sku).await?, (100 - sold, 0), "{sku}");
    }
    assert_eq!(chain.stock("rare").await?, (0, 0));
    assert_statement_replays(chain.pool(), alice).await?;
    chain.finish().await
}

/// Wallet captures that reach callback together are resolved set-based:
/// their attempts succeed and their payments move to `paid` with one
/// statement for all, and the books are what one at a time writes. A
/// misdirected result and a duplicate queued with them still get their
/// own outcomes: dead-lettered, and stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_successes_resolved_together_move_as_one_at_a_time() -> anyhow::Result<()> {
    // A long wait for more, so that the queued messages make one batch
    // however busy the machine is.
    let mut chain = Chain::with("walletresolve", |s| {
        s.batch_wait_ms.insert("callback".into(), 300);
    })
    .await?;
    let orders: Vec<String> = (0..10).map(|i| format!("r-{i}")).collect();
    let ids: Vec<String> = orders
        .iter()
        .map(|order| order_validation::payment_id(SHOP, order).to_string())
        .collect();
    // callback is not running: the wallet's results queue up for it
    chain.start_all_but("callback").await?;
    for order in &orders {
        chain
            .publish(&request(order, "alice", &[("cup", 1)], "10.00"))
            .await?;
    }
    wait_until(WAIT, "every result for callback sent", || async {
        Ok(chain
            .env
            .scalar_i64(
                "SELECT count(*) FROM outbox WHERE routing_key = 'callback' AND sent_at IS NOT NULL",
            )
            .await?
            == 10)
    })
    .await?;
    chain.fleet.stop().await;

    // r-0's payment named with r-1's attempt, and a second copy of r-2's result
    let (misdirected, duplicate) = (&ids[0], &ids[2]);
    let other_attempt: Uuid =
        sqlx::query_scalar("SELECT id FROM payment_attempts WHERE payment_id = $1::uuid")
            .bind(&ids[1])
            .fetch_one(chain.pool())
            .await?;
    let refused = messages::ChannelResult {
        schema_version: SCHEMA_VERSION,
        payment_id: misdirected.parse()?,
        attempt_id: other_attempt.into(),
        channel: "balance".into(),
        status: messages::ChannelStatus::Succeeded,
        amount: d("10.00"),
        currency: "CNY".into(),
        channel_reference: None,
        reason: None,
        reported_at: Utc::now(),
    };
    let copied: Vec<u8> = sqlx::query_scalar(
        "SELECT body FROM outbox WHERE routing_key = 'callback' AND correlation_id = $1",
    )
    .bind(duplicate)
    .fetch_one(chain.pool())
    .await?;
    let stages = chain.env.topology.exchanges().stages.clone();
    for (payment, body) in [
        (misdirected, serde_json::to_vec(&refused)?),
        (duplicate, copied),
    ] {
        let props = broker::properties(
            &Uuid::now_v7().to_string(),
            Some(payment),
            Some(messages::kind::CHANNEL_RESULT),
        );
        chain
            .env
            .publish_raw(&stages, "callback", &body, props)
            .await?;
    }

    chain.start(&[]).await?;
    for order in &orders {
        assert_eq!(chain.outcome(order).await?.0, "settled");
    }
    wait_until(WAIT, "the misdirected result dead-lettered", || async {
        Ok(chain.env.dead_letters().await?.iter().any(|dl| {
            dl.stage == "callback"
                && dl
                    .error_message
                    .contains(&format!("names attempt {other_attempt}"))
        }))
    })
    .await?;
    let (succeeded, resolved_at): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(resolved_at)
         FROM payment_attempts WHERE payment_id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .fetch_one(chain.pool())
    .await?;
    assert_eq!(
        (succeeded, resolved_at),
        (10, 10),
        "every attempt succeeded, once"
    );
    assert_some_written_together(
        &chain,
        &format!(
            "payment_attempts WHERE payment_id IN ('{}')",
            ids.join("', '")
        ),
        "the attempts",
    )
    .await?;
    let told_settlement = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM outbox WHERE routing_key = 'settlement' AND correlation_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(chain.pool())
    .await?;
    assert_eq!(
        told_settlement, 10,
        "settlement is told once per payment, the duplicate is stale"
    );

    fleet::roll_up_all(chain.pool()).await?;
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("900.00"), d("900.00"), d("0.00")),
        "ten 10.00 captures, each once"
    );
    assert_eq!(chain.stock("cup").await?, (90, 0));
    let alice = wallet_account(&chain, "alice").await?;
    assert_statement_replays(chain.pool(), alice).await?;
    chain.finish().await
}

/// Each seller gained its sub-orders less its fee, and the platform the fees.
async fn assert_sellers_and_fees(
    chain: &Chain,
    sellers: &[(&str, &str)],
    fees: &str,
) -> anyhow::Result<()> {
    for (seller, gained) in sellers {
        assert_eq!(
            chain.balance("merchant", seller).await?.0,
            d(gained),
            "{seller}"
        );
    }
    assert_eq!(chain.balance("platform", "fees").await?.0, d(fees));
    Ok(())
}

/// Some of the rows `from_where` (a table and its condition) were written
/// by one statement for several payments: such rows share the transaction
/// id of the savepoint they were written in, while one message at a time
/// each has a savepoint, or a transaction, of its own.
async fn assert_some_written_together(
    chain: &Chain,
    from_where: &str,
    what: &str,
) -> anyhow::Result<()> {
    let shared = chain
        .env
        .scalar_i64(&format!(
            "SELECT count(*) FROM (SELECT xmin::text FROM {from_where}
             GROUP BY 1 HAVING count(*) > 1) shared"
        ))
        .await?;
    assert!(shared >= 1, "some of {what} were written by one statement");
    Ok(())
}

/// The id of `user`'s wallet account.
async fn wallet_account(chain: &Chain, user: &str) -> anyhow::Result<i64> {
    chain
        .env
        .scalar_i64(&format!(
            "SELECT id FROM accounts WHERE owner_kind = 'user' AND owner_id = '{user}'"
        ))
        .await
}

/// A wallet's statement, replayed line by line from (0, 0), shows at each
/// line the balances after that line's movement, and ends at the wallet's.
async fn assert_statement_replays(pool: &PgPool, account: i64) -> anyhow::Result<()> {
    let lines: Vec<(String, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "SELECT kind, amount, available_after, frozen_after FROM account_statements
         WHERE account_id = $1 ORDER BY id",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    let (mut available, mut frozen) = (Decimal::ZERO, Decimal::ZERO);
    for (kind, amount, available_after, frozen_after) in &lines {
        match kind.as_str() {
            "top_up" | "credit" => available += amount,
            "freeze" => (available, frozen) = (available - amount, frozen + amount),
            "unfreeze" => (available, frozen) = (available + amount, frozen - amount),
            "debit" => frozen -= amount,
            other => anyhow::bail!("unknown statement line kind {other}"),
        }
        assert_eq!(
            (available, frozen),
            (*available_after, *frozen_after),
            "the {kind} of {amount} in {lines:?}"
        );
    }
    let (wallet_available, wallet_frozen): (Decimal, Decimal) =
        sqlx::query_as("SELECT available, frozen FROM accounts WHERE id = $1")
            .bind(account)
            .fetch_one(pool)
            .await?;
    assert_eq!((available, frozen), (wallet_available, wallet_frozen));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_failures_and_rejections_are_results_with_reasons() -> anyhow::Result<()> {
    let mut chain = Chain::new("refusals").await?;
    chain.start(&[]).await?;
    // insufficient balance: bob has 5.00
    chain
        .publish(&request("poor", "bob", &[("tea", 1)], "30.00"))
        .await?;
    // out of stock: one rare seal left
    chain
        .publish(&request("oos", "alice", &[("rare", 2)], "100.00"))
        .await?;
    // price mismatch: the client thinks tea is cheaper
    chain
        .publish(&request("cheap", "alice", &[("tea", 1)], "29.00"))
        .await?;
    // bad signature
    let forged = request("forged", "alice", &[("tea", 1)], "30.00");
    let body = serde_json::to_vec(&forged)?;
    chain
        .publish_raw(&body, Some(&messages::sign("not the key", &body)))
        .await?;
    // risk: a blocked user, and an amount past the challenge limit (configured below)
    chain
        .publish(&request("blocked", "mallory", &[("cup", 1)], "10.00"))
        .await?;

    let (status, reason) = chain.outcome("poor").await?;
    assert_eq!(status, "failed");
    assert!(reason.unwrap().starts_with("insufficient_balance"));
    let (status, reason) = chain.outcome("oos").await?;
    assert_eq!(status, "rejected");
    assert!(reason.unwrap().starts_with("out_of_stock"));
    let (status, reason) = chain.outcome("cheap").await?;
    assert_eq!(status, "rejected");
    assert!(reason.unwrap().starts_with("price_mismatch"));
    let (status, reason) = chain.outcome("blocked").await?;
    assert_eq!(status, "rejected");
    assert!(reason.unwrap().starts_with("risk_blocked"));
    wait_until(WAIT, "the forged request refused", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM request_rejections WHERE reason = 'bad_signature'")
            .await?
            == 1)
    })
    .await?;
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM payments WHERE merchant_order_id = 'forged'")
            .await?,
        0,
        "a forged request takes no order id"
    );

    // Nothing was reserved or moved by any of them.
    assert_eq!(
        chain.balance("user", "bob").await?,
        (d("5.00"), d("5.00"), d("0.00"))
    );
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("1000.00"), d("0.00"))
    );
    assert_eq!(chain.stock("rare").await?, (1, 0));
    assert_eq!(chain.env.scalar_i64("SELECT count(*) FROM postings p JOIN journal_entries j ON j.id = p.entry_id WHERE j.kind = 'payment'").await?, 0);
    let events = chain.events().await?;
    let mut types: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["merchant_order_id"].as_str().unwrap_or("").to_owned(),
                e["event_type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            ("blocked".into(), "payment.rejected".into()),
            ("cheap".into(), "payment.rejected".into()),
            ("forged".into(), "payment.rejected".into()),
            ("oos".into(), "payment.rejected".into()),
            ("poor".into(), "payment.failed".into()),
        ]
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_amount_is_challenged() -> anyhow::Result<()> {
    let mut chain = Chain::with("challenge", |s| {
        s.risk_challenge_amount.insert("CNY".into(), 500);
        s.risk_block_amount.insert("CNY".into(), 5_000);
    })
    .await?;
    chain.start(&[]).await?;
    chain
        .publish(&request("big", "alice", &[("gold", 1)], "600.00"))
        .await?;
    let (status, reason) = chain.outcome("big").await?;
    assert_eq!(status, "challenged");
    assert!(reason.unwrap().contains("amount_at_least_500"));
    let decision: String = sqlx::query_scalar("SELECT risk_decision FROM payments")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(decision, "challenge");
    assert_eq!(chain.balance("user", "alice").await?.1, d("1000.00"));
    assert_eq!(chain.events().await?[0]["event_type"], "payment.rejected");
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_thresholds_follow_the_payments_currency() -> anyhow::Result<()> {
    // Default thresholds: the same 3,000 is small in CNY and large in USD.
    let mut chain = Chain::new("riskcurrency").await?;
    let usd_product = |sku, name, price| {
        seed::product(sku, "m1", d(price))
            .name(name)
            .warehouse("east")
            .currency("USD")
            .stock(5)
    };
    seed::Catalogue {
        products: vec![
            usd_product("ring", "Ring", "8000.00"),
            usd_product("watch", "Watch", "3000.00"),
            usd_product("mug", "Mug", "12.00"),
        ],
        users: vec![
            seed::user("alice")
                .wallet("USD", d("20000.00"), "seed:alice:usd")
                .wallet("CNY", d("5000.00"), "seed:alice:more"),
        ],
        ..Default::default()
    }
    .seed(chain.pool())
    .await?;
    chain.start(&[]).await?;

    let usd = |order: &str, sku: &str, expected: &str| {
        let mut r = request(order, "alice", &[(sku, 1)], expected);
        r.currency = "USD".into();
        r
    };
    chain.publish(&usd("usd-8000", "ring", "8000.00")).await?;
    chain.publish(&usd("usd-3000", "watch", "3000.00")).await?;
    chain.publish(&usd("usd-12", "mug", "12.00")).await?;
    chain
        .publish(&request("cny-3000", "alice", &[("gold", 5)], "3000.00"))
        .await?;

    let (status, reason) = chain.outcome("usd-8000").await?;
    assert_eq!(status, "rejected", "{reason:?}");
    assert!(
        reason.as_deref().unwrap_or("").starts_with("risk_blocked"),
        "{reason:?}"
    );
    let (status, reason) = chain.outcome("usd-3000").await?;
    assert_eq!(status, "challenged", "{reason:?}");
    assert_eq!(chain.outcome("usd-12").await?.0, "settled");
    assert_eq!(
        chain.outcome("cny-3000").await?.0,
        "settled",
        "3,000 CNY is below the CNY thresholds"
    );
    let usd_wallet: Decimal = sqlx::query_scalar(
        "SELECT total FROM accounts WHERE owner_kind = 'user' AND owner_id = 'alice' AND currency = 'USD'",
    )
    .fetch_one(chain.pool())
    .await?;
    assert_eq!(usd_wallet, d("19988.00"));
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coupon_kind_discounts_and_allocates_exactly() -> anyhow::Result<()> {
    let mut chain = Chain::new("coupons").await?;
    chain.start(&[]).await?;
    // full reduction: 60.00 ≥ 50 → 8.00 off
    let mut full = request("full", "alice", &[("tea", 2)], "52.00");
    full.coupon_code = Some("FULL50-8".into());
    // percentage with a cap: 15 % of 100.00 = 15.00, capped at 9.00 → split over three lines with a remainder
    let mut pct = request(
        "pct",
        "alice",
        &[("ink", 1), ("pen", 1), ("cap", 1)],
        "91.00",
    );
    pct.coupon_code = Some("PCT15".into());
    // ladder: 100.00 reaches the 90 step → 10.00 off, over three lines → 3.33 / 3.33 / 3.34
    let mut ladder = request(
        "ladder",
        "alice",
        &[("ink", 1), ("pen", 1), ("cap", 1)],
        "90.00",
    );
    ladder.coupon_code = Some("LADDER".into());
    // an expired coupon is a rejection
    let mut old = request("old", "alice", &[("tea", 1)], "29.00");
    old.coupon_code = Some("OLD".into());
    for r in [&full, &pct, &ladder, &old] {
        chain.publish(r).await?;
    }
    assert_eq!(chain.outcome("full").await?.0, "settled");
    assert_eq!(chain.outcome("pct").await?.0, "settled");
    assert_eq!(chain.outcome("ladder").await?.0, "settled");
    let (status, reason) = chain.outcome("old").await?;
    assert_eq!(status, "rejected");
    assert!(reason.unwrap().starts_with("coupon_expired"));

    let discounts = |order: &'static str| {
        let pool = chain.pool().clone();
        async move {
            let rows: Vec<(String, Decimal)> = sqlx::query_as(
                "SELECT d.sku, d.discount_amount FROM order_details d JOIN orders o ON o.payment_id = d.payment_id
                 WHERE o.merchant_order_id = $1 ORDER BY d.sku",
            )
            .bind(order)
            .fetch_all(&pool)
            .await?;
            anyhow::Ok(rows)
        }
    };
    assert_eq!(discounts("full").await?, vec![("tea".into(), d("8.00"))]);
    let pct_parts = discounts("pct").await?;
    assert_eq!(pct_parts.iter().map(|r| r.1).sum::<Decimal>(), d("9.00"));
    assert_eq!(
        pct_parts,
        vec![
            ("cap".into(), d("3.00")),
            ("ink".into(), d("3.00")),
            ("pen".into(), d("3.00"))
        ]
    );
    let ladder_parts = discounts("ladder").await?;
    assert_eq!(
        ladder_parts.iter().map(|r| r.1).sum::<Decimal>(),
        d("10.00")
    );
    assert_eq!(
        ladder_parts,
        vec![
            ("cap".into(), d("3.34")),
            ("ink".into(), d("3.33")),
            ("pen".into(), d("3.33"))
        ]
    );

    let uses: Vec<(String, i32)> = sqlx::query_as("SELECT code, used FROM coupons ORDER BY code")
        .fetch_all(chain.pool())
        .await?;
    assert_eq!(
        uses,
        vec![
            ("FULL50-8".into(), 1),
            ("LADDER".into(), 1),
            ("OLD".into(), 0),
            ("PCT15".into(), 1)
        ]
    );
    let consumed = chain
        .env
        .scalar_i64("SELECT count(*) FROM coupon_redemptions WHERE status = 'consumed'")
        .await?;
    assert_eq!(consumed, 3);
    assert_eq!(
        chain.balance("user", "alice").await?.0,
        d("1000.00") - d("52.00") - d("91.00") - d("90.00")
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_across_three_merchants_splits_and_pays_each_less_its_fee() -> anyhow::Result<()> {
    let mut chain = Chain::new("split").await?;
    chain.start(&[]).await?;
    chain
        .publish(&request(
            "cart",
            "alice",
            &[("tea", 1), ("fan", 2), ("ink", 3)],
            "169.99",
        ))
        .await?;
    assert_eq!(chain.outcome("cart").await?.0, "settled");
    fleet::roll_up_all(chain.pool()).await?;
    let subs: Vec<(String, String, Decimal, Decimal)> =
        sqlx::query_as("SELECT seller_id, warehouse, payable_amount, fee_amount FROM sub_orders ORDER BY seller_id").fetch_all(chain.pool()).await?;
    assert_eq!(
        subs,
        vec![
            ("m1".into(), "east".into(), d("30.00"), d("0.30")),
            ("m2".into(), "west".into(), d("40.00"), d("0.20")),
            ("m3".into(), "north".into(), d("99.99"), d("0.00")),
        ]
    );
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM transaction_details WHERE status = 'paid'")
            .await?,
        3
    );
    assert_eq!(chain.balance("merchant", "m1").await?.0, d("29.70"));
    assert_eq!(chain.balance("merchant", "m2").await?.0, d("39.80"));
    assert_eq!(chain.balance("merchant", "m3").await?.0, d("99.99"));
    assert_eq!(chain.balance("platform", "fees").await?.0, d("0.50"));
    assert_eq!(chain.balance("user", "alice").await?.0, d("830.01"));
    let events = chain.events().await?;
    assert_eq!(events[0]["sub_orders"].as_array().map(Vec::len), Some(3));
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_publishes_of_one_order_make_one_payment_and_other_content_conflicts()
-> anyhow::Result<()> {
    let mut chain = Chain::new("idem").await?;
    chain.start(&[]).await?;
    let order = request("same", "alice", &[("cup", 3)], "30.00");
    let publishes = (0..5).map(|_| chain.publish(&order));
    for result in futures_util::future::join_all(publishes).await {
        result?;
    }
    assert_eq!(chain.outcome("same").await?.0, "settled");
    let mut other = order.clone();
    other.items[0].quantity = 4;
    other.expected_amount = d("40.00");
    chain.publish(&other).await?;
    wait_until(WAIT, "the conflicting request refused", || async {
        Ok(chain
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections WHERE reason = 'idempotency_conflict'",
            )
            .await?
            == 1)
    })
    .await?;
    chain.env.wait_drained(WAIT).await?;
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM payments")
            .await?,
        1
    );
    assert_eq!(
        chain.balance("user", "alice").await?.0,
        d("970.00"),
        "charged once"
    );
    assert_eq!(chain.stock("cup").await?, (97, 0));
    let events = chain.events().await?;
    let succeeded = events
        .iter()
        .filter(|e| e["event_type"] == "payment.succeeded")
        .count();
    let rejected = events
        .iter()
        .filter(|e| e["event_type"] == "payment.rejected")
        .count();
    assert_eq!((succeeded, rejected), (1, 1));
    let first_still_settled: String = sqlx::query_scalar("SELECT status FROM payments")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(first_still_settled, "settled");
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_payment_is_cancelled_with_everything_released() -> anyhow::Result<()> {
    let mut chain = Chain::with("expiry", |s| {
        s.payment_ttl = std::time::Duration::from_millis(1_500)
    })
    .await?;
    // No channel-call: the payment stays frozen until it expires.
    chain
        .start(&[
            "order-validation",
            "fund-freeze",
            "settlement",
            "notification",
        ])
        .await?;
    let mut r = request("late", "alice", &[("tea", 2)], "52.00");
    r.coupon_code = Some("FULL50-8".into());
    chain.publish(&r).await?;
    wait_until(WAIT, "the payment frozen", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM payments WHERE status = 'frozen'")
            .await?
            == 1)
    })
    .await?;
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("948.00"), d("52.00"))
    );
    assert_eq!(chain.stock("tea").await?, (98, 2));
    let (status, reason) = chain.outcome("late").await?;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("cancelled", Some("expired"))
    );
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("1000.00"), d("0.00"))
    );
    assert_eq!(chain.stock("tea").await?, (100, 0));
    let (used, redemption): (i32, String) =
        sqlx::query_as("SELECT c.used, r.status FROM coupons c JOIN coupon_redemptions r ON r.coupon_code = c.code").fetch_one(chain.pool()).await?;
    assert_eq!((used, redemption.as_str()), (0, "released"));
    let order: String = sqlx::query_scalar("SELECT status FROM orders")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(order, "closed");
    assert_eq!(chain.events().await?[0]["event_type"], "payment.failed");
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_try_after_cancel_reserves_nothing() -> anyhow::Result<()> {
    let mut chain = Chain::with("latetry", |s| {
        s.payment_ttl = std::time::Duration::from_millis(1_000)
    })
    .await?;
    // fund-freeze is down: the Try waits in its queue while the payment expires.
    chain
        .start(&["order-validation", "settlement", "notification"])
        .await?;
    chain
        .publish(&request("stuck", "alice", &[("fan", 1)], "20.00"))
        .await?;
    let (status, _) = chain.outcome("stuck").await?;
    assert_eq!(status, "cancelled");
    let reservation: String = sqlx::query_scalar("SELECT status FROM reservations")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(reservation, "cancelled", "the empty rollback is recorded");
    assert_eq!(
        chain.env.queue_depth("payfleet.fund-freeze").await?,
        1,
        "the Try is still waiting"
    );

    chain.stop().await;
    chain.start(&[]).await?;
    wait_until(WAIT, "the late Try handled", || async {
        Ok(chain.env.queue_depth("payfleet.fund-freeze").await? == 0)
    })
    .await?;
    chain.env.wait_drained(WAIT).await?;
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("1000.00"), d("0.00"))
    );
    assert_eq!(chain.stock("fan").await?, (100, 0));
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM stock_reservations")
            .await?,
        0
    );
    let status: String = sqlx::query_scalar("SELECT status FROM payments")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(status, "cancelled");
    chain.finish().await
}

/// The default `request_max_age_ms`: how old a request may be at its first receipt.
const REQUEST_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Waits until the wall clock is past `instant`.
async fn wait_past(instant: chrono::DateTime<Utc>) {
    while Utc::now() <= instant {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_replayed_after_its_freshness_window_creates_no_payment()
-> anyhow::Result<()> {
    let mut chain = Chain::new("replayexpired").await?;
    sqlx::query("UPDATE merchants SET status = 'suspended' WHERE id = $1")
        .bind(SHOP)
        .execute(chain.pool())
        .await?;
    chain.start(&[]).await?;
    // Fresh when it first arrives, and refused: the merchant is suspended.
    let mut r = request("replayed", "alice", &[("tea", 1)], "30.00");
    r.requested_at = Utc::now() - REQUEST_MAX_AGE + chrono::TimeDelta::seconds(10);
    chain.publish(&r).await?;
    wait_until(WAIT, "the request refused", || async {
        Ok(chain
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections WHERE reason = 'merchant_suspended'",
            )
            .await?
            == 1)
    })
    .await?;

    // Reactivated; the same signed body is published again once it is stale.
    sqlx::query("UPDATE merchants SET status = 'active' WHERE id = $1")
        .bind(SHOP)
        .execute(chain.pool())
        .await?;
    wait_past(r.requested_at + REQUEST_MAX_AGE + chrono::TimeDelta::seconds(1)).await;
    chain.publish(&r).await?;
    wait_until(WAIT, "the replay handled", || async {
        Ok(chain
            .env
            .scalar_i64(
                "SELECT (SELECT count(*) FROM request_rejections) + (SELECT count(*) FROM payments)",
            )
            .await?
            == 2)
    })
    .await?;
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM payments")
            .await?,
        0,
        "a stale replay creates no payment"
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM request_rejections ORDER BY id")
            .fetch_all(chain.pool())
            .await?;
    assert_eq!(reasons, vec!["merchant_suspended", "request_expired"]);
    assert_eq!(chain.balance("user", "alice").await?.0, d("1000.00"));
    chain.env.wait_drained(WAIT).await?;
    let events = chain.events().await?;
    assert_eq!(events.len(), 2);
    assert!(
        events[1]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("request_expired"),
        "{:?}",
        events[1]["reason"]
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_first_arrived_in_time_is_judged_by_that_when_replayed_later()
-> anyhow::Result<()> {
    let mut chain = Chain::new("replayfresh").await?;
    // An outage: no payment can be written, so the request is retried and
    // dead-lettered.
    sqlx::raw_sql(
        "CREATE TABLE outage (since timestamptz);
         INSERT INTO outage VALUES (now());
         CREATE FUNCTION refuse_during_outage() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM outage) THEN
             RAISE EXCEPTION 'injected: database unavailable' USING ERRCODE = '40001';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_during_outage BEFORE INSERT ON payments
           FOR EACH ROW EXECUTE FUNCTION refuse_during_outage();",
    )
    .execute(chain.pool())
    .await?;
    chain.start(&[]).await?;
    let mut r = request("in-time", "alice", &[("tea", 1)], "30.00");
    r.requested_at = Utc::now() - REQUEST_MAX_AGE + chrono::TimeDelta::seconds(10);
    chain.publish(&r).await?;
    wait_until(WAIT, "the request dead-lettered", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE stage = 'order-validation'")
            .await?
            == 1)
    })
    .await?;

    // Replayed by ops once the outage is over and the request is past its
    // window: it came in time, so it is paid.
    wait_past(r.requested_at + REQUEST_MAX_AGE + chrono::TimeDelta::seconds(1)).await;
    sqlx::query("DELETE FROM outage")
        .execute(chain.pool())
        .await?;
    let dead_letter: i64 =
        sqlx::query_scalar("SELECT id FROM dead_letters WHERE stage = 'order-validation'")
            .fetch_one(chain.pool())
            .await?;
    let selection = payfleet_workers::ops::dlq::Selection {
        ids: vec![dead_letter],
        stage: None,
        error_kind: None,
        payment: None,
        older_than: None,
        statuses: vec!["parked"],
        limit: 10,
    };
    let replayed = payfleet_workers::ops::dlq::replay(
        &chain.env.settings,
        chain.pool(),
        &selection,
        "oncall-test",
    )
    .await?;
    assert_eq!(replayed, 1);
    let (status, reason) = chain.outcome("in-time").await?;
    assert_eq!(status, "settled", "{reason:?}");
    assert_eq!(chain.balance("user", "alice").await?.0, d("970.00"));
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_that_expires_before_try_fails_the_payment_and_reserves_nothing()
-> anyhow::Result<()> {
    let mut chain = Chain::new("couponexpiry").await?;
    // fund-freeze is down: the Try waits in its queue (as in a retry queue).
    chain
        .start(&["order-validation", "settlement", "notification"])
        .await?;
    let mut r = request("expiring", "alice", &[("tea", 2)], "52.00");
    r.coupon_code = Some("FULL50-8".into());
    chain.publish(&r).await?;
    wait_until(WAIT, "the Try waiting", || async {
        Ok(chain.env.queue_depth("payfleet.fund-freeze").await? == 1)
    })
    .await?;
    // The coupon was valid at validation and runs out while the Try waits.
    sqlx::query(
        "UPDATE coupons SET valid_until = now() - interval '1 second' WHERE code = 'FULL50-8'",
    )
    .execute(chain.pool())
    .await?;

    chain.stop().await;
    chain.start(&[]).await?;
    let (status, reason) = chain.outcome("expiring").await?;
    assert_eq!(status, "failed", "{reason:?}");
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .starts_with("coupon_expired"),
        "{reason:?}"
    );
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("1000.00"), d("0.00"))
    );
    assert_eq!(chain.stock("tea").await?, (100, 0));
    let (used, redemptions): (i32, i64) = sqlx::query_as(
        "SELECT used, (SELECT count(*) FROM coupon_redemptions WHERE status <> 'released') FROM coupons WHERE code = 'FULL50-8'",
    )
    .fetch_one(chain.pool())
    .await?;
    assert_eq!((used, redemptions), (0, 0), "no coupon use is held");
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM reservations WHERE status = 'tried'")
            .await?,
        0
    );
    let order: String = sqlx::query_scalar("SELECT status FROM orders")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(order, "closed");
    let events = chain.events().await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "payment.failed");
    assert!(
        events[0]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("coupon_expired"),
        "{:?}",
        events[0]["reason"]
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_capture_after_the_payment_was_cancelled_changes_nothing() -> anyhow::Result<()> {
    let mut chain = Chain::with("stalecapture", |s| {
        s.payment_ttl = std::time::Duration::from_millis(3_000)
    })
    .await?;
    // callback is down: the wallet's capture waits in its queue while the payment expires.
    chain.start_all_but("callback").await?;
    chain
        .publish(&request("captured-late", "alice", &[("tea", 1)], "30.00"))
        .await?;
    wait_until(WAIT, "the capture waiting for callback", || async {
        Ok(chain.env.queue_depth("payfleet.callback").await? == 1)
    })
    .await?;
    let (status, reason) = chain.outcome("captured-late").await?;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("cancelled", Some("expired"))
    );

    chain.stop().await;
    chain.start(&[]).await?;
    wait_until(WAIT, "the late capture handled", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM inbox WHERE stage = 'callback'")
            .await?
            == 1)
    })
    .await?;
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM inbox WHERE stage = 'callback'")
        .fetch_one(chain.pool())
        .await?;
    assert_eq!(outcome, "stale", "a capture after the cancel is stale");
    let (payment, attempt): (String, String) = sqlx::query_as(
        "SELECT p.status, a.status FROM payments p JOIN payment_attempts a ON a.payment_id = p.id",
    )
    .fetch_one(chain.pool())
    .await?;
    assert_eq!(payment, "cancelled");
    assert_ne!(
        attempt, "succeeded",
        "a stale capture changes nothing: the released funds were never taken"
    );
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("1000.00"), d("0.00"))
    );
    assert_eq!(chain.stock("tea").await?, (100, 0));
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM journal_entries WHERE kind = 'payment'")
            .await?,
        0
    );
    let events: Vec<String> = chain
        .events()
        .await?
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, vec!["payment.failed"]);
    chain.finish().await
}

/// What a merchant endpoint received: each body with its headers.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Vec<u8>, BTreeMap<String, String>)>>>;

/// A merchant endpoint that answers `failures` times with 500, then 200,
/// and keeps every body and its headers.
async fn merchant_endpoint(failures: usize) -> anyhow::Result<(String, Seen)> {
    let (app, seen) = merchant_receiver(failures);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

/// A merchant's receiver over https on `localhost`, with `certificate`.
async fn merchant_endpoint_https(
    certificate: &payfleet_tests::services::ServerCertificate,
) -> anyhow::Result<(String, Seen)> {
    let (app, seen) = merchant_receiver(0);
    let listener = TlsListener::bind(certificate).await?;
    let url = format!(
        "https://localhost:{}/hook",
        listener.tcp.local_addr()?.port()
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

/// TCP with a TLS handshake per connection; a client that refuses the
/// certificate simply never becomes a connection.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    async fn bind(
        certificate: &payfleet_tests::services::ServerCertificate,
    ) -> anyhow::Result<Self> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        payfleet_common::tls::install_crypto_provider();
        let chain = CertificateDer::pem_file_iter(&certificate.cert_file)?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&certificate.key_file)?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(Self {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Records every webhook; answers 500 to the first `failures`, then 200.
fn merchant_receiver(failures: usize) -> (axum::Router, Seen) {
    use axum::{
        Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post,
    };
    let seen: Seen = Default::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                move |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let mut seen = seen.lock().expect("lock");
                    seen.push((body.to_vec(), headers));
                    if seen.len() <= failures {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        .with_state(seen.clone());
    (app, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_webhooks_go_over_https_to_receivers_the_configured_ca_signed()
-> anyhow::Result<()> {
    use payfleet_tests::services::{TempDir, TestCa};
    let dir = TempDir::new("webhook-tls")?;
    let trusted = TestCa::new(&dir.0, "trusted")?;
    let other = TestCa::new(&dir.0, "other")?;
    let (trusted_url, trusted_seen) = merchant_endpoint_https(&trusted.issue("shop")?).await?;
    let (other_url, other_seen) = merchant_endpoint_https(&other.issue("shop")?).await?;
    let ca_file = trusted.pem_file.display().to_string();
    let mut chain = Chain::with("webhooktls", |s| {
        s.webhook_delays = payfleet_common::config::millis(&[100, 100]);
        s.tls_ca_file = Some(ca_file);
    })
    .await?;
    register_notify_hosts(chain.pool(), &["localhost"]).await?;
    chain.start(&[]).await?;
    let mut signed = request("tls-trusted", "alice", &[("cup", 1)], "10.00");
    signed.notify_url = Some(trusted_url);
    let mut unknown = request("tls-other", "alice", &[("cup", 1)], "10.00");
    unknown.notify_url = Some(other_url);
    chain.publish(&signed).await?;
    chain.publish(&unknown).await?;
    let deliveries = chain.finished_deliveries(2).await?;
    assert_eq!(
        deliveries,
        vec![
            ("tls-other".into(), "exhausted".into(), 3),
            ("tls-trusted".into(), "delivered".into(), 1)
        ]
    );
    assert_eq!(trusted_seen.lock().expect("lock").len(), 1);
    assert!(
        other_seen.lock().expect("lock").is_empty(),
        "nothing is sent to a receiver whose certificate no trusted CA signed"
    );
    let errors: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT a.error FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         JOIN payments p ON p.id = d.payment_id WHERE p.merchant_order_id = 'tls-other'",
    )
    .fetch_all(chain.pool())
    .await?;
    assert_eq!(errors.len(), 3);
    for error in errors {
        let error = error.unwrap_or_default();
        assert!(
            error.contains("certificate") || error.contains("UnknownIssuer"),
            "the attempt says the certificate was refused: {error}"
        );
    }
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_webhooks_are_signed_retried_and_dead_lettered_when_exhausted()
-> anyhow::Result<()> {
    let mut chain = Chain::with("webhooks", |s| {
        s.webhook_delays = payfleet_common::config::millis(&[200, 400])
    })
    .await?;
    let (flaky_url, flaky) = merchant_endpoint(2).await?;
    let (down_url, down) = merchant_endpoint(usize::MAX).await?;
    register_notify_hosts(chain.pool(), &["127.0.0.1"]).await?;
    chain.start(&[]).await?;
    let mut delivered = request("hooked", "alice", &[("cup", 1)], "10.00");
    delivered.notify_url = Some(flaky_url);
    let mut exhausted = request("unhooked", "alice", &[("cup", 1)], "10.00");
    exhausted.notify_url = Some(down_url);
    chain.publish(&delivered).await?;
    chain.publish(&exhausted).await?;
    assert_eq!(chain.outcome("hooked").await?.0, "settled");
    let deliveries = chain.finished_deliveries(2).await?;
    assert_eq!(
        deliveries,
        vec![
            ("hooked".into(), "delivered".into(), 3),
            ("unhooked".into(), "exhausted".into(), 3)
        ]
    );
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM webhook_attempts")
            .await?,
        6,
        "every attempt logged"
    );
    let secrets = webhook_secrets(chain.pool()).await?;
    for (body, headers) in flaky
        .lock()
        .expect("lock")
        .iter()
        .chain(down.lock().expect("lock").iter())
    {
        assert!(
            !headers.contains_key("x-payfleet-signature"),
            "not signed with the merchant's request-signing key"
        );
        assert!(
            messages::verify_webhook(&secrets[0], headers, body),
            "webhook signed with the merchant's webhook secret: {headers:?}"
        );
        let event: Value = serde_json::from_slice(body)?;
        assert_eq!(event["event_type"], "payment.succeeded");
    }
    wait_until(WAIT, "the exhausted delivery in the dead-letter store", || async {
        Ok(chain.env.scalar_i64("SELECT count(*) FROM dead_letters WHERE stage = 'notification' AND error_kind = 'exhausted'").await? == 1)
    })
    .await?;
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_expiry_sweep_runs_at_a_time() -> anyhow::Result<()> {
    let chain = Chain::new("sweeplock").await?;
    let fleet =
        payfleet_workers::fleet(chain.env.settings.clone(), &["notification"], false).await?;
    let shared = fleet.shared().clone();
    let mut holder = chain.pool().acquire().await?;
    let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(payfleet_workers::jobs::sweeper::SWEEP_LOCK)
        .fetch_one(&mut *holder)
        .await?;
    assert_eq!(
        payfleet_workers::jobs::sweeper::sweep(&shared)
            .await
            .map_err(anyhow::Error::msg)?,
        None,
        "another sweep holds the lock"
    );
    let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(payfleet_workers::jobs::sweeper::SWEEP_LOCK)
        .fetch_one(&mut *holder)
        .await?;
    assert_eq!(
        payfleet_workers::jobs::sweeper::sweep(&shared)
            .await
            .map_err(anyhow::Error::msg)?,
        Some(0)
    );
    drop(holder);
    drop(fleet);
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_a_wallet_exception_as_failed_releases_the_freeze_through_cancel()
-> anyhow::Result<()> {
    let mut chain = Chain::new("resolve").await?;
    // channel-call is not running: the payment waits frozen
    chain
        .start(&[
            "order-validation",
            "fund-freeze",
            "callback",
            "settlement",
            "notification",
        ])
        .await?;
    chain
        .publish(&request("odd", "alice", &[("tea", 1)], "30.00"))
        .await?;
    let id = order_validation::payment_id(SHOP, "odd");
    wait_until(WAIT, "the payment frozen", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM payments WHERE status = 'frozen'")
            .await?
            == 1)
    })
    .await?;
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("970.00"), d("30.00"))
    );
    // the channel reports a different amount than was asked: an exception
    let attempt = Uuid::now_v7();
    sqlx::query("INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status) VALUES ($1, $2, 'balance', 30.00, 'CNY', 'sending')")
        .bind(attempt)
        .bind(id)
        .execute(chain.pool())
        .await?;
    let result = messages::ChannelResult {
        schema_version: SCHEMA_VERSION,
        payment_id: id,
        attempt_id: attempt.into(),
        channel: "balance".into(),
        status: messages::ChannelStatus::Succeeded,
        amount: d("31.00"),
        currency: "CNY".into(),
        channel_reference: None,
        reason: None,
        reported_at: Utc::now(),
    };
    let props = broker::properties(
        &Uuid::now_v7().to_string(),
        Some(&id.to_string()),
        Some(messages::kind::CHANNEL_RESULT),
    );
    chain
        .env
        .publish_raw(
            "payfleet.stages",
            "callback",
            &serde_json::to_vec(&result)?,
            props,
        )
        .await?;
    let (status, reason) = chain.outcome("odd").await?;
    assert_eq!(status, "exception");
    assert!(reason.unwrap_or_default().starts_with("amount_mismatch"));
    assert_eq!(
        chain.balance("user", "alice").await?.2,
        d("30.00"),
        "held while in review"
    );

    let change = payfleet_workers::ops::payment::resolve(
        &chain.env.settings,
        chain.pool(),
        id,
        false,
        "wallet never captured",
        "tester",
    )
    .await?;
    assert_eq!(change.after.status, "failed");
    assert_eq!(change.after.reservation.as_deref(), Some("cancelled"));
    assert_eq!(
        chain.balance("user", "alice").await?,
        (d("1000.00"), d("1000.00"), d("0.00")),
        "the freeze is released"
    );
    assert_eq!(chain.stock("tea").await?, (100, 0));
    wait_until(WAIT, "the failed event", || async {
        Ok(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM payment_events WHERE payment_id = $1 AND event_type = 'payment.failed'")
            .bind(id)
            .fetch_one(chain.pool())
            .await?
            == 1)
    })
    .await?;
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_never_use_a_coupon_past_its_per_user_limit() -> anyhow::Result<()> {
    let mut chain = Chain::new("couponrace").await?;
    let once = seed::coupon(
        "ONCE",
        CouponRule::FullReduction {
            threshold: d("10"),
            amount_off: d("2"),
        },
    );
    seed::coupons(&mut *chain.pool().acquire().await?, &[once]).await?;
    chain.start(&[]).await?;
    let orders: Vec<PaymentRequested> = (0..6)
        .map(|i| {
            let mut r = request(&format!("once-{i}"), "alice", &[("cup", 2)], "18.00");
            r.coupon_code = Some("ONCE".into());
            r
        })
        .collect();
    for result in futures_util::future::join_all(orders.iter().map(|r| chain.publish(r))).await {
        result?;
    }
    let mut settled = 0;
    for i in 0..6 {
        let (status, _) = chain.outcome(&format!("once-{i}")).await?;
        if status == "settled" {
            settled += 1;
        }
    }
    assert_eq!(
        settled, 1,
        "one order gets the once-per-user coupon, the others are refused"
    );
    let (used, live): (i32, i64) = sqlx::query_as(
        "SELECT c.used, (SELECT count(*) FROM coupon_redemptions r WHERE r.coupon_code = c.code AND r.status <> 'released')
         FROM coupons c WHERE c.code = 'ONCE'",
    )
    .fetch_one(chain.pool())
    .await?;
    assert_eq!((used, live), (1, 1));
    assert_eq!(
        chain.balance("user", "alice").await?.0,
        d("982.00"),
        "charged once, with the discount"
    );
    chain.finish().await
}

/// Registers the hosts the shop's webhooks may go to (its merchant record).
async fn register_notify_hosts(pool: &PgPool, hosts: &[&str]) -> anyhow::Result<()> {
    sqlx::query("UPDATE merchants SET notify_hosts = $2 WHERE id = $1")
        .bind(SHOP)
        .bind(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}

/// An endpoint that answers every request with a redirect to `to`.
async fn redirecting_endpoint(to: &str) -> anyhow::Result<String> {
    use axum::{Router, http::StatusCode, routing::post};
    let to = to.to_owned();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let to = to.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_webhooks_cannot_be_aimed_inward() -> anyhow::Result<()> {
    // Deny by default: loopback is not allowed here (only the demo and the
    // other tests allow it, for their receivers on 127.0.0.1).
    let mut chain = Chain::with("ssrf", |s| {
        s.webhook_delays = payfleet_common::config::millis(&[100, 100]);
        s.webhook_allow_loopback = false;
    })
    .await?;
    let (inside_url, inside) = merchant_endpoint(0).await?;
    let port = inside_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .to_owned();
    // Every host below is registered, so only the address check can refuse them.
    register_notify_hosts(
        chain.pool(),
        &[
            "127.0.0.1",
            "localhost",
            "[::1]",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "[fd00::1]",
        ],
    )
    .await?;
    chain.start(&[]).await?;
    let targets = [
        ("loopback", inside_url.clone()),
        ("name-to-loopback", format!("http://localhost:{port}/hook")),
        ("loopback-v6", format!("http://[::1]:{port}/hook")),
        ("private", "http://10.1.2.3/hook".to_owned()),
        ("private-192", "http://192.168.0.1/hook".to_owned()),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("unspecified", format!("http://0.0.0.0:{port}/hook")),
        ("unique-local", "http://[fd00::1]/hook".to_owned()),
        ("unregistered", "http://shop.example/hook".to_owned()),
    ];
    for (order, url) in &targets {
        let mut r = request(order, "alice", &[("cup", 1)], "10.00");
        r.notify_url = Some(url.clone());
        chain.publish(&r).await?;
    }
    for (order, _) in &targets {
        assert_eq!(chain.outcome(order).await?.0, "settled", "{order}");
    }
    let expected = targets.len() as i64;
    wait_until(WAIT, "every delivery refused", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM webhook_deliveries WHERE status = 'refused'")
            .await?
            == expected)
    })
    .await?;
    // Refused once each, recorded, and not retried: a refusal is permanent.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let attempts: Vec<(String, i32, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT p.merchant_order_id, a.attempt, a.http_status, a.error
         FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         JOIN payments p ON p.id = d.payment_id ORDER BY 1, 2",
    )
    .fetch_all(chain.pool())
    .await?;
    assert_eq!(
        attempts.len(),
        targets.len(),
        "one attempt each: {attempts:?}"
    );
    for (order, attempt, http_status, error) in &attempts {
        assert_eq!((*attempt, *http_status), (1, None), "{order}");
        let error = error.as_deref().unwrap_or("");
        assert!(error.starts_with("refused"), "{order}: {error}");
    }
    assert!(
        inside.lock().expect("lock").is_empty(),
        "nothing reached the loopback receiver"
    );
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE stage = 'notification'")
            .await?,
        0,
        "a refusal is on record in webhook_attempts, not retried into the dead letters"
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_follows_no_redirect_and_a_refused_url_is_never_a_target() -> anyhow::Result<()> {
    let mut chain = Chain::with("redirects", |s| {
        s.webhook_delays = payfleet_common::config::millis(&[100])
    })
    .await?;
    let (inside_url, inside) = merchant_endpoint(0).await?;
    let (merchant_url, merchant) = merchant_endpoint(0).await?;
    let redirect_url = redirecting_endpoint(&inside_url).await?;
    sqlx::query("UPDATE merchants SET notify_url = $2 WHERE id = $1")
        .bind(SHOP)
        .bind(&merchant_url)
        .execute(chain.pool())
        .await?;
    register_notify_hosts(chain.pool(), &["127.0.0.1"]).await?;
    chain.start(&[]).await?;
    let mut redirected = request("redirected", "alice", &[("cup", 1)], "10.00");
    redirected.notify_url = Some(redirect_url.clone());
    chain.publish(&redirected).await?;
    // A URL the contract forbids is refused at the ingress (the schema's
    // pattern: invalid_request at /notify_url): no payment, and its URL is
    // never a delivery target.
    let refused_url = format!("ftp://{}", inside_url.trim_start_matches("http://"));
    let mut refused = request("refused-url", "alice", &[("cup", 1)], "10.00");
    refused.notify_url = Some(refused_url.clone());
    chain.publish(&refused).await?;
    wait_until(WAIT, "the ftp notify URL refused", || async {
        Ok(chain
            .env
            .scalar_i64(
                "SELECT count(*) FROM request_rejections
                 WHERE merchant_order_id = 'refused-url' AND reason = 'invalid_request'
                   AND detail LIKE '%/notify_url%'",
            )
            .await?
            == 1)
    })
    .await?;
    assert_eq!(chain.outcome("redirected").await?.0, "settled");
    wait_until(WAIT, "the delivery finished", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM webhook_deliveries WHERE status <> 'pending'")
            .await?
            == 1)
    })
    .await?;
    let deliveries: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT p.merchant_order_id, d.url, d.status FROM webhook_deliveries d
         JOIN payments p ON p.id = d.payment_id ORDER BY 1",
    )
    .fetch_all(chain.pool())
    .await?;
    assert_eq!(
        deliveries,
        vec![("redirected".into(), redirect_url, "exhausted".into())],
        "the refused request's URL is no delivery target"
    );
    let redirects = chain
        .env
        .scalar_i64("SELECT count(*) FROM webhook_attempts WHERE http_status = 307")
        .await?;
    assert_eq!(
        redirects, 2,
        "each attempt saw the redirect and did not follow it"
    );
    assert!(
        inside.lock().expect("lock").is_empty(),
        "the redirect target was never called"
    );
    assert!(merchant.lock().expect("lock").is_empty());
    chain.finish().await
}

/// The shop's active webhook secrets, newest first.
async fn webhook_secrets(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT secret FROM merchant_webhook_secrets
         WHERE merchant_id = $1 AND (expires_at IS NULL OR expires_at > now())
         ORDER BY created_at DESC",
    )
    .bind(SHOP)
    .fetch_all(pool)
    .await?)
}

/// The `standardwebhooks` package from PyPI, installed once under the
/// target directory when missing; returns the directory for PYTHONPATH.
fn standardwebhooks_python() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("standardwebhooks-py");
    if !dir.join("standardwebhooks").join("__init__.py").exists() {
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("standardwebhooks")
            .status()?;
        anyhow::ensure!(
            status.success(),
            "pip install standardwebhooks failed: {status}"
        );
    }
    Ok(dir)
}

/// Verifies each case with the `standardwebhooks` Python library; returns
/// "ok" or the library's error for each. `shift_s` moves the verifier's
/// clock (a replay that long after the webhook was sent).
fn verify_with_standardwebhooks(cases: &[Value]) -> anyhow::Result<Vec<String>> {
    const SCRIPT: &str = r#"
import base64, json, sys
from datetime import datetime, timedelta, timezone
import standardwebhooks.webhooks as wh

real = datetime
out = []
for case in json.load(open(sys.argv[1])):
    shift = timedelta(seconds=case["shift_s"])
    class Shifted(real):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) + shift
    wh.datetime = Shifted
    try:
        wh.Webhook(case["secret"]).verify(base64.b64decode(case["body"]), case["headers"])
        out.append("ok")
    except wh.WebhookVerificationError as e:
        out.append("refused: " + str(e))
print(json.dumps(out))
"#;
    let dir = standardwebhooks_python()?;
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let script = tmp.join(format!("verify-{}.py", Uuid::now_v7()));
    let input = tmp.join(format!("cases-{}.json", Uuid::now_v7()));
    std::fs::write(&script, SCRIPT)?;
    std::fs::write(&input, serde_json::to_vec(cases)?)?;
    let output = std::process::Command::new("python3")
        .env("PYTHONPATH", &dir)
        .arg(&script)
        .arg(&input)
        .output()?;
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_file(&input);
    anyhow::ensure!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn case(secret: &str, body: &[u8], headers: &BTreeMap<String, String>, shift_s: i64) -> Value {
    use base64::Engine;
    serde_json::json!({
        "secret": secret,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "headers": headers,
        "shift_s": shift_s,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_webhooks_verify_with_the_standard_webhooks_library_across_a_secret_rotation()
-> anyhow::Result<()> {
    let mut chain = Chain::with("stdhooks", |s| {
        s.webhook_delays = payfleet_common::config::millis(&[1_100, 1_100])
    })
    .await?;
    let (url, seen) = merchant_endpoint(1).await?;
    register_notify_hosts(chain.pool(), &["127.0.0.1"]).await?;
    let before = webhook_secrets(chain.pool()).await?;
    assert_eq!(before.len(), 1, "every merchant has a webhook secret");
    let old_secret = before[0].clone();
    assert!(old_secret.starts_with("whsec_"), "{old_secret}");
    assert_ne!(old_secret, SHOP_KEY);
    chain.start(&[]).await?;

    // Before the rotation: one failed attempt, then a retry.
    let mut first = request("std-1", "alice", &[("cup", 1)], "10.00");
    first.notify_url = Some(url.clone());
    chain.publish(&first).await?;
    wait_until(WAIT, "the first webhook retried and delivered", || async {
        Ok(seen.lock().expect("lock").len() == 2)
    })
    .await?;

    // A rotation with a grace period: the previous secret stays active.
    let (code, out, err) = chain
        .cli(&[
            "webhook",
            "rotate-secret",
            "--merchant",
            SHOP,
            "--grace",
            "1h",
        ])
        .await?;
    assert_eq!(code, 0, "{err}");
    let secrets = webhook_secrets(chain.pool()).await?;
    assert_eq!(secrets.len(), 2, "the new and the previous secret");
    let new_secret = secrets[0].clone();
    assert!(new_secret.starts_with("whsec_") && new_secret != old_secret);
    assert!(
        out.contains(&new_secret),
        "the new secret is handed to ops: {out}"
    );
    let (code, _, err) = chain
        .cli(&["webhook", "rotate-secret", "--merchant", "nobody"])
        .await?;
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let mut second = request("std-2", "alice", &[("cup", 1)], "10.00");
    second.notify_url = Some(url.clone());
    chain.publish(&second).await?;
    wait_until(WAIT, "the second webhook delivered", || async {
        Ok(seen.lock().expect("lock").len() == 3)
    })
    .await?;
    let seen = seen.lock().expect("lock").clone();
    let (retry_a, retry_b, rotated) = (&seen[0], &seen[1], &seen[2]);

    // webhook-id is stable across retries; timestamp and signature per attempt.
    let event_id = serde_json::from_slice::<Value>(&retry_a.0)?["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(retry_a.1["webhook-id"], retry_b.1["webhook-id"]);
    assert!(
        retry_a.1["webhook-id"].contains(&event_id),
        "{:?}",
        retry_a.1
    );
    assert_ne!(
        retry_a.1["webhook-timestamp"],
        retry_b.1["webhook-timestamp"]
    );
    assert_ne!(
        retry_a.1["webhook-signature"],
        retry_b.1["webhook-signature"]
    );
    assert_ne!(retry_a.1["webhook-id"], rotated.1["webhook-id"]);
    assert_eq!(
        rotated.1["webhook-signature"].split(' ').count(),
        2,
        "signed with both active secrets during the rotation"
    );

    let results = verify_with_standardwebhooks(&[
        case(&old_secret, &retry_a.0, &retry_a.1, 0),
        case(&old_secret, &retry_b.0, &retry_b.1, 0),
        // during the rotation: the current and the previous secret verify
        case(&new_secret, &rotated.0, &rotated.1, 0),
        case(&old_secret, &rotated.0, &rotated.1, 0),
        // a replay outside the tolerance (5 minutes) is refused
        case(&old_secret, &retry_b.0, &retry_b.1, 600),
        // the new secret did not sign what came before the rotation
        case(&new_secret, &retry_a.0, &retry_a.1, 0),
        // the merchant's request-signing key is not the webhook secret
        case(
            &format!("whsec_{}", {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(SHOP_KEY)
            }),
            &rotated.0,
            &rotated.1,
            0,
        ),
        // a changed body is refused
        case(&new_secret, b"{\"amount\":\"0.01\"}", &rotated.1, 0),
    ])?;
    assert_eq!(&results[..4], &["ok", "ok", "ok", "ok"], "{results:?}");
    assert!(results[4].contains("too old"), "{results:?}");
    for refused in &results[5..] {
        assert!(refused.starts_with("refused"), "{results:?}");
    }
    chain.finish().await
}

/// A merchant endpoint that answers 500 while `down` is set, else 200, and
/// keeps every body with its headers.
async fn switchable_endpoint() -> anyhow::Result<(String, Seen, std::sync::Arc<AtomicBool>)> {
    use axum::{
        Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post,
    };
    let seen: Seen = Default::default();
    let down = std::sync::Arc::new(AtomicBool::new(true));
    let app = Router::new()
        .route(
            "/hook",
            post(
                move |State((seen, down)): State<(Seen, std::sync::Arc<AtomicBool>)>,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    seen.lock().expect("lock").push((body.to_vec(), headers));
                    if down.load(Ordering::SeqCst) {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        .with_state((seen.clone(), down.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen, down))
}

/// Runs the `payfleet` binary against the chain's services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_webhook_is_sent_again_by_webhook_resend_and_by_dlq_replay()
-> anyhow::Result<()> {
    let mut chain = Chain::with("resend", |s| {
        s.webhook_delays = payfleet_common::config::millis(&[100])
    })
    .await?;
    let (url, seen, down) = switchable_endpoint().await?;
    register_notify_hosts(chain.pool(), &["127.0.0.1"]).await?;
    chain.start(&[]).await?;
    for order in ["resend-a", "resend-b"] {
        let mut r = request(order, "alice", &[("cup", 1)], "10.00");
        r.notify_url = Some(url.clone());
        chain.publish(&r).await?;
    }
    wait_until(WAIT, "both webhooks exhausted and dead-lettered", || async {
        Ok(chain
            .env
            .scalar_i64("SELECT count(*) FROM webhook_deliveries WHERE status = 'exhausted'")
            .await?
            == 2
            && chain
                .env
                .scalar_i64("SELECT count(*) FROM dead_letters WHERE stage = 'notification' AND status = 'parked'")
                .await?
                == 2)
    })
    .await?;
    let (a, b) = (
        order_validation::payment_id(SHOP, "resend-a"),
        order_validation::payment_id(SHOP, "resend-b"),
    );
    let first_id = |payment: PaymentId| {
        seen.lock()
            .expect("lock")
            .iter()
            .find(|(body, _)| {
                serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["payment_id"].as_str().map(|p| p == payment.to_string()))
                    == Some(true)
            })
            .map(|(_, headers)| headers["webhook-id"].clone())
            .expect("a webhook for the payment")
    };
    let (id_a, id_b) = (first_id(a), first_id(b));
    down.store(false, Ordering::SeqCst);

    // Bad arguments: one line, non-zero exit; --help shows an example.
    for bad in [
        &["webhook", "resend"][..],
        &["webhook", "resend", "--since", "soon"],
        &["webhook", "list", "--payment", "not-a-payment"],
        &["webhook", "frobnicate"],
    ] {
        let (code, out, err) = chain.cli(bad).await?;
        assert_ne!(code, 0, "{bad:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: one line: {err}");
    }
    for help in [&["webhook", "--help"][..], &["webhook", "resend", "--help"]] {
        let (code, out, _) = chain.cli(help).await?;
        assert_eq!(code, 0);
        assert!(out.contains("Example"), "{help:?}: {out}");
    }

    // list by merchant and time
    let (code, out, err) = chain
        .cli(&[
            "webhook",
            "list",
            "--merchant",
            SHOP,
            "--since",
            "1h",
            "--json",
        ])
        .await?;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out)?;
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|r| r["status"] == "exhausted"), "{out}");

    // resend by payment
    let (code, out, err) = chain
        .cli(&["webhook", "resend", "--payment", &a.to_string()])
        .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resent 1 webhook"), "{out}");
    let delivered = |payment: PaymentId| {
        let pool = chain.pool().clone();
        async move {
            let status: String =
                sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE payment_id = $1")
                    .bind(payment)
                    .fetch_one(&pool)
                    .await?;
            Ok(status == "delivered")
        }
    };
    wait_until(WAIT, "the resent webhook delivered", || delivered(a)).await?;

    // dlq replay of the other one's dead letter does the same
    let dead_letter: i64 = sqlx::query_scalar(
        "SELECT id FROM dead_letters WHERE stage = 'notification' AND correlation_id = $1",
    )
    .bind(b.to_string())
    .fetch_one(chain.pool())
    .await?;
    let (code, out, err) = chain
        .cli(&["dlq", "replay", "--id", &dead_letter.to_string()])
        .await?;
    assert_eq!(code, 0, "{out} {err}");
    wait_until(WAIT, "the replayed webhook delivered", || delivered(b)).await?;

    // The same webhook-id as before, so the merchant deduplicates.
    let last = |payment: PaymentId| {
        seen.lock()
            .expect("lock")
            .iter()
            .rev()
            .find(|(body, _)| {
                serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["payment_id"].as_str().map(|p| p == payment.to_string()))
                    == Some(true)
            })
            .map(|(_, headers)| headers["webhook-id"].clone())
            .expect("a webhook for the payment")
    };
    assert_eq!(last(a), id_a);
    assert_eq!(last(b), id_b);
    let attempts: Vec<(i32,)> = sqlx::query_as(
        "SELECT a.attempt FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         WHERE d.payment_id = $1 ORDER BY a.attempt",
    )
    .bind(a)
    .fetch_all(chain.pool())
    .await?;
    assert_eq!(attempts, vec![(1,), (2,), (3,)], "the attempt log goes on");
    let resends = chain
        .env
        .scalar_i64("SELECT count(*) FROM webhook_resends WHERE operator = 'oncall-test'")
        .await?;
    assert_eq!(resends, 2, "both resends on record");
    // Nothing dead-lettered as poison; the replayed row is marked replayed.
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE stage = 'notification' AND error_kind <> 'exhausted'")
            .await?,
        0
    );
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM dead_letters WHERE stage = 'notification' AND status = 'parked'")
            .await?,
        0,
        "both dead letters answered"
    );
    chain.finish().await
}

// ---------------------------------------------------------------------------
// The ingress enforces its committed schema. The cases below are generated
// from contracts/v1/payment.requested.schema.json itself: every constraint
// of every property (and of an item) is broken once, alone, in an otherwise
// payable request.

/// One generated violation: the JSON pointer of the value that breaks it,
/// the keyword broken, and the whole body.
struct Violation {
    pointer: String,
    keyword: String,
    body: Value,
}

fn ingress_schema() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contracts/v1/payment.requested.schema.json");
    serde_json::from_slice(&std::fs::read(path).expect("the committed schema")).expect("JSON")
}

fn ingress_validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the schema compiles")
}

/// Sets the value at `pointer` (whose parent exists); `None` removes it.
fn put(body: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer below the root");
    let parent = body.pointer_mut(parent).expect("the parent exists");
    match parent {
        Value::Object(map) => match value {
            Some(value) => {
                map.insert(last.to_owned(), value);
            }
            None => {
                map.remove(last);
            }
        },
        Value::Array(list) => {
            let index: usize = last.parse().expect("an index");
            match value {
                Some(value) => list[index] = value,
                None => {
                    list.remove(index);
                }
            }
        }
        _ => panic!("{pointer}: parent is no container"),
    }
}

/// Values that break `keyword` of `sub` (a property's schema).
fn breaking_values(keyword: &str, sub: &Value) -> Vec<Value> {
    use serde_json::json;
    let single = |v: &Value| {
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&json!({ keyword: sub[keyword].clone() }))
            .expect("a one-keyword schema")
            .is_valid(v)
    };
    let candidates: Vec<Value> = match keyword {
        "type" => vec![
            Value::Null,
            json!(7),
            json!("1"),
            json!(1.5),
            json!(true),
            json!([]),
            json!({}),
        ],
        "const" => vec![json!(2), json!("1")],
        "enum" => vec![json!("cash"), json!("Balance")],
        "minLength" => vec![json!("")],
        "maxLength" => {
            let max = sub["maxLength"].as_u64().expect("a length") as usize;
            vec![
                json!("a".repeat(max + 1)),
                json!(format!("https://a/{}", "a".repeat(max))),
            ]
        }
        "pattern" => [
            "+39.90",
            "39.900",
            "0.001",
            "-1.00",
            "1e3",
            " 39.90",
            "cny",
            "CNYY",
            "ftp://shop.example/",
            "x\u{0}y",
            "x\u{1f}y",
        ]
        .iter()
        .map(|s| json!(s))
        .collect(),
        "format" => vec![
            json!("2026-12-02 09:30:11"),
            json!("2026-13-02T09:30:11Z"),
            json!("not a uri"),
        ],
        "minItems" => vec![json!([])],
        "maxItems" => {
            let max = sub["maxItems"].as_u64().expect("a count");
            vec![Value::Array(
                (0..=max)
                    .map(|n| json!({"sku": format!("sku-{n}"), "quantity": 1}))
                    .collect(),
            )]
        }
        "minimum" => vec![json!(sub["minimum"].as_i64().expect("a bound") - 1)],
        "maximum" => vec![json!(sub["maximum"].as_i64().expect("a bound") + 1)],
        _ => Vec::new(),
    };
    // a candidate must break this keyword; for `pattern`, `format` and the
    // lengths it must still be a string, so that the keyword is what it breaks
    candidates
        .into_iter()
        .filter(|v| !single(v))
        .filter(|v| !matches!(keyword, "pattern" | "format") || v.is_string())
        .collect()
}

/// Every constraint of the object schema `object` (at `pointer` in `base`)
/// broken once.
fn violations_of(
    schema: &Value,
    object: &Value,
    pointer: &str,
    base: &Value,
    out: &mut Vec<Violation>,
) {
    let mut with = |pointer: String, keyword: &str, value: Option<Value>| {
        let mut body = base.clone();
        put(&mut body, &pointer, value);
        out.push(Violation {
            pointer,
            keyword: keyword.to_owned(),
            body,
        });
    };
    for name in object["required"].as_array().expect("required") {
        let name = name.as_str().expect("a name");
        with(format!("{pointer}/{name}"), "required", None);
    }
    if object["additionalProperties"] == Value::Bool(false) {
        with(
            format!("{pointer}/unexpected"),
            "additionalProperties",
            Some(Value::Bool(true)),
        );
    }
    let properties = object["properties"].as_object().expect("properties");
    let mut nested = Vec::new();
    for (name, sub) in properties {
        let at = format!("{pointer}/{name}");
        for keyword in sub.as_object().expect("a schema").keys() {
            if keyword == "items" {
                let target = sub["items"]["$ref"]
                    .as_str()
                    .expect("items by $ref")
                    .trim_start_matches("#/");
                let item = schema
                    .pointer(&format!("/{target}"))
                    .expect("the $ref resolves");
                nested.push((item.clone(), format!("{at}/0")));
                continue;
            }
            for value in breaking_values(keyword, sub) {
                with(at.clone(), keyword, Some(value));
            }
        }
    }
    for (_, at) in &nested {
        // the item itself not an object
        with(at.clone(), "type", Some(serde_json::json!(["cup", 1])));
        with(at.clone(), "type", Some(Value::Null));
    }
    for (item, at) in nested {
        violations_of(schema, &item, &at, base, out);
    }
}

fn schema_violations(base: &Value) -> Vec<Violation> {
    let schema = ingress_schema();
    let mut out = Vec::new();
    violations_of(&schema, &schema, "", base, &mut out);
    out
}

#[test]
fn the_generator_breaks_every_constraint_of_the_ingress_schema() {
    let schema = ingress_schema();
    let validator = ingress_validator(&schema);
    let base = serde_json::to_value(request("base", "alice", &[("cup", 1)], "10.00")).unwrap();
    assert!(validator.is_valid(&base), "the base request is valid");
    let cases = schema_violations(&base);
    // every keyword of every property of the request and of an item is broken
    let mut expected = std::collections::BTreeSet::new();
    for (object, at) in [
        (&schema, String::new()),
        (&schema["$defs"]["requested_item"], "/items/0".to_owned()),
    ] {
        for (name, sub) in object["properties"].as_object().unwrap() {
            for keyword in sub.as_object().unwrap().keys() {
                if !matches!(keyword.as_str(), "description" | "items" | "title") {
                    expected.insert(format!("{at}/{name} {keyword}"));
                }
            }
        }
        for name in object["required"].as_array().unwrap() {
            expected.insert(format!("{at}/{} required", name.as_str().unwrap()));
        }
        expected.insert(format!("{at}/unexpected additionalProperties"));
    }
    let broken: std::collections::BTreeSet<String> = cases
        .iter()
        .map(|c| format!("{} {}", c.pointer, c.keyword))
        .collect();
    let missing: Vec<_> = expected.difference(&broken).collect();
    assert!(missing.is_empty(), "constraints never broken: {missing:?}");
    for case in &cases {
        assert!(
            !validator.is_valid(&case.body),
            "{} {} does not break the schema: {}",
            case.pointer,
            case.keyword,
            case.body
        );
    }
    // the reported examples are among them
    for amount in ["+39.90", "39.900", "0.001"] {
        assert!(
            cases
                .iter()
                .any(|c| c.pointer == "/expected_amount" && c.body["expected_amount"] == amount)
        );
    }
    assert!(
        cases
            .iter()
            .any(|c| c.pointer == "/coupon_code" && c.body["coupon_code"].is_null())
    );
    assert!(
        cases
            .iter()
            .any(|c| c.pointer == "/items/0" && c.body["items"][0].is_array())
    );
}

/// What the contract promises for a body that breaks the schema at `pointer`:
/// `None` when the message cannot be answered (no usable merchant or order
/// id: dead-lettered), else the refusal's reason code.
fn documented_answer(pointer: &str) -> Option<&'static str> {
    if pointer.starts_with("/merchant_id") || pointer.starts_with("/merchant_order_id") {
        None
    } else if pointer == "/schema_version" {
        Some("unsupported_schema_version")
    } else {
        Some("invalid_request")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_schema_violation_is_refused_with_its_pointer_and_creates_no_payment()
-> anyhow::Result<()> {
    let mut chain = Chain::new("schemaviol").await?;
    chain.start(&[]).await?;
    // the base request is payable
    chain
        .publish(&request("base", "alice", &[("cup", 1)], "10.00"))
        .await?;
    assert_eq!(chain.outcome("base").await?.0, "settled");

    let mut cases = Vec::new();
    let mut dead = Vec::new();
    for (n, case) in schema_violations(&serde_json::to_value(request(
        "x",
        "alice",
        &[("cup", 1)],
        "10.00",
    ))?)
    .into_iter()
    .enumerate()
    {
        let mut body = case.body;
        let order = format!("bad-{n}");
        if !case.pointer.starts_with("/merchant_order_id") {
            body["merchant_order_id"] = Value::String(order.clone());
        }
        let bytes = serde_json::to_vec(&body)?;
        let message_id = Uuid::now_v7().to_string();
        let mut headers = FieldTable::default();
        broker::set_header(
            &mut headers,
            messages::SIGNATURE_HEADER,
            messages::sign(SHOP_KEY, &bytes),
        );
        let props = broker::properties(&message_id, None, Some(messages::kind::PAYMENT_REQUESTED))
            .with_headers(headers);
        chain
            .env
            .publish_raw(
                "payfleet.ingress",
                messages::kind::PAYMENT_REQUESTED,
                &bytes,
                props,
            )
            .await?;
        match documented_answer(&case.pointer) {
            Some(reason) => cases.push((order, message_id, reason, case.pointer, case.keyword)),
            None => dead.push((message_id, case.pointer, case.keyword)),
        }
    }
    // every message handled: committed by order-validation, or dead-lettered
    let ids: Vec<String> = cases
        .iter()
        .map(|c| c.1.clone())
        .chain(dead.iter().map(|d| d.0.clone()))
        .collect();
    let total = ids.len() as i64;
    wait_until(WAIT, "every violation handled", || async {
        let handled: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM inbox WHERE stage = 'order-validation' AND message_id = ANY($1))
                  + (SELECT count(*) FROM dead_letters WHERE message_id = ANY($1))",
        )
        .bind(&ids)
        .fetch_one(chain.pool())
        .await?;
        Ok(handled >= total)
    })
    .await?;
    chain.env.wait_drained(WAIT).await.ok();

    let mut wrong = Vec::new();
    for (order, message_id, reason, pointer, keyword) in &cases {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT reason, detail FROM request_rejections WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(chain.pool())
                .await?;
        match row {
            Some((got, detail))
                if got == *reason && detail.starts_with(&format!("at {pointer}:")) => {}
            other => wrong.push(format!("{order} {pointer} {keyword}: {other:?}")),
        }
    }
    let letters = chain.env.dead_letters().await?;
    for (message_id, pointer, keyword) in &dead {
        match letters.iter().find(|l| &l.message_id == message_id) {
            Some(l) if l.error_kind == "poison" && l.stage == order_validation::NAME => {}
            other => wrong.push(format!(
                "{pointer} {keyword}: {:?}",
                other.map(|l| (&l.error_kind, &l.error_message))
            )),
        }
    }
    assert!(
        letters.len() == dead.len(),
        "only the unanswerable are dead-lettered: {:?}",
        letters
            .iter()
            .map(|l| (&l.error_kind, &l.error_message))
            .collect::<Vec<_>>()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} violations not answered as documented:\n{}",
        wrong.len(),
        cases.len() + dead.len(),
        wrong.join("\n")
    );
    // none of them became a payment; the refusals reached BI with the pointer
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM payments")
            .await?,
        1
    );
    let events = chain.events().await?;
    for (order, _, reason, pointer, _) in &cases {
        let event = events
            .iter()
            .find(|e| e["merchant_order_id"] == order.as_str())
            .unwrap_or_else(|| panic!("no event for {order}"));
        assert_eq!(event["status"], "rejected");
        let text = event["reason"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(&format!("{reason}: at {pointer}:")),
            "{order}: {text}"
        );
    }
    chain.finish().await
}

// ---------------------------------------------------------------------------
// Sizes and internal headers at the ingress.

async fn publish_with_headers(
    chain: &Chain,
    body: &[u8],
    extra: &[(&str, lapin::types::AMQPValue)],
) -> anyhow::Result<String> {
    let message_id = Uuid::now_v7().to_string();
    let mut headers = FieldTable::default();
    broker::set_header(
        &mut headers,
        messages::SIGNATURE_HEADER,
        messages::sign(SHOP_KEY, body),
    );
    for (name, value) in extra {
        headers.insert((*name).into(), value.clone());
    }
    let props = broker::properties(&message_id, None, Some(messages::kind::PAYMENT_REQUESTED))
        .with_headers(headers);
    chain
        .env
        .publish_raw(
            "payfleet.ingress",
            messages::kind::PAYMENT_REQUESTED,
            body,
            props,
        )
        .await?;
    Ok(message_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_too_long_or_with_control_characters_are_invalid_requests() -> anyhow::Result<()> {
    let mut chain = Chain::new("idlimits").await?;
    chain.start(&[]).await?;
    let long = "a".repeat(129);
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let base = || serde_json::to_value(request("x", "alice", &[("cup", 1)], "10.00")).unwrap();
    let mut body = base();
    body["user_id"] = Value::from(long.clone());
    cases.push(("/user_id", body));
    let mut body = base();
    body["user_id"] = Value::from("ali\u{0}ce");
    cases.push(("/user_id", body));
    let mut body = base();
    body["user_id"] = Value::from("ali\u{7}ce");
    cases.push(("/user_id", body));
    let mut body = base();
    body["items"][0]["sku"] = Value::from(long.clone());
    cases.push(("/items/0/sku", body));
    let mut body = base();
    body["items"][0]["sku"] = Value::from("cu\u{0}p");
    cases.push(("/items/0/sku", body));
    let mut body = base();
    body["coupon_code"] = Value::from(long.clone());
    cases.push(("/coupon_code", body));
    let mut body = base();
    body["coupon_code"] = Value::from("PCT\u{0}15");
    cases.push(("/coupon_code", body));
    let mut body = base();
    body["payer_token"] = Value::from("tok\u{0}");
    cases.push(("/payer_token", body));
    let mut ids = Vec::new();
    for (n, (pointer, mut body)) in cases.into_iter().enumerate() {
        let order = format!("limits-{n}");
        body["merchant_order_id"] = Value::from(order.clone());
        let id = publish_with_headers(&chain, &serde_json::to_vec(&body)?, &[]).await?;
        ids.push((id, order, pointer));
    }
    // an order id with a NUL cannot be answered: dead-lettered, never a database error
    let mut body = base();
    body["merchant_order_id"] = Value::from("limits\u{0}x");
    let unanswerable = publish_with_headers(&chain, &serde_json::to_vec(&body)?, &[]).await?;
    let all: Vec<String> = ids
        .iter()
        .map(|i| i.0.clone())
        .chain([unanswerable.clone()])
        .collect();
    let total = all.len() as i64;
    wait_until(WAIT, "every request handled", || async {
        let handled: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM inbox WHERE stage = 'order-validation' AND message_id = ANY($1))
                  + (SELECT count(*) FROM dead_letters WHERE message_id = ANY($1))",
        )
        .bind(&all)
        .fetch_one(chain.pool())
        .await?;
        Ok(handled >= total)
    })
    .await?;
    let mut wrong = Vec::new();
    for (id, order, pointer) in &ids {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT reason, detail FROM request_rejections WHERE message_id = $1")
                .bind(id)
                .fetch_optional(chain.pool())
                .await?;
        match row {
            Some((reason, detail))
                if reason == "invalid_request" && detail.starts_with(&format!("at {pointer}:")) => {
            }
            other => wrong.push(format!("{order} {pointer}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as invalid:\n{}",
        wrong.join("\n")
    );
    let letters = chain.env.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].message_id, unanswerable);
    assert_eq!(
        letters[0].error_kind, "poison",
        "{}",
        letters[0].error_message
    );
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM payments")
            .await?,
        0
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_cap_is_dead_lettered_unread() -> anyhow::Result<()> {
    let mut chain = Chain::new("bodycap").await?;
    chain.start(&[]).await?;
    // well-formed JSON, 200 KiB: read, it would be refused for its unknown field
    let mut body = serde_json::to_value(request("big", "alice", &[("cup", 1)], "10.00"))?;
    body["padding"] = Value::from("p".repeat(200 * 1024));
    let id = publish_with_headers(&chain, &serde_json::to_vec(&body)?, &[]).await?;
    wait_until(WAIT, "the big body dead-lettered", || async {
        Ok(chain.env.dead_letters().await?.len() == 1)
    })
    .await?;
    let letter = &chain.env.dead_letters().await?[0];
    assert_eq!(letter.message_id, id);
    assert_eq!(letter.error_kind, "poison");
    assert!(
        letter.error_message.contains("ingress_max_body_bytes"),
        "{}",
        letter.error_message
    );
    assert_eq!(
        chain
            .env
            .scalar_i64("SELECT count(*) FROM request_rejections")
            .await?,
        0
    );
    // a request of the largest shape the schema allows is under the cap
    let mut largest = serde_json::to_value(request("largest", "alice", &[("cup", 1)], "10.00"))?;
    largest["items"] = Value::Array(
        (0..100)
            .map(|n| serde_json::json!({"sku": format!("{n:0>128}"), "quantity": 10000}))
            .collect(),
    );
    largest["notify_url"] = Value::from(format!("https://shop.example/{}", "n".repeat(2000)));
    largest["payer_token"] = Value::from("t".repeat(128));
    largest["coupon_code"] = Value::from("c".repeat(64));
    let id = publish_with_headers(&chain, &serde_json::to_vec(&largest)?, &[]).await?;
    wait_until(WAIT, "the largest request judged", || async {
        Ok(chain
            .env
            .scalar_i64(&format!(
                "SELECT count(*) FROM inbox WHERE stage = 'order-validation' AND message_id = '{id}'"
            ))
            .await?
            == 1)
    })
    .await?;
    assert_eq!(chain.env.dead_letters().await?.len(), 1);
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_headers_set_by_upstream_are_stripped_at_the_ingress() -> anyhow::Result<()> {
    use lapin::types::{AMQPValue, LongString};
    let mut chain = Chain::new("hdrstrip").await?;
    chain.start(&[]).await?;
    let forged = [
        ("x-payfleet-attempt", AMQPValue::LongLongInt(99)),
        ("x-payfleet-suspect", AMQPValue::LongLongInt(1)),
        (
            "x-payfleet-replayed-from",
            AMQPValue::LongString(LongString::from("42")),
        ),
        ("x-payfleet-lock-waits", AMQPValue::LongLongInt(1_000_000)),
    ];
    // a payable request with forged counters is paid as any other
    let body = serde_json::to_vec(&request("forged", "alice", &[("cup", 1)], "10.00"))?;
    publish_with_headers(&chain, &body, &forged).await?;
    assert_eq!(chain.outcome("forged").await?.0, "settled");
    // a poison message with them is dead-lettered after one attempt, and its
    // dead letter keeps none of upstream's internal headers
    let id = publish_with_headers(&chain, b"not json", &forged).await?;
    wait_until(WAIT, "the poison dead-lettered", || async {
        Ok(chain.env.dead_letters().await?.len() == 1)
    })
    .await?;
    let letter = &chain.env.dead_letters().await?[0];
    assert_eq!(letter.message_id, id);
    assert_eq!(letter.attempts, 1, "upstream's attempt counter is ignored");
    for (name, _) in &forged[1..] {
        assert!(
            letter.headers.get(*name).is_none(),
            "{name} kept: {}",
            letter.headers
        );
    }
    assert!(
        letter.headers.get(messages::SIGNATURE_HEADER).is_some(),
        "the signature is upstream's own: kept"
    );
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_schema_accepts_is_read_and_what_the_books_cannot_hold_is_refused()
-> anyhow::Result<()> {
    let mut chain = Chain::new("schemaedge").await?;
    chain.start(&[]).await?;
    // JSON Schema counts 1.0 as an integer: a quantity written so is read
    let mut body = serde_json::to_value(request("float-qty", "alice", &[("cup", 2)], "20.00"))?;
    body["items"][0]["quantity"] = serde_json::json!(2.0);
    publish_with_headers(&chain, &serde_json::to_vec(&body)?, &[]).await?;
    assert_eq!(chain.outcome("float-qty").await?.0, "settled");
    // amounts past what the books hold (numeric(20, 2)) are invalid requests,
    // never a database error
    let mut ids = Vec::new();
    for (n, amount) in ["1000000000000000000.00", "99999999999999999999999999999"]
        .into_iter()
        .enumerate()
    {
        let order = format!("huge-{n}");
        let mut body = serde_json::to_value(request(&order, "alice", &[("cup", 1)], "10.00"))?;
        body["expected_amount"] = Value::from(amount);
        ids.push(publish_with_headers(&chain, &serde_json::to_vec(&body)?, &[]).await?);
    }
    let total = ids.len() as i64;
    wait_until(WAIT, "the huge amounts handled", || async {
        let handled: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM inbox WHERE stage = 'order-validation' AND message_id = ANY($1))
                  + (SELECT count(*) FROM dead_letters WHERE message_id = ANY($1))",
        )
        .bind(&ids)
        .fetch_one(chain.pool())
        .await?;
        Ok(handled >= total)
    })
    .await?;
    let letters = chain.env.dead_letters().await?;
    assert!(
        letters.is_empty(),
        "{:?}",
        letters
            .iter()
            .map(|l| (&l.error_kind, &l.error_message))
            .collect::<Vec<_>>()
    );
    for id in &ids {
        let (reason, detail): (String, String) =
            sqlx::query_as("SELECT reason, detail FROM request_rejections WHERE message_id = $1")
                .bind(id)
                .fetch_one(chain.pool())
                .await?;
        assert_eq!(reason, "invalid_request");
        assert!(detail.starts_with("at /expected_amount:"), "{detail}");
    }
    chain.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_headers_are_stripped_when_the_ingress_queue_is_reached_directly()
-> anyhow::Result<()> {
    use lapin::types::AMQPValue;
    let mut chain = Chain::new("hdrdirect").await?;
    chain.start(&[]).await?;
    // straight to the ingress queue through the default exchange (a user
    // with more rights than the upstream user could do this)
    let message_id = Uuid::now_v7().to_string();
    let mut headers = FieldTable::default();
    headers.insert("x-payfleet-attempt".into(), AMQPValue::LongLongInt(99));
    headers.insert("x-payfleet-suspect".into(), AMQPValue::LongLongInt(1));
    let props = broker::properties(&message_id, None, Some(messages::kind::PAYMENT_REQUESTED))
        .with_headers(headers);
    chain
        .env
        .publish_raw("", "payfleet.ingress", b"not json", props)
        .await?;
    wait_until(WAIT, "the poison dead-lettered", || async {
        Ok(chain.env.dead_letters().await?.len() == 1)
    })
    .await?;
    let letter = &chain.env.dead_letters().await?[0];
    assert_eq!(letter.message_id, message_id);
    assert_eq!(letter.attempts, 1, "upstream's attempt counter is ignored");
    assert!(
        letter.headers.get("x-payfleet-suspect").is_none(),
        "{}",
        letter.headers
    );
    chain.finish().await
}
