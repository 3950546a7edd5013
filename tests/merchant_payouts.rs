//! Merchant settlement payouts end to end over the real services and the
//! sandbox gateway: a payout on request, paid once and booked against the
//! merchant's account; refusals by the minimum and by the holdback; a
//! duplicate and a conflicting request; the daily T+1 payout, made once
//! however often the schedule runs, and none for a merchant owed less
//! than the minimum. Every scenario ends with the invariants and the
//! books against the channel's own statement, its payouts included.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{
    WAIT, d, entry_postings,
    sandbox::{CARD, World},
    types_of,
};
use payfleet_common::{
    Topology,
    messages::{self, PayoutRequested, SCHEMA_VERSION},
};
use payfleet_workers::{
    domain::withdrawal::Limits, jobs::payouts, stages::order_validation::payout::payout_id,
};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

/// Seller m1's request key in the sandbox world's seed.
const M1_KEY: &str = "k1";

/// A world whose card channel also pays out, m1 and m2 registered with a
/// bank account, and `sales` card payments of two teas and a fan settled
/// (m1: 60.00 less its 1 % fee, 59.40 each; m2: 20.00 each).
async fn world_with_sales(tag: &str, sales: usize) -> anyhow::Result<World> {
    let mut world = World::new(tag, |_| {}, Duration::from_millis(100)).await?;
    world.bind_events().await?;
    sqlx::query("UPDATE channels SET methods = methods || ARRAY['payout'] WHERE name = $1")
        .bind(CARD)
        .execute(world.pool())
        .await?;
    sqlx::query("UPDATE merchants SET payout_account = 'acct_success' WHERE id IN ('m1', 'm2')")
        .execute(world.pool())
        .await?;
    world.start(&[]).await?;
    for n in 0..sales {
        let id = world
            .pay_for(&format!("sale-{n}"), "card", "tok_success", 1)
            .await?;
        world.reaches(id, "settled").await?;
    }
    Ok(world)
}

fn payout(request_id: &str, amount: &str) -> PayoutRequested {
    PayoutRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: "m1".into(),
        request_id: request_id.into(),
        amount: d(amount),
        currency: "CNY".into(),
        notify_url: None,
        requested_at: Utc::now(),
    }
}

/// Publishes m1's payout request, signed with m1's own key.
async fn ask(world: &World, request: &PayoutRequested) -> anyhow::Result<Uuid> {
    world
        .publish_signed_with(M1_KEY, messages::kind::PAYOUT_REQUESTED, request)
        .await?;
    Ok(payout_id(&request.merchant_id, &request.request_id))
}

/// Waits until payout `id` is `status` with what it books booked and its
/// event out; its detail.
async fn reaches(world: &World, id: Uuid, status: &str) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row: Option<(String, Option<String>, bool)> = sqlx::query_as(
            "SELECT status, detail,
                    (status IN ('refused', 'requested') OR booked_at IS NOT NULL)
                    AND EXISTS (SELECT 1 FROM payment_events e WHERE e.withdrawal_id = w.id)
             FROM withdrawals w WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(world.pool())
        .await?;
        match row {
            Some((now, detail, true)) if now == status => return Ok(detail),
            row if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("payout {id} not {status} within {WAIT:?}: {row:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// (total, available, frozen) of m1's CNY account, rolled up.
async fn m1_account(world: &World) -> anyhow::Result<(Decimal, Decimal, Decimal)> {
    fleet::roll_up_all(world.pool()).await?;
    Ok(sqlx::query_as(
        "SELECT total, available, frozen FROM accounts WHERE owner_kind = 'merchant' AND owner_id = 'm1' AND currency = 'CNY'",
    )
    .fetch_one(world.pool())
    .await?)
}

async fn events(world: &World) -> anyhow::Result<Vec<Value>> {
    world.fleet.events_of("payout.").await
}

/// The payout of `id` at the sandbox: (amount, fee), as its own store has it.
fn at_the_sandbox(world: &World, id: Uuid) -> Option<(Decimal, Decimal)> {
    world
        .gateway
        .payout(CARD, &id.to_string())
        .map(|p| (p.amount, p.fee))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_is_paid_out_on_request_once_keeping_the_holdback() -> anyhow::Result<()> {
    let world = world_with_sales("popaid", 10).await?;
    // ten sales of 59.40: 594.00, of which 10 % (59.40) is held back
    assert_eq!(
        m1_account(&world).await?,
        (d("594.00"), d("594.00"), d("0"))
    );
    let too_much = ask(&world, &payout("po-too-much", "540.00")).await?;
    let too_little = ask(&world, &payout("po-too-little", "50.00")).await?;
    let detail = reaches(&world, too_much, "refused").await?;
    assert!(
        detail.as_deref().is_some_and(
            |d| d.starts_with("insufficient_balance: 540.00 CNY asked, 534.60 CNY payable")
        ),
        "{detail:?}"
    );
    let detail = reaches(&world, too_little, "refused").await?;
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.starts_with("below_minimum")),
        "{detail:?}"
    );
    let request = payout("po-1", "400.00");
    let id = ask(&world, &request).await?;
    reaches(&world, id, "succeeded").await?;
    // The holdback is a share of the sales, not of what is left: a second
    // payout cannot wear it down (194.00 left, 59.40 of it held back).
    let second = ask(&world, &payout("po-2", "150.00")).await?;
    let detail = reaches(&world, second, "refused").await?;
    assert!(
        detail.as_deref().is_some_and(
            |d| d.starts_with("insufficient_balance: 150.00 CNY asked, 134.60 CNY payable")
        ),
        "{detail:?}"
    );
    // The daily payout's ids are not the merchant's to take.
    world
        .publish_signed_with(
            M1_KEY,
            messages::kind::PAYOUT_REQUESTED,
            &payout("settlement-2099-01-01-CNY", "100.00"),
        )
        .await?;
    world
        .fleet
        .wait_refused(
            "reserved_request_id",
            "withdrawal_request_id",
            "settlement-2099-01-01-CNY",
        )
        .await?;
    // the same request again is the same payout; its id with other content is refused
    ask(&world, &request).await?;
    ask(
        &world,
        &PayoutRequested {
            amount: d("120.00"),
            ..request.clone()
        },
    )
    .await?;
    world
        .fleet
        .wait_refused("idempotency_conflict", "withdrawal_request_id", "po-1")
        .await?;
    world.env.wait_drained(WAIT).await?;
    // The sandbox paid 400.00 once, and took 1.20 % (4.80) for it.
    assert_eq!(at_the_sandbox(&world, id), Some((d("400.00"), d("4.80"))));
    assert_eq!(
        m1_account(&world).await?,
        (d("194.00"), d("194.00"), d("0"))
    );
    let mut expected = vec![
        (
            "withdrawal".to_owned(),
            format!("channel-costs:{CARD}"),
            d("-4.80"),
        ),
        (
            "withdrawal".to_owned(),
            format!("clearing:{CARD}"),
            d("404.80"),
        ),
        ("withdrawal".to_owned(), "m1".to_owned(), d("-400.00")),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(entry_postings(world.pool(), id).await?, expected);
    let events = events(&world).await?;
    let mut types = types_of(&events);
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "payout.failed",
            "payout.failed",
            "payout.failed",
            "payout.failed",
            "payout.failed",
            "payout.succeeded"
        ]
    );
    let paid = events
        .iter()
        .find(|e| e["event_type"] == "payout.succeeded")
        .expect("payout.succeeded");
    assert_eq!(paid["payout_id"], Value::from(id.to_string()));
    assert_eq!(paid["merchant_id"], "m1");
    let (code, out, err) = world.cli(&["merchant", "balance", "m1"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paid out 400.00"), "{out}");
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_payout_pays_what_settled_before_the_day_once_per_merchant() -> anyhow::Result<()>
{
    let world = world_with_sales("podaily", 5).await?;
    fleet::roll_up_all(world.pool()).await?;
    let settings = &world.env.settings;
    let topology = Topology::from_settings(settings)?;
    let limits = Limits::new(settings);
    let zone = settings.business_zone();
    // Today's sales are paid tomorrow (T+1): today's schedule pays nothing.
    let today = payouts::schedule(world.pool(), &topology, &limits, zone, Utc::now()).await?;
    assert!(today.is_empty(), "{today:?}");
    // Tomorrow m1 is paid 297.00 less the holdback; m2's 100.00 less the
    // holdback is under the minimum of 100: it waits.
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    let made = payouts::schedule(world.pool(), &topology, &limits, zone, tomorrow).await?;
    assert_eq!(made.len(), 1, "{made:?}");
    let again = payouts::schedule(world.pool(), &topology, &limits, zone, tomorrow).await?;
    assert!(again.is_empty(), "once a day: {again:?}");
    let id = made[0];
    reaches(&world, id, "succeeded").await?;
    world.env.wait_drained(WAIT).await?;
    let (request_id, amount, merchant): (String, Decimal, String) =
        sqlx::query_as("SELECT request_id, amount, user_id FROM withdrawals WHERE id = $1")
            .bind(id)
            .fetch_one(world.pool())
            .await?;
    let day = tomorrow.with_timezone(&zone).date_naive();
    assert_eq!(request_id, payouts::daily_request_id(day, "CNY"));
    assert_eq!((merchant.as_str(), amount), ("m1", d("267.30")));
    assert_eq!(at_the_sandbox(&world, id).map(|p| p.0), Some(d("267.30")));
    assert_eq!(m1_account(&world).await?, (d("29.70"), d("29.70"), d("0")));
    let payouts_at_all = world
        .env
        .scalar_i64("SELECT count(*) FROM withdrawals WHERE owner_kind = 'merchant'")
        .await?;
    assert_eq!(payouts_at_all, 1);
    assert_eq!(types_of(&events(&world).await?), ["payout.succeeded"]);
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_suspended_before_its_payouts_try_is_not_paid() -> anyhow::Result<()> {
    let mut world = world_with_sales("posuspend", 5).await?;
    fleet::roll_up_all(world.pool()).await?;
    // The fleet is down when tomorrow's payout is asked, and ops suspend
    // m1 before its Try can run.
    world.stop().await;
    let settings = world.env.settings.clone();
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    let made = payouts::schedule(
        world.pool(),
        &Topology::from_settings(&settings)?,
        &Limits::new(&settings),
        settings.business_zone(),
        tomorrow,
    )
    .await?;
    assert_eq!(made.len(), 1, "{made:?}");
    let (code, out, err) = world
        .cli(&[
            "merchant",
            "suspend",
            "m1",
            "--reason",
            "chargebacks under review",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    world.start(&[]).await?;
    let detail = reaches(&world, made[0], "refused").await?;
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.starts_with("merchant_suspended")),
        "{detail:?}"
    );
    world.env.wait_drained(WAIT).await?;
    assert_eq!(at_the_sandbox(&world, made[0]), None, "nothing paid out");
    assert_eq!(
        m1_account(&world).await?,
        (d("297.00"), d("297.00"), d("0"))
    );
    assert_eq!(types_of(&events(&world).await?), ["payout.failed"]);
    world.finish().await
}
