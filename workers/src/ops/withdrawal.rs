//! `payfleet withdrawal`: users' withdrawals, one withdrawal's whole story
//! (its payout calls and notices, postings, events, webhooks, ops
//! actions), and asking the payout channel by hand about one still open
//! there (or paid, for a return whose notice never came) — the way out of
//! `exception`, sending again under the same id when the channel never
//! received the payout.

use chrono::{DateTime, Utc};
use payfleet_common::{
    Settings, Topology,
    messages::{WithdrawalResult, WithdrawalStep, kind},
    outbox::{self, OutboxMessage},
};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Result};
use crate::{
    channels::{Adapters, RefundError},
    domain::{
        handoff,
        withdrawal::{
            self, WithdrawalStatus,
            answer::{Reading, read_answer},
        },
    },
    stages::channel_call::payout,
};

/// The withdrawal `<withdrawal id>` or `<requester id>:<request id>` names.
pub fn parse_reference(reference: &str) -> Result<Uuid> {
    if let Ok(id) = reference.parse::<Uuid>() {
        return Ok(id);
    }
    match reference.split_once(':') {
        Some((requester, request)) if !requester.is_empty() && !request.is_empty() => {
            Ok(withdrawal::withdrawal_id(requester, request))
        }
        _ => Err(Error::refused(format!(
            "`{reference}` is neither a withdrawal id nor requester-id:request-id"
        ))),
    }
}

/// A withdrawal as `withdrawal list` and `withdrawal show` tell it.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct WithdrawalRow {
    pub id: Uuid,
    pub requester_id: String,
    pub request_id: String,
    pub user_id: String,
    pub amount: Decimal,
    /// The platform's withdrawal fee, out of `amount`.
    pub fee: Decimal,
    pub currency: String,
    pub channel: Option<String>,
    pub channel_fee: Option<Decimal>,
    pub status: String,
    pub detail: Option<String>,
    pub sends: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, requester_id, request_id, user_id, amount, fee, currency::text AS currency,
     channel, channel_fee, status, detail, sends, last_error, created_at, updated_at";

/// Withdrawals, newest first, by status and user when given.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    user: Option<&str>,
    limit: i64,
) -> Result<Vec<WithdrawalRow>> {
    if let Some(status) = status {
        WithdrawalStatus::parse(status).map_err(|_| {
            let known: Vec<&str> = WithdrawalStatus::ALL.iter().map(|s| s.as_str()).collect();
            Error::refused(format!(
                "--status `{status}` is not a withdrawal status ({})",
                known.join(", ")
            ))
        })?;
    }
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM withdrawals
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR user_id = $2)
         ORDER BY created_at DESC LIMIT $3"
    ))
    .bind(status)
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One line of a withdrawal's timeline.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct Line {
    pub at: DateTime<Utc>,
    pub what: String,
}

#[derive(Debug, serde::Serialize)]
pub struct WithdrawalStory {
    pub withdrawal: WithdrawalRow,
    pub timeline: Vec<Line>,
}

/// Withdrawal `id` with its story in time order.
pub async fn show(pool: &PgPool, id: Uuid) -> Result<WithdrawalStory> {
    let found: Option<WithdrawalRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM withdrawals WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some(withdrawal) = found else {
        return Err(Error::not_found(format!("no withdrawal {id}")));
    };
    let timeline = sqlx::query_as(
        "SELECT at, what FROM (
           SELECT created_at AS at, 'asked by ' || requester_id || ': ' || amount || ' ' || currency
                  || ' for ' || user_id || ' to ' || payee_account AS what FROM withdrawals WHERE id = $1
           UNION ALL SELECT paid_at, 'paid out' FROM withdrawals WHERE id = $1 AND paid_at IS NOT NULL
           UNION ALL SELECT returned_at, 'returned by the payee''s bank' FROM withdrawals WHERE id = $1 AND returned_at IS NOT NULL
           UNION ALL SELECT created_at, 'channel ' || channel || ' ' || direction || ': '
                  || COALESCE(payload->>'call', payload->>'status', '')
                  || COALESCE(' → ' || COALESCE(payload->'answer'->>'status', payload->>'answer', payload->>'error'), '')
             FROM withdrawal_log WHERE withdrawal_id = $1
           UNION ALL SELECT p.created_at, 'posting ' || j.kind || ' ' || a.owner_kind || ':' || a.owner_id || ' ' || p.amount || ' ' || p.currency
             FROM postings p JOIN journal_entries j ON j.id = p.entry_id JOIN accounts a ON a.id = p.account_id
            WHERE j.reference = $1::text
           UNION ALL SELECT created_at, 'event ' || event_type || ' ' || event_id FROM payment_events WHERE withdrawal_id = $1
           UNION ALL SELECT a.at, 'webhook attempt ' || a.attempt || ' to ' || d.url || ': ' || COALESCE(a.http_status::text, a.error)
             FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.withdrawal_id = $1
           UNION ALL SELECT at, 'ops ' || action || ' by ' || operator || ': ' || reason || ' — ' || after::text
             FROM manual_actions WHERE withdrawal_id = $1
         ) t ORDER BY at",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(WithdrawalStory {
        withdrawal,
        timeline,
    })
}

/// What the payout channel said to `withdrawal requery`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Final: handed to callback, which moves the withdrawal and books it.
    Final {
        result: String,
        reason: Option<String>,
    },
    /// The channel says what the books already say (a paid payout still
    /// paid): nothing to hand on.
    AsBooked { result: String },
    /// The channel has no payout of this id: it never reached it. Nothing
    /// moves; `--send-again` sends it again under its id.
    NeverReceived,
    /// Processing, another amount, or no answer: why.
    NoAnswer { why: String },
}

/// `withdrawal requery`: asks the payout channel now about a withdrawal
/// still open there (`sending`, `unknown` or `exception`), or paid
/// (`succeeded`: a return whose notice never came); a final answer is read
/// as channel-call reads one and goes to callback like a status query's.
/// With `send_again`, an `exception` the channel has never heard of (the
/// send never reached it, the queries ran out meanwhile) is sent again
/// under the same id — harmless by the channel's idempotency key, as
/// channel-call does on its own. Logged and audited.
pub async fn requery(
    settings: &Settings,
    pool: &PgPool,
    id: Uuid,
    operator: &str,
    send_again: bool,
) -> Result<Answer> {
    let Some(w) = withdrawal::find(pool, id).await? else {
        return Err(Error::not_found(format!("no withdrawal {id}")));
    };
    let status = w.status().map_err(|e| Error::refused(e.to_string()))?;
    let (WithdrawalStatus::Sending
    | WithdrawalStatus::Unknown
    | WithdrawalStatus::Exception
    | WithdrawalStatus::Succeeded) = status
    else {
        return Err(Error::refused(format!(
            "withdrawal {id} is {}: nothing at its channel can change it",
            status.as_str()
        )));
    };
    if send_again && status != WithdrawalStatus::Exception {
        return Err(Error::refused(format!(
            "--send-again: withdrawal {id} is {}, not an exception; channel-call still handles it",
            status.as_str()
        )));
    }
    let Some(channel) = w.channel.clone() else {
        return Err(Error::refused(format!(
            "withdrawal {id} names no payout channel"
        )));
    };
    let adapter = Adapters::new(settings.channel_timeout)
        .get(pool, &channel)
        .await?;
    let mut calls = vec![("manual requery", adapter.query_payout(id).await)];
    let mut reading = read_reply(&calls[0].1, &w);
    if send_again && reading == Reading::NeverReceived {
        let url = payout::notify_url(&settings.callback_base_url, &channel, id);
        let sent = adapter.payout(&payout::request(&w, url)).await;
        reading = payout::read_send_again(&sent, &w);
        calls.push(("manual payout again", sent));
    }
    let (answer, step) = answer_of(reading, status, id)?;
    let said = serde_json::to_value(&answer)?;
    let mut tx = pool.begin().await?;
    for (call, reply) in &calls {
        let mut logged = json!({"call": call, "operator": operator, "payout_no": id});
        match reply {
            Ok(raw) => logged["answer"] = raw.clone(),
            Err(error) => logged["error"] = json!(error.to_string()),
        }
        sqlx::query(
            "INSERT INTO withdrawal_log (withdrawal_id, channel, direction, payload) VALUES ($1, $2, 'request', $3)",
        )
        .bind(id)
        .bind(&channel)
        .bind(logged)
        .execute(&mut *tx)
        .await?;
    }
    if calls.len() > 1 {
        sqlx::query("UPDATE withdrawals SET sends = sends + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(step) = step {
        let topology = Topology::from_settings(settings)?;
        let message = OutboxMessage::json(
            &topology.exchanges().stages,
            handoff::CALLBACK,
            kind::WITHDRAWAL_RESULT,
            Some(&id.to_string()),
            &step,
        )?;
        outbox::insert(&mut tx, &[message]).await?;
    }
    sqlx::query(
        "INSERT INTO manual_actions (withdrawal_id, action, operator, reason, before, after)
         VALUES ($1, 'requery', $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(operator)
    .bind(if calls.len() > 1 {
        "status asked by hand; the payout sent again under its id"
    } else {
        "status asked by hand"
    })
    .bind(json!({"status": status.as_str()}))
    .bind(&said)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(answer)
}

/// A status query's reply, read as channel-call reads one.
fn read_reply(
    reply: &std::result::Result<serde_json::Value, RefundError>,
    w: &withdrawal::Withdrawal,
) -> Reading {
    match reply {
        Ok(raw) => read_answer(raw, w),
        Err(RefundError::NotFound { .. }) => Reading::NeverReceived,
        Err(error) => Reading::Unknown(error.to_string()),
    }
}

/// What ops are told, and the result to hand to callback if any.
fn answer_of(
    reading: Reading,
    status: WithdrawalStatus,
    id: Uuid,
) -> Result<(Answer, Option<WithdrawalStep>)> {
    Ok(match reading {
        Reading::Final(WithdrawalResult::Succeeded, ..)
            if status == WithdrawalStatus::Succeeded =>
        {
            let result = "succeeded".to_owned();
            (Answer::AsBooked { result }, None)
        }
        Reading::Final(result, reason, fee) => {
            let mut step = WithdrawalStep::new(id);
            step.result = Some(result);
            step.reason = reason.clone();
            step.channel_fee = fee;
            let result = serde_json::to_value(result)?
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (Answer::Final { result, reason }, Some(step))
        }
        Reading::Unknown(why) => (Answer::NoAnswer { why }, None),
        Reading::NeverReceived => (Answer::NeverReceived, None),
    })
}
