//! A transfer's limits, from the settings: the most one transfer may move
//! and the most a user may transfer out in a business day, per currency.
//! order-validation judges the per-transfer limit; the daily limit is
//! judged by Try, under the payer's wallet row lock, so two transfers of
//! one payer asked at once cannot both slip under it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use payfleet_common::Settings;
use rust_decimal::Decimal;

use crate::domain::withdrawal::limits::Day;

#[derive(Debug, Clone)]
pub struct Limits {
    per_transfer: BTreeMap<String, u64>,
    per_day: BTreeMap<String, u64>,
    zone: chrono_tz::Tz,
}

impl Limits {
    pub fn new(settings: &Settings) -> Self {
        Self {
            per_transfer: settings.transfer_limit_per_transfer.clone(),
            per_day: settings.transfer_limit_per_day.clone(),
            zone: settings.business_zone(),
        }
    }

    /// Why one transfer of `amount` in `currency` is refused by the
    /// per-transfer limit, if it is.
    pub fn per_transfer_refusal(
        &self,
        amount: Decimal,
        currency: &str,
    ) -> Option<(&'static str, String)> {
        let Some(limit) = self.per_transfer.get(currency) else {
            return Some((
                "unsupported_currency",
                format!("no transfers in {currency} (transfer_limit_per_transfer names none)"),
            ));
        };
        (amount > Decimal::from(*limit)).then(|| {
            (
                "over_limit",
                format!("{amount} {currency} is over the limit of {limit} {currency} a transfer"),
            )
        })
    }

    /// The daily limit in `currency` for a transfer asked `at`: the
    /// business day it was asked in, whenever Try judges it.
    pub fn day_of(&self, currency: &str, at: DateTime<Utc>) -> Day {
        let day = at.with_timezone(&self.zone).date_naive();
        let (start, end) = crate::ops::reconcile::day_bounds(day, self.zone);
        Day {
            limit: self.per_day.get(currency).map(|l| Decimal::from(*l)),
            start,
            end,
        }
    }
}
