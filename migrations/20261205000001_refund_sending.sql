-- Refunds owed are sent to their channel by the fleet; a sender leases a row while it calls.
ALTER TABLE refunds ADD COLUMN claimed_until timestamptz;
ALTER TABLE refunds ADD COLUMN sends integer NOT NULL DEFAULT 0;
ALTER TABLE refunds ADD COLUMN last_error text;
ALTER TABLE refunds ADD COLUMN refunded_at timestamptz;
