-- Merchant webhooks that cannot be aimed inward: the hosts a merchant's
-- webhooks may go to are registered with the merchant (besides the host of
-- its own notify_url); a delivery to anything else, or to an address that is
-- loopback, private, link-local or unique-local, is refused once, recorded
-- in webhook_attempts, and not retried.
ALTER TABLE merchants ADD COLUMN notify_hosts text[] NOT NULL DEFAULT '{}';

ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_status_check;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'exhausted', 'refused'));
