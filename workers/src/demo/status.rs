//! The demo's status queries: once its refunds and reversals have ended,
//! the shop asks where some of its payments, refunds and reversals stand
//! (AMQP request–reply with direct reply-to, signed) and each answer is
//! checked against the books; a seller asks about one of the shop's
//! payments (`not_found`, no data) and one request carries a forged
//! signature (`bad_signature`).

use std::{collections::BTreeMap, time::Duration};

use payfleet_common::{
    Settings, broker,
    messages::{StatusLookup, StatusReply, StatusRequest},
};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::{SHOP, SHOP_KEY};
use crate::{invariants::Check, status_requests::client};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the status queries found.
#[derive(Debug, Default)]
pub(super) struct Asked {
    /// Answered with data, and the data agreed with the books.
    agreed: usize,
    /// Answered with data that did not agree (a broken invariant).
    disagreed: Vec<String>,
    /// Refused with an error reply, by code: the ones meant to be refused.
    refused: BTreeMap<String, usize>,
    /// Refused with an error reply though it asked for the shop's own.
    wrongly_refused: Vec<String>,
}

impl Asked {
    pub(super) fn summary(&self) -> String {
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        format!(
            "  status      {} asked: {} answered and agree with the books, {} disagree, refused {}{}",
            self.agreed
                + self.disagreed.len()
                + self.refused.values().sum::<usize>()
                + self.wrongly_refused.len(),
            self.agreed,
            self.disagreed.len(),
            refused.join(", "),
            if self.wrongly_refused.is_empty() {
                String::new()
            } else {
                format!(
                    " · {} of the shop's own refused",
                    self.wrongly_refused.len()
                )
            }
        )
    }

    /// The check the demo's verdict holds it to.
    pub(super) fn check(&self) -> Check {
        Check {
            name: "every status reply to the shop agrees with the books, and only strangers and forgeries are refused".into(),
            violations: (self.disagreed.len() + self.wrongly_refused.len()) as i64,
        }
    }
}

/// One lookup of the shop's, and what the books say its reply must hold:
/// the payment's status and what it has had back in all (its succeeded
/// refunds and reversal), and the asked refund's status.
struct Expected {
    lookup: StatusLookup,
    payment_status: String,
    refunded_total: Decimal,
    refund_status: Option<String>,
}

pub(super) async fn ask(settings: &Settings, pool: &PgPool, like: &str) -> anyhow::Result<Asked> {
    let endpoint = broker::Endpoint::from_settings(settings)?;
    let connection = broker::connect_once(&endpoint, "payfleet-demo-upstream-status").await?;
    let mut asked = Asked::default();
    for expected in expectations(pool, like).await? {
        let request = StatusRequest::new(SHOP, expected.lookup.clone());
        let reply = client::ask(&connection, &request, SHOP_KEY, TIMEOUT).await?;
        judge(&mut asked, &expected, &reply);
    }
    // A stranger: a seller asks about one of the shop's payments.
    let stranger: Option<(String, String, String)> = sqlx::query_as(
        "SELECT m.id, m.signing_key, p.merchant_order_id FROM merchants m, payments p
         WHERE m.id <> $1 AND p.merchant_id = $1 AND p.merchant_order_id LIKE $2
         ORDER BY m.id, p.merchant_order_id LIMIT 1",
    )
    .bind(SHOP)
    .bind(like)
    .fetch_optional(pool)
    .await?;
    if let Some((seller, key, order)) = stranger {
        let lookup = StatusLookup::MerchantOrder(order.clone());
        let reply = client::ask(
            &connection,
            &StatusRequest::new(&seller, lookup.clone()),
            &key,
            TIMEOUT,
        )
        .await?;
        refused_as_meant(&mut asked, &format!("{seller} asking for {order}"), &reply);
        // A forgery: the shop's request signed with another key.
        let forged = StatusRequest::new(SHOP, lookup);
        let reply = client::ask(&connection, &forged, &key, TIMEOUT).await?;
        refused_as_meant(&mut asked, &format!("a forged request for {order}"), &reply);
    }
    connection
        .close(0, "status queries asked".into())
        .await
        .ok();
    Ok(asked)
}

/// Ten payments, five refunds and the reversals of the run, by the shop's
/// own ids, with what the books say of each.
async fn expectations(pool: &PgPool, like: &str) -> anyhow::Result<Vec<Expected>> {
    let refunded_total =
        "(SELECT COALESCE(sum(o.amount), 0) FROM refunds o WHERE o.payment_id = p.id
                            AND o.origin = 'upstream' AND o.status = 'succeeded')";
    let payments: Vec<(String, String, Decimal)> = sqlx::query_as(&format!(
        "SELECT p.merchant_order_id, p.status, {refunded_total} FROM payments p
         WHERE p.merchant_id = $1 AND p.merchant_order_id LIKE $2
         ORDER BY p.merchant_order_id LIMIT 10"
    ))
    .bind(SHOP)
    .bind(like)
    .fetch_all(pool)
    .await?;
    let refunds: Vec<(String, String, String, String, Decimal)> = sqlx::query_as(&format!(
        "SELECT * FROM (
             (SELECT r.kind, r.merchant_refund_id, r.status, p.status, {refunded_total} FROM refunds r
               JOIN payments p ON p.id = r.payment_id
              WHERE r.merchant_id = $1 AND r.kind = 'refund' AND r.merchant_refund_id LIKE $2
              ORDER BY r.merchant_refund_id LIMIT 5)
             UNION ALL
             (SELECT r.kind, r.merchant_refund_id, r.status, p.status, {refunded_total} FROM refunds r
               JOIN payments p ON p.id = r.payment_id
              WHERE r.merchant_id = $1 AND r.kind = 'reversal' AND r.merchant_refund_id LIKE $2
              ORDER BY r.merchant_refund_id LIMIT 5)) asked"
    ))
    .bind(SHOP)
    .bind(like)
    .fetch_all(pool)
    .await?;
    let mut expected: Vec<Expected> = payments
        .into_iter()
        .map(|(order, status, refunded_total)| Expected {
            lookup: StatusLookup::MerchantOrder(order),
            payment_status: status,
            refunded_total,
            refund_status: None,
        })
        .collect();
    for (kind, id, refund_status, payment_status, refunded_total) in refunds {
        expected.push(Expected {
            lookup: if kind == "reversal" {
                StatusLookup::MerchantReversal(id)
            } else {
                StatusLookup::MerchantRefund(id)
            },
            payment_status,
            refunded_total,
            refund_status: Some(refund_status),
        });
    }
    Ok(expected)
}

fn judge(asked: &mut Asked, expected: &Expected, reply: &StatusReply) {
    let what = format!("{:?}", expected.lookup);
    let Some(payment) = &reply.payment else {
        asked
            .wrongly_refused
            .push(format!("{what}: {:?}", reply.error));
        return;
    };
    let refund_status = reply.refund_id.and_then(|id| {
        payment
            .refunds
            .iter()
            .find(|r| r.refund_id == id)
            .map(|r| r.status.clone())
    });
    if payment.status == expected.payment_status
        && payment.refunded_total == expected.refunded_total
        && refund_status == expected.refund_status
    {
        asked.agreed += 1;
    } else {
        asked.disagreed.push(format!(
            "{what}: the books say {} / {} back / refund {:?}, the reply {} / {} / {refund_status:?}",
            expected.payment_status,
            expected.refunded_total,
            expected.refund_status,
            payment.status,
            payment.refunded_total
        ));
    }
}

fn refused_as_meant(asked: &mut Asked, what: &str, reply: &StatusReply) {
    match (&reply.error, &reply.payment) {
        (Some(error), None) => {
            let code = serde_json::to_value(error.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", error.code));
            *asked.refused.entry(code).or_default() += 1;
        }
        _ => asked
            .disagreed
            .push(format!("{what} was answered with data")),
    }
}
