-- Stock in buckets, so that payments of one SKU do not queue on one row.
-- A SKU's units are split over STOCK_BUCKETS (8) rows; a Try takes its units
-- from one bucket that has them and that no other transaction holds (SKIP
-- LOCKED), and only when none does, locks all of the SKU's buckets in order
-- and takes from several. Every bucket is CHECKed never negative, so the SKU
-- can never be oversold. `stock` stays what it was for readers: a view with
-- each SKU's totals; inserting into it spreads the units over the buckets.

CREATE TABLE stock_buckets (
    sku       text     NOT NULL REFERENCES products(sku),
    bucket    smallint NOT NULL CHECK (bucket >= 0 AND bucket < 8),
    available integer  NOT NULL CHECK (available >= 0),
    reserved  integer  NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (sku, bucket)
);

-- Which buckets a reservation took its units from.
CREATE TABLE stock_reservation_buckets (
    payment_id uuid     NOT NULL,
    sku        text     NOT NULL,
    bucket     smallint NOT NULL,
    quantity   integer  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (payment_id, sku, bucket),
    FOREIGN KEY (payment_id, sku) REFERENCES stock_reservations (payment_id, sku)
);

-- What there is: available spread evenly, what is reserved in bucket 0;
-- every reservation so far took its units from bucket 0.
INSERT INTO stock_buckets (sku, bucket, available, reserved)
SELECT s.sku, b, s.available / 8 + CASE WHEN b < s.available % 8 THEN 1 ELSE 0 END,
       CASE WHEN b = 0 THEN s.reserved ELSE 0 END
FROM stock s CROSS JOIN generate_series(0, 7) b;
INSERT INTO stock_reservation_buckets (payment_id, sku, bucket, quantity)
SELECT payment_id, sku, 0, quantity FROM stock_reservations;

ALTER TABLE stock_reservations DROP CONSTRAINT stock_reservations_sku_fkey;
ALTER TABLE stock_reservations ADD FOREIGN KEY (sku) REFERENCES products(sku);
DROP TABLE stock;

CREATE VIEW stock AS
SELECT sku, sum(available)::integer AS available, sum(reserved)::integer AS reserved
FROM stock_buckets GROUP BY sku;

-- INSERT INTO stock (sku, available[, reserved]) spreads the units over
-- the buckets; a SKU that has buckets already gets the units added.
CREATE FUNCTION stock_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stock_buckets (sku, bucket, available, reserved)
    SELECT NEW.sku, b, NEW.available / 8 + CASE WHEN b < NEW.available % 8 THEN 1 ELSE 0 END,
           CASE WHEN b = 0 THEN COALESCE(NEW.reserved, 0) ELSE 0 END
    FROM generate_series(0, 7) b
    ON CONFLICT (sku, bucket) DO UPDATE
       SET available = stock_buckets.available + EXCLUDED.available,
           reserved = stock_buckets.reserved + EXCLUDED.reserved;
    RETURN NEW;
END $$;

CREATE TRIGGER stock_insert INSTEAD OF INSERT ON stock
    FOR EACH ROW EXECUTE FUNCTION stock_insert();
