//! Transfers between wallets end to end over the real services: one paid
//! once with both statements, a duplicate and a conflicting request, every
//! refusal with its reason, concurrent transfers draining one wallet
//! (never below zero), a payee's wallet frozen between Try and Confirm (the
//! payer's freeze released), and a popular payee whose wallet row is held
//! the whole time while transfers keep landing. Every scenario ends with
//! the invariants.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{SHOP, WAIT, d, sandbox::World, types_of};
use payfleet_common::messages::{self, SCHEMA_VERSION, TransferRequested};
use payfleet_tests::wait_until;
use payfleet_workers::{
    domain::{handoff, transfer::transfer_id},
    seed,
};
use rust_decimal::Decimal;
use uuid::Uuid;

/// alice's CNY wallet when a scenario starts; bob's and carol's hold 5.00.
const ALICE_HOLDS: &str = "100.00";

async fn world(
    tag: &str,
    adjust: impl FnOnce(&mut payfleet_common::Settings),
) -> anyhow::Result<World> {
    let world = World::new(tag, adjust, Duration::from_millis(100)).await?;
    world.bind_events().await?;
    seed::Catalogue {
        users: vec![
            seed::user("bob").wallet("CNY", d("5.00"), "seed-bob"),
            seed::user("carol")
                .wallet("CNY", d("5.00"), "seed-carol")
                .wallet("USD", d("1.00"), "seed-carol-usd"),
            seed::user("dave").wallet("USD", d("5.00"), "seed-dave"),
        ],
        ..Default::default()
    }
    .seed(world.pool())
    .await?;
    let mut tx = world.pool().begin().await?;
    payfleet_workers::domain::ledger::top_up(&mut tx, "alice", "CNY", d(ALICE_HOLDS), "seed-alice")
        .await?;
    tx.commit().await?;
    Ok(world)
}

fn transfer(request_id: &str, payer: &str, payee: &str, amount: &str) -> TransferRequested {
    TransferRequested {
        schema_version: SCHEMA_VERSION,
        requester_id: SHOP.into(),
        request_id: request_id.into(),
        payer_user_id: payer.into(),
        payee_user_id: payee.into(),
        amount: d(amount),
        currency: "CNY".into(),
        memo: None,
        notify_url: None,
        requested_at: Utc::now(),
    }
}

/// Publishes a transfer request as the wallet application would.
async fn ask(world: &World, request: &TransferRequested) -> anyhow::Result<Uuid> {
    world
        .publish_signed(messages::kind::TRANSFER_REQUESTED, request)
        .await?;
    Ok(transfer_id(SHOP, &request.request_id))
}

/// Waits until transfer `id` is finished with its event emitted; its
/// status and detail.
async fn finished(world: &World, id: Uuid) -> anyhow::Result<(String, Option<String>)> {
    wait_until(WAIT, &format!("transfer {id} finished"), || async {
        Ok(world
            .env
            .scalar_i64(&format!(
                "SELECT count(*) FROM transfers t WHERE t.id = '{id}'
                   AND t.status IN ('refused', 'succeeded', 'failed')
                   AND EXISTS (SELECT 1 FROM payment_events e WHERE e.transfer_id = t.id)"
            ))
            .await?
            == 1)
    })
    .await?;
    Ok(
        sqlx::query_as("SELECT status, detail FROM transfers WHERE id = $1")
            .bind(id)
            .fetch_one(world.pool())
            .await?,
    )
}

/// (total, available, frozen) of `user`'s CNY wallet, every posting folded in.
async fn wallet(world: &World, user: &str) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
    fleet::roll_up_all(world.pool()).await?;
    fleet::wallet_of(world.pool(), user, "CNY").await
}

fn held(amount: &str) -> (Decimal, Decimal, Decimal) {
    (d(amount), d(amount), d("0"))
}

/// `user`'s statement lines of transfer `id`: (kind, amount, available after).
async fn statement(
    world: &World,
    user: &str,
    id: Uuid,
) -> anyhow::Result<Vec<(String, Decimal, Decimal)>> {
    Ok(sqlx::query_as(
        "SELECT s.kind, s.amount, s.available_after FROM account_statements s
         JOIN accounts a ON a.id = s.account_id WHERE a.owner_id = $1 AND s.transfer_id = $2 ORDER BY s.id",
    )
    .bind(user)
    .bind(id)
    .fetch_all(world.pool())
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_its_amount_once_from_payer_to_payee_with_both_statements()
-> anyhow::Result<()> {
    let mut world = world("trpay", |_| {}).await?;
    world.start(&[]).await?;
    let mut asked = transfer("tr-dinner", "alice", "bob", "30.00");
    asked.memo = Some("dinner".into());
    let id = ask(&world, &asked).await?;
    assert_eq!(finished(&world, id).await?.0, "succeeded");
    // One balanced entry: alice −30.00, bob +30.00, nothing else.
    assert_eq!(
        fleet::entry_postings(world.pool(), id).await?,
        vec![
            ("transfer".to_owned(), "alice".to_owned(), d("-30.00")),
            ("transfer".to_owned(), "bob".to_owned(), d("30.00")),
        ]
    );
    assert_eq!(wallet(&world, "alice").await?, held("70.00"));
    assert_eq!(wallet(&world, "bob").await?, held("35.00"));
    // alice's statement: frozen, then debited; bob's: credited at roll-up.
    assert_eq!(
        statement(&world, "alice", id).await?,
        vec![
            ("freeze".to_owned(), d("30.00"), d("70.00")),
            ("debit".to_owned(), d("30.00"), d("70.00")),
        ]
    );
    assert_eq!(
        statement(&world, "bob", id).await?,
        vec![("credit".to_owned(), d("30.00"), d("35.00"))]
    );

    // The same request again: one transfer. Other content under its id: a conflict.
    ask(&world, &asked).await?;
    let mut other = asked.clone();
    other.amount = d("31.00");
    ask(&world, &other).await?;
    world
        .wait_refused("idempotency_conflict", "transfer_request_id", "tr-dinner")
        .await?;
    world.env.wait_drained(WAIT).await?;
    assert_eq!(wallet(&world, "alice").await?, held("70.00"));
    assert_eq!(wallet(&world, "bob").await?, held("35.00"));
    let events = world.fleet.events_of("transfer.").await?;
    assert_eq!(types_of(&events), ["transfer.succeeded", "transfer.failed"]);
    assert_eq!(events[0]["transfer_id"], id.to_string());
    assert_eq!(events[0]["memo"], "dinner");
    assert_eq!(events[0]["amount"], "30.00");
    // The conflict's event never names the transfer its key belongs to.
    assert_ne!(events[1]["transfer_id"], id.to_string());
    assert!(
        events[1]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("idempotency_conflict"))
    );
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_its_reason_and_moves_nothing() -> anyhow::Result<()> {
    let mut world = world("trrefuse", |s| {
        s.transfer_limit_per_transfer.insert("CNY".into(), 55);
        s.transfer_limit_per_day.insert("CNY".into(), 60);
    })
    .await?;
    // ops freeze bob's wallet; dave's USD wallet was closed
    let (code, out, err) = world
        .cli(&["wallet", "freeze", "bob", "--reason", "fraud review"])
        .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wallet CNY of bob: frozen"), "{out}");
    let (code, _, err) = world
        .cli(&["wallet", "freeze", "zed", "--reason", "fraud review"])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("user `zed` has no open CNY wallet"), "{err}");
    sqlx::query(
        "UPDATE accounts SET status = 'closed' WHERE owner_kind = 'user' AND owner_id = 'dave'",
    )
    .execute(world.pool())
    .await?;
    world.start(&[]).await?;
    let usd = |request_id, payer, payee| {
        let mut request = transfer(request_id, payer, payee, "1.00");
        request.currency = "USD".into();
        request
    };
    let cases = [
        (
            transfer("tr-self", "alice", "alice", "1.00"),
            "transfer_to_self",
        ),
        (
            transfer("tr-frozen", "alice", "bob", "1.00"),
            "payee_wallet_not_active",
        ),
        (usd("tr-closed", "carol", "dave"), "payee_wallet_not_active"),
        (
            transfer("tr-nobody", "alice", "zed", "1.00"),
            "unknown_payee",
        ),
        // dave holds only a (closed) USD wallet: a CNY transfer cannot reach him
        (
            transfer("tr-no-cny", "alice", "dave", "1.00"),
            "currency_mismatch",
        ),
        // alice holds no USD wallet to pay from
        (usd("tr-no-usd", "alice", "carol"), "no_wallet"),
        (transfer("tr-big", "alice", "carol", "56.00"), "over_limit"),
        (
            transfer("tr-short", "carol", "alice", "5.01"),
            "insufficient_balance",
        ),
        (transfer("tr-day-1", "alice", "carol", "50.00"), "succeeded"),
        (
            transfer("tr-day-2", "alice", "carol", "20.00"),
            "over_daily_limit",
        ),
    ];
    for (request, expected) in &cases {
        let id = ask(&world, request).await?;
        let (status, detail) = finished(&world, id).await?;
        if *expected == "succeeded" {
            assert_eq!(status, "succeeded", "{}", request.request_id);
        } else {
            let detail = detail.unwrap_or_default();
            assert_eq!(status, "refused", "{}: {detail}", request.request_id);
            assert!(
                detail.starts_with(expected),
                "{}: {detail}",
                request.request_id
            );
        }
    }
    // A shop not registered to act for users may not move wallets.
    let mut forged = transfer("tr-shop", "alice", "carol", "1.00");
    forged.requester_id = "m1".into();
    world
        .publish_signed_with("k1", messages::kind::TRANSFER_REQUESTED, &forged)
        .await?;
    world
        .wait_refused("requester_not_permitted", "transfer_request_id", "tr-shop")
        .await?;
    world.env.wait_drained(WAIT).await?;
    // Only the one transfer inside the daily limit moved money.
    assert_eq!(wallet(&world, "alice").await?, held("50.00"));
    assert_eq!(wallet(&world, "carol").await?, held("55.00"));
    let events = world.fleet.events_of("transfer.").await?;
    assert_eq!(events.len(), cases.len() + 1);
    let kept: i64 = world
        .env
        .scalar_i64("SELECT count(*) FROM transfers")
        .await?;
    assert_eq!(kept, cases.len() as i64, "every judged request is kept");
    let audited = world
        .env
        .scalar_i64("SELECT count(*) FROM user_actions WHERE user_id = 'bob' AND action = 'freeze_wallet' AND reason = 'fraud review'")
        .await?;
    assert_eq!(audited, 1, "the freeze is audited");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_draining_one_wallet_never_take_it_below_zero() -> anyhow::Result<()> {
    // thirty transfers of one payer within the hour: not a risk here
    let mut world = world("trdrain", |s| s.risk_velocity_limit = 1_000).await?;
    // Everything is queued before the fleet starts, so the Trys race.
    let mut ids = Vec::new();
    for n in 0..30 {
        let payee = if n % 2 == 0 { "bob" } else { "carol" };
        ids.push(
            ask(
                &world,
                &transfer(&format!("tr-drain-{n}"), "alice", payee, "7.00"),
            )
            .await?,
        );
    }
    world.start(&[]).await?;
    let mut succeeded = 0;
    for id in &ids {
        match finished(&world, *id).await? {
            (status, _) if status == "succeeded" => succeeded += 1,
            (status, detail) => {
                assert_eq!(status, "refused");
                assert!(detail.is_some_and(|d| d.starts_with("insufficient_balance")));
            }
        }
    }
    // 100.00 pays fourteen 7.00 transfers and not one more.
    assert_eq!(succeeded, 14);
    assert_eq!(wallet(&world, "alice").await?, held("2.00"));
    let received = wallet(&world, "bob").await?.0 + wallet(&world, "carol").await?.0;
    assert_eq!(received, d("10.00") + d("98.00"));
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payee_wallet_frozen_between_try_and_confirm_releases_the_payers_freeze()
-> anyhow::Result<()> {
    let mut world = world("trrelease", |_| {}).await?;
    // Only as far as Try: the transfer waits frozen for settlement.
    world
        .start(&[handoff::ORDER_VALIDATION, handoff::FUND_FREEZE])
        .await?;
    let id = ask(&world, &transfer("tr-late", "alice", "bob", "40.00")).await?;
    wait_until(WAIT, "the transfer frozen", || async {
        Ok(world
            .env
            .scalar_i64(&format!(
                "SELECT count(*) FROM transfers WHERE id = '{id}' AND status = 'frozen'"
            ))
            .await?
            == 1)
    })
    .await?;
    assert_eq!(
        fleet::wallet_of(world.pool(), "alice", "CNY").await?,
        (d("100.00"), d("60.00"), d("40.00"))
    );
    world.stop().await;
    // ops freeze bob's wallet meanwhile
    let (code, _, err) = world
        .cli(&["wallet", "freeze", "bob", "--reason", "chargeback dispute"])
        .await?;
    assert_eq!(code, 0, "{err}");
    world.start(&[]).await?;
    let (status, detail) = finished(&world, id).await?;
    assert_eq!(status, "failed");
    assert!(detail.is_some_and(|d| d.starts_with("payee_wallet_not_active")));
    assert_eq!(wallet(&world, "alice").await?, held("100.00"));
    assert_eq!(wallet(&world, "bob").await?, held("5.00"));
    assert_eq!(
        statement(&world, "alice", id).await?,
        vec![
            ("freeze".to_owned(), d("40.00"), d("60.00")),
            ("unfreeze".to_owned(), d("40.00"), d("100.00")),
        ]
    );
    let events = world.fleet.events_of("transfer.").await?;
    assert_eq!(types_of(&events), ["transfer.failed"]);
    assert_eq!(events[0]["status"], "failed");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_popular_payee_keeps_receiving_while_its_wallet_row_is_held() -> anyhow::Result<()> {
    let mut world = world("trhot", |_| {}).await?;
    let payers: Vec<String> = (0..20).map(|n| format!("payer-{n}")).collect();
    seed::Catalogue {
        users: payers
            .iter()
            .map(|p| seed::user(p).wallet("CNY", d("50.00"), &format!("seed-{p}")))
            .collect(),
        ..Default::default()
    }
    .seed(world.pool())
    .await?;
    world.start(&[]).await?;
    // bob's own spending holds his wallet row (as a payment's Try does)
    // the whole time the transfers to him are confirmed.
    let mut holder = world.pool().begin().await?;
    sqlx::query(
        "SELECT 1 FROM accounts WHERE owner_kind = 'user' AND owner_id = 'bob' FOR NO KEY UPDATE",
    )
    .execute(&mut *holder)
    .await?;
    let mut ids = Vec::new();
    for n in 0..200 {
        let payer = &payers[n % payers.len()];
        let request = transfer(&format!("tr-hot-{n}"), payer, "bob", "1.50");
        ids.push(ask(&world, &request).await?);
    }
    for id in &ids {
        assert_eq!(finished(&world, *id).await?.0, "succeeded");
    }
    // Every transfer is confirmed while bob's row is still held: none
    // waited on it. The credits wait, appended, for the roll-up.
    let pending: i64 = world
        .env
        .scalar_i64(
            "SELECT count(*) FROM postings p JOIN accounts a ON a.id = p.account_id
             WHERE a.owner_id = 'bob' AND NOT p.rolled_up",
        )
        .await?;
    assert_eq!(pending, 200);
    holder.rollback().await?;
    assert_eq!(wallet(&world, "bob").await?, held("305.00"));
    // bob's statement shows each credit with the balance after it, line
    // after line: a reader adding them up in order gets his balance.
    let lines: Vec<(Decimal, Decimal)> = sqlx::query_as(
        "SELECT s.amount, s.available_after FROM account_statements s JOIN accounts a ON a.id = s.account_id
         WHERE a.owner_id = 'bob' AND s.kind = 'credit' ORDER BY s.id",
    )
    .fetch_all(world.pool())
    .await?;
    assert_eq!(lines.len(), 200);
    for (n, (amount, after)) in lines.iter().enumerate() {
        assert_eq!(*amount, d("1.50"));
        assert_eq!(*after, d("5.00") + d("1.50") * Decimal::from(n + 1));
    }
    for payer in &payers {
        assert_eq!(wallet(&world, payer).await?, held("35.00"));
    }
    world.finish().await
}
