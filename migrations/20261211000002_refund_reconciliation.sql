-- Reconciliation matches the refunds a channel paid back with ours, by refund id.
ALTER TABLE reconciliation_items DROP CONSTRAINT reconciliation_items_kind_check;
ALTER TABLE reconciliation_items ADD CONSTRAINT reconciliation_items_kind_check
    CHECK (kind IN ('matched', 'missing_ours', 'missing_theirs', 'amount_mismatch', 'currency_mismatch',
                    'status_mismatch', 'fee_mismatch',
                    'refund_matched', 'refund_missing_ours', 'refund_missing_theirs', 'refund_amount_mismatch'));
