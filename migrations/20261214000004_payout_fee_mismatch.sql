-- Reconciliation compares the fee the channel took on a payout with the
-- fee our books charged the platform.
ALTER TABLE reconciliation_items DROP CONSTRAINT reconciliation_items_kind_check;
ALTER TABLE reconciliation_items ADD CONSTRAINT reconciliation_items_kind_check
    CHECK (kind IN ('matched', 'missing_ours', 'missing_theirs', 'amount_mismatch', 'currency_mismatch',
                    'status_mismatch', 'fee_mismatch',
                    'refund_matched', 'refund_missing_ours', 'refund_missing_theirs', 'refund_amount_mismatch',
                    'reversal_matched', 'reversal_missing_ours', 'reversal_missing_theirs', 'reversal_amount_mismatch',
                    'payout_matched', 'payout_missing_ours', 'payout_missing_theirs', 'payout_amount_mismatch',
                    'payout_status_mismatch', 'payout_fee_mismatch'));
