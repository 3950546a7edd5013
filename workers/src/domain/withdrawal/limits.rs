//! A withdrawal's fee and limits, from the settings: the fee in basis
//! points, the most one withdrawal may take and the most a user may
//! withdraw in a business day, per currency. order-validation judges the
//! fee and the per-withdrawal limit; the daily limit is judged by Try,
//! under the wallet's row lock, so two withdrawals of one user asked at
//! once cannot both slip under it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payfleet_common::{Settings, money};
use rust_decimal::Decimal;

use crate::domain::limits::AmountLimits;
pub use crate::domain::limits::Day;

#[derive(Debug, Clone)]
pub struct Limits {
    fee_basis_points: u32,
    amounts: AmountLimits,
    payout_minimum: BTreeMap<String, u64>,
    holdback_basis_points: u32,
}

impl Limits {
    pub fn new(settings: &Settings) -> Self {
        Self {
            fee_basis_points: settings.withdrawal_fee_basis_points,
            amounts: AmountLimits::for_withdrawals(settings),
            payout_minimum: settings.merchant_payout_minimum.clone(),
            holdback_basis_points: settings.merchant_payout_holdback_basis_points,
        }
    }

    /// Why a merchant's settlement payout of `amount` in `currency` is
    /// refused by the minimum, if it is.
    pub fn payout_minimum_refusal(
        &self,
        amount: Decimal,
        currency: &str,
    ) -> Option<(&'static str, String)> {
        let Some(minimum) = self.payout_minimum.get(currency) else {
            return Some((
                "unsupported_currency",
                format!("no payouts in {currency} (merchant_payout_minimum names none)"),
            ));
        };
        (amount < Decimal::from(*minimum)).then(|| {
            (
                "below_minimum",
                format!("{amount} {currency} is below the payout minimum of {minimum} {currency}"),
            )
        })
    }

    /// What a merchant whose sales of the last [`HOLDBACK_WINDOW_DAYS`]
    /// came to `recent_sales` must keep on its account: the holdback
    /// (`merchant_payout_holdback_basis_points` of them, rounded up to the
    /// cent, so it is never short). It is a share of sales, never of what
    /// is left: payouts cannot wear it down.
    pub fn holdback(&self, recent_sales: Decimal) -> Decimal {
        let share = recent_sales.max(Decimal::ZERO) * Decimal::from(self.holdback_basis_points)
            / Decimal::from(10_000);
        share.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::AwayFromZero)
    }

    /// The platform's fee on withdrawing `amount`, rounded to the cent.
    pub fn fee(&self, amount: Decimal) -> Decimal {
        money::round(amount * Decimal::from(self.fee_basis_points) / Decimal::from(10_000))
    }

    /// Why one withdrawal of `amount` in `currency` is refused by the
    /// per-withdrawal limit, if it is.
    pub fn per_withdrawal_refusal(
        &self,
        amount: Decimal,
        currency: &str,
    ) -> Option<(&'static str, String)> {
        self.amounts.per_one_refusal(amount, currency)
    }

    /// The daily limit in `currency` for a withdrawal asked `at`: the
    /// business day it was asked in, whenever Try judges it, so a
    /// withdrawal asked before midnight and frozen after counts in one day.
    pub fn day_of(&self, currency: &str, at: DateTime<Utc>) -> Day {
        self.amounts.day_of(currency, at)
    }
}

/// The days of sales a merchant's holdback is a share of: what refunds
/// and chargebacks may still take back.
pub const HOLDBACK_WINDOW_DAYS: i32 = 30;

/// What merchant account `account`, holding `available`, may be paid out
/// now: all of it but the holdback on its sales of the last
/// [`HOLDBACK_WINDOW_DAYS`] (never below zero).
pub async fn payable(
    conn: &mut sqlx::PgConnection,
    limits: &Limits,
    account: i64,
    available: Decimal,
) -> Result<Decimal, payfleet_common::runtime::StageError> {
    let recent_sales: Decimal = sqlx::query_scalar(
        "SELECT COALESCE(sum(p.amount), 0) FROM postings p JOIN journal_entries j ON j.id = p.entry_id
         WHERE p.account_id = $1 AND j.kind = 'payment' AND p.amount > 0
           AND p.created_at >= now() - make_interval(days => $2)",
    )
    .bind(account)
    .bind(HOLDBACK_WINDOW_DAYS)
    .fetch_one(conn)
    .await?;
    Ok((available - limits.holdback(recent_sales)).max(Decimal::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_is_rounded_to_the_cent_and_the_limits_are_per_currency() {
        let limits = Limits::new(&Settings::default());
        // 10 basis points by default
        assert_eq!(limits.fee(Decimal::new(100_000, 2)), Decimal::new(100, 2));
        assert_eq!(limits.fee(Decimal::new(1_005, 2)), Decimal::new(1, 2));
        assert_eq!(limits.fee(Decimal::new(4, 2)), Decimal::ZERO);
        assert_eq!(
            limits.per_withdrawal_refusal(Decimal::from(50_000), "CNY"),
            None
        );
        assert_eq!(
            limits
                .per_withdrawal_refusal(Decimal::new(5_000_001, 2), "CNY")
                .map(|r| r.0),
            Some("over_limit")
        );
        assert_eq!(
            limits
                .per_withdrawal_refusal(Decimal::ONE, "JPY")
                .map(|r| r.0),
            Some("unsupported_currency")
        );
        let now = Utc::now();
        let day = limits.day_of("CNY", now);
        assert_eq!(day.limit, Some(Decimal::from(200_000)));
        assert!(day.start <= now && now < day.end);
        assert_eq!(limits.day_of("JPY", now).limit, None);
    }
}
