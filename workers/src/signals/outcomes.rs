//! Outcomes and end-to-end latency, observed when a payment's final event
//! is emitted: `payfleet_payment_outcomes_total` by status, reason code and
//! channel, and `payfleet_payment_end_to_end_seconds` from the request's
//! receipt. Labels are bounded: a reason is cut to its code (no amounts,
//! currencies or URLs), never a payment id.

/// The histogram of request received → final event.
pub const END_TO_END: &str = payfleet_common::telemetry::END_TO_END_HISTOGRAM;

/// Counts the outcome of a payment whose final event is being emitted (its
/// status, stored reason and channel as the event's transaction reads
/// them), and observes how long it took since order-validation received it.
pub fn observe(status: &str, reason: Option<&str>, channel: Option<&str>, seconds: f64) {
    metrics::counter!(
        "payfleet_payment_outcomes_total",
        "status" => status.to_owned(),
        "reason" => reason_code(reason),
        "channel" => channel.unwrap_or("none").to_owned(),
    )
    .increment(1);
    metrics::histogram!(END_TO_END, "status" => status.to_owned()).record(seconds.max(0.0));
}

/// A reason's code: its leading letters and underscores (`amount_at_least`
/// of `amount_at_least_7000_USD`, `invalid_notify_url` of
/// `invalid_notify_url: …`), at most 48 characters; `none` without one.
pub fn reason_code(reason: Option<&str>) -> String {
    let code: String = reason
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
        .take(48)
        .collect();
    let code = code.trim_end_matches('_');
    if code.is_empty() {
        "none".into()
    } else {
        code.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::reason_code;

    #[test]
    fn a_reason_label_is_its_code_only() {
        assert_eq!(
            reason_code(Some("amount_at_least_7000_USD")),
            "amount_at_least"
        );
        assert_eq!(
            reason_code(Some("velocity_unavailable_amount_at_least_2000_CNY")),
            "velocity_unavailable_amount_at_least"
        );
        assert_eq!(
            reason_code(Some("invalid_notify_url: http://10.0.0.1/x")),
            "invalid_notify_url"
        );
        assert_eq!(
            reason_code(Some("insufficient_balance")),
            "insufficient_balance"
        );
        assert_eq!(reason_code(None), "none");
        assert_eq!(reason_code(Some("Payment 42 gone")), "none");
        assert!(reason_code(Some(&"a".repeat(200))).len() <= 48);
    }
}
