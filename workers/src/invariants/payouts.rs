//! The books against a sandbox channel's statements, payout by payout: what
//! our withdrawal entries moved on the channel's clearing and cost
//! accounts against what the channel says it paid out, returned and kept.
//! Called by [`super::against_channel_statements`] for each channel.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use super::Check;

/// What one payout moved on the channel's accounts, in its currency: as
/// its statement says, or as our postings say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Moved {
    currency: String,
    /// Net on `clearing:<ch>`: what the channel paid out on our behalf and
    /// its fee (amount + fee), less what came back with a bank's return.
    clearing: Decimal,
    /// Net on `channel-costs:<ch>`: minus the channel's fee.
    costs: Decimal,
}

/// Our postings of one withdrawal's entries: reference, currency, clearing, costs.
type Booked = (String, String, Decimal, Decimal);

/// Per payout the channel's statements list (the days of our withdrawals
/// at the channel since `since`, ±1 day): our `withdrawal` and
/// `withdrawal_returned` postings net, on `clearing:<ch>`, to amount + fee
/// for a SUCCEEDED payout and to the fee for a RETURNED one (the bank's
/// return came back through the channel; the fee stays), and on
/// `channel-costs:<ch>` to −fee, in its currency; and no withdrawal entry
/// is booked for a payout the channel does not list. Payouts of our
/// withdrawals from before `since` belong to an earlier run's books.
pub(super) async fn against_statement_payouts(
    pool: &PgPool,
    http: &reqwest::Client,
    (channel, base_url): (&str, &str),
    since: DateTime<Utc>,
) -> anyhow::Result<Vec<Check>> {
    let days: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT DISTINCT d::date FROM withdrawals w,
                LATERAL (VALUES ((w.created_at AT TIME ZONE 'UTC')::date - 1), ((w.created_at AT TIME ZONE 'UTC')::date),
                                ((w.created_at AT TIME ZONE 'UTC')::date + 1)) v(d)
         WHERE w.channel = $1 AND w.created_at >= $2 ORDER BY 1",
    )
    .bind(channel)
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut theirs: HashMap<String, Moved> = HashMap::new();
    for day in days {
        theirs.extend(listed(http, (channel, base_url), day).await?);
    }
    let listed: Vec<String> = theirs.keys().cloned().collect();
    // Every withdrawal entry on the channel's accounts booked since
    // `since`, and those of the payouts listed whenever booked.
    let booked: Vec<Booked> = sqlx::query_as(
        "SELECT j.reference, a.currency::text,
                COALESCE(sum(p.amount) FILTER (WHERE a.owner_kind = 'external'), 0),
                COALESCE(sum(p.amount) FILTER (WHERE a.owner_kind = 'platform_cost'), 0)
         FROM postings p JOIN accounts a ON a.id = p.account_id JOIN journal_entries j ON j.id = p.entry_id
         WHERE ((a.owner_kind = 'external' AND a.owner_id = 'clearing:' || $1)
                OR (a.owner_kind = 'platform_cost' AND a.owner_id = 'channel-costs:' || $1))
           AND j.kind IN ('withdrawal', 'withdrawal_returned')
           AND (j.reference = ANY($2) OR j.created_at >= $3)
         GROUP BY j.reference, a.currency",
    )
    .bind(channel)
    .bind(&listed)
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut ours: BTreeMap<String, Vec<Moved>> = BTreeMap::new();
    for (reference, currency, clearing, costs) in booked {
        ours.entry(reference).or_default().push(Moved {
            currency,
            clearing,
            costs,
        });
    }
    let mut seen: Vec<String> = ours.keys().cloned().collect();
    seen.extend(listed);
    let known_before: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM withdrawals WHERE id::text = ANY($1) AND created_at < $2",
    )
    .bind(&seen)
    .bind(since)
    .fetch_all(pool)
    .await?;
    for no in known_before {
        theirs.remove(&no);
        ours.remove(&no);
    }
    Ok(compare(channel, &theirs, ours))
}

/// The checks, from what the statements list and what we booked, by payout_no.
fn compare(
    channel: &str,
    theirs: &HashMap<String, Moved>,
    mut ours: BTreeMap<String, Vec<Moved>>,
) -> Vec<Check> {
    let (mut clearing, mut costs) = (0, 0);
    for (no, their) in theirs {
        let mine = match ours.remove(no).as_deref() {
            Some([one]) => one.clone(),
            // nothing booked, or booked in more than one currency
            Some(_) | None => Moved::default(),
        };
        let same_currency = mine.currency == their.currency;
        clearing += i64::from(!same_currency || mine.clearing != their.clearing);
        costs += i64::from(!same_currency || mine.costs != their.costs);
    }
    let unlisted = ours.len() as i64;
    [
        (
            "per payout, the clearing account holds amount + fee of a paid payout and the fee of a returned one, in its currency",
            clearing,
        ),
        (
            "per payout, the platform's cost is the fee on the statement",
            costs,
        ),
        (
            "no withdrawal entry booked for a payout the channel does not list",
            unlisted,
        ),
    ]
    .into_iter()
    .map(|(name, violations)| Check {
        name: format!("{channel}: {name}").into(),
        violations,
    })
    .collect()
}

/// The payouts that paid money out on `day`, by payout_no, as the
/// channel's statement says they moved its accounts.
async fn listed(
    http: &reqwest::Client,
    (channel, base_url): (&str, &str),
    day: NaiveDate,
) -> anyhow::Result<Vec<(String, Moved)>> {
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
    let mut moved = Vec::new();
    for payout in statement["payouts"].as_array().into_iter().flatten() {
        let money = |field: &str| -> anyhow::Result<Decimal> {
            payout[field]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("{url}: payout without a readable {field}"))
        };
        let fee = money("fee")?;
        let clearing = match payout["status"].as_str() {
            Some("SUCCEEDED") => money("amount")? + fee,
            Some("RETURNED") => fee,
            // paid nothing out (a statement lists no other)
            _ => continue,
        };
        let no = payout["payout_no"].as_str().unwrap_or_default();
        moved.push((
            no.parse::<uuid::Uuid>()
                .map_or_else(|_| no.to_owned(), |id| id.to_string()),
            Moved {
                currency: payout["currency"].as_str().unwrap_or_default().to_owned(),
                clearing,
                costs: -fee,
            },
        ));
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(currency: &str, clearing: &str, costs: &str) -> Moved {
        Moved {
            currency: currency.into(),
            clearing: clearing.parse().unwrap(),
            costs: costs.parse().unwrap(),
        }
    }

    fn violations(theirs: &[(&str, Moved)], ours: &[(&str, Moved)]) -> Vec<i64> {
        let theirs = theirs
            .iter()
            .map(|(no, m)| ((*no).to_owned(), m.clone()))
            .collect();
        let mut booked: BTreeMap<String, Vec<Moved>> = BTreeMap::new();
        for (no, m) in ours {
            booked.entry((*no).to_owned()).or_default().push(m.clone());
        }
        compare("card", &theirs, booked)
            .iter()
            .map(|c| c.violations)
            .collect()
    }

    #[test]
    fn paid_and_returned_payouts_net_to_what_the_channel_kept() {
        let paid = moved("CNY", "252.75", "-3.00");
        let returned = moved("CNY", "3.00", "-3.00");
        assert_eq!(
            violations(
                &[("a", paid.clone()), ("b", returned.clone())],
                &[("a", paid), ("b", returned)]
            ),
            [0, 0, 0]
        );
    }

    #[test]
    fn a_wrong_amount_currency_or_fee_and_an_unlisted_entry_are_caught() {
        let paid = moved("CNY", "252.75", "-3.00");
        // the return not booked: the clearing account still shows the payout
        assert_eq!(
            violations(
                &[("a", moved("CNY", "3.00", "-3.00"))],
                &[("a", paid.clone())]
            ),
            [1, 0, 0]
        );
        assert_eq!(
            violations(
                &[("a", paid.clone())],
                &[("a", moved("USD", "252.75", "-3.00"))]
            ),
            [1, 1, 0]
        );
        assert_eq!(
            violations(
                &[("a", paid.clone())],
                &[("a", moved("CNY", "252.75", "-2.00"))]
            ),
            [0, 1, 0]
        );
        // listed but not booked (an exception the channel paid), and booked but not listed
        assert_eq!(
            violations(&[("a", paid.clone())], &[("b", paid)]),
            [1, 1, 1]
        );
    }
}
