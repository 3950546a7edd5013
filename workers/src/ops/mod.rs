//! The ops tooling behind `payfleet dlq`, `status`, `payment`, `refund`, `merchant`, `channel`, `user`, `wallet`, `catalogue`, `publish` and `webhook`:
//! what on-call needs at 3 a.m., every action on record.

pub mod catalogue;
pub mod channel;
pub mod deposit;
pub mod dlq;
mod error;
pub mod merchant;
pub mod payment;
pub mod publish;
pub mod reconcile;
pub mod refund;
pub mod status;
pub mod user;
pub mod webhook;
pub mod withdrawal;

pub use error::{BoxError, Error, Result};

/// Who is acting: `--operator`, else `$USER`, else `unknown`.
pub fn operator(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .filter(|o| !o.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Parses `30s`, `15m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_age(text: &str) -> Result<chrono::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 15m, 2h or 7d"))?;
    let duration = match unit {
        "" | "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (s, m, h, d)")),
    };
    duration.ok_or_else(|| format!("`{text}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_parse_with_units() {
        assert_eq!(
            super::parse_age("90").unwrap(),
            chrono::Duration::seconds(90)
        );
        assert_eq!(
            super::parse_age("15m").unwrap(),
            chrono::Duration::minutes(15)
        );
        assert_eq!(super::parse_age("2d").unwrap(), chrono::Duration::days(2));
        assert!(
            super::parse_age("200000000000d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(super::parse_age("soon").is_err());
        assert!(super::parse_age("3w").is_err());
    }
}
