//! Stock reservations over a SKU's buckets (see the `stock_buckets`
//! migration): a Try takes its units from one free bucket that has them
//! without waiting on anyone, and only when there is none locks every bucket
//! of the SKU in order and takes from several. Confirm and Cancel lock the
//! buckets a reservation used, in (sku, bucket) order, so no two
//! transactions wait on each other in a cycle.

use payfleet_common::PaymentId;
use sqlx::PgConnection;

/// Reserves `quantity` units of `sku` for `payment`; `false` when the SKU
/// has fewer units available in all.
pub async fn reserve(
    conn: &mut PgConnection,
    payment: PaymentId,
    sku: &str,
    quantity: i32,
) -> Result<bool, sqlx::Error> {
    // Start the search at a bucket of the payment's own, so concurrent Trys spread.
    let start = (payment.as_uuid().as_u128() % 8) as i16;
    // The choice is a MATERIALIZED CTE, so it runs once: as a subquery in
    // FROM, a plan may run it again for every bucket of the SKU (a nested
    // loop with it inside), and each run skips the buckets this statement
    // has already updated and picks the next, taking the units again. When
    // one free bucket holds them all (the usual case), the units, the
    // reservation and its bucket are taken in this one statement (a
    // data-modifying CTE runs once however often it is read).
    let one: Option<i16> = sqlx::query_scalar(
        "WITH free AS MATERIALIZED (
             SELECT bucket FROM stock_buckets
              WHERE sku = $1 AND available >= $2
              ORDER BY (bucket - $3 + 8) % 8
              LIMIT 1 FOR UPDATE SKIP LOCKED
         ), took AS (
             UPDATE stock_buckets b SET available = b.available - $2, reserved = b.reserved + $2
             FROM free
             WHERE b.sku = $1 AND b.bucket = free.bucket
             RETURNING b.bucket
         ), reservation AS (
             INSERT INTO stock_reservations (payment_id, sku, quantity, status)
             SELECT $4, $1, $2, 'reserved' FROM took
         ), from_bucket AS (
             INSERT INTO stock_reservation_buckets (payment_id, sku, bucket, quantity)
             SELECT $4, $1, bucket, $2 FROM took
         )
         SELECT bucket FROM took",
    )
    .bind(sku)
    .bind(quantity)
    .bind(start)
    .bind(payment)
    .fetch_optional(&mut *conn)
    .await?;
    if one.is_some() {
        return Ok(true);
    }
    reserve_across_buckets(conn, payment, sku, quantity).await
}

/// No free bucket holds the units: waits for every bucket of the SKU (in
/// order), then takes from as many as it needs; `false` when they hold
/// fewer in all.
async fn reserve_across_buckets(
    conn: &mut PgConnection,
    payment: PaymentId,
    sku: &str,
    quantity: i32,
) -> Result<bool, sqlx::Error> {
    let buckets: Vec<(i16, i32)> = sqlx::query_as(
        "SELECT bucket, available FROM stock_buckets WHERE sku = $1 ORDER BY bucket FOR UPDATE",
    )
    .bind(sku)
    .fetch_all(&mut *conn)
    .await?;
    if buckets.iter().map(|(_, a)| i64::from(*a)).sum::<i64>() < i64::from(quantity) {
        return Ok(false);
    }
    let mut wanted = quantity;
    let mut taken = Vec::new();
    for (bucket, available) in buckets {
        let take = available.min(wanted);
        if take > 0 {
            taken.push((bucket, take));
            wanted -= take;
        }
        if wanted == 0 {
            break;
        }
    }
    for (bucket, take) in &taken {
        sqlx::query(
            "UPDATE stock_buckets SET available = available - $3, reserved = reserved + $3
             WHERE sku = $1 AND bucket = $2",
        )
        .bind(sku)
        .bind(bucket)
        .bind(take)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO stock_reservations (payment_id, sku, quantity, status) VALUES ($1, $2, $3, 'reserved')",
    )
    .bind(payment)
    .bind(sku)
    .bind(quantity)
    .execute(&mut *conn)
    .await?;
    for (bucket, take) in taken {
        sqlx::query(
            "INSERT INTO stock_reservation_buckets (payment_id, sku, bucket, quantity) VALUES ($1, $2, $3, $4)",
        )
        .bind(payment)
        .bind(sku)
        .bind(bucket)
        .bind(take)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

/// Confirm: the payment's reserved units leave the stock for good.
pub async fn deduct(conn: &mut PgConnection, payment: PaymentId) -> Result<(), sqlx::Error> {
    settle(conn, payment, "deducted", false).await
}

/// Confirm of several payments at once: their reserved units leave the
/// stock for good, each bucket updated once for all of them.
pub async fn deduct_many(
    conn: &mut PgConnection,
    payments: &[PaymentId],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH closed AS (
             UPDATE stock_reservations SET status = 'deducted'
             WHERE payment_id = ANY($1) AND status = 'reserved'
             RETURNING payment_id, sku
         ), taken AS (
             SELECT rb.sku, rb.bucket, sum(rb.quantity)::integer AS quantity
             FROM stock_reservation_buckets rb
             JOIN closed ON closed.payment_id = rb.payment_id AND closed.sku = rb.sku
             GROUP BY rb.sku, rb.bucket
         )
         UPDATE stock_buckets b SET reserved = b.reserved - taken.quantity
         FROM taken WHERE b.sku = taken.sku AND b.bucket = taken.bucket",
    )
    .bind(payments)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancel: the payment's reserved units are available again, in the buckets they came from.
pub async fn release(conn: &mut PgConnection, payment: PaymentId) -> Result<(), sqlx::Error> {
    settle(conn, payment, "released", true).await
}

/// A payment refunded in full with its stock asked back: the units it
/// deducted are available again, in the buckets they came from (locked in
/// (sku, bucket) order).
pub async fn put_back(conn: &mut PgConnection, payment: PaymentId) -> Result<(), sqlx::Error> {
    for (sku, bucket, quantity) in buckets_of(conn, payment, "deducted").await? {
        sqlx::query(
            "UPDATE stock_buckets SET available = available + $3 WHERE sku = $1 AND bucket = $2",
        )
        .bind(sku)
        .bind(bucket)
        .bind(quantity)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE stock_reservations SET status = 'returned' WHERE payment_id = $1 AND status = 'deducted'")
        .bind(payment)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The (sku, bucket, units) the payment's reservations in `status` took,
/// in (sku, bucket) order: the order their buckets are locked in.
async fn buckets_of(
    conn: &mut PgConnection,
    payment: PaymentId,
    status: &str,
) -> Result<Vec<(String, i16, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rb.sku, rb.bucket, rb.quantity
         FROM stock_reservation_buckets rb
         JOIN stock_reservations r ON r.payment_id = rb.payment_id AND r.sku = rb.sku
         WHERE rb.payment_id = $1 AND r.status = $2
         ORDER BY rb.sku, rb.bucket",
    )
    .bind(payment)
    .bind(status)
    .fetch_all(conn)
    .await
}

/// Closes the payment's open reservations as `closed_as` and takes their
/// units out of `reserved`, back into `available` when `give_back`; the
/// buckets are locked in (sku, bucket) order.
async fn settle(
    conn: &mut PgConnection,
    payment: PaymentId,
    closed_as: &str,
    give_back: bool,
) -> Result<(), sqlx::Error> {
    // The reservations are the payment's own (its row lock is held): closing
    // them first waits on no one, and says which buckets to settle.
    let buckets: Vec<(String, i16, i32)> = sqlx::query_as(
        "WITH closed AS (
             UPDATE stock_reservations SET status = $2
             WHERE payment_id = $1 AND status = 'reserved'
             RETURNING sku
         )
         SELECT rb.sku, rb.bucket, rb.quantity
         FROM stock_reservation_buckets rb JOIN closed ON closed.sku = rb.sku
         WHERE rb.payment_id = $1
         ORDER BY rb.sku, rb.bucket",
    )
    .bind(payment)
    .bind(closed_as)
    .fetch_all(&mut *conn)
    .await?;
    for (sku, bucket, quantity) in buckets {
        sqlx::query(
            "UPDATE stock_buckets SET reserved = reserved - $3,
                    available = available + CASE WHEN $4 THEN $3 ELSE 0 END
             WHERE sku = $1 AND bucket = $2",
        )
        .bind(sku)
        .bind(bucket)
        .bind(quantity)
        .bind(give_back)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
