//! `payfleet sandbox-gateway`: a third-party payment gateway for tests,
//! the demo and the benchmark. It keeps its own store (in memory; it never reads payfleet's
//! database, so reconciliation against it is real), serves several channels
//! with their own fees, modes and webhook secrets, deduplicates on our
//! idempotency key (`out_trade_no`: a second create returns the first result
//! and never charges twice), and behaves deterministically by the payer
//! token in the request, the way card networks' test cards work:
//!
//! | payer token | behaviour |
//! | --- | --- |
//! | `tok_success` (or none) | charged; sync channels answer SUCCEEDED, async ones PENDING and a webhook after the delay |
//! | `tok_decline` | declined: FAILED (`card_declined`) |
//! | `tok_timeout` | charged, but answers only after `timeout_hold_ms` (longer than any client timeout) |
//! | `tok_5xx_after_charge` | charged, then HTTP 500 |
//! | `tok_slow` | charged, answers after `slow_ms` (within a client timeout) |
//! | `tok_duplicate_webhook` | async: the success webhook is sent twice |
//! | `tok_out_of_order` | async: the success webhook, then a stale PENDING one with an older timestamp |
//! | `tok_amount_mismatch` | charged 0.01 less than asked, and says so |
//! | `tok_over_charge` | charged 0.01 more than asked, and says so |
//! | `tok_currency_mismatch` | charged the amount asked in another currency (USD; EUR when USD was asked), and says so |
//! | `tok_no_webhook` | async: charged, but no webhook is ever sent (a status query finds it) |
//! | `tok_refund_fails` | charged; a refund of it is refused for good: FAILED (`refund_declined`), nothing paid back |
//! | `tok_refund_timeout` | charged; a refund of it is paid back, but answers only after `timeout_hold_ms` |
//! | `tok_refund_pending` | charged; a refund of it answers PROCESSING, succeeds after the webhook delay and is then reported by a refund webhook (`refund_no`, `status`) |
//! | `tok_reversal_timeout` | charged; a reversal of it is done at once, but answers only after `timeout_hold_ms` |
//!
//! A refund's behaviour is chosen by its trade's payer token; any other
//! token's refunds succeed at once. Refunds deduplicate on `refund_no`.
//! A trade paid today (in the gateway's business zone) and never refunded
//! can be reversed whole until the channel's cut-off, which the channel's
//! operator (a test) can move; reversals deduplicate on `reversal_no`.
//!
//! API, per channel `C`: `POST /channels/C/payments`, `GET /channels/C/payments/{out_trade_no}`,
//! `POST /channels/C/payments/{out_trade_no}/close`, `POST /channels/C/refunds`,
//! `GET /channels/C/refunds/{refund_no}`, `POST /channels/C/reversals`,
//! `GET /channels/C/reversals/{reversal_no}`, `PUT /channels/C/reversal-cutoff`,
//! `POST /channels/C/payouts`, `GET /channels/C/payouts/{payout_no}` (payouts:
//! see `payouts.rs` for the account tokens),
//! `GET /channels/C/statement?date=YYYY-MM-DD` (the day in the business zone). Webhooks are POSTed to the
//! request's `notify_url` with `x-sandbox-timestamp` (Unix seconds) and
//! `x-sandbox-signature` = hex HMAC-SHA256(channel secret, "{timestamp}.{body}").

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod notify;
mod payouts;
mod protocol;
mod refunds;
mod reversals;

pub use protocol::*;

#[derive(Default)]
struct Store {
    trades: HashMap<(String, String), Trade>,
    refunds: HashMap<(String, String), Refund>,
    /// The keys of the refunds still PROCESSING, settled when read.
    processing: Vec<(String, String)>,
    reversals: HashMap<(String, String), Reversal>,
    payouts: HashMap<(String, String), Payout>,
    /// While set, a payout asked for never reaches the payee's bank: 503,
    /// nothing kept (tests).
    payouts_down: bool,
    /// Reversal cut-offs moved since start, per channel.
    cutoffs: HashMap<String, Option<chrono::NaiveTime>>,
    sequence: u64,
}

#[derive(Clone)]
pub struct Gateway {
    config: Arc<GatewayConfig>,
    store: Arc<Mutex<Store>>,
    http: reqwest::Client,
}

/// A channel's fee on `amount`, to the cent (half away from zero).
fn fee(amount: Decimal, rate: Decimal) -> Decimal {
    (amount * rate).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Whether `code` reads as an ISO 4217 code (three capital letters).
fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            config: Arc::new(config),
            store: Default::default(),
            http: reqwest::Client::new(),
        }
    }

    fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.config.channels.iter().find(|c| c.name == name)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/channels/{channel}/payments", post(create))
            .route("/channels/{channel}/payments/{out_trade_no}", get(query))
            .route(
                "/channels/{channel}/payments/{out_trade_no}/close",
                post(close),
            )
            .route("/channels/{channel}/refunds", post(refunds::create))
            .route(
                "/channels/{channel}/refunds/{refund_no}",
                get(refunds::query),
            )
            .route("/channels/{channel}/reversals", post(reversals::create))
            .route(
                "/channels/{channel}/reversals/{reversal_no}",
                get(reversals::query),
            )
            .route(
                "/channels/{channel}/reversal-cutoff",
                axum::routing::put(reversals::set_cutoff),
            )
            .route("/channels/{channel}/payouts", post(payouts::create))
            .route(
                "/channels/{channel}/payouts/{payout_no}",
                get(payouts::query),
            )
            .route("/channels/{channel}/statement", get(statement))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.clone())
    }

    /// Serves until `stop`; returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok((bound, handle))
    }

    /// A trade as the gateway sees it (tests look here for the charge count).
    pub fn trade(&self, channel: &str, out_trade_no: &str) -> Option<Trade> {
        let mut store = self.store.lock().expect("store");
        store.settle_refunds(Utc::now());
        store
            .trades
            .get(&(channel.to_owned(), out_trade_no.to_owned()))
            .cloned()
    }

    /// Makes a trade succeed whatever its state, as a channel that ignored a
    /// close would (tests of the late-success path use it).
    pub fn charge_late(&self, channel: &str, out_trade_no: &str) -> Option<Trade> {
        let mut store = self.store.lock().expect("store");
        let trade = store
            .trades
            .get_mut(&(channel.to_owned(), out_trade_no.to_owned()))?;
        trade.status = TradeStatus::Succeeded;
        trade.charges = 1;
        trade.paid_at = Some(Utc::now());
        // a success costs the channel's fee, late or not
        let rate = self
            .config
            .channels
            .iter()
            .find(|c| c.name == channel)
            .map(|c| c.fee_rate)
            .unwrap_or_default();
        trade.fee = fee(trade.amount, rate);
        Some(trade.clone())
    }

    fn notice(trade: &Trade, status: TradeStatus, occurred_at: DateTime<Utc>) -> Notice {
        Notice {
            channel: trade.channel.clone(),
            out_trade_no: trade.out_trade_no.clone(),
            trade_no: trade.trade_no.clone(),
            status,
            amount: trade.amount,
            currency: trade.currency.clone(),
            reason: trade.reason.clone(),
            occurred_at,
        }
    }

    /// Sends the webhooks a scenario calls for, after the delay, unless the
    /// trade was closed meanwhile.
    fn schedule_webhooks(&self, trade: Trade, final_status: TradeStatus) {
        let Some(url) = trade.notify_url.clone() else {
            return;
        };
        let Some(channel) = self.channel(&trade.channel).cloned() else {
            return;
        };
        let gateway = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(gateway.config.webhook_delay).await;
            {
                let mut store = gateway.store.lock().expect("store");
                let Some(stored) = store
                    .trades
                    .get_mut(&(trade.channel.clone(), trade.out_trade_no.clone()))
                else {
                    return;
                };
                if stored.status == TradeStatus::Closed {
                    return;
                }
                stored.status = final_status;
                if final_status == TradeStatus::Succeeded && stored.paid_at.is_none() {
                    stored.paid_at = Some(Utc::now());
                }
            }
            let decided = Utc::now();
            let mut notices = vec![Gateway::notice(&trade, final_status, decided)];
            match trade.payer_token.as_str() {
                "tok_duplicate_webhook" => notices.push(notices[0].clone()),
                "tok_out_of_order" => notices.push(Gateway::notice(
                    &trade,
                    TradeStatus::Pending,
                    trade.created_at,
                )),
                _ => {}
            }
            for notice in notices {
                gateway.post_signed(&url, &channel.secret, &notice).await;
            }
        });
    }
}

/// The currency a `tok_currency_mismatch` trade is charged in.
fn other_currency(asked: &str) -> String {
    if asked == "USD" { "EUR" } else { "USD" }.to_owned()
}

fn trade_json(trade: &Trade) -> serde_json::Value {
    serde_json::to_value(trade).unwrap_or_default()
}

async fn create(
    State(gw): State<Gateway>,
    Path(channel): Path<String>,
    Json(request): Json<CreatePayment>,
) -> Response {
    let Some(config) = gw.channel(&channel).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no channel {channel}"));
    };
    if request.amount <= Decimal::ZERO || request.out_trade_no.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "amount must be positive and out_trade_no set",
        );
    }
    let token = request
        .payer_token
        .clone()
        .unwrap_or_else(|| "tok_success".into());
    let key = (channel.clone(), request.out_trade_no.clone());
    let (trade, new) = {
        let mut store = gw.store.lock().expect("store");
        if let Some(existing) = store.trades.get(&key) {
            (existing.clone(), false)
        } else {
            store.sequence += 1;
            let declined = token == "tok_decline";
            let charged_amount = match token.as_str() {
                "tok_amount_mismatch" => request.amount - Decimal::new(1, 2),
                "tok_over_charge" => request.amount + Decimal::new(1, 2),
                _ => request.amount,
            };
            let charged_currency = if token == "tok_currency_mismatch" {
                other_currency(&request.currency)
            } else {
                request.currency.clone()
            };
            let immediate = config.mode == Mode::Sync || declined;
            let trade = Trade {
                channel: channel.clone(),
                trade_no: format!("{channel}-{:08}", store.sequence),
                out_trade_no: request.out_trade_no.clone(),
                amount: charged_amount,
                currency: charged_currency,
                status: match (declined, immediate) {
                    (true, _) => TradeStatus::Failed,
                    (false, true) => TradeStatus::Succeeded,
                    (false, false) => TradeStatus::Pending,
                },
                reason: declined.then(|| "card_declined".to_owned()),
                payer_token: token.clone(),
                charges: u32::from(!declined),
                fee: if declined {
                    Decimal::ZERO
                } else {
                    fee(charged_amount, config.fee_rate)
                },
                refunded: Decimal::ZERO,
                created_at: Utc::now(),
                paid_at: (!declined && immediate).then(Utc::now),
                notify_url: request.notify_url.clone(),
            };
            store.trades.insert(key.clone(), trade.clone());
            (trade, true)
        }
    };
    if new
        && config.mode == Mode::Async
        && trade.status == TradeStatus::Pending
        && token != "tok_no_webhook"
    {
        gw.schedule_webhooks(trade.clone(), TradeStatus::Succeeded);
    }
    if new && token == "tok_no_webhook" {
        // charged at once, but nobody is told
        let mut store = gw.store.lock().expect("store");
        if let Some(t) = store.trades.get_mut(&key) {
            t.status = TradeStatus::Succeeded;
            t.paid_at = Some(Utc::now());
        }
    }
    match token.as_str() {
        "tok_timeout" if new => tokio::time::sleep(gw.config.timeout_hold).await,
        "tok_slow" => tokio::time::sleep(gw.config.slow).await,
        "tok_5xx_after_charge" => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "upstream processor error",
            );
        }
        _ => {}
    }
    let current = gw.trade(&channel, &request.out_trade_no).unwrap_or(trade);
    let mut body = trade_json(&current);
    if current.payer_token == "tok_no_webhook" {
        body["status"] = json!("PENDING");
    }
    (StatusCode::OK, Json(body)).into_response()
}

async fn query(
    State(gw): State<Gateway>,
    Path((channel, out_trade_no)): Path<(String, String)>,
) -> Response {
    match gw.trade(&channel, &out_trade_no) {
        Some(trade) => (StatusCode::OK, Json(trade_json(&trade))).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no trade {out_trade_no}")),
    }
}

async fn close(
    State(gw): State<Gateway>,
    Path((channel, out_trade_no)): Path<(String, String)>,
) -> Response {
    let mut store = gw.store.lock().expect("store");
    let key = (channel, out_trade_no.clone());
    match store.trades.get_mut(&key) {
        None => {
            // Closing what was never created is fine: nothing can be paid later.
            (
                StatusCode::OK,
                Json(json!({"out_trade_no": out_trade_no, "status": "CLOSED"})),
            )
                .into_response()
        }
        Some(trade) => match trade.status {
            TradeStatus::Pending => {
                trade.status = TradeStatus::Closed;
                if trade.charges > 0 {
                    trade.charges = 0; // the hold is released
                    trade.fee = Decimal::ZERO;
                }
                (StatusCode::OK, Json(trade_json(trade))).into_response()
            }
            TradeStatus::Closed | TradeStatus::Failed => {
                (StatusCode::OK, Json(trade_json(trade))).into_response()
            }
            TradeStatus::Succeeded | TradeStatus::Reversed => {
                (StatusCode::CONFLICT, Json(trade_json(trade))).into_response()
            }
        },
    }
}

#[derive(Deserialize)]
struct StatementQuery {
    date: chrono::NaiveDate,
}

/// The day's statement, as the channel sees it, the day taken in its
/// business zone: every trade created that day, every refund that paid
/// money back that day, every reversal done that day, and every payout
/// that paid money out that day (neither a failed nor a processing one).
async fn statement(
    State(gw): State<Gateway>,
    Path(channel): Path<String>,
    Query(q): Query<StatementQuery>,
) -> Response {
    let zone = gw.config.business_zone;
    let on_day = |at: DateTime<Utc>| at.with_timezone(&zone).date_naive() == q.date;
    let mut store = gw.store.lock().expect("store");
    store.settle_refunds(Utc::now());
    store.settle_payouts(Utc::now());
    let mut trades: Vec<Trade> = store
        .trades
        .values()
        .filter(|t| t.channel == channel && on_day(t.created_at))
        .cloned()
        .collect();
    trades.sort_by(|a, b| a.trade_no.cmp(&b.trade_no));
    let mut refunds: Vec<Refund> = store
        .refunds
        .values()
        .filter(|r| {
            r.channel == channel && r.status == RefundStatus::Succeeded && on_day(r.final_at)
        })
        .cloned()
        .collect();
    refunds.sort_by(|a, b| (a.final_at, &a.refund_no).cmp(&(b.final_at, &b.refund_no)));
    let mut reversals: Vec<Reversal> = store
        .reversals
        .values()
        .filter(|r| {
            r.channel == channel && r.status == ReversalStatus::Succeeded && on_day(r.created_at)
        })
        .cloned()
        .collect();
    reversals.sort_by(|a, b| (a.created_at, &a.reversal_no).cmp(&(b.created_at, &b.reversal_no)));
    let mut payouts: Vec<Payout> = store
        .payouts
        .values()
        .filter(|p| p.channel == channel && p.status.paid_out() && p.paid_at.is_some_and(on_day))
        .cloned()
        .collect();
    payouts.sort_by(|a, b| (a.paid_at, &a.payout_no).cmp(&(b.paid_at, &b.payout_no)));
    let statement = Statement {
        channel,
        date: q.date,
        trades,
        refunds,
        reversals,
        payouts,
    };
    (StatusCode::OK, Json(statement)).into_response()
}
