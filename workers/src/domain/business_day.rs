//! The business day: one time zone (`business_time_zone`) in which the
//! fleet counts days — daily limits, merchants' T+1 payouts, same-day
//! reversal cut-offs, `payfleet reconcile --date`, the merchant balance's
//! "settled today".

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The first instant of `day` in `zone`, and of the day after.
pub fn day_bounds(day: NaiveDate, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = |d: NaiveDate| {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        // A zone whose clocks skip midnight starts the day at the first
        // instant after the gap.
        zone.from_local_datetime(&midnight)
            .earliest()
            .or_else(|| {
                zone.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
    };
    (start(day), start(day.succ_opt().unwrap_or(day)))
}
