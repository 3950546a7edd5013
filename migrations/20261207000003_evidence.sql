-- A channel notice as it was received, so that it can be verified again
-- later: the body byte for byte (the payload column is re-encoded JSON and
-- does not keep the signed bytes), and the timestamp and signature headers
-- as they were sent. Set on callback rows; nullable, so adding them
-- rewrites nothing.
ALTER TABLE integration_log
    ADD COLUMN raw_body         bytea,
    ADD COLUMN signed_timestamp text,
    ADD COLUMN signature        text;

-- Deleting purged dead letters past their retention is audited like a
-- replay or a purge: who, when, which rows.
ALTER TABLE replay_audit DROP CONSTRAINT replay_audit_action_check;
ALTER TABLE replay_audit ADD CONSTRAINT replay_audit_action_check
    CHECK (action IN ('replay', 'purge', 'delete'));
