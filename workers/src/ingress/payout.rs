//! A payout's notice at the webhook ingress: verified by its channel's
//! adapter, held to the withdrawal in its address and to that
//! withdrawal's payout (the amount the payee was to receive, its currency,
//! the channel's fee — read as channel-call reads a reply), logged, and
//! handed to callback when final.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};
use payfleet_common::{
    messages::{WithdrawalStep, kind, stable_id},
    runtime::Shared,
};
use uuid::Uuid;

use super::{Answer, Ingress, adapter, hand_to_callback, refusal_answer, refused};
use crate::{
    channels::PayoutNotice,
    domain::withdrawal::{
        self, Withdrawal,
        answer::{Reading, read_answer},
    },
};

pub(super) async fn receive(
    State(ingress): State<Arc<Ingress>>,
    Path((channel, withdrawal_id)): Path<(String, Uuid)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let shared = &ingress.shared;
    let tolerance = shared.settings.callback_tolerance;
    let notice = match adapter(&ingress, &channel).await {
        Ok(adapter) => match adapter.verify_payout_notice(&headers, &body, tolerance) {
            Ok(notice) => notice,
            Err(refusal) => return refusal_answer(refusal),
        },
        Err(answer) => return answer,
    };
    let w = match addressed(shared, &channel, withdrawal_id, &notice).await {
        Ok(w) => w,
        Err(answer) => return answer,
    };
    // Read before it is logged: an unreadable status is refused and stored nowhere.
    let status = notice.answer["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !matches!(
        status.as_str(),
        "PROCESSING" | "SUCCEEDED" | "FAILED" | "RETURNED"
    ) {
        return (StatusCode::BAD_REQUEST, "unreadable notice\n");
    }
    if let Err(answer) = log_notice(shared, &channel, &notice, &body).await {
        return answer;
    }
    // Signed by the channel, yet not about the payout we asked for: it is
    // kept in the log for ops and moves nothing.
    let unmatched = |why: &str| {
        tracing::error!(%channel, %withdrawal_id, why, "payout notice does not match the payout");
        refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the notice does not state this withdrawal's payout: its amount, currency and fee\n",
        )
    };
    let (result, reason, channel_fee) = match read_answer(&notice.answer, &w) {
        Reading::Final(result, reason, fee) => (result, reason, fee),
        Reading::Unknown(_) if status == "PROCESSING" => return (StatusCode::OK, "noted\n"),
        Reading::Unknown(why) => return unmatched(&why),
        Reading::NeverReceived => return unmatched("a notice of no payout"),
    };
    let mut step = WithdrawalStep::new(withdrawal_id);
    step.result = Some(result);
    step.reason = reason;
    step.channel_fee = channel_fee;
    hand_to_callback(
        shared,
        stable_id(&[
            "payout-webhook",
            &channel,
            &withdrawal_id.to_string(),
            &status,
        ]),
        &withdrawal_id.to_string(),
        kind::WITHDRAWAL_RESULT,
        &step,
    )
    .await
}

/// The withdrawal a notice is for: the one in its address, paid out at
/// the channel of its address, which is also the channel the notice names;
/// anything else is refused, counted, and kept out of the log.
async fn addressed(
    shared: &Shared,
    channel: &str,
    withdrawal_id: Uuid,
    notice: &PayoutNotice,
) -> Result<Withdrawal, Answer> {
    let refuse = |status, why: &'static str| {
        tracing::warn!(
            channel,
            %withdrawal_id,
            payout_no = %notice.payout_no,
            why = why.trim_end(),
            "payout webhook refused"
        );
        refused(status, why)
    };
    if notice.payout_no != withdrawal_id {
        return Err(refuse(
            StatusCode::CONFLICT,
            "the notice is for another withdrawal\n",
        ));
    }
    if notice.channel != channel {
        return Err(refuse(
            StatusCode::CONFLICT,
            "the notice names another channel\n",
        ));
    }
    match withdrawal::find(&shared.pool, withdrawal_id).await {
        Ok(Some(w)) if w.channel.as_deref() == Some(channel) => Ok(w),
        Ok(Some(_)) => Err(refuse(
            StatusCode::CONFLICT,
            "the withdrawal is at another channel\n",
        )),
        Ok(None) => Err(refuse(StatusCode::NOT_FOUND, "unknown withdrawal\n")),
        Err(error) => {
            tracing::warn!(%error, "webhook ingress: database unavailable");
            Err((StatusCode::SERVICE_UNAVAILABLE, "try again\n"))
        }
    }
}

/// Keeps a payout's notice in the payouts' integration log: the answer it
/// reads as, and the signed bytes and both headers as sent, so the
/// signature can be checked again later.
async fn log_notice(
    shared: &Shared,
    channel: &str,
    notice: &PayoutNotice,
    body: &[u8],
) -> Result<(), Answer> {
    sqlx::query(
        "INSERT INTO withdrawal_log (withdrawal_id, channel, direction, payload, raw_body, signed_timestamp, signature)
         VALUES ($1, $2, 'callback', $3, $4, $5, $6)",
    )
    .bind(notice.payout_no)
    .bind(channel)
    .bind(&notice.answer)
    .bind(body)
    .bind(&notice.signed_timestamp)
    .bind(&notice.signature)
    .execute(&shared.pool)
    .await
    .map(drop)
    .map_err(|error| {
        tracing::warn!(%error, "webhook ingress: cannot log a payout notice");
        (StatusCode::SERVICE_UNAVAILABLE, "try again\n")
    })
}
