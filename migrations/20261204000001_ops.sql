-- Manual actions by ops, with who, why, and the state before and after.
CREATE TABLE manual_actions (
    id         bigserial PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments(id),
    action     text NOT NULL CHECK (action IN ('resolve', 'requery')),
    operator   text NOT NULL,
    reason     text NOT NULL,
    before     jsonb NOT NULL,
    after      jsonb NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX manual_actions_payment ON manual_actions (payment_id);

-- Reconciliation of a channel's daily statement against our attempts.
CREATE TABLE reconciliation_runs (
    id         bigserial PRIMARY KEY,
    channel    text NOT NULL,
    day        date NOT NULL,
    matched    integer NOT NULL,
    mismatched integer NOT NULL,
    ran_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reconciliation_items (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES reconciliation_runs(id),
    kind        text NOT NULL CHECK (kind IN ('matched', 'missing_ours', 'missing_theirs', 'amount_mismatch', 'status_mismatch')),
    attempt_id  text NOT NULL,
    payment_id  uuid,
    ours        jsonb,
    theirs      jsonb
);
