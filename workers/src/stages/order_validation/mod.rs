//! order-validation: the first stage. Turns an upstream `payment.requested`
//! into a validated payment (→ fund-freeze) or a rejection with a reason
//! (→ notification), checking the signature, the parties, the catalogue's
//! prices and stock, the coupon and the risk rules.
//!
//! Idempotency: the payment id is derived from (merchant, merchant order id);
//! the same id with the same content is a stale duplicate, with other content
//! a conflict that is rejected without touching the first payment. Requests
//! that are forged or not a payment at all are refused without taking the
//! merchant order id (`request_rejections`).

pub mod pricing;
pub mod risk;
pub mod schema;

use std::{collections::HashSet, sync::Arc};

use chrono::{DateTime, Utc};
use payfleet_common::lock::Locks;
use payfleet_common::{
    CancellationToken, broker,
    messages::{self, Outcome as Final, PaymentRequested, SCHEMA_VERSION, kind},
    money,
    runtime::{Inbound, Outcome, Shared, Stage, StageError, StageTx},
};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::payment::PaymentStatus;
use pricing::{Coupon, CouponRule, LadderStep, Product};
use risk::{Decision, RiskRules};

pub const NAME: &str = crate::domain::handoff::ORDER_VALIDATION;
const MAX_LINES: usize = 100;
const MAX_QUANTITY: u32 = 10_000;
/// Payment methods: the wallet, or a third-party channel.
pub const METHODS: [&str; 3] = ["balance", "card", "wallet"];

/// A request as far as it could be read before any database lookup.
#[derive(Debug)]
pub struct Request {
    pub merchant_id: String,
    pub merchant_order_id: String,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    /// Hash of the canonical JSON content (key order and spacing do not matter).
    pub content_hash: String,
    /// The request, or why it is refused before it becomes a payment: the
    /// reason code and a detail that starts with the JSON pointer.
    pub parsed: Result<PaymentRequested, (&'static str, String)>,
}

/// A usable merchant or merchant order id: 1 to 128 bytes, no control
/// characters. Without both, a request cannot be answered.
fn usable_id(value: &Value, name: &str) -> Result<String, String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control))
        .map(str::to_owned)
        .ok_or_else(|| format!("payment.requested has no usable `{name}`"))
}

/// Reads a JSON body as a `payment.requested`: a missing `schema_version`, or
/// one other than this fleet's, is `unsupported_schema_version`; anything else the committed
/// schema refuses is `invalid_request`, with the pointer of the first violation.
pub fn read_request(value: Value) -> Result<PaymentRequested, (&'static str, String)> {
    match value.get("schema_version") {
        Some(version) if version == &Value::from(SCHEMA_VERSION) => {}
        version => {
            let given = version.map_or_else(|| "missing".to_owned(), Value::to_string);
            return Err((
                "unsupported_schema_version",
                format!(
                    "at /schema_version: {} (this fleet speaks {SCHEMA_VERSION})",
                    schema::printable(&given)
                ),
            ));
        }
    }
    if let Some(violation) = schema::first_violation(&value) {
        return Err(("invalid_request", violation.to_string()));
    }
    // What the schema lets through and the type cannot hold (an amount past
    // Decimal's range, say) is refused the same way.
    serde_json::from_value(value).map_err(|e| {
        (
            "invalid_request",
            format!("at : {}", schema::printable(&e.to_string())),
        )
    })
}

pub struct OrderValidation {
    pub redis: Locks,
    pub risk: RiskRules,
    pub payment_ttl: chrono::Duration,
    /// `request_max_age_ms`: how far `requested_at` may be from the first receipt.
    pub request_max_age: chrono::Duration,
    /// `ingress_max_body_bytes`: a larger body is not read at all.
    pub max_body_bytes: usize,
}

impl OrderValidation {
    pub fn new(settings: &payfleet_common::Settings, redis: Locks) -> Self {
        Self {
            redis,
            risk: RiskRules::new(settings),
            payment_ttl: chrono::Duration::milliseconds(settings.payment_ttl_ms as i64),
            request_max_age: chrono::Duration::milliseconds(
                i64::try_from(settings.request_max_age_ms).unwrap_or(i64::MAX),
            ),
            max_body_bytes: settings.ingress_max_body_bytes as usize,
        }
    }
}

/// Judges a request's `requested_at` against its first receipt: the refusal
/// reason and detail when it is too old (or too far ahead), `None` when fresh.
pub fn freshness(
    requested_at: DateTime<Utc>,
    first_received_at: DateTime<Utc>,
    max_age: chrono::Duration,
) -> Option<(&'static str, String)> {
    let limit_ms = max_age.num_milliseconds();
    if first_received_at - requested_at > max_age {
        return Some((
            "request_expired",
            format!(
                "requested at {requested_at}, first received at {first_received_at}: older than request_max_age_ms ({limit_ms} ms); send a new request"
            ),
        ));
    }
    if requested_at - first_received_at > max_age {
        return Some((
            "invalid_requested_at",
            format!(
                "requested at {requested_at}, first received at {first_received_at}: later by more than request_max_age_ms ({limit_ms} ms); check the sender's clock"
            ),
        ));
    }
    None
}

/// Deletes request receipts older than `older_than`, in a bounded batch.
pub async fn prune_receipts(
    pool: &sqlx::PgPool,
    older_than: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "DELETE FROM request_receipts WHERE ctid IN (
             SELECT ctid FROM request_receipts WHERE first_received_at < now() - make_interval(secs => $1) LIMIT 10000)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Prunes request receipts an hour before the inbox rows of the same
/// messages go (`inbox_retention_days`): a first receipt must never outlive
/// the inbox row, or a replay the inbox no longer recognises would be judged
/// by a receipt from when it was fresh. Without its receipt, a replay gets a
/// new one, and its old `requested_at` is refused as `request_expired`.
pub async fn run_receipt_pruning(shared: Arc<Shared>, stop: CancellationToken) {
    let retention =
        std::time::Duration::from_secs(u64::from(shared.settings.inbox_retention_days) * 86_400)
            .saturating_sub(std::time::Duration::from_secs(3_600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
            _ = stop.cancelled() => return,
        }
        match prune_receipts(&shared.pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned request receipts past their retention"),
            Err(error) => tracing::warn!(%error, "pruning request receipts failed"),
        }
    }
}

/// The payment id of a merchant order: the same order always maps to it.
pub fn payment_id(merchant_id: &str, merchant_order_id: &str) -> Uuid {
    messages::stable_id(&["payment", merchant_id, merchant_order_id])
}

impl Stage for OrderValidation {
    type Message = Request;

    fn name(&self) -> &str {
        NAME
    }

    /// Only a body that is not JSON, or names no usable merchant and order,
    /// is undecodable (poison): it cannot be answered. Anything else is
    /// judged in `handle`, a body the schema refuses included.
    fn decode(&self, inbound: &Inbound) -> Result<Request, String> {
        // Capped before it is parsed: a body past the cap cannot be answered.
        if inbound.body.len() > self.max_body_bytes {
            return Err(format!(
                "payment.requested body of {} bytes is larger than ingress_max_body_bytes ({}); not read",
                inbound.body.len(),
                self.max_body_bytes
            ));
        }
        let value: Value = serde_json::from_slice(&inbound.body)
            .map_err(|e| format!("payment.requested is not JSON: {e}"))?;
        let merchant_id = usable_id(&value, "merchant_id")?;
        let merchant_order_id = usable_id(&value, "merchant_order_id")?;
        // serde_json's map is ordered by key: this is a canonical form.
        let canonical = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        Ok(Request {
            merchant_id,
            merchant_order_id,
            signature: broker::header_str(Some(&inbound.headers), messages::SIGNATURE_HEADER),
            content_hash: hex::encode(Sha256::digest(&canonical)),
            parsed: read_request(value),
            body: inbound.body.clone(),
        })
    }

    fn lock_key(&self, request: &Request) -> Option<String> {
        Some(format!(
            "order:{}:{}",
            request.merchant_id, request.merchant_order_id
        ))
    }

    /// Notes the first receipt of this message id, committed on its own so
    /// that a retry or a replay keeps the first one.
    async fn before_transaction(
        &self,
        pool: &sqlx::PgPool,
        inbound: &Inbound,
        _request: &Request,
    ) -> Result<(), StageError> {
        sqlx::query(
            "INSERT INTO request_receipts (message_id) VALUES ($1) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&inbound.message_id)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut StageTx,
        inbound: &Inbound,
        request: &Request,
    ) -> Result<Outcome, StageError> {
        // The ingress binds refund requests too; their stage does not exist
        // yet, so they are refused for what they are, never read as payments.
        if inbound.routing_key == "refund.requested"
            || inbound.message_type.as_deref() == Some("refund.requested")
        {
            return refuse(
                tx,
                inbound,
                request,
                "unsupported_message",
                "refund requests are not handled by this fleet yet",
            )
            .await;
        }
        let merchant: Option<(String, String)> =
            sqlx::query_as("SELECT signing_key, status FROM merchants WHERE id = $1")
                .bind(&request.merchant_id)
                .fetch_optional(tx.conn())
                .await?;
        let Some((signing_key, merchant_status)) = merchant else {
            return refuse(tx, inbound, request, "unknown_merchant", "no such merchant").await;
        };
        let signed = request
            .signature
            .as_deref()
            .is_some_and(|s| messages::verify(&signing_key, &request.body, s));
        if !signed {
            let detail = if request.signature.is_some() {
                "signature does not match the body"
            } else {
                "no signature header"
            };
            return refuse(tx, inbound, request, "bad_signature", detail).await;
        }

        let id = payment_id(&request.merchant_id, &request.merchant_order_id);
        tx.set_correlation_id(&id.to_string());
        let existing: Option<(String, String)> =
            sqlx::query_as("SELECT request_hash, status FROM payments WHERE id = $1")
                .bind(id)
                .fetch_optional(tx.conn())
                .await?;
        if let Some((hash, status)) = existing {
            if hash == request.content_hash {
                return Ok(Outcome::Stale {
                    reason: format!("duplicate request of payment {id} ({status})"),
                });
            }
            return refuse(
                tx,
                inbound,
                request,
                "idempotency_conflict",
                &format!("merchant order already used by payment {id} with different content"),
            )
            .await;
        }
        // A signed request is no licence to replay it later (after the
        // merchant is reactivated, say): it must be fresh at its first receipt.
        if let Ok(parsed) = &request.parsed {
            let first: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT first_received_at FROM request_receipts WHERE message_id = $1",
            )
            .bind(&inbound.message_id)
            .fetch_optional(tx.conn())
            .await?;
            // (written before this transaction; if pruned since, this is its first receipt)
            let first = first.unwrap_or_else(Utc::now);
            if let Some((reason, detail)) =
                freshness(parsed.requested_at, first, self.request_max_age)
            {
                return refuse(tx, inbound, request, reason, &detail).await;
            }
        }
        if merchant_status != "active" {
            return refuse(
                tx,
                inbound,
                request,
                "merchant_suspended",
                "the merchant is suspended",
            )
            .await;
        }
        let parsed = match &request.parsed {
            Ok(parsed) => parsed,
            Err((reason, detail)) => return refuse(tx, inbound, request, reason, detail).await,
        };
        match self.judge(tx.conn(), id, parsed, request).await? {
            Verdict::Reject { reason, detail } => {
                insert_payment(
                    tx.conn(),
                    id,
                    parsed,
                    request,
                    PaymentStatus::Rejected,
                    Some(&detail),
                    None,
                    None,
                    self.payment_ttl,
                )
                .await?;
                crate::domain::payment::emit_outcome(tx, id, Final::Rejected, Some(reason))
            }
            Verdict::Accept(order) => {
                let (decision, reasons) = risk::decide(
                    &self.risk,
                    &self.redis,
                    &parsed.user_id,
                    order.user_blocked,
                    id,
                    order.payable,
                    &parsed.currency,
                )
                .await;
                let risk = Some((decision, reasons.clone()));
                match decision {
                    Decision::Block => {
                        let detail = format!("risk_blocked: {}", reasons.join(", "));
                        insert_payment(
                            tx.conn(),
                            id,
                            parsed,
                            request,
                            PaymentStatus::Rejected,
                            Some(&detail),
                            risk,
                            None,
                            self.payment_ttl,
                        )
                        .await?;
                        crate::domain::payment::emit_outcome(
                            tx,
                            id,
                            Final::Rejected,
                            Some("risk_blocked"),
                        )
                    }
                    Decision::Challenge => {
                        let detail = format!("risk_challenge: {}", reasons.join(", "));
                        insert_payment(
                            tx.conn(),
                            id,
                            parsed,
                            request,
                            PaymentStatus::Challenged,
                            Some(&detail),
                            risk,
                            None,
                            self.payment_ttl,
                        )
                        .await?;
                        crate::domain::payment::emit_outcome(
                            tx,
                            id,
                            Final::Rejected,
                            Some("risk_challenge"),
                        )
                    }
                    Decision::Allow => {
                        insert_payment(
                            tx.conn(),
                            id,
                            parsed,
                            request,
                            PaymentStatus::Validated,
                            None,
                            risk,
                            Some((order.route.channel.as_str(), order.channel_fee)),
                            self.payment_ttl,
                        )
                        .await?;
                        insert_order(tx.conn(), id, parsed, &order).await?;
                        tx.emit_to_stage(
                            crate::domain::handoff::FUND_FREEZE,
                            kind::ORDER_VALIDATED,
                            &messages::OrderValidated {
                                schema_version: SCHEMA_VERSION,
                                payment_id: id,
                                amount: order.payable,
                                currency: parsed.currency.clone(),
                                validated_at: Utc::now(),
                            },
                        )?;
                        Ok(Outcome::Applied)
                    }
                }
            }
        }
    }
}

/// A priced, split order that passed every check but risk.
pub struct PricedOrder {
    pub route: crate::channels::routing::Route,
    pub channel_fee: Decimal,
    pub lines: Vec<pricing::Line>,
    pub sub_orders: Vec<pricing::SubOrder>,
    pub fee_rates: std::collections::HashMap<String, Decimal>,
    pub gross: Decimal,
    pub discount: Decimal,
    pub payable: Decimal,
    pub user_blocked: bool,
}

enum Verdict {
    Reject {
        reason: &'static str,
        detail: String,
    },
    Accept(PricedOrder),
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Result<Verdict, StageError> {
    Ok(Verdict::Reject {
        reason,
        detail: format!("{reason}: {}", detail.into()),
    })
}

impl OrderValidation {
    async fn judge(
        &self,
        conn: &mut PgConnection,
        _id: Uuid,
        r: &PaymentRequested,
        request: &Request,
    ) -> Result<Verdict, StageError> {
        if r.schema_version != SCHEMA_VERSION {
            return reject(
                "unsupported_schema_version",
                format!(
                    "schema_version {} (this fleet speaks {SCHEMA_VERSION})",
                    r.schema_version
                ),
            );
        }
        if money::currency(&r.currency).is_err() {
            return reject("unsupported_currency", r.currency.clone());
        }
        if self.risk.thresholds(&r.currency).is_none() {
            return reject(
                "unsupported_currency",
                format!("{}: no risk thresholds are configured for it", r.currency),
            );
        }
        if money::check_amount(r.expected_amount).is_err() {
            return reject(
                "invalid_amount",
                format!("expected_amount {}", r.expected_amount),
            );
        }
        if !METHODS.contains(&r.payment_method.as_str()) {
            return reject(
                "unsupported_payment_method",
                format!(
                    "`{}` (this fleet takes: {})",
                    r.payment_method,
                    METHODS.join(", ")
                ),
            );
        }
        if r.items.is_empty() || r.items.len() > MAX_LINES {
            return reject(
                "invalid_items",
                format!("{} lines (1 to {MAX_LINES})", r.items.len()),
            );
        }
        let mut seen = HashSet::new();
        for item in &r.items {
            if item.quantity == 0 || item.quantity > MAX_QUANTITY {
                return reject(
                    "invalid_quantity",
                    format!("{} x {}", item.sku, item.quantity),
                );
            }
            if !seen.insert(item.sku.as_str()) {
                return reject("duplicate_sku", item.sku.clone());
            }
        }
        if let Some(url) = &r.notify_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
                return reject("invalid_notify_url", url.clone());
            }
        }
        let _ = request;

        let user: Option<(String, bool)> =
            sqlx::query_as("SELECT status, blocked FROM users WHERE id = $1")
                .bind(&r.user_id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((user_status, user_blocked)) = user else {
            return reject("unknown_user", r.user_id.clone());
        };
        if user_status != "active" {
            return reject("user_frozen", r.user_id.clone());
        }
        if r.payment_method == "balance" {
            let wallet: Option<String> =
                sqlx::query_scalar("SELECT status FROM accounts WHERE owner_kind = 'user' AND owner_id = $1 AND currency = $2")
                    .bind(&r.user_id)
                    .bind(&r.currency)
                    .fetch_optional(&mut *conn)
                    .await?;
            match wallet.as_deref() {
                None => {
                    return reject(
                        "no_wallet",
                        format!("user {} has no {} wallet", r.user_id, r.currency),
                    );
                }
                Some("active") => {}
                Some(status) => return reject("wallet_not_active", format!("wallet is {status}")),
            }
        }

        let skus: Vec<String> = r.items.iter().map(|i| i.sku.clone()).collect();
        let products = load_products(conn, &skus).await?;
        let mut priced_items = Vec::with_capacity(r.items.len());
        for item in &r.items {
            let Some(product) = products.iter().find(|p| p.sku == item.sku) else {
                return reject("unknown_product", item.sku.clone());
            };
            if !product.on_sale {
                return reject("product_off_shelf", item.sku.clone());
            }
            if product.currency != r.currency {
                return reject(
                    "currency_mismatch",
                    format!("{} is priced in {}", item.sku, product.currency),
                );
            }
            priced_items.push((product, item.quantity));
        }
        let stock: Vec<(String, i32)> =
            sqlx::query_as("SELECT sku, available FROM stock WHERE sku = ANY($1)")
                .bind(&skus)
                .fetch_all(&mut *conn)
                .await?;
        for item in &r.items {
            let available = stock
                .iter()
                .find(|(sku, _)| *sku == item.sku)
                .map(|(_, a)| *a)
                .unwrap_or(0);
            if i64::from(available) < i64::from(item.quantity) {
                return reject(
                    "out_of_stock",
                    format!(
                        "{}: {} wanted, {} available",
                        item.sku, item.quantity, available
                    ),
                );
            }
        }

        let undiscounted = pricing::price_lines(&priced_items, Decimal::ZERO);
        let gross: Decimal = undiscounted.iter().map(|l| l.amount).sum();
        let discount = match &r.coupon_code {
            None => Decimal::ZERO,
            Some(code) => {
                let Some(coupon) = load_coupon(conn, code).await? else {
                    return reject("unknown_coupon", code.clone());
                };
                let user_uses: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM coupon_redemptions WHERE coupon_code = $1 AND user_id = $2 AND status <> 'released'",
                )
                .bind(code)
                .bind(&r.user_id)
                .fetch_one(&mut *conn)
                .await?;
                match coupon.discount(gross, &r.currency, Utc::now(), user_uses) {
                    Ok(discount) => discount,
                    Err(refusal) => return reject(refusal.reason(), code.clone()),
                }
            }
        };
        let lines = pricing::price_lines(&priced_items, discount);
        let payable = gross - discount;
        if payable <= Decimal::ZERO {
            return reject(
                "nothing_to_pay",
                format!("the discount covers the whole {gross} {}", r.currency),
            );
        }
        if payable != r.expected_amount {
            return reject(
                "price_mismatch",
                format!(
                    "expected {} {}, the catalogue says {payable}",
                    r.expected_amount, r.currency
                ),
            );
        }
        let Some(route) = crate::channels::routing::choose(
            conn,
            &self.redis,
            &self.risk.key_prefix,
            &r.payment_method,
        )
        .await?
        else {
            return reject(
                "no_channel_available",
                format!("no healthy channel takes `{}`", r.payment_method),
            );
        };
        let channel_fee = money::round(payable * route.fee_rate);
        let sub_orders = pricing::split(&lines);
        let sellers: Vec<String> = sub_orders.iter().map(|s| s.seller_id.clone()).collect();
        let fee_rates: Vec<(String, Decimal, String)> =
            sqlx::query_as("SELECT id, fee_rate, status FROM merchants WHERE id = ANY($1)")
                .bind(&sellers)
                .fetch_all(&mut *conn)
                .await?;
        if let Some((seller, _, _)) = fee_rates.iter().find(|(_, _, status)| status != "active") {
            return reject("seller_suspended", seller.clone());
        }
        Ok(Verdict::Accept(PricedOrder {
            route,
            channel_fee,
            lines,
            sub_orders,
            fee_rates: fee_rates
                .into_iter()
                .map(|(id, rate, _)| (id, rate))
                .collect(),
            gross,
            discount,
            payable,
            user_blocked,
        }))
    }
}

async fn load_products(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<Vec<Product>, StageError> {
    let rows: Vec<(String, String, String, Value, Decimal, String, String)> = sqlx::query_as(
        "SELECT sku, merchant_id, warehouse, spec, unit_price, currency::text, status FROM products WHERE sku = ANY($1)",
    )
    .bind(skus)
    .fetch_all(&mut *conn)
    .await?;
    let tiers: Vec<(String, i32, Decimal)> =
        sqlx::query_as("SELECT sku, min_quantity, unit_price FROM price_tiers WHERE sku = ANY($1)")
            .bind(skus)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(
            |(sku, seller_id, warehouse, spec, unit_price, currency, status)| Product {
                tiers: tiers
                    .iter()
                    .filter(|t| t.0 == sku)
                    .map(|t| (t.1, t.2))
                    .collect(),
                sku,
                seller_id,
                warehouse,
                spec,
                unit_price,
                currency,
                on_sale: status == "on_sale",
            },
        )
        .collect())
}

type CouponRow = (
    String,
    String,
    String,
    Option<Decimal>,
    Option<Decimal>,
    Option<Decimal>,
    Option<Decimal>,
    Option<Value>,
    chrono::DateTime<Utc>,
    chrono::DateTime<Utc>,
    i32,
    i32,
    i32,
);

pub async fn load_coupon(
    conn: &mut PgConnection,
    code: &str,
) -> Result<Option<Coupon>, StageError> {
    let row: Option<CouponRow> = sqlx::query_as(
        "SELECT code, kind, currency::text, threshold, amount_off, percent_off, cap, ladder, valid_from, valid_until,
                total_limit, per_user_limit, used
         FROM coupons WHERE code = $1",
    )
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((
        code,
        kind,
        currency,
        threshold,
        amount_off,
        percent_off,
        cap,
        ladder,
        valid_from,
        valid_until,
        total_limit,
        per_user_limit,
        used,
    )) = row
    else {
        return Ok(None);
    };
    let broken =
        |what: &str| StageError::permanent(format!("coupon {code} is misconfigured: {what}"));
    let rule = match kind.as_str() {
        "full_reduction" => CouponRule::FullReduction {
            threshold: threshold.ok_or_else(|| broken("no threshold"))?,
            amount_off: amount_off.ok_or_else(|| broken("no amount_off"))?,
        },
        "percentage" => CouponRule::Percentage {
            percent_off: percent_off.ok_or_else(|| broken("no percent_off"))?,
            cap,
        },
        _ => {
            let steps: Vec<LadderStep> =
                serde_json::from_value(ladder.ok_or_else(|| broken("no ladder"))?)
                    .map_err(|e| broken(&e.to_string()))?;
            CouponRule::Ladder(steps)
        }
    };
    Ok(Some(Coupon {
        code,
        currency,
        rule,
        valid_from,
        valid_until,
        total_limit,
        per_user_limit,
        used,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn insert_payment(
    conn: &mut PgConnection,
    id: Uuid,
    r: &PaymentRequested,
    request: &Request,
    status: PaymentStatus,
    reason: Option<&str>,
    risk: Option<(Decision, Vec<String>)>,
    route: Option<(&str, Decimal)>,
    ttl: chrono::Duration,
) -> Result<(), StageError> {
    let (decision, reasons) = match risk {
        Some((decision, reasons)) => (Some(decision.as_str()), reasons),
        None => (None, Vec::new()),
    };
    let terminal = status != PaymentStatus::Validated;
    sqlx::query(
        "INSERT INTO payments (id, merchant_id, merchant_order_id, request_hash, user_id, method, channel, currency, amount,
                               status, reason, risk_decision, risk_reasons, notify_url, expires_at, requested_at, finished_at,
                               payer_token, channel_fee)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now() + $15, $16, CASE WHEN $17 THEN now() END, $18, $19)",
    )
    .bind(id)
    .bind(&request.merchant_id)
    .bind(&request.merchant_order_id)
    .bind(&request.content_hash)
    .bind(&r.user_id)
    .bind(&r.payment_method)
    .bind(route.map(|(channel, _)| channel))
    // a rejected request may carry an unusable currency or amount: stored as XXX / 0
    .bind(money::currency(&r.currency).unwrap_or("XXX"))
    .bind(money::check_amount(r.expected_amount).unwrap_or(Decimal::ZERO))
    .bind(status.as_str())
    .bind(reason)
    .bind(decision)
    .bind(serde_json::json!(reasons))
    .bind(&r.notify_url)
    .bind(ttl)
    .bind(r.requested_at)
    .bind(terminal)
    .bind(&r.payer_token)
    .bind(route.map(|(_, fee)| fee).unwrap_or(Decimal::ZERO))
    .execute(conn)
    .await
    .map_err(unique_is_transient)?;
    Ok(())
}

/// A unique violation here means a concurrent duplicate won (the lock was
/// lost): retry, and the retry sees its row.
fn unique_is_transient(error: sqlx::Error) -> StageError {
    if let sqlx::Error::Database(db) = &error {
        if db.code().as_deref() == Some("23505") {
            return StageError::transient(format!("concurrent duplicate: {error}"));
        }
    }
    error.into()
}

async fn insert_order(
    conn: &mut PgConnection,
    id: Uuid,
    r: &PaymentRequested,
    order: &PricedOrder,
) -> Result<(), StageError> {
    sqlx::query(
        "INSERT INTO orders (payment_id, merchant_id, merchant_order_id, user_id, currency, gross_amount, discount_amount,
                             payable_amount, coupon_code, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'created')",
    )
    .bind(id)
    .bind(&r.merchant_id)
    .bind(&r.merchant_order_id)
    .bind(&r.user_id)
    .bind(&r.currency)
    .bind(order.gross)
    .bind(order.discount)
    .bind(order.payable)
    .bind(&r.coupon_code)
    .execute(&mut *conn)
    .await?;
    for sub in &order.sub_orders {
        let sub_id =
            messages::stable_id(&["sub-order", &id.to_string(), &sub.seller_id, &sub.warehouse]);
        let rate = order
            .fee_rates
            .get(&sub.seller_id)
            .copied()
            .unwrap_or(Decimal::ZERO);
        let fee = money::round(sub.payable() * rate);
        sqlx::query(
            "INSERT INTO sub_orders (id, payment_id, seller_id, warehouse, currency, gross_amount, discount_amount, payable_amount, fee_amount)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(sub_id)
        .bind(id)
        .bind(&sub.seller_id)
        .bind(&sub.warehouse)
        .bind(&r.currency)
        .bind(sub.gross)
        .bind(sub.discount)
        .bind(sub.payable())
        .bind(fee)
        .execute(&mut *conn)
        .await?;
        for index in &sub.lines {
            let line = &order.lines[*index];
            sqlx::query(
                "INSERT INTO order_details (payment_id, sub_order_id, sku, spec, buyer_id, seller_id, unit_price, quantity,
                                            line_amount, discount_amount, currency)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(id)
            .bind(sub_id)
            .bind(&line.sku)
            .bind(&line.spec)
            .bind(&r.user_id)
            .bind(&line.seller_id)
            .bind(line.unit_price)
            .bind(line.quantity as i32)
            .bind(line.amount)
            .bind(line.discount)
            .bind(&r.currency)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Refuses a request that creates no payment, with a `payment.rejected`
/// event for BI (its payment id derived from the message, not the order).
async fn refuse(
    tx: &mut StageTx,
    inbound: &Inbound,
    request: &Request,
    reason: &str,
    detail: &str,
) -> Result<Outcome, StageError> {
    sqlx::query(
        "INSERT INTO request_rejections (message_id, merchant_id, merchant_order_id, reason, detail)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&inbound.message_id)
    .bind(&request.merchant_id)
    .bind(&request.merchant_order_id)
    .bind(reason)
    .bind(detail)
    .execute(tx.conn())
    .await?;
    let refusal_id = messages::stable_id(&["refused-request", &inbound.message_id]);
    tx.set_correlation_id(&refusal_id.to_string());
    let parsed = request.parsed.as_ref().ok();
    let event = messages::PaymentEvent {
        schema_version: SCHEMA_VERSION,
        event_id: messages::stable_id(&[
            "event",
            &refusal_id.to_string(),
            messages::event::REJECTED,
        ]),
        event_type: messages::event::REJECTED.to_owned(),
        payment_id: refusal_id,
        merchant_id: request.merchant_id.clone(),
        merchant_order_id: request.merchant_order_id.clone(),
        user_id: parsed.map(|p| p.user_id.clone()).unwrap_or_default(),
        status: "rejected".to_owned(),
        // Only what the contract allows travels on: an unusable amount or
        // currency in the refused request is reported as 0 / XXX ("no currency").
        amount: parsed
            .and_then(|p| money::check_amount(p.expected_amount).ok())
            .unwrap_or(Decimal::ZERO),
        currency: parsed
            .and_then(|p| money::currency(&p.currency).ok())
            .unwrap_or("XXX")
            .to_owned(),
        reason: Some(format!("{reason}: {detail}")),
        sub_orders: Vec::new(),
        occurred_at: Utc::now(),
    };
    tx.emit_event(messages::event::REJECTED, &event)?;
    tracing::info!(reason, detail, "request refused");
    Ok(Outcome::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_judged_by_its_first_receipt_either_way() {
        let hour = chrono::Duration::hours(1);
        let first = Utc::now();
        assert_eq!(freshness(first - hour, first, hour), None, "at the limit");
        assert_eq!(freshness(first + hour, first, hour), None);
        let (reason, detail) = freshness(
            first - hour - chrono::Duration::milliseconds(1),
            first,
            hour,
        )
        .expect("too old");
        assert_eq!(reason, "request_expired");
        assert!(
            detail.contains("request_max_age_ms (3600000 ms)"),
            "{detail}"
        );
        let (reason, _) =
            freshness(first + hour + chrono::Duration::seconds(1), first, hour).expect("ahead");
        assert_eq!(reason, "invalid_requested_at");
    }
}
