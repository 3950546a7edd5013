//! The invariants of ARCHITECTURE.md rule 7, as queries. The first set
//! holds at every commit (constraints enforce it; checked anyway); the second
//! once the fleet is quiet (nothing in flight, roll-ups done). The demo and
//! every end-to-end test run both.

use sqlx::PgPool;

/// One named check and how many rows break it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
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
        "SELECT count(*) FROM accounts WHERE owner_kind <> 'external' AND (total <> available + frozen OR total < 0 OR available < 0 OR frozen < 0)",
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
    ("frozen amounts equal the open freezes",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'user'
        AND a.frozen <> COALESCE((SELECT sum(amount) FROM reservations r WHERE r.account_id = a.id AND r.status = 'tried'), 0)"),
    ("reserved stock equals the open reservations",
     "SELECT count(*) FROM stock s
        WHERE s.reserved <> COALESCE((SELECT sum(quantity) FROM stock_reservations r WHERE r.sku = s.sku AND r.status = 'reserved'), 0)"),
    ("coupon uses equal their live redemptions",
     "SELECT count(*) FROM coupons c
        WHERE c.used <> (SELECT count(*) FROM coupon_redemptions r WHERE r.coupon_code = c.code AND r.status <> 'released')"),
    ("every payment in exactly one terminal state",
     "SELECT count(*) FROM payments WHERE status NOT IN ('settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')"),
    ("a settled payment has its journal entry, an unsettled one has none",
     "SELECT count(*) FROM payments p WHERE (p.status = 'settled') <>
        EXISTS (SELECT 1 FROM journal_entries j WHERE j.reference = p.id::text AND j.kind = 'payment')"),
    ("each merchant's settled amount equals its sub-orders minus fees",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'merchant'
        AND COALESCE((SELECT sum(amount) FROM postings p WHERE p.account_id = a.id), 0) <>
            COALESCE((SELECT sum(d.amount - d.fee_amount) FROM transaction_details d JOIN payments p ON p.id = d.payment_id
                      WHERE d.seller_id = a.owner_id AND d.currency = a.currency AND p.status = 'settled'), 0)"),
    ("the fee account holds the settled fees",
     "SELECT count(*) FROM accounts a WHERE a.owner_kind = 'platform'
        AND COALESCE((SELECT sum(amount) FROM postings p WHERE p.account_id = a.id), 0) <>
            COALESCE((SELECT sum(d.fee_amount) FROM transaction_details d JOIN payments p ON p.id = d.payment_id
                      WHERE d.currency = a.currency AND p.status = 'settled'), 0)"),
    ("every finished payment has its one outcome event",
     "SELECT count(*) FROM payments p WHERE NOT EXISTS (
        SELECT 1 FROM payment_events e WHERE e.payment_id = p.id AND e.event_type = CASE
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
        report.checks.push(Check { name, violations });
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
    Ok(report)
}
