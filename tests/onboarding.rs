//! Running payfleet without SQL: a merchant onboarded, suspended, activated
//! and given a new request key by command, each audited, with the fleet
//! taking or refusing its signed requests accordingly — the key before a
//! rotation valid for its grace period and not after; a channel added to
//! the routing table, taken out and put back, payments routed accordingly.
//! Bad arguments get one clear line and a non-zero exit. Every scenario
//! ends with the invariants.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{
    WAIT, d,
    sandbox::{CARD, NEW_CARD, World},
};
use payfleet_common::messages::{self, PaymentRequested, RequestedItem, SCHEMA_VERSION};
use payfleet_workers::{domain::ledger, stages::order_validation};
use serde_json::Value;

const TEA_HOUSE: &str = "tea-house";

async fn world(tag: &str) -> anyhow::Result<World> {
    let mut world = World::new(tag, |_| {}, Duration::from_millis(100)).await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(
        &mut tx,
        "alice",
        "CNY",
        d("500.00"),
        "onboarding-test-wallet",
    )
    .await?;
    tx.commit().await?;
    world.start(&[]).await?;
    Ok(world)
}

/// A wallet payment of one tea (30.00) from the tea house, signed with `key`.
async fn pay(world: &World, order: &str, key: &str) -> anyhow::Result<()> {
    pay_for(world, order, key, "tea", "30.00").await
}

/// A wallet payment of one `sku` at `price` from the tea house.
async fn pay_for(
    world: &World,
    order: &str,
    key: &str,
    sku: &str,
    price: &str,
) -> anyhow::Result<()> {
    let request = PaymentRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: TEA_HOUSE.into(),
        merchant_order_id: order.into(),
        user_id: "alice".into(),
        currency: "CNY".into(),
        items: vec![RequestedItem {
            sku: sku.into(),
            quantity: 1,
        }],
        coupon_code: None,
        payment_method: "balance".into(),
        payer_token: None,
        expected_amount: d(price),
        notify_url: None,
        requested_at: Utc::now(),
    };
    world
        .publish_signed_with(key, messages::kind::PAYMENT_REQUESTED, &request)
        .await
}

async fn rotate(world: &World, grace: &str) -> anyhow::Result<(i32, String, String)> {
    world
        .cli(&["merchant", "rotate-key", TEA_HOUSE, "--grace", grace])
        .await
}

/// How the tea house's order `order` ended: its payment's status, or the
/// reason its request was refused before it became one.
async fn ended(world: &World, order: &str) -> anyhow::Result<String> {
    let id = order_validation::payment_id(TEA_HOUSE, order);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let settled: Option<String> = sqlx::query_scalar(
            "SELECT status FROM payments WHERE id = $1 AND status IN ('settled', 'failed', 'rejected')",
        )
        .bind(id)
        .fetch_optional(world.pool())
        .await?;
        let refused: Option<String> = sqlx::query_scalar(
            "SELECT reason FROM request_rejections WHERE merchant_id = $1 AND merchant_order_id = $2",
        )
        .bind(TEA_HOUSE)
        .bind(order)
        .fetch_optional(world.pool())
        .await?;
        if let Some(ended) = settled.or(refused) {
            return Ok(ended);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{order} did not end within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_onboarded_by_command_is_suspended_activated_and_given_a_new_key()
-> anyhow::Result<()> {
    let world = world("onboard").await?;
    let (code, out, err) = world
        .cli(&[
            "merchant",
            "add",
            TEA_HOUSE,
            "--name",
            "Tea House",
            "--fee-rate",
            "0.0060",
            "--notify-url",
            "https://tea.example/payfleet",
            "--operator",
            "ops-alice",
            "--json",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    let added: Value = serde_json::from_str(&out)?;
    let first_key = added["request_key"]
        .as_str()
        .expect("the key, once")
        .to_owned();
    assert!(
        first_key.starts_with("pfk_") && first_key.len() == 68,
        "{first_key}"
    );
    assert_eq!(added["status"], "active");
    assert_eq!(added["fee_rate"], "0.0060");

    pay(&world, "o-1", &first_key).await?;
    assert_eq!(ended(&world, "o-1").await?, "settled");

    // Suspended: refused, with the reason its requests get.
    let (code, out, err) = world
        .cli(&[
            "merchant",
            "suspend",
            TEA_HOUSE,
            "--reason",
            "chargebacks under review",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("suspended (chargebacks under review)"),
        "{out}"
    );
    pay(&world, "o-2", &first_key).await?;
    assert_eq!(ended(&world, "o-2").await?, "merchant_suspended");
    let (code, _, err) = world
        .cli(&["merchant", "suspend", TEA_HOUSE, "--reason", "again"])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("already suspended"), "{err}");
    let (code, _, _) = world
        .cli(&["merchant", "activate", TEA_HOUSE, "--reason", "cleared"])
        .await?;
    assert_eq!(code, 0);
    pay(&world, "o-3", &first_key).await?;
    assert_eq!(ended(&world, "o-3").await?, "settled");

    // A new key; the one before is valid for the grace period, then not.
    let (code, out, err) = rotate(&world, "1h").await?;
    assert_eq!(code, 0, "{out}{err}");
    let read_key = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("new request key (shown once): "))
            .expect("the new key")
            .to_owned()
    };
    let second_key = read_key(&out);
    assert_ne!(second_key, first_key);
    assert!(out.contains("previous key"), "{out}");
    pay(&world, "o-4", &first_key).await?;
    pay(&world, "o-5", &second_key).await?;
    assert_eq!(
        ended(&world, "o-4").await?,
        "settled",
        "the old key, within its grace"
    );
    assert_eq!(ended(&world, "o-5").await?, "settled");
    // A second rotation while the first's grace runs would drop the key
    // the merchant may still sign with: refused.
    let (code, _, err) = rotate(&world, "1h").await?;
    assert_ne!(code, 0);
    assert!(err.contains("within a rotation's grace period"), "{err}");
    // A leaked key: --grace 0 ends every older key at once.
    let (code, out, err) = rotate(&world, "0").await?;
    assert_eq!(code, 0, "{out}{err}");
    let third_key = read_key(&out);
    pay(&world, "o-6", &second_key).await?;
    pay(&world, "o-7", &third_key).await?;
    assert_eq!(
        ended(&world, "o-6").await?,
        "bad_signature",
        "ended at once"
    );
    assert_eq!(ended(&world, "o-7").await?, "settled");
    let (code, _, err) = rotate(&world, "8d").await?;
    assert_ne!(code, 0);
    assert!(err.contains("--grace: from 0"), "{err}");

    // Every action on record, keys only by fingerprint.
    let (code, out, _) = world
        .cli(&["merchant", "show", TEA_HOUSE, "--json"])
        .await?;
    assert_eq!(code, 0);
    let story: Value = serde_json::from_str(&out)?;
    assert_eq!(
        story["merchant"]["acts_for_users"], false,
        "a shop never moves users' wallets"
    );
    // The platform's wallet application is registered the same way, to act for users.
    let (code, out, err) = world
        .cli(&[
            "merchant",
            "add",
            "wallet-app",
            "--name",
            "Wallet",
            "--acts-for-users",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("acts for users"), "{out}");
    let acts: bool =
        sqlx::query_scalar("SELECT acts_for_users FROM merchants WHERE id = 'wallet-app'")
            .fetch_one(world.pool())
            .await?;
    assert!(acts);
    // A seller registered with its bank account is paid out; a bad token is refused.
    let (code, out, err) = world
        .cli(&[
            "merchant",
            "add",
            "paid-seller",
            "--name",
            "Paid Seller",
            "--payout-account",
            "acct_paid_seller",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pays out to acct_paid_seller"), "{out}");
    let (code, _, err) = world
        .cli(&[
            "merchant",
            "add",
            "bad-seller",
            "--name",
            "Bad",
            "--payout-account",
            "",
        ])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("--payout-account"), "{err}");
    let actions: Vec<&str> = story["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["rotate_key", "rotate_key", "activate", "suspend", "add"]
    );
    let audit: String = sqlx::query_scalar(
        "SELECT string_agg(before::text || after::text, ' ') FROM merchant_actions WHERE merchant_id = $1",
    )
    .bind(TEA_HOUSE)
    .fetch_one(world.pool())
    .await?;
    for key in [&first_key, &second_key, &third_key] {
        assert!(!audit.contains(key.as_str()), "no key in the audit");
    }

    // The payer's wallet: 500.00 topped up, five teas of 30.00 paid.
    let (code, out, err) = world.cli(&["wallet", "show", "alice", "--json"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let story: Value = serde_json::from_str(&out)?;
    let money = |v: &Value| -> rust_decimal::Decimal {
        v.as_str().and_then(|a| a.parse().ok()).expect("an amount")
    };
    assert_eq!(
        money(&story["wallets"][0]["total"]),
        d("350.00"),
        "{story:#}"
    );
    assert_eq!(money(&story["wallets"][0]["frozen"]), d("0"));
    let kinds: Vec<&str> = story["statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "debit").count(),
        5,
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"top_up"), "oldest last: {kinds:?}");

    // The seller of the five settled teas: 30.00 each less its 1 % fee.
    let (code, out, err) = world.cli(&["merchant", "balance", "m1", "--json"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let balances: Value = serde_json::from_str(&out)?;
    let cny = &balances[0];
    assert_eq!(cny["currency"], "CNY", "{balances:#}");
    for (figure, expected) in [
        ("available", "148.50"),
        ("reserved", "0"),
        ("in_flight", "0"),
        ("settled_today", "148.50"),
    ] {
        assert_eq!(money(&cny[figure]), d(expected), "{figure}: {balances:#}");
    }
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_merchant_commands_get_one_clear_line_and_change_nothing() -> anyhow::Result<()> {
    let world = world("onboardbad").await?;
    for (args, says) in [
        (
            vec!["merchant", "add", "m-x", "--name", "X", "--fee-rate", "1.5"],
            "--fee-rate 1.5",
        ),
        (
            vec![
                "merchant",
                "add",
                "m-x",
                "--name",
                "X",
                "--notify-url",
                "ftp://x",
            ],
            "--notify-url",
        ),
        (
            vec!["merchant", "add", "m1", "--name", "Again"],
            "already exists",
        ),
        (vec!["merchant", "show", "nobody"], "no merchant `nobody`"),
        (
            vec!["merchant", "rotate-key", "nobody"],
            "no merchant `nobody`",
        ),
        (vec!["merchant", "suspend", "m1"], "--reason"),
        (
            vec!["merchant", "rotate-key", "m1", "--grace", "soon"],
            "--grace",
        ),
    ] {
        let (code, out, err) = world.cli(&args).await?;
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, out, err) = world.cli(&["user", "add", "bob", "--name", "Bob"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = world.cli(&["wallet", "show", "bob"]).await?;
    assert_eq!(code, 0);
    assert!(
        out.contains("user bob (Bob): active") && out.contains("no wallet yet"),
        "{out}"
    );
    let (merchants, actions): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM merchants WHERE id = 'm-x'), (SELECT count(*) FROM merchant_actions)",
    )
    .fetch_one(world.pool())
    .await?;
    assert_eq!((merchants, actions), (0, 0));
    world.finish().await
}

/// The channel the shop's card payment `order` went to.
async fn routed(world: &World, order: &str) -> anyhow::Result<String> {
    assert_eq!(world.outcome(order).await?.0, "settled", "{order}");
    Ok(
        sqlx::query_scalar("SELECT channel FROM payments WHERE id = $1")
            .bind(order_validation::payment_id(fleet::SHOP, order))
            .fetch_one(world.pool())
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_added_by_command_takes_payments_until_disabled() -> anyhow::Result<()> {
    let mut world = world("onboardchannel").await?;
    let base_url: String = sqlx::query_scalar("SELECT base_url FROM channels WHERE name = $1")
        .bind(CARD)
        .fetch_one(world.pool())
        .await?;
    let dir = std::env::temp_dir().join(format!("payfleet-onboarding-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret_file = dir.join("new-card.secret");
    std::fs::write(&secret_file, "new-card-webhook-secret\n")?;
    let secret_path = secret_file.to_string_lossy().into_owned();
    let add = |extra: &[&str]| {
        let mut args = vec![
            "channel",
            "add",
            NEW_CARD,
            "--base-url",
            &base_url,
            "--webhook-secret-file",
            &secret_path,
            "--methods",
            "card",
            "--fee-rate",
            "0.0060",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = add(&["--reversal-cutoff", "22:00"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = world.cli(&args).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reversal cut-off 22:00:00"), "{out}");
    let (code, _, err) = world.cli(&args).await?;
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    // The cheaper channel takes the card payments.
    world.pay("c-1", "card", "tok_success").await?;
    assert_eq!(routed(&world, "c-1").await?, NEW_CARD);
    let (code, out, err) = world
        .cli(&[
            "channel",
            "disable",
            NEW_CARD,
            "--reason",
            "acquirer incident",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    world.pay("c-2", "card", "tok_success").await?;
    assert_eq!(routed(&world, "c-2").await?, CARD, "out of routing");
    let (code, out, _) = world.cli(&["channel", "list"]).await?;
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with(NEW_CARD))
        .expect("listed");
    assert!(
        line.contains("disabled (acquirer incident)") && line.contains("breaker closed"),
        "{line}"
    );
    let (code, _, _) = world
        .cli(&["channel", "enable", NEW_CARD, "--reason", "incident over"])
        .await?;
    assert_eq!(code, 0);
    world.pay("c-3", "card", "tok_success").await?;
    assert_eq!(routed(&world, "c-3").await?, NEW_CARD);
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM channel_actions WHERE channel = $1 ORDER BY id")
            .bind(NEW_CARD)
            .fetch_all(world.pool())
            .await?;
    assert_eq!(actions, ["add", "disable", "enable"]);

    // A payment routed to the channel before it was taken out, and not yet
    // charged (channel-call is not running): nothing is sent there, it fails.
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
    let waiting = world.pay("c-4", "card", "tok_success").await?;
    payfleet_tests::wait_until(WAIT, "c-4 frozen at the new channel", || async {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, channel FROM payments WHERE id = $1")
                .bind(waiting)
                .fetch_optional(world.pool())
                .await?;
        Ok(row == Some(("frozen".to_owned(), Some(NEW_CARD.to_owned()))))
    })
    .await?;
    let (code, _, _) = world
        .cli(&[
            "channel",
            "disable",
            NEW_CARD,
            "--reason",
            "second incident",
        ])
        .await?;
    assert_eq!(code, 0);
    world.stop().await;
    world.start(&[]).await?;
    let (status, reason) = world.outcome("c-4").await?;
    assert_eq!(status, "failed");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("channel_disabled")),
        "{reason:?}"
    );
    let (attempt, _, attempt_status) = world.attempt(waiting).await?;
    assert_eq!(attempt_status, "failed");
    assert_eq!(
        world.charges(NEW_CARD, attempt),
        0,
        "nothing sent to the disabled channel"
    );

    let audit: String =
        sqlx::query_scalar("SELECT string_agg(after::text, ' ') FROM channel_actions")
            .fetch_one(world.pool())
            .await?;
    assert!(
        !audit.contains("new-card-webhook-secret"),
        "no secret in the audit"
    );

    for (args, says) in [
        (
            vec![
                "channel",
                "add",
                "x",
                "--base-url",
                "ftp://x",
                "--webhook-secret-file",
                secret_path.as_str(),
                "--methods",
                "card",
                "--fee-rate",
                "0",
            ],
            "--base-url",
        ),
        (
            vec![
                "channel",
                "add",
                "x",
                "--base-url",
                "https://x.example",
                "--webhook-secret-file",
                secret_path.as_str(),
                "--methods",
                "cash",
                "--fee-rate",
                "0",
            ],
            "--methods cash",
        ),
        (
            vec![
                "channel",
                "add",
                "x",
                "--base-url",
                "https://x.example",
                "--webhook-secret-file",
                "/nonexistent/secret",
                "--methods",
                "card",
                "--fee-rate",
                "0",
            ],
            "--webhook-secret-file",
        ),
        (
            vec![
                "channel",
                "add",
                "x",
                "--base-url",
                "https://x.example",
                "--webhook-secret-file",
                secret_path.as_str(),
                "--methods",
                "card",
                "--fee-rate",
                "0",
                "--reversal-cutoff",
                "25:00",
            ],
            "not a time of day",
        ),
        (
            vec!["channel", "disable", "balance", "--reason", "no"],
            "always routed",
        ),
        (
            vec!["channel", "enable", "nowhere", "--reason", "no"],
            "no channel `nowhere`",
        ),
    ] {
        let (code, out, err) = world.cli(&args).await?;
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_is_imported_whole_once_and_a_bad_file_changes_nothing() -> anyhow::Result<()> {
    let world = world("onboardcatalogue").await?;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contracts/catalogue/example.json"
    );
    // The example's seller is not a merchant yet: refused, nothing written.
    let (code, _, err) = world.cli(&["catalogue", "import", example]).await?;
    assert_ne!(code, 0);
    assert!(
        err.contains("seller `tea-house` is not a merchant"),
        "{err}"
    );
    let (code, out, err) = world
        .cli(&[
            "merchant",
            "add",
            TEA_HOUSE,
            "--name",
            "Tea House",
            "--json",
        ])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    let key = serde_json::from_str::<Value>(&out)?["request_key"]
        .as_str()
        .expect("the key")
        .to_owned();

    let (code, out, err) = world
        .cli(&["catalogue", "import", example, "--json"])
        .await?;
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(
        report,
        serde_json::json!({"products_added": 2, "products_updated": 0, "products_unchanged": 0,
                           "stock_units_added": 540, "tiers_set": 1, "tiers_removed": 0, "coupons_added": 1, "coupons_unchanged": 0})
    );
    let (code, out, _) = world.cli(&["catalogue", "import", example]).await?;
    assert_eq!(code, 0);
    assert!(
        out.contains("nothing changed (2 products, 1 coupons as they were)"),
        "{out}"
    );

    // A file changing an issued coupon's terms is refused whole: its new
    // product is not added either.
    let mut changed: Value = serde_json::from_str(&std::fs::read_to_string(example)?)?;
    changed["coupons"][0]["total_limit"] = 5.into();
    changed["products"][1]["unit_price"] = "300.00".into();
    changed["products"]
        .as_array_mut()
        .expect("products")
        .push(serde_json::json!({"sku": "cup-celadon", "seller": TEA_HOUSE, "name": "Cup", "unit_price": "25.00", "currency": "CNY"}));
    let dir = std::env::temp_dir().join(format!("payfleet-catalogue-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("changed.json");
    std::fs::write(&path, serde_json::to_vec(&changed)?)?;
    let path = path.to_string_lossy().into_owned();
    let (code, _, err) = world.cli(&["catalogue", "import", &path]).await?;
    assert_ne!(code, 0);
    assert!(
        err.contains("coupon `TEA-20-OFF-200` was issued with other terms"),
        "{err}"
    );
    let (cups, teapot): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM products WHERE sku = 'cup-celadon'),
                (SELECT unit_price::text FROM products WHERE sku = 'teapot-yixing')",
    )
    .fetch_one(world.pool())
    .await?;
    assert_eq!(
        (cups, teapot.as_str()),
        (0, "320.00"),
        "nothing half-imported"
    );
    // Without the coupon change: the price change, the new product, and
    // the oolong's tier gone.
    changed["coupons"][0]["total_limit"] = 1000.into();
    changed["products"][0]
        .as_object_mut()
        .expect("a product")
        .remove("tiers");
    std::fs::write(&path, serde_json::to_vec(&changed)?)?;
    let (code, out, err) = world.cli(&["catalogue", "import", &path]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("products 1 added, 1 updated, 1 unchanged")
            && out.contains("price tiers 0 set, 1 removed"),
        "{out}"
    );
    let (code, _, err) = world
        .cli(&["catalogue", "import", "/nonexistent.json"])
        .await?;
    assert_ne!(code, 0);
    assert!(err.contains("reading /nonexistent.json"), "{err}");
    std::fs::write(&path, br#"{"products": [{"sku": "x"}]}"#)?;
    let (code, _, err) = world.cli(&["catalogue", "import", &path]).await?;
    assert_ne!(code, 0);
    assert!(
        err.contains("does not follow the catalogue schema at /products/0"),
        "{err}"
    );

    // What was imported is sold.
    pay_for(&world, "o-oolong", &key, "tea-oolong-250g", "89.00").await?;
    assert_eq!(ended(&world, "o-oolong").await?, "settled");
    let units: i64 = sqlx::query_scalar(
        "SELECT sum(available)::bigint FROM stock_buckets WHERE sku = 'tea-oolong-250g'",
    )
    .fetch_one(world.pool())
    .await?;
    assert_eq!(units, 499);
    std::fs::remove_dir_all(&dir).ok();
    world.finish().await
}

/// The README's "A fresh database, set up for real use", step by step,
/// then a card payment through what those steps set up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_is_set_up_for_real_use_with_the_commands_alone() -> anyhow::Result<()> {
    use payfleet_sandbox_gateway::{Gateway, GatewayConfig};
    let mut harness = fleet::Harness::new("freshdb", true, |_| {}).await?;
    let gateway = Gateway::new(GatewayConfig {
        webhook_delay: Duration::from_millis(100),
        ..GatewayConfig::standard()
    });
    let gateway_stop = payfleet_common::CancellationToken::new();
    let (bound, _) = gateway
        .serve("127.0.0.1:0".parse()?, gateway_stop.clone())
        .await?;
    let dir = std::env::temp_dir().join(format!("payfleet-freshdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join("sandbox-card.secret");
    std::fs::write(&secret, "sandbox-card-secret\n")?;
    let (secret, base_url) = (
        secret.to_string_lossy().into_owned(),
        format!("http://{bound}"),
    );
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contracts/catalogue/example.json"
    );
    let mut key = String::new();
    for step in [
        vec!["migrate"],
        vec!["topology", "apply"],
        vec![
            "merchant",
            "add",
            TEA_HOUSE,
            "--name",
            "Tea House",
            "--fee-rate",
            "0.0060",
            "--json",
        ],
        vec![
            "channel",
            "add",
            "sandbox-card",
            "--base-url",
            &base_url,
            "--webhook-secret-file",
            &secret,
            "--methods",
            "card",
            "--fee-rate",
            "0.0120",
            "--reversal-cutoff",
            "22:00",
        ],
        vec!["catalogue", "import", example],
        vec!["user", "add", "u-1042", "--name", "Li Wei"],
    ] {
        let (code, out, err) = fleet::cli(&harness.env, &step).await?;
        assert_eq!(code, 0, "{step:?}: {out}{err}");
        if step[0] == "merchant" {
            key = serde_json::from_str::<Value>(&out)?["request_key"]
                .as_str()
                .expect("the key")
                .to_owned();
        }
    }
    harness.start(&[]).await?;
    let request = PaymentRequested {
        schema_version: SCHEMA_VERSION,
        merchant_id: TEA_HOUSE.into(),
        merchant_order_id: "first-order".into(),
        user_id: "u-1042".into(),
        currency: "CNY".into(),
        items: vec![RequestedItem {
            sku: "teapot-yixing".into(),
            quantity: 1,
        }],
        coupon_code: None,
        payment_method: "card".into(),
        payer_token: Some("tok_success".into()),
        expected_amount: d("320.00"),
        notify_url: None,
        requested_at: Utc::now(),
    };
    harness.env.publish_payment_request(&key, &request).await?;
    let id = order_validation::payment_id(TEA_HOUSE, "first-order");
    payfleet_tests::wait_until(WAIT, "the first payment settled", || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM payments WHERE id = $1")
                .bind(id)
                .fetch_optional(harness.pool())
                .await?;
        Ok(status.as_deref() == Some("settled"))
    })
    .await?;
    // The channel charged it, and the merchant was credited less its fee.
    let attempt: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'",
    )
    .bind(id)
    .fetch_one(harness.pool())
    .await?;
    assert_eq!(
        gateway
            .trade("sandbox-card", &attempt.to_string())
            .map(|t| t.charges),
        Some(1)
    );
    harness.stop_and_check().await?;
    let (code, out, _) =
        fleet::cli(&harness.env, &["merchant", "balance", TEA_HOUSE, "--json"]).await?;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out)?[0]["available"],
        "318.08",
        "320.00 less 0.6 %"
    );
    gateway_stop.cancel();
    std::fs::remove_dir_all(&dir).ok();
    harness.env.teardown().await
}
