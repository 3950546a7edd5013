//! Exact money: `rust_decimal` amounts in a currency's minor units, and an
//! allocation whose parts always sum to the whole. No floating point.

use rust_decimal::{Decimal, RoundingStrategy};

/// Currencies payfleet accepts, all with two minor digits.
pub const CURRENCIES: &[&str] = &["CNY", "USD", "EUR", "GBP", "HKD", "SGD"];
/// Minor digits of every accepted currency.
pub const MINOR_DIGITS: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unsupported currency `{0}` (accepted: {accepted})", accepted = CURRENCIES.join(", "))]
    Currency(String),
    #[error("amount `{0}` is not a decimal with at most two decimal places")]
    Amount(String),
    #[error("amount `{0}` is negative")]
    Negative(String),
}

/// ISO 4217's code for "no currency": what a refusal reports when the
/// request's own currency could not be used.
pub const NO_CURRENCY: &str = "XXX";

/// A validated currency code.
pub fn currency(code: &str) -> Result<&'static str, MoneyError> {
    CURRENCIES
        .iter()
        .find(|c| **c == code)
        .copied()
        .ok_or_else(|| MoneyError::Currency(code.to_owned()))
}

/// Parses a non-negative amount with at most two decimal places.
pub fn parse_amount(text: &str) -> Result<Decimal, MoneyError> {
    let amount: Decimal = text
        .trim()
        .parse()
        .map_err(|_| MoneyError::Amount(text.to_owned()))?;
    check_amount(amount)
}

/// Checks a decoded amount the same way.
pub fn check_amount(amount: Decimal) -> Result<Decimal, MoneyError> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(MoneyError::Negative(amount.to_string()));
    }
    if amount.normalize().scale() > MINOR_DIGITS {
        return Err(MoneyError::Amount(amount.to_string()));
    }
    Ok(amount.round_dp(MINOR_DIGITS))
}

/// Rounds to the minor unit, half away from zero (fees, percentages).
pub fn round(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(MINOR_DIGITS, RoundingStrategy::MidpointAwayFromZero)
}

/// Splits `total` across `weights` in proportion, in minor units, by the
/// largest-remainder method: the parts sum exactly to `total`, and ties go
/// to the earlier weight. All-zero weights put everything on the first part.
pub fn allocate(total: Decimal, weights: &[Decimal]) -> Vec<Decimal> {
    if weights.is_empty() {
        return Vec::new();
    }
    let unit = Decimal::new(1, MINOR_DIGITS);
    let total_minor = (total / unit).trunc();
    let weight_sum: Decimal = weights.iter().copied().sum();
    if weight_sum.is_zero() {
        let mut parts = vec![Decimal::ZERO; weights.len()];
        parts[0] = total;
        return parts;
    }
    let mut floors = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, weight) in weights.iter().enumerate() {
        let exact = total_minor * *weight / weight_sum;
        let floor = exact.floor();
        floors.push(floor);
        remainders.push((exact - floor, index));
    }
    let mut left = total_minor - floors.iter().copied().sum::<Decimal>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index) in remainders {
        if left <= Decimal::ZERO {
            break;
        }
        floors[index] += Decimal::ONE;
        left -= Decimal::ONE;
    }
    floors
        .into_iter()
        .map(|minor| (minor * unit).round_dp(MINOR_DIGITS))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn allocation_parts_sum_to_the_whole() {
        let parts = allocate(d("10.00"), &[d("1"), d("1"), d("1")]);
        assert_eq!(parts, vec![d("3.34"), d("3.33"), d("3.33")]);
        assert_eq!(parts.iter().copied().sum::<Decimal>(), d("10.00"));
        let parts = allocate(d("0.05"), &[d("33.33"), d("33.33"), d("33.34")]);
        assert_eq!(parts.iter().copied().sum::<Decimal>(), d("0.05"));
        assert_eq!(parts, vec![d("0.02"), d("0.01"), d("0.02")]);
    }

    #[test]
    fn amounts_have_at_most_two_decimals() {
        assert_eq!(parse_amount("12.5").unwrap(), d("12.50"));
        assert!(parse_amount("1.005").is_err());
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("abc").is_err());
        assert!(currency("XXX").is_err());
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round(d("0.125")), d("0.13"));
        assert_eq!(round(d("0.124")), d("0.12"));
    }
}
