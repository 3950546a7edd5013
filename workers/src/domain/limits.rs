//! Per-currency amount limits of one kind of money movement (withdrawals,
//! transfers), from the settings: the most one may move and the most one
//! user may move in a business day. order-validation judges the first;
//! Try judges the day under the wallet's row lock, so two asked at once
//! cannot both slip under it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payfleet_common::Settings;
use rust_decimal::Decimal;

#[derive(Debug, Clone)]
pub struct AmountLimits {
    /// What is limited, as a refusal names it ("withdrawal", "transfer").
    noun: &'static str,
    /// The setting of the per-movement limit, named when a currency has none.
    setting: &'static str,
    per_one: BTreeMap<String, u64>,
    per_day: BTreeMap<String, u64>,
    zone: chrono_tz::Tz,
}

impl AmountLimits {
    pub fn for_withdrawals(settings: &Settings) -> Self {
        Self {
            noun: "withdrawal",
            setting: "withdrawal_limit_per_withdrawal",
            per_one: settings.withdrawal_limit_per_withdrawal.clone(),
            per_day: settings.withdrawal_limit_per_day.clone(),
            zone: settings.business_zone(),
        }
    }

    pub fn for_transfers(settings: &Settings) -> Self {
        Self {
            noun: "transfer",
            setting: "transfer_limit_per_transfer",
            per_one: settings.transfer_limit_per_transfer.clone(),
            per_day: settings.transfer_limit_per_day.clone(),
            zone: settings.business_zone(),
        }
    }

    /// Why one movement of `amount` in `currency` is refused by the
    /// per-movement limit, if it is: none set for the currency
    /// (`unsupported_currency`), or over it (`over_limit`).
    pub fn per_one_refusal(
        &self,
        amount: Decimal,
        currency: &str,
    ) -> Option<(&'static str, String)> {
        let Some(limit) = self.per_one.get(currency) else {
            return Some((
                "unsupported_currency",
                format!(
                    "no {}s in {currency} ({} names none)",
                    self.noun, self.setting
                ),
            ));
        };
        (amount > Decimal::from(*limit)).then(|| {
            (
                "over_limit",
                format!(
                    "{amount} {currency} is over the limit of {limit} {currency} a {}",
                    self.noun
                ),
            )
        })
    }

    /// The daily limit in `currency` for a movement asked `at`: the
    /// business day it was asked in, whenever Try judges it, so one asked
    /// before midnight and frozen after counts in one day.
    pub fn day_of(&self, currency: &str, at: DateTime<Utc>) -> Day {
        let day = at.with_timezone(&self.zone).date_naive();
        let (start, end) = crate::domain::business_day::day_bounds(day, self.zone);
        Day {
            limit: self.per_day.get(currency).map(|l| Decimal::from(*l)),
            start,
            end,
        }
    }
}

/// A business day's limit: `[start, end)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Day {
    pub limit: Option<Decimal>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}
