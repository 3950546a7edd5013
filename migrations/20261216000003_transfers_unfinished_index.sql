-- The signals collector counts transfers accepted but unfinished past the
-- stuck threshold (`payfleet_transfers_stuck`) every few seconds in every
-- process: only those rows, by age.
CREATE INDEX transfers_unfinished_by_age ON transfers (created_at) WHERE status IN ('requested', 'frozen');
