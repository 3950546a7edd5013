//! A batch's wallet captures resolved at once: the same result as the
//! one-at-a-time path gives a plain wallet success (the attempt succeeds,
//! the payment moves `frozen` → `paid`, settlement is told), with one
//! statement per table for all of them instead of a few per payment.
//!
//! Only a plain success is taken here: the payment `frozen`, the amount
//! and currency asked, the attempt its own, at the wallet, open or
//! already succeeded. Anything else — a mismatch, a misdirected result, a
//! payment in another status, an attempt not committed yet — is left
//! untouched for [`super::Callback`]'s one-at-a-time path, which names
//! what is wrong.

use std::collections::HashMap;

use payfleet_common::{
    AttemptId, PaymentId,
    messages::{ChannelResult, ChannelStatus, Resolution},
    runtime::{StageError, StageTx},
};

use super::{misdirected, resolve};
use crate::channels::BALANCE;
use crate::domain::{
    attempt::AttemptStatus,
    payment::{self, Payment, PaymentStatus},
};

/// Whether `m` may be a plain wallet success.
pub(super) fn admits(m: &ChannelResult) -> bool {
    m.status == ChannelStatus::Succeeded && m.channel == BALANCE
}

/// Resolves the plain wallet successes among `messages` (sorted by payment
/// id, each payment once): whether each was resolved here.
pub(super) async fn resolve_wallet_successes(
    tx: &mut StageTx,
    messages: &[&ChannelResult],
) -> Result<Vec<bool>, StageError> {
    let (plain, open) = plain_successes(tx, messages).await?;
    let resolved: Vec<PaymentId> = messages
        .iter()
        .zip(&plain)
        .filter(|(_, plain)| **plain)
        .map(|(m, _)| m.payment_id)
        .collect();
    if resolved.is_empty() {
        return Ok(plain);
    }
    follow_open_attempts(tx, &open).await?;
    payment::transition_many(
        tx.conn(),
        &resolved,
        PaymentStatus::Frozen,
        PaymentStatus::Paid,
    )
    .await?;
    for id in resolved {
        tx.set_correlation_id(&id.to_string());
        resolve(tx, id, Resolution::Paid, None)?;
    }
    Ok(plain)
}

/// Which of `messages` are plain wallet successes, their payments locked;
/// and the still open attempts among them.
async fn plain_successes<'m>(
    tx: &mut StageTx,
    messages: &[&'m ChannelResult],
) -> Result<(Vec<bool>, Vec<&'m ChannelResult>), StageError> {
    let ids: Vec<PaymentId> = messages.iter().map(|m| m.payment_id).collect();
    let payments: HashMap<PaymentId, Payment> = payment::lock_many(tx.conn(), &ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let attempt_ids: Vec<AttemptId> = messages.iter().map(|m| m.attempt_id).collect();
    let attempts: HashMap<AttemptId, (PaymentId, String, String)> = sqlx::query_as(
        "SELECT id, payment_id, channel, status FROM payment_attempts WHERE id = ANY($1)",
    )
    .bind(&attempt_ids)
    .fetch_all(tx.conn())
    .await?
    .into_iter()
    .map(|(id, payment_id, channel, status)| (id, (payment_id, channel, status)))
    .collect();

    let mut plain = vec![false; messages.len()];
    let mut open = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let (Some(p), Some((payment_id, channel, status))) =
            (payments.get(&m.payment_id), attempts.get(&m.attempt_id))
        else {
            continue;
        };
        if misdirected(m, *payment_id, channel).is_some()
            || p.status()? != PaymentStatus::Frozen
            || m.amount != p.amount
            || m.currency != p.currency
        {
            continue;
        }
        match AttemptStatus::parse(status)? {
            s if s.is_open() => open.push(*m),
            AttemptStatus::Succeeded => {}
            _ => continue,
        }
        plain[i] = true;
    }
    Ok((plain, open))
}

/// The open attempts follow their results, as one at a time: succeeded,
/// with the wallet's reference.
async fn follow_open_attempts(tx: &mut StageTx, open: &[&ChannelResult]) -> Result<(), StageError> {
    if open.is_empty() {
        return Ok(());
    }
    let ids: Vec<AttemptId> = open.iter().map(|m| m.attempt_id).collect();
    let references: Vec<Option<&str>> = open
        .iter()
        .map(|m| m.channel_reference.as_deref())
        .collect();
    let followed = sqlx::query(
        "UPDATE payment_attempts a SET status = 'succeeded', channel_reference = r.reference, resolved_at = now()
         FROM UNNEST($1::uuid[], $2::text[]) AS r (id, reference)
         WHERE a.id = r.id AND a.status IN ('sending', 'pending', 'unknown')",
    )
    .bind(&ids)
    .bind(&references)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if followed != ids.len() as u64 {
        return Err(StageError::transient(format!(
            "{} of {} open attempts moved while being resolved",
            ids.len() as u64 - followed,
            ids.len()
        )));
    }
    Ok(())
}
