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
