-- Growth: every lookup the fleet and its ops commands make goes through an
-- index, so no statement reads a table in proportion to its history
-- (tests/growth.rs runs the chain over 100,000 payments of history and fails
-- on any sequential scan of a table over 10,000 rows).
--
-- No foreign key needs an index for its own sake: nothing deletes or re-keys
-- a referenced row (only inbox, outbox, delivery counts and dead letters are
-- deleted, and nothing references them).
--
-- Each build holds off writes to its table while it runs. On a large live
-- database, create these first with CREATE INDEX CONCURRENTLY under the same
-- names (and check none is left INVALID): this migration then skips them.

-- The deferred balance check reads its entry's postings at every commit
-- that posts; `payfleet payment show` joins the payment's entry to them.
CREATE INDEX IF NOT EXISTS postings_entry ON postings (entry_id);

-- fund-freeze (Try): the payment's lines, to reserve their stock.
CREATE INDEX IF NOT EXISTS order_details_payment ON order_details (payment_id);

-- settlement (Confirm, Cancel, a shortfall's allocation): the payment's details.
CREATE INDEX IF NOT EXISTS transaction_details_payment ON transaction_details (payment_id);

-- channel-call, settlement, the ledger's channel charge, `payfleet payment
-- requery` and `show`: the payment's latest attempt.
CREATE INDEX IF NOT EXISTS payment_attempts_payment ON payment_attempts (payment_id, created_at);

-- `payfleet reconcile` and the books against a channel's statement: the
-- channel's attempts of a day, or since a time.
CREATE INDEX IF NOT EXISTS payment_attempts_channel ON payment_attempts (channel, created_at);

-- `payfleet payment show`: the attempts of the payment's webhooks, its refunds.
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id);
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (payment_id);

-- The refund sender's claim (oldest owed first) and `payfleet status`'s count.
CREATE INDEX IF NOT EXISTS refunds_owed ON refunds (created_at) WHERE status = 'owed';

-- The invariants (the demo's end, every end-to-end test): open freezes per
-- wallet and open stock reservations per SKU; only open rows are indexed.
CREATE INDEX IF NOT EXISTS reservations_open_by_account ON reservations (account_id) WHERE status = 'tried';
CREATE INDEX IF NOT EXISTS stock_reservations_open_by_sku ON stock_reservations (sku) WHERE status = 'reserved';

-- `payfleet dlq show <id or message id>`; lists, counts and the deletion of
-- expired purged rows by status.
CREATE INDEX IF NOT EXISTS dead_letters_id_text ON dead_letters ((id::text));
CREATE INDEX IF NOT EXISTS dead_letters_status ON dead_letters (status, status_changed_at);
