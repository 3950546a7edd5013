//! The invariants of docs/ARCHITECTURE.md, as queries. The first set holds
//! at every commit (constraints enforce it; checked anyway); the second once
//! the fleet is quiet (nothing in flight, roll-ups done). The demo and every
//! end-to-end test run both. [`against_channel_statements`] checks the books
//! against the independent party: each channel's own statement, its
//! trades here and its payouts in `payouts`.

mod payouts;
mod transfers;

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;

use sqlx::PgPool;

/// One named check and how many rows break it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: std::borrow::Cow<'static, str>,
    pub violations: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.violations == 0)
    }
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.violations != 0)
            .map(|c| format!("{} ({} rows)", c.name, c.violations))
            .collect()
    }
}

const AT_EVERY_COMMIT: &[(&str, &str)] = &[
    (
        "account total = available + frozen, none negative",
        "SELECT count(*) FROM accounts WHERE owner_kind <> 'external' AND (total <> available + frozen OR frozen < 0
           OR (owner_kind <> 'platform_cost' AND (total < 0 OR available < 0)))",
    ),
    (
        "stock never negative",
        "SELECT count(*) FROM stock WHERE available < 0 OR reserved < 0",
    ),
    (
        "every journal entry balances per currency",
        "SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id, currency HAVING sum(amount) <> 0) e",
    ),
];

const WHEN_QUIET: &[(&str, &str)] = &[
    ("every posting rolled up", "SELECT count(*) FROM postings WHERE NOT rolled_up"),
    ("each account balance equals the sum of its postings",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind <> 'external'
        AND a.total <> COALESCE((SELECT sum(amount) FROM postings p WHERE p.account_id = a.id), 0)"),
    ("a wallet's frozen amount is its open payments' freezes, its withdrawals not yet paid out or released and its transfers not yet confirmed",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'user'
        AND a.frozen <> COALESCE((SELECT sum(amount) FROM reservations r WHERE r.account_id = a.id AND r.status = 'tried'), 0)
                      + COALESCE((SELECT sum(amount) FROM withdrawals w WHERE w.account_id = a.id
                                   AND w.status IN ('frozen', 'sending', 'unknown', 'exception')), 0)
                      + COALESCE((SELECT sum(amount) FROM transfers t WHERE t.payer_account_id = a.id
                                   AND t.status = 'frozen'), 0)"),
    ("each stock bucket's reserved units are the open reservations it gave",
     "SELECT count(*) FROM stock_buckets b
        WHERE b.reserved <> COALESCE((SELECT sum(rb.quantity) FROM stock_reservation_buckets rb
                                        JOIN stock_reservations r ON r.payment_id = rb.payment_id AND r.sku = rb.sku
                                       WHERE rb.sku = b.sku AND rb.bucket = b.bucket AND r.status = 'reserved'), 0)"),
    ("each stock reservation came from buckets that gave exactly its units",
     "SELECT count(*) FROM stock_reservations r
        WHERE r.quantity <> COALESCE((SELECT sum(quantity) FROM stock_reservation_buckets rb
                                       WHERE rb.payment_id = r.payment_id AND rb.sku = r.sku), 0)"),
    ("reserved stock equals the open reservations",
     "SELECT count(*) FROM stock s
        WHERE s.reserved <> COALESCE((SELECT sum(quantity) FROM stock_reservations r WHERE r.sku = s.sku AND r.status = 'reserved'), 0)"),
    ("coupon uses equal their live redemptions",
     "SELECT count(*) FROM coupons c
        WHERE c.used <> (SELECT count(*) FROM coupon_redemptions r WHERE r.coupon_code = c.code AND r.status IN ('reserved', 'consumed'))"),
    ("every payment in exactly one terminal state",
     "SELECT count(*) FROM payments WHERE status NOT IN ('settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')"),
    ("a settled payment has its journal entry (a top-up its top_up entry), an unsettled one has none",
     "SELECT count(*) FROM payments p WHERE (p.status = 'settled') <>
        EXISTS (SELECT 1 FROM journal_entries j WHERE j.reference = p.id::text
                 AND j.kind = CASE WHEN p.kind = 'top_up' THEN 'top_up' ELSE 'payment' END)"),
    ("a settled top-up's wallet gained exactly what its channel charged, and an unsettled one's nothing",
     "SELECT count(*) FROM payments p WHERE p.kind = 'top_up'
        AND COALESCE((SELECT sum(q.amount) FROM postings q JOIN journal_entries j ON j.id = q.entry_id
                       JOIN accounts a ON a.id = q.account_id
                      WHERE j.reference = p.id::text AND a.owner_kind = 'user' AND a.owner_id = p.user_id), 0)
            -- what the attempt its entry names was charged (none: the entry is missing)
            IS DISTINCT FROM CASE WHEN p.status = 'settled'
                    THEN (SELECT COALESCE(t.charged_amount, t.amount) FROM journal_entries j
                           JOIN payment_attempts t ON t.id = j.attempt_id
                           WHERE j.reference = p.id::text AND j.kind = 'top_up'
                             AND t.payment_id = p.id AND t.status = 'succeeded'
                             AND COALESCE(t.charged_currency, t.currency) = p.currency)
                    ELSE 0 END"),
    ("a top-up has no order, and pays no seller",
     "SELECT count(*) FROM payments p WHERE p.kind = 'top_up'
        AND (EXISTS (SELECT 1 FROM orders o WHERE o.payment_id = p.id)
             OR EXISTS (SELECT 1 FROM transaction_details d WHERE d.payment_id = p.id))"),
    ("each merchant's settled amount equals its sub-orders minus fees, less what it gave back for paid refunds and what was paid out to it and not returned",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'merchant'
        AND COALESCE((SELECT sum(amount) FROM postings p WHERE p.account_id = a.id), 0) <>
            COALESCE((SELECT sum(d.amount - d.fee_amount) FROM transaction_details d JOIN payments p ON p.id = d.payment_id
                      WHERE d.seller_id = a.owner_id AND d.currency = a.currency AND p.status = 'settled'), 0)
          - COALESCE((SELECT sum(r.amount - r.fee_back) FROM refund_allocations r
                      WHERE r.account_id = a.id AND r.status = 'booked'), 0)
          - COALESCE((SELECT sum(w.amount) FROM withdrawals w
                      WHERE w.owner_kind = 'merchant' AND w.account_id = a.id AND w.status = 'succeeded'), 0)"),
    ("the fee account holds the settled fees less the shares given back with paid refunds, and the fees of withdrawals paid out and not returned",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'platform'
        AND COALESCE((SELECT sum(amount) FROM postings p WHERE p.account_id = a.id), 0) <>
            COALESCE((SELECT sum(d.fee_amount) FROM transaction_details d JOIN payments p ON p.id = d.payment_id
                      WHERE d.currency = a.currency AND p.status = 'settled'), 0)
          - COALESCE((SELECT sum(r.fee_back) FROM refund_allocations r
                      WHERE r.currency = a.currency AND r.status = 'booked'), 0)
          + COALESCE((SELECT sum(w.fee) FROM withdrawals w WHERE w.currency = a.currency AND w.status = 'succeeded'), 0)"),
    ("the platform's accounts hold its fees, less the shares given back and the channels' fees",
     "SELECT count(*) FROM (SELECT DISTINCT currency FROM accounts WHERE owner_kind IN ('platform', 'platform_cost')) c
        WHERE (SELECT COALESCE(sum(p.amount), 0) FROM postings p JOIN accounts a ON a.id = p.account_id
                WHERE a.owner_kind IN ('platform', 'platform_cost') AND a.currency = c.currency) <>
              (SELECT COALESCE(sum(d.fee_amount), 0) FROM transaction_details d JOIN payments p ON p.id = d.payment_id
                WHERE p.status = 'settled' AND d.currency = c.currency)
            - (SELECT COALESCE(sum(r.fee_back), 0) FROM refund_allocations r
                WHERE r.currency = c.currency AND r.status = 'booked')
            - (SELECT COALESCE(sum(t.fee), 0) FROM payment_attempts t
                WHERE t.fee IS NOT NULL AND t.charged_currency = c.currency
                  -- a channel keeps no fee on a charge it reversed
                  AND NOT EXISTS (SELECT 1 FROM refunds v WHERE v.attempt_id = t.id
                                   AND v.kind = 'reversal' AND v.status = 'succeeded'))
            -- withdrawals: the platform keeps the fee of those paid out and
            -- not returned; the payout channel keeps its fee on every payout it made
            + (SELECT COALESCE(sum(w.fee), 0) FROM withdrawals w WHERE w.currency = c.currency AND w.status = 'succeeded')
            - (SELECT COALESCE(sum(w.channel_fee), 0) FROM withdrawals w
                WHERE w.currency = c.currency AND w.status IN ('succeeded', 'returned'))"),
    ("a merchant's frozen balance is exactly its reservations for refunds in flight and its payouts not yet paid out or released",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'merchant'
        AND a.frozen <> COALESCE((SELECT sum(r.amount - r.fee_back) FROM refund_allocations r
                                   WHERE r.account_id = a.id AND r.status = 'reserved'), 0)
                      + COALESCE((SELECT sum(w.amount) FROM withdrawals w WHERE w.account_id = a.id
                                   AND w.owner_kind = 'merchant'
                                   AND w.status IN ('frozen', 'sending', 'unknown', 'exception')), 0)"),
    ("no sub-order is refunded beyond what it settled",
     "SELECT count(*) FROM transaction_details d
        WHERE (SELECT COALESCE(sum(r.amount), 0) FROM refund_allocations r
                WHERE r.detail_id = d.id AND r.status IN ('reserved', 'booked')) > d.amount"),
    ("no sub-order gives back more platform fee than it paid, and one refunded in full gives back all of it",
     "SELECT count(*) FROM transaction_details d
        JOIN LATERAL (SELECT COALESCE(sum(r.amount), 0) AS refunded, COALESCE(sum(r.fee_back), 0) AS fee_back
                        FROM refund_allocations r WHERE r.detail_id = d.id AND r.status = 'booked') b ON true
        WHERE b.fee_back > d.fee_amount OR (b.refunded = d.amount AND d.amount > 0 AND b.fee_back <> d.fee_amount)"),
    ("per payment, refunds paid or in flight never exceed what was paid",
     "SELECT count(*) FROM payments p
        WHERE (SELECT COALESCE(sum(r.amount), 0) FROM refunds r WHERE r.payment_id = p.id AND r.origin = 'upstream'
                AND r.status IN ('reserved', 'sending', 'unknown', 'succeeded', 'exception'))
            > (SELECT COALESCE(sum(d.amount), 0) FROM transaction_details d WHERE d.payment_id = p.id AND d.status = 'paid')"),
    ("each refund's live parts add up to it: all of it while paid or in flight, nothing once refused or failed",
     "SELECT count(*) FROM refunds f WHERE f.origin = 'upstream'
        AND COALESCE((SELECT sum(r.amount) FROM refund_allocations r
                       WHERE r.refund_id = f.id AND r.status IN ('reserved', 'booked')), 0)
            <> CASE WHEN f.status IN ('reserved', 'sending', 'unknown', 'succeeded', 'exception') THEN f.amount ELSE 0 END"),
    ("a paid refund (reversal) is booked with its journal entry of its kind, and nothing else is",
     "SELECT count(*) FROM refunds f WHERE f.origin = 'upstream'
        AND ((f.status = 'succeeded') <> EXISTS (SELECT 1 FROM journal_entries j WHERE j.reference = f.id::text AND j.kind = f.kind)
             OR (f.status IN ('succeeded', 'failed')) <> (f.booked_at IS NOT NULL))"),
    ("every finished refund has its one outcome event",
     "SELECT count(*) FROM refunds f WHERE f.origin = 'upstream' AND f.status IN ('succeeded', 'failed', 'refused')
        AND NOT EXISTS (SELECT 1 FROM payment_events e WHERE e.refund_id = f.id
                         AND e.event_type = CASE WHEN f.kind = 'reversal'
                             THEN CASE WHEN f.status = 'succeeded' THEN 'payment.reversed' ELSE 'payment.reversal_failed' END
                             ELSE CASE WHEN f.status = 'succeeded' THEN 'refund.succeeded' ELSE 'refund.failed' END END)"),
    ("every withdrawal is finished, or an exception left frozen for ops",
     "SELECT count(*) FROM withdrawals WHERE status NOT IN ('refused', 'failed', 'succeeded', 'returned', 'exception')"),
    ("a paid-out withdrawal has its entry, a returned one its return entry too, and only those",
     "SELECT count(*) FROM withdrawals w
        WHERE (w.status IN ('succeeded', 'returned')) <> EXISTS (SELECT 1 FROM journal_entries j
                                                                  WHERE j.reference = w.id::text AND j.kind = 'withdrawal')
           OR (w.status = 'returned') <> EXISTS (SELECT 1 FROM journal_entries j
                                                  WHERE j.reference = w.id::text AND j.kind = 'withdrawal_returned')
           OR (w.status IN ('succeeded', 'returned', 'failed')) <> (w.booked_at IS NOT NULL)
           OR (w.status = 'returned') <> (w.returned_booked_at IS NOT NULL)"),
    ("a withdrawal's wallet (a payout's merchant) lost exactly what was paid out and not returned",
     "SELECT count(*) FROM withdrawals w
        WHERE COALESCE((SELECT sum(p.amount) FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                         JOIN accounts a ON a.id = p.account_id
                        WHERE j.reference = w.id::text AND a.owner_kind IN ('user', 'merchant')), 0)
              <> CASE WHEN w.status = 'succeeded' THEN -w.amount ELSE 0 END
           OR EXISTS (SELECT 1 FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                       JOIN accounts a ON a.id = p.account_id
                      WHERE j.reference = w.id::text AND a.owner_kind IN ('user', 'merchant')
                        AND p.account_id IS DISTINCT FROM w.account_id)"),
    ("every finished withdrawal (payout) has its outcome events",
     "SELECT count(*) FROM withdrawals w
        CROSS JOIN LATERAL (SELECT CASE w.owner_kind WHEN 'merchant' THEN 'payout.' ELSE 'withdrawal.' END AS kind) k
        WHERE (w.status IN ('refused', 'failed') AND NOT EXISTS (SELECT 1 FROM payment_events e
                 WHERE e.withdrawal_id = w.id AND e.event_type = k.kind || 'failed'))
           OR (w.status IN ('succeeded', 'returned') AND NOT EXISTS (SELECT 1 FROM payment_events e
                 WHERE e.withdrawal_id = w.id AND e.event_type = k.kind || 'succeeded'))
           OR (w.status = 'returned' AND NOT EXISTS (SELECT 1 FROM payment_events e
                 WHERE e.withdrawal_id = w.id AND e.event_type = k.kind || 'returned'))"),
    ("payer refunds payable equal the refunds still owed",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'payable' AND a.owner_id LIKE 'payer-refunds:%'
        AND a.total <> COALESCE((SELECT sum(r.amount) FROM refunds r WHERE r.status = 'owed'
                                  AND 'payer-refunds:' || r.channel = a.owner_id AND r.currency = a.currency), 0)"),
    ("suspense holds exactly the charges of payments under review",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'payable' AND a.owner_id LIKE 'suspense:%'
        AND a.total <> COALESCE((SELECT sum(t.charged_amount) FROM payment_attempts t JOIN payments p ON p.id = t.payment_id
                                  WHERE p.status = 'exception' AND 'suspense:' || t.channel = a.owner_id
                                    AND t.charged_currency = a.currency
                                    AND EXISTS (SELECT 1 FROM journal_entries j WHERE j.reference = t.id::text AND j.kind = 'charge_held')
                                    AND NOT EXISTS (SELECT 1 FROM journal_entries j WHERE j.reference = t.id::text AND j.kind = 'charge_owed_back')), 0)"),
    ("every finished payment (top-up) has its one outcome event",
     "SELECT count(*) FROM payments p WHERE NOT EXISTS (
        SELECT 1 FROM payment_events e WHERE e.payment_id = p.id AND e.refund_id IS NULL AND e.event_type = CASE
          WHEN p.kind = 'top_up' THEN CASE
            WHEN p.status = 'settled' THEN 'topup.succeeded'
            WHEN p.status IN ('failed', 'cancelled', 'rejected', 'challenged') THEN 'topup.failed'
            ELSE 'topup.exception' END
          WHEN p.status = 'settled' THEN 'payment.succeeded'
          WHEN p.status IN ('failed', 'cancelled') THEN 'payment.failed'
          WHEN p.status IN ('rejected', 'challenged') THEN 'payment.rejected'
          ELSE 'payment.exception' END)"),
    ("the outbox is drained", "SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
];

async fn run(
    pool: &PgPool,
    checks: &[(&'static str, &str)],
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    for (name, sql) in checks {
        let violations: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        report.checks.push(Check {
            name: (*name).into(),
            violations,
        });
    }
    Ok(())
}

/// The invariants that hold at every commit.
pub async fn at_every_commit(pool: &PgPool) -> Result<Report, sqlx::Error> {
    let mut report = Report::default();
    run(pool, AT_EVERY_COMMIT, &mut report).await?;
    Ok(report)
}

/// Both sets; call once the fleet is quiet.
pub async fn all(pool: &PgPool) -> Result<Report, sqlx::Error> {
    let mut report = at_every_commit(pool).await?;
    run(pool, WHEN_QUIET, &mut report).await?;
    run(pool, transfers::WHEN_QUIET, &mut report).await?;
    Ok(report)
}

/// What one trade moved, in its currency: as the channel's statement says,
/// or as our postings on its accounts say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Moved {
    currency: String,
    /// amount − fee: what the channel handed over.
    received: Decimal,
    /// What it kept as its fee (the platform's cost).
    fees: Decimal,
    /// What it paid back to the payer on our behalf.
    paid_back: Decimal,
}

/// The books against each sandbox channel's own statement, trade by trade
/// (so per day too): for every succeeded trade the clearing account received
/// exactly amount − fee and paid back exactly what was refunded, in the
/// trade's currency, and the platform's cost account bore exactly its fee;
/// no money is booked for a trade the channel does not list. Channels
/// without a statement endpoint (the wallet) are skipped. Only attempts
/// made since `since` are compared: a sandbox keeps its store in memory, so
/// it knows the trades of its own run only.
pub async fn against_channel_statements(
    pool: &PgPool,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Report> {
    let channels: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, base_url FROM channels WHERE kind = 'sandbox' AND base_url IS NOT NULL ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut report = Report::default();
    for (channel, base_url) in channels {
        let ours_since: Vec<payfleet_common::AttemptId> = sqlx::query_scalar(
            "SELECT id FROM payment_attempts WHERE channel = $1 AND created_at >= $2",
        )
        .bind(&channel)
        .bind(since)
        .fetch_all(pool)
        .await?;
        let days: Vec<NaiveDate> = sqlx::query_scalar(
            "SELECT DISTINCT d::date FROM payment_attempts a,
                    LATERAL (VALUES ((a.created_at AT TIME ZONE 'UTC')::date - 1), ((a.created_at AT TIME ZONE 'UTC')::date),
                                    ((a.created_at AT TIME ZONE 'UTC')::date + 1)) v(d)
             WHERE a.channel = $1 AND a.created_at >= $2 ORDER BY 1",
        )
        .bind(&channel)
        .bind(since)
        .fetch_all(pool)
        .await?;
        let mut theirs: HashMap<String, Moved> = HashMap::new();
        let mut reversed: std::collections::HashSet<String> = Default::default();
        for day in days {
            let url = format!(
                "{}/channels/{channel}/statement?date={day}",
                base_url.trim_end_matches('/')
            );
            let statement: serde_json::Value = http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for trade in statement["trades"].as_array().into_iter().flatten() {
                let out = trade["out_trade_no"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                // Reversed the day it was paid: the channel handed nothing
                // over, kept no fee and owes nothing back.
                if trade["status"] == "REVERSED" {
                    reversed.insert(out.clone());
                    theirs.insert(
                        out,
                        Moved {
                            currency: trade["currency"].as_str().unwrap_or_default().to_owned(),
                            ..Moved::default()
                        },
                    );
                    continue;
                }
                if trade["status"] != "SUCCEEDED" {
                    continue;
                }
                let money = |field: &str| -> anyhow::Result<Decimal> {
                    trade[field]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow::anyhow!("{url}: trade without a readable {field}"))
                };
                theirs.insert(
                    out,
                    Moved {
                        currency: trade["currency"].as_str().unwrap_or_default().to_owned(),
                        received: money("amount")? - money("fee")?,
                        fees: money("fee")?,
                        paid_back: money("refunded")?,
                    },
                );
            }
        }
        // Trades of our attempts from before `since` belong to an earlier
        // run's books; a trade we have no attempt for at all stays in.
        let listed: Vec<String> = theirs.keys().cloned().collect();
        let known_before: Vec<String> = sqlx::query_scalar(
            "SELECT id::text FROM payment_attempts WHERE id::text = ANY($1) AND created_at < $2",
        )
        .bind(&listed)
        .bind(since)
        .fetch_all(pool)
        .await?;
        for out in known_before {
            theirs.remove(&out);
        }
        // Our postings on the channel's accounts, by the attempt they moved money for.
        let booked: Vec<(Option<payfleet_common::AttemptId>, String, Decimal, Decimal, Decimal)> = sqlx::query_as(
            "SELECT j.attempt_id, a.currency::text,
                    COALESCE(-sum(p.amount) FILTER (WHERE a.owner_kind = 'external' AND p.amount < 0), 0),
                    COALESCE(sum(p.amount) FILTER (WHERE a.owner_kind = 'external' AND p.amount > 0), 0),
                    COALESCE(-sum(p.amount) FILTER (WHERE a.owner_kind = 'platform_cost'), 0)
             FROM postings p JOIN accounts a ON a.id = p.account_id JOIN journal_entries j ON j.id = p.entry_id
             WHERE ((a.owner_kind = 'external' AND a.owner_id = 'clearing:' || $1)
                    OR (a.owner_kind = 'platform_cost' AND a.owner_id = 'channel-costs:' || $1))
               -- payouts are matched on their own (`payouts`)
               AND j.kind NOT IN ('withdrawal', 'withdrawal_returned')
               AND (j.attempt_id = ANY($2) OR (j.attempt_id IS NULL AND j.created_at >= $3))
             GROUP BY j.attempt_id, a.currency",
        )
        .bind(&channel)
        .bind(&ours_since)
        .bind(since)
        .fetch_all(pool)
        .await?;
        let mut ours: BTreeMap<String, Vec<Moved>> = BTreeMap::new();
        for (attempt, currency, received, paid_back, fees) in booked {
            let key = attempt.map(|a| a.to_string()).unwrap_or_default();
            ours.entry(key).or_default().push(Moved {
                currency,
                received,
                fees,
                paid_back,
            });
        }
        let (mut received, mut paid_back, mut fees, mut unlisted) = (0, 0, 0, 0);
        for (out, their) in &theirs {
            let mut mine = match ours.remove(out).as_deref() {
                Some([one]) => one.clone(),
                // nothing booked, or booked in more than one currency
                Some(_) | None => Moved::default(),
            };
            if reversed.contains(out) {
                // what we booked as received and then reversed, net
                mine.received -= std::mem::take(&mut mine.paid_back);
            }
            let same_currency = mine.currency == their.currency;
            received += i64::from(!same_currency || mine.received != their.received);
            paid_back += i64::from(!same_currency || mine.paid_back != their.paid_back);
            fees += i64::from(!same_currency || mine.fees != their.fees);
        }
        unlisted += ours.len() as i64;
        for (name, violations) in [
            (
                "per trade and day, the clearing account received amount − fee of the channel's statement, in its currency",
                received,
            ),
            (
                "per trade and day, the clearing account paid back what the statement shows refunded",
                paid_back,
            ),
            (
                "per trade and day, the platform's cost is the fee on the statement",
                fees,
            ),
            (
                "no money booked for a trade the channel does not list",
                unlisted,
            ),
        ] {
            report.checks.push(Check {
                name: format!("{channel}: {name}").into(),
                violations,
            });
        }
        report.checks.extend(
            payouts::against_statement_payouts(pool, &http, (&channel, &base_url), since).await?,
        );
    }
    Ok(report)
}
