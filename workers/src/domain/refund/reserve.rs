//! Try of an upstream refund: check and reserve together, under the
//! payment's row lock (the caller holds it), so concurrent partial refunds
//! can never take more than was paid.
//!
//! What is left to refund of each sub-order is what it settled less the
//! parts of earlier refunds that are reserved or booked. The refund is
//! split over the sub-orders in proportion to what each has left (largest
//! remainder: the parts sum to the refund exactly). With each part goes
//! back the share of that sub-order's platform fee, allocated cumulatively
//! — the share after this refund less the shares given back before — so
//! refunds in pieces give back exactly the whole fee in the end. Each
//! seller's account then reserves its parts less those shares
//! (available → frozen), under that account's row lock, never below zero.

use payfleet_common::{money, runtime::StageError};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{RefundStatus, record::Refund};
use crate::domain::payment::{self, Payment};

/// Why a refund cannot be reserved: its reason code and a detail.
pub type Refusal = (&'static str, String);

/// One sub-order's part of a refund.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    pub detail_id: i64,
    pub seller_id: String,
    pub amount: Decimal,
    pub fee_back: Decimal,
}

/// A sub-order as settled, with what earlier refunds already took of it.
#[derive(Debug, Clone)]
struct Settled {
    pub detail_id: i64,
    pub seller_id: String,
    pub amount: Decimal,
    pub fee: Decimal,
    pub refunded: Decimal,
    pub fee_given_back: Decimal,
}

/// The sub-orders of a settled payment with what is already refunded or
/// reserved for a refund.
async fn settled_sub_orders(
    conn: &mut PgConnection,
    p: &Payment,
) -> Result<Vec<Settled>, StageError> {
    let rows: Vec<(i64, String, Decimal, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "SELECT d.id, d.seller_id, d.amount, d.fee_amount,
                COALESCE(sum(a.amount), 0), COALESCE(sum(a.fee_back), 0)
         FROM transaction_details d
         LEFT JOIN refund_allocations a ON a.detail_id = d.id AND a.status IN ('reserved', 'booked')
         WHERE d.payment_id = $1 AND d.status = 'paid'
         GROUP BY d.id ORDER BY d.seller_id, d.id",
    )
    .bind(p.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(detail_id, seller_id, amount, fee, refunded, fee_given_back)| Settled {
                detail_id,
                seller_id,
                amount,
                fee,
                refunded,
                fee_given_back,
            },
        )
        .collect())
}

/// Splits `amount` over the sub-orders by what each has left, each part
/// with its platform-fee share; `Err` when less than `amount` is left.
fn split(amount: Decimal, sub_orders: &[Settled]) -> Result<Vec<Part>, Decimal> {
    let left: Vec<Decimal> = sub_orders.iter().map(|s| s.amount - s.refunded).collect();
    let total_left: Decimal = left.iter().copied().sum();
    if amount > total_left || amount <= Decimal::ZERO {
        return Err(total_left);
    }
    let parts = money::allocate(amount, &left);
    Ok(sub_orders
        .iter()
        .zip(parts)
        .map(|(s, part)| {
            let after = s.refunded + part;
            // The fee share of everything refunded so far, this part included.
            let share_after = if after == s.amount || s.amount.is_zero() {
                s.fee
            } else {
                money::round(s.fee * after / s.amount)
            };
            let fee_back = (share_after - s.fee_given_back)
                .max(Decimal::ZERO)
                .min(part);
            Part {
                detail_id: s.detail_id,
                seller_id: s.seller_id.clone(),
                amount: part,
                fee_back,
            }
        })
        .collect())
}

/// A reversal cancels the payment whole: with any refund of it paid or in
/// flight (a race lost to a refund included) there is nothing whole left
/// to cancel. `None` for a refund, or a reversal with nothing refunded.
fn whole_left(p: &Payment, r: &Refund, sub_orders: &[Settled]) -> Option<Refusal> {
    let refunded: Decimal = sub_orders.iter().map(|s| s.refunded).sum();
    (r.is_reversal() && !refunded.is_zero()).then(|| {
        (
            "already_refunded",
            format!(
                "{refunded} {} of payment {} is refunded or being refunded: refund what is left instead",
                r.currency, p.id
            ),
        )
    })
}

/// Try: reserves refund `r` of payment `p` (row-locked by the caller),
/// inside a savepoint the caller rolls back on a refusal.
pub async fn reserve(
    conn: &mut PgConnection,
    p: &Payment,
    r: &Refund,
) -> Result<Result<(), Refusal>, StageError> {
    let sub_orders = settled_sub_orders(conn, p).await?;
    if let Some(refusal) = whole_left(p, r, &sub_orders) {
        return Ok(Err(refusal));
    }
    let parts = match split(r.amount, &sub_orders) {
        Ok(parts) => parts,
        Err(left) => {
            return Ok(Err((
                "exceeds_refundable",
                format!("{} {} asked, {left} left to refund", r.amount, r.currency),
            )));
        }
    };
    // Each seller's account, and what it must hold back, in account order
    // (a stable lock order, so concurrent Trys never wait in a cycle).
    let mut accounts = Vec::with_capacity(parts.len());
    let mut held_back = Vec::with_capacity(parts.len());
    for part in &parts {
        let account = payment::account_id(conn, "merchant", &part.seller_id, &r.currency).await?;
        accounts.push(account);
        held_back.push((part.seller_id.clone(), account, part.amount - part.fee_back));
    }
    let needs = super::books::merged_by_account(held_back);
    let ids: Vec<i64> = needs.iter().map(|(_, id, _)| *id).collect();
    crate::domain::ledger::fold_pending(conn, &ids).await?;
    for (seller, account, need) in &needs {
        let held = sqlx::query(
            "UPDATE accounts SET available = available - $2, frozen = frozen + $2, updated_at = now()
             WHERE id = $1 AND available >= $2",
        )
        .bind(account)
        .bind(need)
        .execute(&mut *conn)
        .await?;
        if held.rows_affected() == 0 {
            return Ok(Err((
                "insufficient_merchant_balance",
                format!(
                    "{seller} holds less than the {need} {} it must give back",
                    r.currency
                ),
            )));
        }
    }
    sqlx::query(
        "INSERT INTO refund_allocations (refund_id, detail_id, seller_id, account_id, amount, fee_back, currency, status)
         SELECT $1, d, s, a, amt, fb, $7, 'reserved'
         FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::numeric[], $6::numeric[]) AS t(d, s, a, amt, fb)",
    )
    .bind(r.id)
    .bind(parts.iter().map(|p| p.detail_id).collect::<Vec<_>>())
    .bind(parts.iter().map(|p| p.seller_id.clone()).collect::<Vec<_>>())
    .bind(&accounts)
    .bind(parts.iter().map(|p| p.amount).collect::<Vec<_>>())
    .bind(parts.iter().map(|p| p.fee_back).collect::<Vec<_>>())
    .bind(&r.currency)
    .execute(&mut *conn)
    .await?;
    let fee_back: Decimal = parts.iter().map(|p| p.fee_back).sum();
    sqlx::query("UPDATE refunds SET fee_back = $2 WHERE id = $1")
        .bind(r.id)
        .bind(fee_back)
        .execute(&mut *conn)
        .await?;
    if !super::transition(
        conn,
        r.id,
        RefundStatus::Requested,
        RefundStatus::Reserved,
        None,
    )
    .await?
    {
        return Err(StageError::transient(format!(
            "refund {} left `requested` during its Try",
            r.id
        )));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn sub_order(id: i64, amount: &str, fee: &str) -> Settled {
        Settled {
            detail_id: id,
            seller_id: format!("s{id}"),
            amount: d(amount),
            fee: d(fee),
            refunded: Decimal::ZERO,
            fee_given_back: Decimal::ZERO,
        }
    }

    /// Applies parts as booked, as the next refund would read them.
    fn book(sub_orders: &mut [Settled], parts: &[Part]) {
        for (s, part) in sub_orders.iter_mut().zip(parts) {
            s.refunded += part.amount;
            s.fee_given_back += part.fee_back;
        }
    }

    #[test]
    fn refunds_in_pieces_give_back_exactly_the_whole_fee_in_the_end() {
        let mut sub_orders = vec![
            sub_order(1, "100.00", "3.33"),
            sub_order(2, "33.33", "1.00"),
        ];
        let mut total_back = Decimal::ZERO;
        for piece in ["10.01", "0.01", "50.00", "33.33", "39.98"] {
            let parts = split(d(piece), &sub_orders).unwrap();
            assert_eq!(parts.iter().map(|p| p.amount).sum::<Decimal>(), d(piece));
            for part in &parts {
                assert!(part.fee_back >= Decimal::ZERO && part.fee_back <= part.amount);
            }
            total_back += parts.iter().map(|p| p.fee_back).sum::<Decimal>();
            book(&mut sub_orders, &parts);
        }
        assert_eq!(total_back, d("4.33"), "the whole platform fee, to the cent");
        assert!(sub_orders.iter().all(|s| s.refunded == s.amount));
        assert_eq!(split(d("0.01"), &sub_orders), Err(Decimal::ZERO));
    }

    #[test]
    fn more_than_is_left_is_refused_with_what_is_left() {
        let mut sub_orders = vec![sub_order(1, "80.00", "2.40")];
        let parts = split(d("50.00"), &sub_orders).unwrap();
        book(&mut sub_orders, &parts);
        assert_eq!(split(d("30.01"), &sub_orders), Err(d("30.00")));
        assert_eq!(split(d("0"), &sub_orders), Err(d("30.00")));
        assert!(split(d("30.00"), &sub_orders).is_ok());
    }
}
