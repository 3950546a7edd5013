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
