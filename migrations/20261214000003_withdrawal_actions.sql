-- Manual actions on withdrawals (`payfleet withdrawal requery`) go on the
-- same record as payments': each names exactly one of the two.
ALTER TABLE manual_actions ALTER COLUMN payment_id DROP NOT NULL;
ALTER TABLE manual_actions ADD COLUMN withdrawal_id uuid REFERENCES withdrawals(id);
ALTER TABLE manual_actions ADD CONSTRAINT manual_actions_one_subject
    CHECK ((payment_id IS NULL) <> (withdrawal_id IS NULL));
CREATE INDEX manual_actions_withdrawal ON manual_actions (withdrawal_id) WHERE withdrawal_id IS NOT NULL;
