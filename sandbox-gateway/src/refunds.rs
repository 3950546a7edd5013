//! Refunds: `POST /channels/C/refunds` and `GET /channels/C/refunds/{refund_no}`.
//! The original trade's payer token picks the scenario (see the table in the
//! crate's docs); a refund is kept once per (channel, refund_no), so a
//! re-send answers what the first ask decided and never pays back twice.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use super::{CreateRefund, Gateway, Refund, RefundNotice, RefundStatus, Store, TradeStatus, error};

impl Store {
    /// Turns the PROCESSING refunds whose time has come SUCCEEDED and pays
    /// their money back then: the gateway settles lazily, on every read.
    pub(crate) fn settle_refunds(&mut self, now: DateTime<Utc>) {
        let (due, waiting) = std::mem::take(&mut self.processing)
            .into_iter()
            .partition::<Vec<_>, _>(|key| self.refunds.get(key).is_none_or(|r| r.final_at <= now));
        self.processing = waiting;
        for key in due {
            let Some(refund) = self.refunds.get_mut(&key) else {
                continue;
            };
            refund.status = RefundStatus::Succeeded;
            let trade_key = (refund.channel.clone(), refund.out_trade_no.clone());
            if let Some(trade) = self.trades.get_mut(&trade_key) {
                trade.refunded += refund.amount;
            }
        }
    }

    /// What PROCESSING refunds of a trade will still pay back: held against
    /// the trade, so refunds in flight cannot together exceed it.
    fn in_flight(&self, channel: &str, out_trade_no: &str) -> Decimal {
        self.processing
            .iter()
            .filter_map(|key| self.refunds.get(key))
            .filter(|r| r.channel == channel && r.out_trade_no == out_trade_no)
            .map(|r| r.amount)
            .sum()
    }
}

impl Gateway {
    /// A refund as the gateway sees it (tests look here for its status).
    pub fn refund(&self, channel: &str, refund_no: &str) -> Option<Refund> {
        let mut store = self.store.lock().expect("store");
        store.settle_refunds(Utc::now());
        store
            .refunds
            .get(&(channel.to_owned(), refund_no.to_owned()))
            .cloned()
    }
}

impl Gateway {
    /// Posts a PROCESSING refund's final status, signed like every
    /// webhook, once it has become final.
    fn notify_refund_later(&self, refund: Refund, url: String, currency: String) {
        let Some(channel) = self.channel(&refund.channel).cloned() else {
            return;
        };
        let gateway = self.clone();
        tokio::spawn(async move {
            let wait = (refund.final_at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait + std::time::Duration::from_millis(10)).await;
            let Some(now) = gateway.refund(&refund.channel, &refund.refund_no) else {
                return;
            };
            let notice = RefundNotice {
                channel: now.channel.clone(),
                refund_no: now.refund_no.clone(),
                out_trade_no: now.out_trade_no.clone(),
                status: now.status,
                amount: now.amount,
                currency,
                reason: now.reason.clone(),
                occurred_at: now.final_at,
            };
            gateway.post_signed(&url, &channel.secret, &notice).await;
        });
    }
}

/// A refund's answer, to an ask and to a query alike.
fn answer(refund: &Refund) -> Response {
    let mut body = json!({
        "refund_no": refund.refund_no,
        "out_trade_no": refund.out_trade_no,
        "amount": refund.amount.to_string(),
        "status": refund.status,
    });
    if let Some(reason) = &refund.reason {
        body["reason"] = json!(reason);
    }
    (StatusCode::OK, Json(body)).into_response()
}

pub(crate) async fn create(
    State(gw): State<Gateway>,
    Path(channel): Path<String>,
    Json(request): Json<CreateRefund>,
) -> Response {
    if request.amount <= Decimal::ZERO {
        return error(StatusCode::BAD_REQUEST, "amount must be positive");
    }
    let now = Utc::now();
    let (refund, hold, notify) = {
        let mut store = gw.store.lock().expect("store");
        store.settle_refunds(now);
        let refund_key = (channel.clone(), request.refund_no.clone());
        if let Some(existing) = store.refunds.get(&refund_key) {
            return answer(existing);
        }
        let in_flight = store.in_flight(&channel, &request.out_trade_no);
        let key = (channel.clone(), request.out_trade_no.clone());
        let Some(trade) = store.trades.get_mut(&key) else {
            return error(StatusCode::NOT_FOUND, "no such trade");
        };
        if trade.status != TradeStatus::Succeeded
            || trade.refunded + in_flight + request.amount > trade.amount
        {
            return error(StatusCode::CONFLICT, "not refundable");
        }
        let (status, reason, final_at) = match trade.payer_token.as_str() {
            "tok_refund_fails" => (RefundStatus::Failed, Some("refund_declined"), now),
            "tok_refund_pending" => (
                RefundStatus::Processing,
                None,
                now + TimeDelta::from_std(gw.config.webhook_delay).unwrap_or(TimeDelta::MAX),
            ),
            _ => (RefundStatus::Succeeded, None, now),
        };
        if status == RefundStatus::Succeeded {
            trade.refunded += request.amount;
        }
        // paid back at once, but the answer is held past any client timeout
        let hold = trade.payer_token == "tok_refund_timeout";
        let refund = Refund {
            channel,
            refund_no: request.refund_no,
            out_trade_no: request.out_trade_no,
            amount: request.amount,
            status,
            reason: reason.map(str::to_owned),
            created_at: now,
            final_at,
        };
        // A refund that ends later is reported by webhook, to the trade's notify URL.
        let notify = (status == RefundStatus::Processing)
            .then(|| {
                trade
                    .notify_url
                    .clone()
                    .map(|url| (url, trade.currency.clone()))
            })
            .flatten();
        if status == RefundStatus::Processing {
            store.processing.push(refund_key.clone());
        }
        store.refunds.insert(refund_key, refund.clone());
        (refund, hold, notify)
    };
    if let Some((url, currency)) = notify {
        gw.notify_refund_later(refund.clone(), url, currency);
    }
    if hold {
        tokio::time::sleep(gw.config.timeout_hold).await;
    }
    answer(
        &gw.refund(&refund.channel, &refund.refund_no)
            .unwrap_or(refund),
    )
}

pub(crate) async fn query(
    State(gw): State<Gateway>,
    Path((channel, refund_no)): Path<(String, String)>,
) -> Response {
    match gw.refund(&channel, &refund_no) {
        Some(refund) => answer(&refund),
        None => error(StatusCode::NOT_FOUND, format!("no refund {refund_no}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{GatewayConfig, Statement};

    const CARD: &str = "sandbox-card";
    const WEBHOOK_DELAY: Duration = Duration::from_millis(150);
    const HOLD: Duration = Duration::from_secs(5);

    /// A gateway on a free port, with a short webhook delay and a hold far
    /// past the clients' timeouts here.
    struct Running {
        gw: Gateway,
        base: String,
        http: reqwest::Client,
        stop: CancellationToken,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn running() -> Running {
        let gw = Gateway::new(GatewayConfig {
            webhook_delay: WEBHOOK_DELAY,
            timeout_hold: HOLD,
            ..GatewayConfig::standard()
        });
        let stop = CancellationToken::new();
        let (addr, _) = gw
            .serve(([127, 0, 0, 1], 0).into(), stop.clone())
            .await
            .expect("the gateway binds");
        Running {
            gw,
            base: format!("http://{addr}/channels/{CARD}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("a client"),
            stop,
        }
    }

    impl Running {
        /// Charges 100.00 on the sync card channel with `token`.
        async fn charge(&self, out_trade_no: &str, token: &str) {
            let answer: Value = self
                .http
                .post(format!("{}/payments", self.base))
                .json(&json!({"out_trade_no": out_trade_no, "amount": "100.00", "currency": "CNY", "payer_token": token}))
                .send()
                .await
                .expect("the charge answers")
                .json()
                .await
                .expect("JSON");
            assert_eq!(answer["status"], "SUCCEEDED", "{answer}");
        }

        fn ask(
            &self,
            out_trade_no: &str,
            refund_no: &str,
            amount: &str,
        ) -> reqwest::RequestBuilder {
            self.http.post(format!("{}/refunds", self.base)).json(
                &json!({"out_trade_no": out_trade_no, "refund_no": refund_no, "amount": amount}),
            )
        }

        async fn refund(
            &self,
            out_trade_no: &str,
            refund_no: &str,
            amount: &str,
        ) -> (StatusCode, Value) {
            let response = self
                .ask(out_trade_no, refund_no, amount)
                .send()
                .await
                .expect("an answer");
            let status = response.status();
            (status, response.json().await.expect("JSON"))
        }

        async fn query(&self, refund_no: &str) -> (StatusCode, Value) {
            let response = self
                .http
                .get(format!("{}/refunds/{refund_no}", self.base))
                .send()
                .await
                .expect("an answer");
            let status = response.status();
            (status, response.json().await.expect("JSON"))
        }

        fn refunded(&self, out_trade_no: &str) -> Decimal {
            self.gw
                .trade(CARD, out_trade_no)
                .expect("the trade")
                .refunded
        }
    }

    fn money(amount: &str) -> Decimal {
        amount.parse().expect("an amount")
    }

    #[tokio::test]
    async fn a_refund_of_a_refund_fails_trade_is_refused_for_good() {
        let gw = running().await;
        gw.charge("t-fails", "tok_refund_fails").await;
        let (status, answer) = gw.refund("t-fails", "r-1", "40.00").await;
        let failed = json!({"refund_no": "r-1", "out_trade_no": "t-fails", "amount": "40.00", "status": "FAILED", "reason": "refund_declined"});
        assert_eq!((status, &answer), (StatusCode::OK, &failed));
        assert_eq!(
            gw.refund("t-fails", "r-1", "40.00").await,
            (StatusCode::OK, failed.clone()),
            "a re-send answers the same"
        );
        assert_eq!(gw.query("r-1").await, (StatusCode::OK, failed));
        assert_eq!(gw.refunded("t-fails"), Decimal::ZERO, "nothing paid back");
    }

    #[tokio::test]
    async fn a_timed_out_refund_is_paid_back_once_and_found_by_a_resend_or_a_query() {
        let gw = running().await;
        gw.charge("t-timeout", "tok_refund_timeout").await;
        let lost = gw
            .ask("t-timeout", "r-1", "100.00")
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .expect_err("the client times out");
        assert!(lost.is_timeout(), "{lost}");
        assert_eq!(
            gw.refunded("t-timeout"),
            money("100.00"),
            "paid back before the answer"
        );
        let succeeded = json!({"refund_no": "r-1", "out_trade_no": "t-timeout", "amount": "100.00", "status": "SUCCEEDED"});
        assert_eq!(gw.query("r-1").await, (StatusCode::OK, succeeded.clone()));
        // the re-send answers at once, well within the hold
        assert_eq!(
            gw.refund("t-timeout", "r-1", "100.00").await,
            (StatusCode::OK, succeeded)
        );
        assert_eq!(gw.refunded("t-timeout"), money("100.00"), "paid back once");
    }

    #[tokio::test]
    async fn a_pending_refund_succeeds_after_the_webhook_delay() {
        let gw = running().await;
        gw.charge("t-pending", "tok_refund_pending").await;
        let (status, answer) = gw.refund("t-pending", "r-1", "60.00").await;
        assert_eq!(
            (status, answer),
            (
                StatusCode::OK,
                json!({"refund_no": "r-1", "out_trade_no": "t-pending", "amount": "60.00", "status": "PROCESSING"})
            )
        );
        assert_eq!(gw.query("r-1").await.1["status"], "PROCESSING");
        assert_eq!(gw.refunded("t-pending"), Decimal::ZERO, "not paid back yet");
        // the refund in flight is held against the trade
        assert_eq!(
            gw.refund("t-pending", "r-2", "50.00").await.0,
            StatusCode::CONFLICT
        );
        tokio::time::sleep(WEBHOOK_DELAY + Duration::from_millis(50)).await;
        assert_eq!(
            gw.query("r-1").await,
            (
                StatusCode::OK,
                json!({"refund_no": "r-1", "out_trade_no": "t-pending", "amount": "60.00", "status": "SUCCEEDED"})
            )
        );
        assert_eq!(gw.refunded("t-pending"), money("60.00"));
        assert_eq!(
            gw.refund("t-pending", "r-1", "60.00").await.1["status"],
            "SUCCEEDED"
        );
        assert_eq!(gw.refunded("t-pending"), money("60.00"), "settled once");
    }

    #[tokio::test]
    async fn a_refund_no_refunds_once_and_never_past_the_trade() {
        let gw = running().await;
        gw.charge("t-ok", "tok_success").await;
        let first = gw.refund("t-ok", "r-1", "50.00").await;
        assert_eq!(
            first,
            (
                StatusCode::OK,
                json!({"refund_no": "r-1", "out_trade_no": "t-ok", "amount": "50.00", "status": "SUCCEEDED"})
            )
        );
        assert_eq!(
            gw.refund("t-ok", "r-1", "50.00").await,
            first,
            "a re-send answers the first"
        );
        assert_eq!(gw.refunded("t-ok"), money("50.00"));
        assert_eq!(
            gw.refund("t-ok", "r-2", "60.00").await.0,
            StatusCode::CONFLICT,
            "more than is left"
        );
        assert_eq!(
            gw.refund("t-ok", "r-3", "50.00").await.1["status"],
            "SUCCEEDED"
        );
        assert_eq!(gw.refunded("t-ok"), money("100.00"));
        assert_eq!(
            gw.refund("t-none", "r-4", "1.00").await.0,
            StatusCode::NOT_FOUND,
            "no such trade"
        );
        assert_eq!(gw.query("r-unknown").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            gw.query("r-2").await.0,
            StatusCode::NOT_FOUND,
            "a refused ask is no refund"
        );
    }

    #[tokio::test]
    async fn a_statement_lists_the_days_succeeded_refunds() {
        let gw = running().await;
        for (trade, token) in [
            ("t-ok", "tok_success"),
            ("t-fails", "tok_refund_fails"),
            ("t-pending", "tok_refund_pending"),
        ] {
            gw.charge(trade, token).await;
            gw.refund(trade, &format!("r-{trade}"), "30.00").await;
        }
        let statement = |date| {
            let gw = &gw;
            async move {
                gw.http
                    .get(format!("{}/statement?date={date}", gw.base))
                    .send()
                    .await
                    .expect("an answer")
                    .json::<Value>()
                    .await
                    .expect("JSON")
            }
        };
        let day = gw
            .gw
            .refund(CARD, "r-t-ok")
            .expect("kept")
            .final_at
            .date_naive();
        let raw = statement(day).await;
        assert_eq!(raw["trades"].as_array().map(Vec::len), Some(3), "{raw}");
        let listed: Statement = serde_json::from_value(raw).expect("a statement");
        let refunds: Vec<_> = listed
            .refunds
            .iter()
            .map(|r| (r.refund_no.as_str(), r.amount))
            .collect();
        assert_eq!(
            refunds,
            [("r-t-ok", money("30.00"))],
            "neither the failed nor the processing one"
        );

        tokio::time::sleep(WEBHOOK_DELAY + Duration::from_millis(50)).await;
        let day = gw
            .gw
            .refund(CARD, "r-t-pending")
            .expect("kept")
            .final_at
            .date_naive();
        let mut raw = statement(day).await;
        let listed: Statement = serde_json::from_value(raw.clone()).expect("a statement");
        assert!(
            listed
                .refunds
                .iter()
                .any(|r| r.refund_no == "r-t-pending" && r.status == RefundStatus::Succeeded)
        );

        // a statement without refunds still reads
        raw.as_object_mut().expect("an object").remove("refunds");
        let older: Statement = serde_json::from_value(raw).expect("a statement");
        assert!(older.refunds.is_empty());
    }
}
