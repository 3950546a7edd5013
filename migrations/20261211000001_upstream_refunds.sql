-- Refunds asked for by upstream (`refund.requested`) join the refunds the
-- platform owes on its own (a late success, an over-charge): one table,
-- keyed by refund id, one path through the ledger (the `refund` entry).
--
-- An upstream refund moves
--   requested ─ Try ─▶ reserved ─ channel-call ─▶ sending ─▶ succeeded | failed
--       │                 │                        └▶ unknown ─ query ─▶ succeeded | failed
--       └ refused (over-refund, a merchant short) └▶ exception (queries ran out)
-- and settlement books it (`booked_at`): Confirm posts the journal entry,
-- Cancel releases the merchants' reservations.
ALTER TABLE refunds ADD COLUMN origin text NOT NULL DEFAULT 'automatic'
    CHECK (origin IN ('automatic', 'upstream'));
ALTER TABLE refunds ADD COLUMN merchant_id text REFERENCES merchants(id);
ALTER TABLE refunds ADD COLUMN merchant_refund_id text;
ALTER TABLE refunds ADD COLUMN request_hash text;
ALTER TABLE refunds ADD COLUMN return_stock boolean NOT NULL DEFAULT false;
-- The platform-fee share this refund gives back (upstream refunds).
ALTER TABLE refunds ADD COLUMN fee_back numeric(20, 2) NOT NULL DEFAULT 0 CHECK (fee_back >= 0);
ALTER TABLE refunds ADD COLUMN detail text;
ALTER TABLE refunds ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE refunds ADD COLUMN booked_at timestamptz;
ALTER TABLE refunds ADD CONSTRAINT refunds_upstream_named
    CHECK (origin = 'automatic' OR (merchant_id IS NOT NULL AND merchant_refund_id IS NOT NULL AND request_hash IS NOT NULL));
-- A wallet payment's refund has no channel attempt.
ALTER TABLE refunds ALTER COLUMN attempt_id DROP NOT NULL;
-- One automatic refund per charge; any number of upstream ones.
ALTER TABLE refunds DROP CONSTRAINT refunds_attempt_id_key;
CREATE UNIQUE INDEX refunds_automatic_once_per_attempt ON refunds (attempt_id) WHERE origin = 'automatic';
CREATE UNIQUE INDEX refunds_merchant_refund ON refunds (merchant_id, merchant_refund_id) WHERE origin = 'upstream';
ALTER TABLE refunds DROP CONSTRAINT refunds_status_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_status_check CHECK (status IN (
    'owed', 'sent', 'requested', 'reserved', 'sending', 'unknown', 'succeeded', 'failed', 'refused', 'exception'));
-- `payfleet status`: refunds that need ops.
CREATE INDEX refunds_exception ON refunds (created_at) WHERE status = 'exception';

-- Try reserves each sub-order's part of an upstream refund on its seller's
-- account (available → frozen): the part less the platform-fee share given
-- back. Confirm books it (`booked`), Cancel gives it back (`released`).
CREATE TABLE refund_allocations (
    refund_id  uuid NOT NULL REFERENCES refunds(id),
    detail_id  bigint NOT NULL REFERENCES transaction_details(id),
    seller_id  text NOT NULL,
    account_id bigint NOT NULL REFERENCES accounts(id),
    -- the part of the refund taken from this sub-order
    amount     numeric(20, 2) NOT NULL CHECK (amount >= 0),
    -- the part of this sub-order's platform fee given back with it
    fee_back   numeric(20, 2) NOT NULL CHECK (fee_back >= 0 AND fee_back <= amount),
    currency   char(3) NOT NULL,
    status     text NOT NULL CHECK (status IN ('reserved', 'booked', 'released')),
    PRIMARY KEY (refund_id, detail_id)
);
CREATE INDEX refund_allocations_detail ON refund_allocations (detail_id);
CREATE INDEX refund_allocations_reserved ON refund_allocations (account_id) WHERE status = 'reserved';

-- One event, one webhook and one wallet statement line per operation: a
-- payment's events and each of its refunds' (before, one per payment and
-- type, so a second partial refund's would have been dropped as stale).
ALTER TABLE payment_events ADD COLUMN refund_id uuid;
ALTER TABLE payment_events DROP CONSTRAINT payment_events_payment_id_event_type_key;
ALTER TABLE payment_events ADD CONSTRAINT payment_events_once
    UNIQUE NULLS NOT DISTINCT (payment_id, event_type, refund_id);

ALTER TABLE webhook_deliveries ADD COLUMN refund_id uuid;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_payment_id_event_type_key;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_once
    UNIQUE NULLS NOT DISTINCT (payment_id, event_type, refund_id);

ALTER TABLE account_statements ADD COLUMN refund_id uuid;
ALTER TABLE account_statements DROP CONSTRAINT account_statements_account_id_payment_id_kind_key;
-- (a line with no payment, a top-up, stays one of many)
CREATE UNIQUE INDEX account_statements_once ON account_statements
    (account_id, payment_id, kind, COALESCE(refund_id, '00000000-0000-0000-0000-000000000000'));
ALTER TABLE account_statements DROP CONSTRAINT account_statements_kind_check;
ALTER TABLE account_statements ADD CONSTRAINT account_statements_kind_check
    CHECK (kind IN ('top_up', 'freeze', 'unfreeze', 'debit', 'credit', 'refund'));

-- A refund that makes its payment whole gives back, when asked, the stock
-- the payment took and its coupon use.
ALTER TABLE stock_reservations DROP CONSTRAINT stock_reservations_status_check;
ALTER TABLE stock_reservations ADD CONSTRAINT stock_reservations_status_check
    CHECK (status IN ('reserved', 'deducted', 'released', 'returned'));
ALTER TABLE coupon_redemptions DROP CONSTRAINT coupon_redemptions_status_check;
ALTER TABLE coupon_redemptions ADD CONSTRAINT coupon_redemptions_status_check
    CHECK (status IN ('reserved', 'consumed', 'released', 'returned'));

-- A refund request refused before it names a payment of its merchant.
ALTER TABLE request_rejections ADD COLUMN merchant_refund_id text;
