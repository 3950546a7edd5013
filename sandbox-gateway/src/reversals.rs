//! Same-day reversals: `POST /channels/C/reversals` and
//! `GET /channels/C/reversals/{reversal_no}`, and the cut-off the tests set
//! (`PUT /channels/C/reversal-cutoff`).
//!
//! A trade paid today (in the gateway's business zone) and not refunded at
//! all can be cancelled whole until the channel's cut-off: the payer gets
//! the whole amount back and the channel keeps no fee. After the cut-off
//! the day is settled and only a refund gives money back: the reversal is
//! FAILED with `reversal_window_closed`. A reversal is kept once per
//! (channel, reversal_no), so a re-send answers what the first ask decided.
//! `tok_reversal_timeout` trades are reversed at once, but the answer is
//! held past any client timeout.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;

use super::{
    CreateReversal, Gateway, RefundStatus, Reversal, ReversalStatus, Store, TradeStatus, error,
};

impl Gateway {
    /// A reversal as the gateway sees it (tests count them here).
    pub fn reversal(&self, channel: &str, reversal_no: &str) -> Option<Reversal> {
        let store = self.store.lock().expect("store");
        store
            .reversals
            .get(&(channel.to_owned(), reversal_no.to_owned()))
            .cloned()
    }

    /// The succeeded reversals of a trade: never more than one.
    pub fn reversals_of(&self, channel: &str, out_trade_no: &str) -> Vec<Reversal> {
        let store = self.store.lock().expect("store");
        store
            .reversals
            .values()
            .filter(|r| {
                r.channel == channel
                    && r.out_trade_no == out_trade_no
                    && r.status == ReversalStatus::Succeeded
            })
            .cloned()
            .collect()
    }

    /// Moves a channel's cut-off (None: it stops reversing), as its
    /// operator would; tests use it instead of waiting for the evening.
    pub fn set_reversal_cutoff(&self, channel: &str, cutoff: Option<NaiveTime>) {
        let mut store = self.store.lock().expect("store");
        store.cutoffs.insert(channel.to_owned(), cutoff);
    }

    fn reversal_cutoff(&self, store: &Store, channel: &str) -> Option<NaiveTime> {
        match store.cutoffs.get(channel) {
            Some(set) => *set,
            None => self.channel(channel).and_then(|c| c.reversal_cutoff),
        }
    }

    /// Why a trade paid at `paid_at` can no longer be reversed at `now`.
    fn window_closed(
        &self,
        store: &Store,
        channel: &str,
        paid_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let zone = self.config.business_zone;
        let Some(cutoff) = self.reversal_cutoff(store, channel) else {
            return Some(format!("{channel} does not reverse trades"));
        };
        let (paid, today) = (paid_at.with_timezone(&zone), now.with_timezone(&zone));
        if paid.date_naive() != today.date_naive() {
            return Some(format!(
                "paid on {}, settled at that day's cut-off",
                paid.date_naive()
            ));
        }
        (today.time() >= cutoff).then(|| format!("today's cut-off {cutoff} ({zone}) has passed"))
    }
}

/// A reversal's answer, to an ask and to a query alike.
fn answer(reversal: &Reversal) -> Response {
    let mut body = json!({
        "reversal_no": reversal.reversal_no,
        "out_trade_no": reversal.out_trade_no,
        "amount": reversal.amount.to_string(),
        "currency": reversal.currency,
        "status": reversal.status,
    });
    if let Some(reason) = &reversal.reason {
        body["reason"] = json!(reason);
    }
    (StatusCode::OK, Json(body)).into_response()
}

pub(crate) async fn create(
    State(gw): State<Gateway>,
    Path(channel): Path<String>,
    Json(request): Json<CreateReversal>,
) -> Response {
    let now = Utc::now();
    let (reversal, hold) = {
        let mut store = gw.store.lock().expect("store");
        store.settle_refunds(now);
        let reversal_key = (channel.clone(), request.reversal_no.clone());
        if let Some(existing) = store.reversals.get(&reversal_key) {
            return answer(existing);
        }
        let key = (channel.clone(), request.out_trade_no.clone());
        let Some(trade) = store.trades.get(&key).cloned() else {
            return error(StatusCode::NOT_FOUND, "no such trade");
        };
        // a refund paid back or still processing; a refused one took nothing
        let refunds_of_trade = store.refunds.values().any(|r| {
            r.channel == channel
                && r.out_trade_no == request.out_trade_no
                && r.status != RefundStatus::Failed
        });
        if trade.status != TradeStatus::Succeeded || refunds_of_trade {
            return error(
                StatusCode::CONFLICT,
                "not reversible: only a paid trade with no refund is reversed",
            );
        }
        // a paid trade without its time of payment is not reversed blindly
        let closed = match trade.paid_at {
            Some(paid_at) => gw.window_closed(&store, &channel, paid_at, now),
            None => Some(format!("{channel} has no time of payment for it")),
        };
        let status = if closed.is_some() {
            ReversalStatus::Failed
        } else {
            ReversalStatus::Succeeded
        };
        let reversal = Reversal {
            channel,
            reversal_no: request.reversal_no,
            out_trade_no: request.out_trade_no,
            amount: trade.amount,
            currency: trade.currency.clone(),
            status,
            reason: closed.map(|why| format!("reversal_window_closed: {why}; refund instead")),
            created_at: now,
        };
        if status == ReversalStatus::Succeeded
            && let Some(stored) = store.trades.get_mut(&key)
        {
            stored.status = TradeStatus::Reversed;
            stored.fee = Decimal::ZERO;
        }
        store.reversals.insert(reversal_key, reversal.clone());
        (reversal, trade.payer_token == "tok_reversal_timeout")
    };
    if hold {
        tokio::time::sleep(gw.config.timeout_hold).await;
    }
    answer(&reversal)
}

pub(crate) async fn query(
    State(gw): State<Gateway>,
    Path((channel, reversal_no)): Path<(String, String)>,
) -> Response {
    match gw.reversal(&channel, &reversal_no) {
        Some(reversal) => answer(&reversal),
        None => error(StatusCode::NOT_FOUND, format!("no reversal {reversal_no}")),
    }
}

#[derive(Deserialize)]
pub(crate) struct SetCutoff {
    cutoff: Option<NaiveTime>,
}

pub(crate) async fn set_cutoff(
    State(gw): State<Gateway>,
    Path(channel): Path<String>,
    Json(request): Json<SetCutoff>,
) -> Response {
    if gw.channel(&channel).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no channel {channel}"));
    }
    gw.set_reversal_cutoff(&channel, request.cutoff);
    (
        StatusCode::OK,
        Json(json!({"channel": channel, "reversal_cutoff": request.cutoff})),
    )
        .into_response()
}
