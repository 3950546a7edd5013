-- Merchants and channels onboarded and managed by command (`payfleet merchant …`)
-- rather than SQL. A merchant signs its requests with its request key
-- (`signing_key`); a rotation makes a new one and keeps the one before
-- valid until `previous_key_expires_at` (the grace period), so upstream
-- can switch without refused requests. One previous key at a time: a
-- second rotation within the grace period ends the first's grace.
ALTER TABLE merchants ADD COLUMN previous_signing_key text;
ALTER TABLE merchants ADD COLUMN previous_key_expires_at timestamptz;
ALTER TABLE merchants ADD CONSTRAINT merchants_previous_key_expires
    CHECK ((previous_signing_key IS NULL) = (previous_key_expires_at IS NULL));
ALTER TABLE merchants ADD COLUMN status_reason text;
ALTER TABLE merchants ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- A new request key: 64 hex characters from two random UUIDs' 244 random bits.
CREATE FUNCTION new_request_key() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT 'pfk_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
$$;

-- Every onboarding action, with who, why, and the merchant before and
-- after (keys never: only their fingerprints).
CREATE TABLE merchant_actions (
    id          bigserial PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants(id),
    action      text NOT NULL CHECK (action IN ('add', 'suspend', 'activate', 'rotate_key')),
    operator    text NOT NULL,
    reason      text NOT NULL,
    before      jsonb,
    after       jsonb NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merchant_actions_merchant ON merchant_actions (merchant_id, at);

-- The routing table without SQL (`payfleet channel add | disable | enable`):
-- why a channel was taken out by hand, and every action on record (the
-- webhook secret never).
ALTER TABLE channels ADD COLUMN status_reason text;
CREATE TABLE channel_actions (
    id       bigserial PRIMARY KEY,
    channel  text NOT NULL REFERENCES channels(name),
    action   text NOT NULL CHECK (action IN ('add', 'disable', 'enable')),
    operator text NOT NULL,
    reason   text NOT NULL,
    before   jsonb,
    after    jsonb NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_actions_channel ON channel_actions (channel, at);

-- `payfleet merchant balance`: a merchant's sales still in flight, and
-- what it was credited on a day. Each build holds off writes to its table
-- while it runs; on a large live database create them first with CREATE
-- INDEX CONCURRENTLY under the same names: this migration then skips them.
CREATE INDEX IF NOT EXISTS transaction_details_awaiting_by_seller ON transaction_details (seller_id)
    WHERE status = 'awaiting_payment';
CREATE INDEX IF NOT EXISTS postings_account_day ON postings (account_id, created_at);

-- Payers registered by command (`payfleet user add`), on record.
CREATE TABLE user_actions (
    id       bigserial PRIMARY KEY,
    user_id  text NOT NULL REFERENCES users(id),
    action   text NOT NULL CHECK (action IN ('add')),
    operator text NOT NULL,
    reason   text NOT NULL,
    after    jsonb NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
