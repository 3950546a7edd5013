-- Pruning past retention (common/src/retention.rs) finds its rows by index:
-- crash-loop counts by when they were last touched, inbox rows kept for a
-- parked dead letter by the dead letter's (stage, message id).
CREATE INDEX delivery_counts_last_seen_at ON delivery_counts (last_seen_at);
CREATE INDEX dead_letters_parked_message ON dead_letters (stage, message_id) WHERE status = 'parked';
