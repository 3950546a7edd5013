-- Third-party channels: the routing table, channel fees, open attempts
-- that wait for a webhook, and refunds owed after a late success.

CREATE TABLE channels (
    name           text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('balance', 'sandbox')),
    -- where the adapter calls (sandbox channels)
    base_url       text,
    -- the secret its webhooks are signed with
    webhook_secret text,
    methods        text[] NOT NULL,
    fee_rate       numeric(6, 4) NOT NULL DEFAULT 0 CHECK (fee_rate >= 0 AND fee_rate < 1),
    -- ops can take a channel out of routing by hand; the circuit breaker does it by itself
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO channels (name, kind, methods, fee_rate) VALUES ('balance', 'balance', ARRAY['balance'], 0);

ALTER TABLE payments ADD COLUMN payer_token text;
-- what the chosen channel charges for this payment, posted at settlement
ALTER TABLE payments ADD COLUMN channel_fee numeric(20, 2) NOT NULL DEFAULT 0;

ALTER TABLE payment_attempts DROP CONSTRAINT payment_attempts_status_check;
ALTER TABLE payment_attempts ADD CONSTRAINT payment_attempts_status_check
    CHECK (status IN ('sending', 'pending', 'unknown', 'succeeded', 'failed', 'closed'));
DROP INDEX payment_attempts_one_open;
CREATE UNIQUE INDEX payment_attempts_one_open ON payment_attempts (payment_id) WHERE status IN ('sending', 'pending', 'unknown');

-- A success that arrived after the payment was cancelled: the money is owed back.
CREATE TABLE refunds (
    id          uuid PRIMARY KEY,
    payment_id  uuid NOT NULL REFERENCES payments(id),
    attempt_id  uuid NOT NULL REFERENCES payment_attempts(id) UNIQUE,
    channel     text NOT NULL,
    amount      numeric(20, 2) NOT NULL CHECK (amount > 0),
    currency    char(3) NOT NULL,
    reason      text NOT NULL,
    status      text NOT NULL CHECK (status IN ('owed', 'sent', 'succeeded', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- set when the sweeper asked channel-call to close an expired payment's trade
ALTER TABLE payments ADD COLUMN close_requested_at timestamptz;
