-- Same-day reversals (`payment.reverse`): a channel payment the channel has
-- not yet settled — the same business day, before the channel's cut-off —
-- is cancelled whole at the channel, which keeps no fee. A reversal is a
-- refund of the whole payment in the same table and through the same
-- stages (`kind = 'reversal'`), keyed by the merchant's reversal id (kept in
-- `merchant_refund_id`), and booked with its own journal entry kind
-- (`reversal`: every leg of the payment, the channel's fee included).
ALTER TABLE refunds ADD COLUMN kind text NOT NULL DEFAULT 'refund'
    CHECK (kind IN ('refund', 'reversal'));
ALTER TABLE refunds ADD CONSTRAINT refunds_reversal_is_upstream
    CHECK (kind = 'refund' OR origin = 'upstream');
-- A merchant's refund ids and reversal ids are separate namespaces.
DROP INDEX refunds_merchant_refund;
CREATE UNIQUE INDEX refunds_merchant_request ON refunds (merchant_id, kind, merchant_refund_id)
    WHERE origin = 'upstream';
-- `payfleet reconcile` finds whether a channel's charge was reversed, and
-- a day's refunds and reversals by when they succeeded.
CREATE INDEX refunds_reversal_of_attempt ON refunds (attempt_id) WHERE kind = 'reversal';
CREATE INDEX refunds_succeeded_at ON refunds (refunded_at) WHERE status = 'succeeded';

-- The time of day (in the fleet's business-day zone, `business_time_zone`)
-- after which the channel has settled the day's payments and reverses no
-- more of them; NULL when the channel does not reverse at all.
ALTER TABLE channels ADD COLUMN reversal_cutoff time;

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('payment', 'top_up', 'charge_held', 'charge_owed_back', 'refund', 'reversal', 'correction'));

-- A reversal request refused before it names a payment of its merchant.
ALTER TABLE request_rejections ADD COLUMN merchant_reversal_id text;

-- Reconciliation matches the reversals on a channel's statement with ours,
-- by reversal id, as it matches refunds.
ALTER TABLE reconciliation_items DROP CONSTRAINT reconciliation_items_kind_check;
ALTER TABLE reconciliation_items ADD CONSTRAINT reconciliation_items_kind_check
    CHECK (kind IN ('matched', 'missing_ours', 'missing_theirs', 'amount_mismatch', 'currency_mismatch',
                    'status_mismatch', 'fee_mismatch',
                    'refund_matched', 'refund_missing_ours', 'refund_missing_theirs', 'refund_amount_mismatch',
                    'reversal_matched', 'reversal_missing_ours', 'reversal_missing_theirs', 'reversal_amount_mismatch'));
