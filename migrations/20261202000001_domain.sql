-- The payment domain (seeds 000/001): merchants, users, accounts and their
-- statements, catalogue and stock, coupons, order records and details,
-- payments (transaction records) and their details, attempts and the
-- integration log, the double-entry journal, merchant webhooks.
-- Money is NUMERIC with a currency on every amount; statuses are constrained;
-- unique keys enforce idempotency.

CREATE TABLE merchants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    signing_key text NOT NULL,
    notify_url  text,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    -- platform fee taken from this merchant's sales, e.g. 0.0060 = 0.6 %
    fee_rate    numeric(6, 4) NOT NULL DEFAULT 0 CHECK (fee_rate >= 0 AND fee_rate < 1),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
    blocked    boolean NOT NULL DEFAULT false,  -- on the risk block list
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Wallets (users) and settlement accounts (merchants, platform fees), plus
-- the one `external` account that stands for money outside payfleet (top-ups
-- come from it); its balance columns stay 0 and its postings sum negative.
-- A merchant's balance is rolled up from journal postings (see settlement):
-- payments never lock a merchant's row, so a hot merchant does not serialise the fleet.
CREATE TABLE accounts (
    id         bigserial PRIMARY KEY,
    owner_kind text NOT NULL CHECK (owner_kind IN ('user', 'merchant', 'platform', 'external')),
    owner_id   text NOT NULL,
    currency   char(3) NOT NULL,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen', 'closed')),
    total      numeric(20, 2) NOT NULL DEFAULT 0 CHECK (total >= 0),
    available  numeric(20, 2) NOT NULL DEFAULT 0 CHECK (available >= 0),
    frozen     numeric(20, 2) NOT NULL DEFAULT 0 CHECK (frozen >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (total = available + frozen),
    UNIQUE (owner_kind, owner_id, currency)
);

-- The account's bill: every movement with the balances after it.
CREATE TABLE account_statements (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts(id),
    payment_id      uuid,
    kind            text NOT NULL CHECK (kind IN ('top_up', 'freeze', 'unfreeze', 'debit', 'credit')),
    amount          numeric(20, 2) NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    available_after numeric(20, 2) NOT NULL,
    frozen_after    numeric(20, 2) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, payment_id, kind)
);

CREATE TABLE products (
    sku         text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants(id),
    name        text NOT NULL,
    spec        jsonb NOT NULL DEFAULT '{}',
    category    text NOT NULL DEFAULT 'general',
    warehouse   text NOT NULL DEFAULT 'main',
    unit_price  numeric(20, 2) NOT NULL CHECK (unit_price > 0),
    currency    char(3) NOT NULL,
    status      text NOT NULL DEFAULT 'on_sale' CHECK (status IN ('on_sale', 'off_shelf'))
);

-- Tiered pricing: from min_quantity units on, each unit costs unit_price.
CREATE TABLE price_tiers (
    sku          text NOT NULL REFERENCES products(sku),
    min_quantity integer NOT NULL CHECK (min_quantity > 1),
    unit_price   numeric(20, 2) NOT NULL CHECK (unit_price > 0),
    PRIMARY KEY (sku, min_quantity)
);

CREATE TABLE stock (
    sku       text PRIMARY KEY REFERENCES products(sku),
    available integer NOT NULL CHECK (available >= 0),
    reserved  integer NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);

CREATE TABLE coupons (
    code           text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('full_reduction', 'percentage', 'ladder')),
    currency       char(3) NOT NULL,
    -- full_reduction: spend threshold, get amount_off
    threshold      numeric(20, 2),
    amount_off     numeric(20, 2),
    -- percentage: percent off (e.g. 10 = 10 %), at most cap
    percent_off    numeric(5, 2) CHECK (percent_off > 0 AND percent_off < 100),
    cap            numeric(20, 2),
    -- ladder: [{"threshold": "100.00", "amount_off": "10.00"}, …], the highest step reached applies
    ladder         jsonb,
    valid_from     timestamptz NOT NULL,
    valid_until    timestamptz NOT NULL,
    total_limit    integer NOT NULL CHECK (total_limit > 0),
    per_user_limit integer NOT NULL DEFAULT 1 CHECK (per_user_limit > 0),
    -- reserved or consumed redemptions; released ones give their use back
    used           integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    CHECK (used <= total_limit),
    CHECK (valid_from < valid_until)
);

-- The logical order (order record) with its split into sub-orders and lines.
CREATE TABLE orders (
    payment_id        uuid PRIMARY KEY,
    merchant_id       text NOT NULL REFERENCES merchants(id),
    merchant_order_id text NOT NULL,
    user_id           text NOT NULL,
    currency          char(3) NOT NULL,
    gross_amount      numeric(20, 2) NOT NULL,
    discount_amount   numeric(20, 2) NOT NULL DEFAULT 0,
    payable_amount    numeric(20, 2) NOT NULL,
    coupon_code       text,
    status            text NOT NULL CHECK (status IN ('created', 'awaiting_payment', 'paid', 'closed')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (payable_amount = gross_amount - discount_amount)
);

CREATE TABLE sub_orders (
    id              uuid PRIMARY KEY,
    payment_id      uuid NOT NULL REFERENCES orders(payment_id),
    seller_id       text NOT NULL REFERENCES merchants(id),
    warehouse       text NOT NULL,
    currency        char(3) NOT NULL,
    gross_amount    numeric(20, 2) NOT NULL,
    discount_amount numeric(20, 2) NOT NULL,
    payable_amount  numeric(20, 2) NOT NULL,
    fee_amount      numeric(20, 2) NOT NULL,
    UNIQUE (payment_id, seller_id, warehouse)
);

CREATE TABLE order_details (
    id              bigserial PRIMARY KEY,
    payment_id      uuid NOT NULL REFERENCES orders(payment_id),
    sub_order_id    uuid NOT NULL REFERENCES sub_orders(id),
    sku             text NOT NULL REFERENCES products(sku),
    spec            jsonb NOT NULL,
    buyer_id        text NOT NULL,
    seller_id       text NOT NULL,
    unit_price      numeric(20, 2) NOT NULL,
    quantity        integer NOT NULL CHECK (quantity > 0),
    line_amount     numeric(20, 2) NOT NULL,
    discount_amount numeric(20, 2) NOT NULL,
    currency        char(3) NOT NULL
);

-- The payment (transaction record): one per merchant order, its status
-- machine in workers/src/domain.rs.
CREATE TABLE payments (
    id                uuid PRIMARY KEY,
    merchant_id       text NOT NULL REFERENCES merchants(id),
    merchant_order_id text NOT NULL,
    -- hash of the request's content: the same id with other content is a conflict
    request_hash      text NOT NULL,
    user_id           text NOT NULL,
    method            text NOT NULL,
    channel           text,
    currency          char(3) NOT NULL,
    amount            numeric(20, 2) NOT NULL CHECK (amount >= 0),
    status            text NOT NULL CHECK (status IN (
        'validated', 'frozen', 'paid', 'settled', 'failed', 'cancelled', 'rejected', 'challenged', 'exception')),
    reason            text,
    risk_decision     text CHECK (risk_decision IN ('allow', 'challenge', 'block')),
    risk_reasons      jsonb NOT NULL DEFAULT '[]',
    notify_url        text,
    expires_at        timestamptz NOT NULL,
    requested_at      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (merchant_id, merchant_order_id)
);
CREATE INDEX payments_open_by_expiry ON payments (expires_at) WHERE status IN ('validated', 'frozen');
CREATE INDEX payments_status ON payments (status);

-- One detail per sub-order: where the money goes.
CREATE TABLE transaction_details (
    id           bigserial PRIMARY KEY,
    payment_id   uuid NOT NULL REFERENCES payments(id),
    sub_order_id uuid NOT NULL REFERENCES sub_orders(id) UNIQUE,
    seller_id    text NOT NULL,
    amount       numeric(20, 2) NOT NULL,
    fee_amount   numeric(20, 2) NOT NULL,
    currency     char(3) NOT NULL,
    status       text NOT NULL CHECK (status IN ('awaiting_payment', 'paid', 'cancelled'))
);

-- TCC reservations of a payment: what Try took and Confirm / Cancel settle.
-- A Cancel that runs before its Try (empty rollback) inserts the row as
-- 'cancelled', so the late Try finds it and reserves nothing.
CREATE TABLE reservations (
    payment_id   uuid PRIMARY KEY REFERENCES payments(id),
    account_id   bigint REFERENCES accounts(id),
    amount       numeric(20, 2) NOT NULL,
    currency     char(3) NOT NULL,
    status       text NOT NULL CHECK (status IN ('tried', 'confirmed', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE stock_reservations (
    payment_id uuid NOT NULL REFERENCES payments(id),
    sku        text NOT NULL REFERENCES stock(sku),
    quantity   integer NOT NULL CHECK (quantity > 0),
    status     text NOT NULL CHECK (status IN ('reserved', 'deducted', 'released')),
    PRIMARY KEY (payment_id, sku)
);

CREATE TABLE coupon_redemptions (
    payment_id  uuid PRIMARY KEY REFERENCES payments(id),
    coupon_code text NOT NULL REFERENCES coupons(code),
    user_id     text NOT NULL,
    amount      numeric(20, 2) NOT NULL,
    status      text NOT NULL CHECK (status IN ('reserved', 'consumed', 'released')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX coupon_redemptions_user ON coupon_redemptions (coupon_code, user_id) WHERE status <> 'released';

-- An attempt at a channel; our attempt id is the channel's idempotency key.
CREATE TABLE payment_attempts (
    id          uuid PRIMARY KEY,
    payment_id  uuid NOT NULL REFERENCES payments(id),
    channel     text NOT NULL,
    amount      numeric(20, 2) NOT NULL,
    currency    char(3) NOT NULL,
    status      text NOT NULL CHECK (status IN ('sending', 'unknown', 'succeeded', 'failed')),
    channel_reference text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE UNIQUE INDEX payment_attempts_one_open ON payment_attempts (payment_id) WHERE status IN ('sending', 'unknown');

-- Every exchange with a channel: request, response, callback payloads.
CREATE TABLE integration_log (
    id         bigserial PRIMARY KEY,
    payment_id uuid NOT NULL,
    attempt_id uuid,
    channel    text NOT NULL,
    direction  text NOT NULL CHECK (direction IN ('request', 'response', 'callback', 'query')),
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX integration_log_payment ON integration_log (payment_id);

-- Double-entry journal: each entry's postings balance per currency (checked
-- by a constraint trigger at commit).
CREATE TABLE journal_entries (
    id         bigserial PRIMARY KEY,
    -- the payment settled, or for a top-up the reference it came with
    reference  text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('payment', 'refund', 'top_up')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reference, kind)
);

CREATE TABLE postings (
    id         bigserial PRIMARY KEY,
    entry_id   bigint NOT NULL REFERENCES journal_entries(id),
    account_id bigint NOT NULL REFERENCES accounts(id),
    -- positive = credit (money in), negative = debit (money out)
    amount     numeric(20, 2) NOT NULL CHECK (amount <> 0),
    currency   char(3) NOT NULL,
    -- false until the account's balance includes it: merchant and platform
    -- accounts are rolled up asynchronously, wallets at once
    rolled_up  boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX postings_account ON postings (account_id, id);
CREATE INDEX postings_pending_roll_up ON postings (account_id) WHERE NOT rolled_up;

CREATE FUNCTION check_entry_balances() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM postings WHERE entry_id = NEW.entry_id
        GROUP BY currency HAVING sum(amount) <> 0
    ) THEN
        RAISE EXCEPTION 'journal entry % does not balance', NEW.entry_id;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER postings_balance
    AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_entry_balances();

-- Merchant webhooks: one delivery per payment outcome, every attempt logged.
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    payment_id      uuid NOT NULL REFERENCES payments(id),
    merchant_id     text NOT NULL,
    event_type      text NOT NULL,
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'exhausted')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (payment_id, event_type)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id          bigserial PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries(id),
    attempt     integer NOT NULL,
    http_status integer,
    error       text,
    duration_ms integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

-- BI events emitted, one per payment and outcome (the stable dedupe key).
CREATE TABLE payment_events (
    event_id   uuid PRIMARY KEY,
    payment_id uuid NOT NULL,
    event_type text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payment_id, event_type)
);

-- Requests refused before a payment exists (bad signature, unknown merchant,
-- an idempotency conflict): they must not take the merchant order id.
CREATE TABLE request_rejections (
    id                bigserial PRIMARY KEY,
    message_id        text NOT NULL UNIQUE,
    merchant_id       text,
    merchant_order_id text,
    reason            text NOT NULL,
    detail            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
