//! Status requests from upstream, over the real services: a merchant asks
//! where its payment and its refund stand (by payment id, merchant order
//! id and merchant refund id; through direct reply-to and through a queue
//! of its own; as the upstream RabbitMQ user) and gets what the database
//! holds; another merchant, a forged signature, a stale, an unknown or a
//! malformed request get an error and no data. Every scenario ends with
//! the fleet's invariants.

mod fleet;

use std::time::Duration;

use chrono::Utc;
use fleet::{SHOP, SHOP_KEY, WAIT, d, sandbox::World};
use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use payfleet_common::{
    PaymentId, broker,
    messages::{
        self, RefundRequested, SCHEMA_VERSION, StatusErrorCode, StatusLookup, StatusReply,
        StatusRequest,
    },
};
use payfleet_tests::wait_until;
use payfleet_workers::{
    domain::{ledger, refund::record::upstream_id},
    status_requests::client,
    upstream_user::UpstreamUser,
};
use rust_decimal::Decimal;
use uuid::Uuid;

const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Another merchant of the seeded catalogue, with its own signing key.
const OTHER: &str = "m1";
const OTHER_KEY: &str = "k1";

async fn world(tag: &str) -> anyhow::Result<World> {
    let mut world = World::new(tag, |_| {}, Duration::from_millis(100)).await?;
    let mut tx = world.pool().begin().await?;
    ledger::top_up(&mut tx, "alice", "CNY", d("500.00"), "status-test-wallet").await?;
    tx.commit().await?;
    world.start(&[]).await?;
    Ok(world)
}

/// A settled wallet payment of 80.00 for `order`.
async fn paid(world: &World, order: &str) -> anyhow::Result<PaymentId> {
    let id = world.pay(order, "balance", "tok_success").await?;
    assert_eq!(world.outcome(order).await?.0, "settled", "{order}");
    Ok(id)
}

/// A refund of `amount` of the shop's `order`, asked and finished.
async fn refunded(
    world: &World,
    refund_no: &str,
    order: &str,
    amount: &str,
) -> anyhow::Result<Uuid> {
    let request = RefundRequested {
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
    };
    world
        .publish_signed(messages::kind::REFUND_REQUESTED, &request)
        .await?;
    let id = upstream_id(SHOP, refund_no);
    wait_until(WAIT, "the refund booked", || async {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM refunds WHERE id = $1 AND booked_at IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(world.pool())
        .await?;
        Ok(status.as_deref() == Some("succeeded"))
    })
    .await?;
    Ok(id)
}

async fn ask(
    world: &World,
    merchant: &str,
    key: &str,
    lookup: StatusLookup,
) -> anyhow::Result<StatusReply> {
    let connection = world.env.amqp().await?;
    let reply = client::ask(
        &connection,
        &StatusRequest::new(merchant, lookup),
        key,
        ASK_TIMEOUT,
    )
    .await;
    let _ = connection.close(200, "asked".into()).await;
    Ok(reply?)
}

async fn ask_raw(
    world: &World,
    body: &[u8],
    signature: Option<&str>,
) -> anyhow::Result<StatusReply> {
    let connection = world.env.amqp().await?;
    let reply = client::ask_raw(&connection, body, signature, ASK_TIMEOUT).await;
    let _ = connection.close(200, "asked".into()).await;
    Ok(reply?)
}

/// The error of a reply that must carry no data.
fn refused(reply: &StatusReply) -> (StatusErrorCode, String) {
    assert!(
        reply.payment.is_none() && reply.refund_id.is_none(),
        "data in a refusal: {reply:?}"
    );
    let error = reply.error.as_ref().expect("an error");
    (error.code, error.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_is_told_where_its_payment_and_its_refund_stand() -> anyhow::Result<()> {
    let world = world("statusown").await?;
    let payment = paid(&world, "st-1").await?;
    let refund = refunded(&world, "st-rf-1", "st-1", "30.00").await?;

    let by_order = ask(
        &world,
        SHOP,
        SHOP_KEY,
        StatusLookup::MerchantOrder("st-1".into()),
    )
    .await?;
    assert!(by_order.error.is_none(), "{by_order:?}");
    let standing = by_order.payment.clone().expect("the payment");
    assert_eq!(standing.payment_id, payment);
    assert_eq!(standing.merchant_order_id, "st-1");
    assert_eq!(
        (
            standing.status.as_str(),
            standing.amount,
            standing.currency.as_str()
        ),
        ("settled", d("80.00"), "CNY"),
        "what was paid"
    );
    assert_eq!(standing.payment_method, "balance");
    assert_eq!(standing.refunded_total, d("30.00"));
    let (channel, created_at, updated_at): (
        Option<String>,
        chrono::DateTime<Utc>,
        chrono::DateTime<Utc>,
    ) = sqlx::query_as("SELECT channel, created_at, updated_at FROM payments WHERE id = $1")
        .bind(payment)
        .fetch_one(world.pool())
        .await?;
    assert_eq!(
        (
            standing.channel.clone(),
            standing.created_at,
            standing.updated_at
        ),
        (channel, created_at, updated_at)
    );
    let [listed] = standing.refunds.as_slice() else {
        panic!("one refund: {:?}", standing.refunds)
    };
    assert_eq!(listed.refund_id, refund);
    assert_eq!(
        (
            listed.kind.as_str(),
            listed.origin.as_str(),
            listed.merchant_refund_id.as_deref()
        ),
        ("refund", "upstream", Some("st-rf-1"))
    );
    assert_eq!(
        (listed.amount, listed.status.as_str()),
        (d("30.00"), "succeeded")
    );
    assert!(listed.refunded_at.is_some());
    let booked: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0) FROM refunds WHERE payment_id = $1 AND status = 'succeeded'",
    )
    .bind(payment)
    .fetch_one(world.pool())
    .await?;
    assert_eq!(booked, standing.refunded_total, "the database's figure");

    let by_id = ask(&world, SHOP, SHOP_KEY, StatusLookup::Payment(payment)).await?;
    assert_eq!(
        by_id.payment,
        Some(standing.clone()),
        "by payment id, the same payment"
    );
    let by_refund = ask(
        &world,
        SHOP,
        SHOP_KEY,
        StatusLookup::MerchantRefund("st-rf-1".into()),
    )
    .await?;
    assert_eq!(
        by_refund.refund_id,
        Some(refund),
        "names the refund asked for"
    );
    assert_eq!(by_refund.payment, Some(standing.clone()));
    // refund and reversal ids are separate namespaces
    let reversal = ask(
        &world,
        SHOP,
        SHOP_KEY,
        StatusLookup::MerchantReversal("st-rf-1".into()),
    )
    .await?;
    assert_eq!(refused(&reversal).0, StatusErrorCode::NotFound);

    // a queue of the asker's own works as well as direct reply-to
    let connection = world.env.amqp().await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let body = serde_json::to_vec(&StatusRequest::new(SHOP, StatusLookup::Payment(payment)))?;
    let mut headers = FieldTable::default();
    broker::set_header(
        &mut headers,
        messages::SIGNATURE_HEADER,
        messages::sign(SHOP_KEY, &body),
    );
    channel
        .basic_publish(
            "payfleet.ingress".into(),
            messages::kind::STATUS_REQUEST.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_reply_to(queue.name().clone())
                .with_correlation_id("corr-queue-1".into())
                .with_headers(headers),
        )
        .await?
        .await?;
    let delivery = tokio::time::timeout(ASK_TIMEOUT, replies.next())
        .await?
        .expect("a reply")?;
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-queue-1")
    );
    assert_eq!(
        delivery.properties.kind().as_ref().map(|c| c.as_str()),
        Some(messages::kind::STATUS_REPLY)
    );
    let reply: StatusReply = serde_json::from_slice(&delivery.data)?;
    assert_eq!(reply.payment, Some(standing));
    let _ = connection.close(200, "done".into()).await;

    // upstream's own RabbitMQ user may ask, with no right beyond the ingress exchange
    let vhost = world.env.name.clone();
    let user = format!("{vhost}_upstream");
    UpstreamUser::new(&user, &vhost, "payfleet.ingress").create("upstream-pw")?;
    let asked_as_upstream = async {
        let endpoint =
            broker::Endpoint::plain(&format!("amqp://{user}:upstream-pw@127.0.0.1:5672/{vhost}"));
        let connection = broker::connect_once(&endpoint, "upstream-test").await?;
        let request = StatusRequest::new(SHOP, StatusLookup::MerchantOrder("st-1".into()));
        let reply = client::ask(&connection, &request, SHOP_KEY, ASK_TIMEOUT).await;
        let _ = connection.close(200, "asked".into()).await;
        anyhow::Ok(reply?)
    }
    .await;
    let _ = payfleet_tests::rabbitmqctl(&["delete_user", &user]).await;
    assert_eq!(
        asked_as_upstream?.payment.map(|p| p.payment_id),
        Some(payment)
    );

    world.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_the_askers_own_or_not_well_asked_gets_an_error_and_no_data()
-> anyhow::Result<()> {
    let world = world("statusrefused").await?;
    let payment = paid(&world, "st-2").await?;

    // another merchant: the same not_found as a payment that does not exist
    let theirs = ask(&world, OTHER, OTHER_KEY, StatusLookup::Payment(payment)).await?;
    let by_order = ask(
        &world,
        OTHER,
        OTHER_KEY,
        StatusLookup::MerchantOrder("st-2".into()),
    )
    .await?;
    let missing = ask(
        &world,
        SHOP,
        SHOP_KEY,
        StatusLookup::Payment(PaymentId::from(Uuid::new_v4())),
    )
    .await?;
    assert_eq!(refused(&theirs).0, StatusErrorCode::NotFound);
    assert_eq!(
        refused(&theirs),
        refused(&missing),
        "never tells that another merchant's id exists"
    );
    assert_eq!(refused(&by_order), refused(&missing));

    // a forged signature: the shop's request signed with another key, or unsigned
    let request = StatusRequest::new(SHOP, StatusLookup::Payment(payment));
    let forged = ask(&world, SHOP, OTHER_KEY, StatusLookup::Payment(payment)).await?;
    assert_eq!(refused(&forged).0, StatusErrorCode::BadSignature);
    let unsigned = ask_raw(&world, &serde_json::to_vec(&request)?, None).await?;
    assert_eq!(refused(&unsigned).0, StatusErrorCode::BadSignature);

    // stale, or dated ahead
    let stale = StatusRequest {
        requested_at: Utc::now() - chrono::Duration::hours(2),
        ..request.clone()
    };
    let body = serde_json::to_vec(&stale)?;
    let reply = ask_raw(&world, &body, Some(&messages::sign(SHOP_KEY, &body))).await?;
    assert_eq!(refused(&reply).0, StatusErrorCode::RequestExpired);
    let ahead = StatusRequest {
        requested_at: Utc::now() + chrono::Duration::hours(2),
        ..request.clone()
    };
    let body = serde_json::to_vec(&ahead)?;
    let reply = ask_raw(&world, &body, Some(&messages::sign(SHOP_KEY, &body))).await?;
    assert_eq!(refused(&reply).0, StatusErrorCode::InvalidRequestedAt);

    // an unknown merchant, a body that breaks the schema, one that is not JSON
    let reply = ask(&world, "nobody", "x", StatusLookup::Payment(payment)).await?;
    assert_eq!(refused(&reply).0, StatusErrorCode::UnknownMerchant);
    let two = StatusRequest {
        merchant_order_id: Some("st-2".into()),
        ..request.clone()
    };
    let body = serde_json::to_vec(&two)?;
    let reply = ask_raw(&world, &body, Some(&messages::sign(SHOP_KEY, &body))).await?;
    assert_eq!(
        refused(&reply).0,
        StatusErrorCode::InvalidRequest,
        "two lookups"
    );
    let body = br#"{"schema_version":1,"merchant_id":"shop","#;
    let reply = ask_raw(&world, body, Some(&messages::sign(SHOP_KEY, body))).await?;
    assert_eq!(
        refused(&reply).0,
        StatusErrorCode::InvalidRequest,
        "not JSON"
    );

    // no reply_to: nobody to answer; consumed, logged and counted, the fleet unharmed
    let body = serde_json::to_vec(&request)?;
    let mut headers = FieldTable::default();
    broker::set_header(
        &mut headers,
        messages::SIGNATURE_HEADER,
        messages::sign(SHOP_KEY, &body),
    );
    let props = broker::properties(
        &Uuid::now_v7().to_string(),
        None,
        Some(messages::kind::STATUS_REQUEST),
    )
    .with_headers(headers);
    world
        .env
        .publish_raw(
            "payfleet.ingress",
            messages::kind::STATUS_REQUEST,
            &body,
            props,
        )
        .await?;
    let metrics_url = format!("http://127.0.0.1:{}/metrics", world.http_port());
    wait_until(WAIT, "the unanswerable request counted", || async {
        let metrics = reqwest::get(&metrics_url).await?.text().await?;
        Ok(metrics.contains(
            r#"payfleet_status_requests_total{result="unanswerable",code="no_reply_to"} 1"#,
        ))
    })
    .await?;
    let metrics = reqwest::get(&metrics_url).await?.text().await?;
    for counted in [
        r#"payfleet_status_requests_total{result="refused",code="not_found"} 3"#,
        r#"payfleet_status_requests_total{result="refused",code="bad_signature"} 2"#,
        r#"payfleet_status_requests_total{result="refused",code="request_expired"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted} not in:\n{metrics}");
    }
    assert_eq!(world.env.queue_depth("payfleet.status-requests").await?, 0);
    assert!(world.env.unexpected_dead_letters().await?.is_empty());
    world.finish().await
}

/// One upstream connection asks again and again: each ask opens a channel,
/// consumes direct reply-to and closes the channel. The reply consumer once
/// sent its cancel after the close (a method on a closed channel), the
/// broker closed the whole connection, and the next ask failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_asks_many_times_and_every_ask_is_answered() -> anyhow::Result<()> {
    let world = world("status_many").await?;
    let payment = paid(&world, "st-many").await?;
    let connection = world.env.amqp().await?;
    let request = StatusRequest::new(SHOP, StatusLookup::MerchantOrder("st-many".into()));
    for ask in 1..=150 {
        let reply = client::ask(&connection, &request, SHOP_KEY, ASK_TIMEOUT)
            .await
            .map_err(|error| anyhow::anyhow!("ask {ask} of 150 on one connection: {error}"))?;
        assert_eq!(
            reply.payment.map(|p| p.payment_id),
            Some(payment),
            "ask {ask}"
        );
    }
    assert!(connection.status().connected());
    let _ = connection.close(200, "asked".into()).await;
    world.finish().await
}
