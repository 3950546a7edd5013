//! A wallet top-up's books. A top-up is a payment of kind `top_up`
//! (`topup.requested`): the user pays at a channel and, on Confirm, the
//! wallet gains what the channel charged. The `top_up` entry:
//! `clearing:<ch>` −(C − F), the channel hands over what it charged less
//! its fee; `channel-costs:<ch>` −F, the fee is the platform's cost (a
//! user is never charged for filling the wallet); the wallet +C. A charge
//! held for review comes from `suspense:<ch>` −C instead of the two
//! channel legs.

use payfleet_common::runtime::StageError;
use sqlx::PgConnection;

use crate::domain::{
    ledger::{self, ChannelCharge, Entry, EntryKind},
    payment::Payment,
};

/// Books a paid top-up: the channel's money comes in and the wallet is
/// credited with it, once (the entry is keyed by the top-up's id).
pub async fn book(
    conn: &mut PgConnection,
    p: &Payment,
    charge: &ChannelCharge,
) -> Result<(), StageError> {
    if charge.currency != p.currency {
        return Err(StageError::permanent(format!(
            "top-up {} is in {} but its channel charged {} {}: it cannot settle",
            p.id, p.currency, charge.amount, charge.currency
        )));
    }
    let reference = p.id.to_string();
    let Some(entry) =
        Entry::open(conn, &reference, EntryKind::TopUp, Some(charge.attempt_id)).await?
    else {
        return Err(StageError::permanent(format!(
            "top-up {} already has its journal entry",
            p.id
        )));
    };
    charge
        .bring_in(conn, &entry, p.channel_fee_on(charge.amount))
        .await?;
    ledger::credit_wallet(
        conn,
        &entry,
        &p.user_id,
        &p.currency,
        charge.amount,
        Some(p.id),
    )
    .await
}
