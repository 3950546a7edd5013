-- Merchant webhooks that cannot be aimed inward: the hosts a merchant's
-- webhooks may go to are registered with the merchant (besides the host of
-- its own notify_url); a delivery to anything else, or to an address that is
-- loopback, private, link-local or unique-local, is refused once, recorded
-- in webhook_attempts, and not retried.
ALTER TABLE merchants ADD COLUMN notify_hosts text[] NOT NULL DEFAULT '{}';

ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_status_check;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'exhausted', 'refused'));

-- Merchant webhooks are signed to the Standard Webhooks specification with
-- webhook secrets (`whsec_<base64>`), separate from the key a merchant signs
-- its requests with. Every merchant has one; a rotation adds a new one and
-- keeps the previous ones until `expires_at` (the grace period), signing
-- with every active secret meanwhile. NULL expires_at: current.
CREATE FUNCTION new_webhook_secret() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64')
$$;

CREATE TABLE merchant_webhook_secrets (
    merchant_id text NOT NULL REFERENCES merchants(id),
    secret      text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz,
    PRIMARY KEY (merchant_id, secret)
);

CREATE FUNCTION merchant_first_webhook_secret() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO merchant_webhook_secrets (merchant_id, secret) VALUES (NEW.id, new_webhook_secret());
    RETURN NULL;
END;
$$;

CREATE TRIGGER merchants_webhook_secret AFTER INSERT ON merchants
    FOR EACH ROW EXECUTE FUNCTION merchant_first_webhook_secret();

INSERT INTO merchant_webhook_secrets (merchant_id, secret)
    SELECT id, new_webhook_secret() FROM merchants;

-- Sending a webhook again (`payfleet webhook resend`, or `dlq replay` of its
-- dead letter) resets the delivery to pending: the attempt log goes on and
-- the retry schedule starts again from `schedule_from` (the attempts made
-- before the resend). Every resend is on record.
ALTER TABLE webhook_deliveries ADD COLUMN schedule_from integer NOT NULL DEFAULT 0;
CREATE INDEX webhook_deliveries_merchant ON webhook_deliveries (merchant_id, created_at);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, created_at);

CREATE TABLE webhook_resends (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    operator     text NOT NULL,
    via          text NOT NULL,
    selection    jsonb NOT NULL,
    delivery_ids uuid[] NOT NULL,
    count        integer NOT NULL
);
