//! Whether a payment can still be reversed rather than refunded: a
//! reversal cancels the whole charge at the channel before the channel has
//! settled it — the day it was paid (in the fleet's business-day zone,
//! `business_time_zone`) and before the channel's cut-off
//! (`channels.reversal_cutoff`), the day being the one the charge was paid. The channel has the last word (it may
//! refuse with `reversal_window_closed` too); this check spares it a call
//! that cannot succeed and tells upstream at once to refund instead.

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use payfleet_common::{PaymentId, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;

/// The payment's charge as a reversal needs it.
#[derive(Debug, Clone, PartialEq)]
struct Charge {
    channel: String,
    /// What the channel charged, against what the payment asked.
    charged: (Decimal, String),
    asked: (Decimal, String),
    /// When the channel charged it (as we learned it): the day it belongs to.
    paid_at: DateTime<Utc>,
    cutoff: Option<NaiveTime>,
    /// The channel's fee as booked with the payment; the reversal gives it
    /// back, so a charge without one cannot be reversed.
    fee: Option<Decimal>,
}

/// Why payment `payment_id` (settled, charged at a channel) cannot be
/// reversed now: a reason code and a detail; `None` when it can.
pub(super) async fn window(
    conn: &mut PgConnection,
    payment_id: PaymentId,
    zone: Tz,
    now: DateTime<Utc>,
) -> Result<Option<(&'static str, String)>, StageError> {
    type Row = (
        String,
        Decimal,
        String,
        Decimal,
        String,
        DateTime<Utc>,
        Option<NaiveTime>,
        Option<Decimal>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT a.channel, COALESCE(a.charged_amount, a.amount), COALESCE(a.charged_currency, a.currency)::text,
                p.amount, p.currency::text, COALESCE(a.resolved_at, a.created_at), c.reversal_cutoff, a.fee
         FROM payment_attempts a JOIN payments p ON p.id = a.payment_id JOIN channels c ON c.name = a.channel
         WHERE a.payment_id = $1 AND a.status = 'succeeded' AND a.channel <> $2
         ORDER BY a.created_at DESC LIMIT 1",
    )
    .bind(payment_id)
    .bind(crate::channels::BALANCE)
    .fetch_optional(conn)
    .await?;
    let Some((channel, charged, charged_currency, asked, currency, paid_at, cutoff, fee)) = row
    else {
        return Ok(Some((
            "not_reversible",
            format!(
                "payment {payment_id} has no charge at a channel: a wallet payment is refunded"
            ),
        )));
    };
    let charge = Charge {
        channel,
        charged: (charged, charged_currency),
        asked: (asked, currency),
        paid_at,
        cutoff,
        fee,
    };
    Ok(judge(&charge, zone, now))
}

fn judge(charge: &Charge, zone: Tz, now: DateTime<Utc>) -> Option<(&'static str, String)> {
    let channel = &charge.channel;
    let Some(cutoff) = charge.cutoff else {
        return Some((
            "not_reversible",
            format!("{channel} does not reverse payments: refund instead"),
        ));
    };
    if charge.charged != charge.asked {
        return Some((
            "not_reversible",
            format!(
                "{channel} charged {} {} for a payment of {} {}: refund instead",
                charge.charged.0, charge.charged.1, charge.asked.0, charge.asked.1
            ),
        ));
    }
    if charge.fee.is_none() {
        return Some((
            "not_reversible",
            format!("the fee {channel} took on the charge is not booked: refund instead"),
        ));
    }
    let paid_day = charge.paid_at.with_timezone(&zone).date_naive();
    let now_local = now.with_timezone(&zone);
    if paid_day != now_local.date_naive() || now_local.time() >= cutoff {
        return Some((
            "reversal_window_closed",
            format!(
                "{channel} settled the payment at its cut-off {cutoff} ({zone}) of {paid_day}; request a refund instead"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(paid_at: &str, cutoff: &str) -> Charge {
        let amount = (Decimal::new(8000, 2), "CNY".to_owned());
        Charge {
            channel: "sandbox-card".into(),
            charged: amount.clone(),
            asked: amount,
            paid_at: paid_at.parse().unwrap(),
            cutoff: Some(cutoff.parse().unwrap()),
            fee: Some(Decimal::new(96, 2)),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_payment_is_reversed_only_the_day_it_was_paid_before_the_cut_off() {
        let paid = charge("2026-12-06T09:00:00Z", "22:00:00");
        assert_eq!(judge(&paid, Tz::UTC, at("2026-12-06T21:59:59Z")), None);
        for late in ["2026-12-06T22:00:00Z", "2026-12-07T08:00:00Z"] {
            let (reason, detail) = judge(&paid, Tz::UTC, at(late)).expect("too late");
            assert_eq!(reason, "reversal_window_closed");
            assert!(detail.contains("request a refund instead"), "{detail}");
        }
    }

    #[test]
    fn the_day_and_the_cut_off_are_the_business_zones() {
        // 17:00 UTC on the 6th is 01:00 on the 7th in Shanghai: a payment
        // paid at 15:00 UTC (23:00 there) belongs to the day before.
        let paid = charge("2026-12-06T15:00:00Z", "23:30:00");
        let shanghai = Tz::Asia__Shanghai;
        assert_eq!(judge(&paid, Tz::UTC, at("2026-12-06T17:00:00Z")), None);
        assert_eq!(
            judge(&paid, shanghai, at("2026-12-06T17:00:00Z")).map(|r| r.0),
            Some("reversal_window_closed")
        );
        assert_eq!(judge(&paid, shanghai, at("2026-12-06T15:10:00Z")), None);
    }

    #[test]
    fn a_charge_that_differs_or_a_channel_without_cut_off_is_not_reversible() {
        let mut other = charge("2026-12-06T09:00:00Z", "22:00:00");
        other.charged.0 = Decimal::new(7999, 2);
        let now = at("2026-12-06T10:00:00Z");
        assert_eq!(
            judge(&other, Tz::UTC, now).map(|r| r.0),
            Some("not_reversible")
        );
        let mut never = charge("2026-12-06T09:00:00Z", "22:00:00");
        never.cutoff = None;
        assert_eq!(
            judge(&never, Tz::UTC, now).map(|r| r.0),
            Some("not_reversible")
        );
    }
}
