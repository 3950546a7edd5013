//! Payouts: money sent from the platform to a payee's bank card or
//! account (a user's withdrawal, a merchant's settlement).
//! `POST /channels/C/payouts` and `GET /channels/C/payouts/{payout_no}`.
//!
//! A payout is kept once per (channel, payout_no): a re-send answers what
//! the first ask decided and never pays twice. The payee's account token
//! picks the scenario:
//!
//! | account | behaviour |
//! | --- | --- |
//! | `acct_invalid` | refused for good: FAILED (`account_invalid`), nothing paid |
//! | `acct_timeout` | paid at once, but the answer comes only after `timeout_hold_ms` |
//! | `acct_returned` | paid (SUCCEEDED), then sent back by the payee's bank after `payout_return_delay`: RETURNED (`account_closed`), reported by a signed webhook to the payout's `notify_url`, sent again until it is taken (2xx) |
//! | `acct_pending` | accepted but never decided: PROCESSING for good (unless a test pays it with `Gateway::pay_pending_payout`), no fee taken, nothing paid (not on the statement); a re-send and a query answer the same |
//! | any other | paid at once: SUCCEEDED |
//!
//! The channel takes its fee on every payout it pays, a returned one too;
//! the statement lists those on the day the money left, never a failed or
//! a processing one.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use super::{
    CreatePayout, Gateway, Payout, PayoutNotice, PayoutStatus, Store, error, fee, is_currency_code,
};

impl Store {
    /// Turns the paid `acct_returned` payouts whose bank has sent them back
    /// by `now` RETURNED: the gateway settles lazily, on every read.
    pub(crate) fn settle_payouts(&mut self, now: DateTime<Utc>) {
        for payout in self.payouts.values_mut() {
            if payout.status == PayoutStatus::Succeeded
                && payout.returned_at.is_some_and(|at| at <= now)
            {
                payout.status = PayoutStatus::Returned;
                payout.reason = Some("account_closed".to_owned());
            }
        }
    }
}

impl Gateway {
    /// A payout as the gateway sees it (tests look here for its status).
    pub fn payout(&self, channel: &str, payout_no: &str) -> Option<Payout> {
        let mut store = self.store.lock().expect("store");
        store.settle_payouts(Utc::now());
        store
            .payouts
            .get(&(channel.to_owned(), payout_no.to_owned()))
            .cloned()
    }

    /// Takes payouts down (every one asked for answers 503 and is never
    /// kept, so a query finds none) or back up, as a bank outage would.
    pub fn set_payouts_down(&self, down: bool) {
        self.store.lock().expect("store").payouts_down = down;
    }

    /// Pays a payout left PROCESSING (`acct_pending`) as its bank finally
    /// did, taking the channel's fee; false when there is no such payout
    /// still processing. No notice is sent: a status query finds it.
    pub fn pay_pending_payout(&self, channel: &str, payout_no: &str) -> bool {
        let Some(fee_rate) = self.channel(channel).map(|c| c.fee_rate) else {
            return false;
        };
        let mut store = self.store.lock().expect("store");
        match store
            .payouts
            .get_mut(&(channel.to_owned(), payout_no.to_owned()))
        {
            Some(payout) if payout.status == PayoutStatus::Processing => {
                payout.status = PayoutStatus::Succeeded;
                payout.fee = fee(payout.amount, fee_rate);
                payout.paid_at = Some(Utc::now());
                true
            }
            _ => false,
        }
    }

    /// Turns a paid payout RETURNED at once, as if its bank sent it back and
    /// the notice were lost (tests); false when there is no such paid payout.
    pub fn return_payout_quietly(&self, channel: &str, payout_no: &str) -> bool {
        let mut store = self.store.lock().expect("store");
        match store
            .payouts
            .get_mut(&(channel.to_owned(), payout_no.to_owned()))
        {
            Some(payout) if payout.status == PayoutStatus::Succeeded => {
                payout.status = PayoutStatus::Returned;
                payout.reason = Some("account_closed".to_owned());
                payout.returned_at = Some(Utc::now());
                true
            }
            _ => false,
        }
    }

    /// Posts a returned payout's notice, signed like every webhook, once
    /// its bank has sent it back, until the receiver takes it: nothing
    /// else would tell it of the return.
    fn notify_return_later(&self, payout: Payout, url: String) {
        let Some(channel) = self.channel(&payout.channel).cloned() else {
            return;
        };
        let gateway = self.clone();
        tokio::spawn(async move {
            let at = payout.returned_at.unwrap_or_else(Utc::now);
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait + std::time::Duration::from_millis(10)).await;
            let Some(now) = gateway.payout(&payout.channel, &payout.payout_no) else {
                return;
            };
            let notice = PayoutNotice {
                channel: now.channel.clone(),
                payout_no: now.payout_no.clone(),
                status: now.status,
                amount: now.amount,
                currency: now.currency.clone(),
                fee: now.fee,
                reason: now.reason.clone(),
                occurred_at: at,
            };
            gateway
                .post_signed_until_taken(&url, &channel.secret, &notice)
                .await;
        });
    }
}

/// A payout's answer, to an ask and to a query alike.
fn answer(payout: &Payout) -> Response {
    let mut body = json!({
        "payout_no": payout.payout_no,
        "amount": payout.amount.to_string(),
        "currency": payout.currency,
        "fee": payout.fee.to_string(),
        "status": payout.status,
    });
    if let Some(reason) = &payout.reason {
        body["reason"] = json!(reason);
    }
    (StatusCode::OK, Json(body)).into_response()
}

pub(crate) async fn create(
    State(gw): State<Gateway>,
    Path(channel): Path<String>,
    Json(request): Json<CreatePayout>,
) -> Response {
    let Some(config) = gw.channel(&channel).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no channel {channel}"));
    };
    if request.amount <= Decimal::ZERO
        || request.amount.scale() > 2
        || request.payout_no.is_empty()
        || !is_currency_code(&request.currency)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "amount must be positive with at most two decimals, currency an ISO 4217 code and payout_no set",
        );
    }
    let now = Utc::now();
    let (payout, hold) = {
        let mut store = gw.store.lock().expect("store");
        store.settle_payouts(now);
        let key = (channel.clone(), request.payout_no.clone());
        if let Some(existing) = store.payouts.get(&key) {
            return answer(existing);
        }
        if store.payouts_down {
            return error(StatusCode::SERVICE_UNAVAILABLE, "payouts are down");
        }
        let refused = request.account == "acct_invalid";
        let returns = request.account == "acct_returned";
        let status = match request.account.as_str() {
            "acct_invalid" => PayoutStatus::Failed,
            "acct_pending" => PayoutStatus::Processing,
            _ => PayoutStatus::Succeeded,
        };
        let payout = Payout {
            channel,
            payout_no: request.payout_no,
            amount: request.amount,
            currency: request.currency,
            account: request.account.clone(),
            status,
            reason: refused.then(|| "account_invalid".to_owned()),
            // a fee only on money that left
            fee: if status.paid_out() {
                fee(request.amount, config.fee_rate)
            } else {
                Decimal::ZERO
            },
            created_at: now,
            paid_at: status.paid_out().then_some(now),
            returned_at: returns.then(|| {
                now + TimeDelta::from_std(gw.config.payout_return_delay).unwrap_or(TimeDelta::MAX)
            }),
            notify_url: request.notify_url,
        };
        store.payouts.insert(key, payout.clone());
        (payout, request.account == "acct_timeout")
    };
    if let (Some(_), Some(url)) = (payout.returned_at, payout.notify_url.clone()) {
        gw.notify_return_later(payout.clone(), url);
    }
    if hold {
        tokio::time::sleep(gw.config.timeout_hold).await;
    }
    answer(
        &gw.payout(&payout.channel, &payout.payout_no)
            .unwrap_or(payout),
    )
}

pub(crate) async fn query(
    State(gw): State<Gateway>,
    Path((channel, payout_no)): Path<(String, String)>,
) -> Response {
    match gw.payout(&channel, &payout_no) {
        Some(payout) => answer(&payout),
        None => error(StatusCode::NOT_FOUND, format!("no payout {payout_no}")),
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
    const RETURN_DELAY: Duration = Duration::from_millis(200);
    const HOLD: Duration = Duration::from_secs(5);

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
            timeout_hold: HOLD,
            payout_return_delay: RETURN_DELAY,
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
        fn ask(&self, payout_no: &str, account: &str) -> reqwest::RequestBuilder {
            self.http.post(format!("{}/payouts", self.base)).json(&json!({
                "payout_no": payout_no, "amount": "250.00", "currency": "CNY", "account": account
            }))
        }

        async fn pay(&self, payout_no: &str, account: &str) -> (StatusCode, Value) {
            let response = self
                .ask(payout_no, account)
                .send()
                .await
                .expect("an answer");
            let status = response.status();
            (status, response.json().await.expect("JSON"))
        }

        async fn query(&self, payout_no: &str) -> (StatusCode, Value) {
            let response = self
                .http
                .get(format!("{}/payouts/{payout_no}", self.base))
                .send()
                .await
                .expect("an answer");
            let status = response.status();
            (status, response.json().await.expect("JSON"))
        }

        async fn statement(&self) -> Statement {
            let today = Utc::now().date_naive();
            self.http
                .get(format!("{}/statement?date={today}", self.base))
                .send()
                .await
                .expect("an answer")
                .json()
                .await
                .expect("a statement")
        }
    }

    #[tokio::test]
    async fn a_payout_no_pays_once_with_the_channels_fee() {
        let gw = running().await;
        let first = gw.pay("p-1", "acct_success").await;
        // the card channel's 1.20 % of 250.00
        let paid = json!({"payout_no": "p-1", "amount": "250.00", "currency": "CNY", "fee": "3.00", "status": "SUCCEEDED"});
        assert_eq!(first, (StatusCode::OK, paid.clone()));
        assert_eq!(
            gw.pay("p-1", "acct_success").await,
            first,
            "a re-send answers the first"
        );
        assert_eq!(gw.query("p-1").await, (StatusCode::OK, paid));
        assert_eq!(gw.statement().await.payouts.len(), 1, "paid once");
        assert_eq!(gw.query("p-unknown").await.0, StatusCode::NOT_FOUND);
        let bad = gw
            .http
            .post(format!("{}/payouts", gw.base))
            .json(&json!({"payout_no": "p-2", "amount": "-1", "currency": "CNY", "account": "acct_success"}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_payout_to_an_invalid_account_fails_for_good_and_pays_nothing() {
        let gw = running().await;
        let failed = json!({"payout_no": "p-bad", "amount": "250.00", "currency": "CNY", "fee": "0",
                            "status": "FAILED", "reason": "account_invalid"});
        assert_eq!(
            gw.pay("p-bad", "acct_invalid").await,
            (StatusCode::OK, failed.clone())
        );
        assert_eq!(
            gw.pay("p-bad", "acct_invalid").await,
            (StatusCode::OK, failed)
        );
        assert!(gw.statement().await.payouts.is_empty(), "nothing paid out");
    }

    #[tokio::test]
    async fn a_pending_payout_stays_processing_without_a_fee_and_off_the_statement() {
        let gw = running().await;
        let processing = json!({"payout_no": "p-wait", "amount": "250.00", "currency": "CNY", "fee": "0",
                                "status": "PROCESSING"});
        assert_eq!(
            gw.pay("p-wait", "acct_pending").await,
            (StatusCode::OK, processing.clone())
        );
        // never decided: not by time, nor by a re-send
        tokio::time::sleep(RETURN_DELAY + Duration::from_millis(50)).await;
        assert_eq!(
            gw.pay("p-wait", "acct_pending").await,
            (StatusCode::OK, processing.clone()),
            "a re-send answers the same"
        );
        assert_eq!(gw.query("p-wait").await, (StatusCode::OK, processing));
        assert!(gw.statement().await.payouts.is_empty(), "nothing paid out");
        assert_eq!(
            gw.gw.payout(CARD, "p-wait").map(|p| p.status),
            Some(PayoutStatus::Processing)
        );
    }

    #[tokio::test]
    async fn a_payout_paid_days_after_it_was_asked_is_listed_on_the_day_it_was_paid() {
        let gw = running().await;
        gw.pay("p-late", "acct_pending").await;
        // asked yesterday, decided by its bank today
        let key = (CARD.to_owned(), "p-late".to_owned());
        if let Some(payout) = gw.gw.store.lock().expect("store").payouts.get_mut(&key) {
            payout.created_at -= TimeDelta::days(1);
        }
        assert!(gw.gw.pay_pending_payout(CARD, "p-late"));
        let listed = gw.statement().await.payouts;
        assert_eq!(listed.len(), 1, "on today's statement");
        assert_eq!(listed[0].status, PayoutStatus::Succeeded);
        assert!(listed[0].fee > Decimal::ZERO, "with the channel's fee");
        assert!(!gw.gw.pay_pending_payout(CARD, "p-late"), "paid once");
    }

    #[tokio::test]
    async fn a_timed_out_payout_is_paid_once_and_found_by_a_query() {
        let gw = running().await;
        let lost = gw
            .ask("p-slow", "acct_timeout")
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .expect_err("the client times out");
        assert!(lost.is_timeout(), "{lost}");
        assert_eq!(
            gw.query("p-slow").await.1["status"],
            "SUCCEEDED",
            "paid before the answer"
        );
        assert_eq!(gw.statement().await.payouts.len(), 1);
    }

    #[tokio::test]
    async fn a_returned_payout_comes_back_after_its_delay_and_stays_listed_as_returned() {
        let gw = running().await;
        assert_eq!(
            gw.pay("p-back", "acct_returned").await.1["status"],
            "SUCCEEDED"
        );
        tokio::time::sleep(RETURN_DELAY + Duration::from_millis(50)).await;
        let (_, now) = gw.query("p-back").await;
        assert_eq!(
            (now["status"].as_str(), now["reason"].as_str()),
            (Some("RETURNED"), Some("account_closed"))
        );
        // the bank's return does not undo the fee, nor pay twice
        assert_eq!(now["fee"], "3.00");
        assert_eq!(
            gw.pay("p-back", "acct_returned").await.1["status"],
            "RETURNED"
        );
        let listed = gw.statement().await.payouts;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, PayoutStatus::Returned);
        assert!(listed[0].returned_at.is_some());
        assert_eq!(
            gw.gw.payout(CARD, "p-back").map(|p| p.status),
            Some(PayoutStatus::Returned)
        );
    }
}
