-- Deposits an operator attests (`payfleet wallet top-up`): a user paid the
-- platform outside any third-party channel. They take the top-up path
-- through the deposit channel `ops` (kind `ops`, method `ops`, no fee),
-- asked for by the platform's own requester `payfleet-ops`, which acts for
-- users and never signs anything (its key is never handed out).
ALTER TABLE channels DROP CONSTRAINT channels_kind_check;
ALTER TABLE channels ADD CONSTRAINT channels_kind_check CHECK (kind IN ('balance', 'sandbox', 'ops'));

INSERT INTO channels (name, kind, methods, fee_rate, status)
VALUES ('ops', 'ops', ARRAY['ops'], 0, 'active')
ON CONFLICT (name) DO NOTHING;

INSERT INTO merchants (id, name, signing_key, acts_for_users)
VALUES ('payfleet-ops', 'payfleet operators', new_request_key(), true)
ON CONFLICT (id) DO NOTHING;

-- An attested deposit is audited like the other manual actions.
ALTER TABLE manual_actions DROP CONSTRAINT manual_actions_action_check;
ALTER TABLE manual_actions ADD CONSTRAINT manual_actions_action_check
    CHECK (action IN ('resolve', 'requery', 'deposit'));
