-- Transfers: money moving from one user's wallet to another's, in one
-- currency. Asked for by a registered requester acting for users (the
-- platform's wallet application) signing with its request key, keyed by
-- (requester, the requester's own request id) and compared by content
-- like payments.
--
--   requested ─ Try ─▶ frozen ─ Confirm ─▶ succeeded
--       │                 └─ Cancel ─▶ failed   (the payee's wallet stopped taking money)
--       └▶ refused  (order-validation's checks, or Try: short, over the daily limit)
--
-- Try freezes the amount on the payer's wallet under its row lock; Confirm
-- debits the freeze and posts the `transfer` entry (payer −A, payee +A).
-- The payee's leg is appended not yet rolled up: the roll-up folds it into
-- the payee's balance and writes the payee's statement line, so transfers
-- to one popular payee never queue on its wallet row.
CREATE TABLE transfers (
    id               uuid PRIMARY KEY,
    requester_id     text NOT NULL REFERENCES merchants(id),
    request_id       text NOT NULL,
    request_hash     text NOT NULL,
    -- as asked (a request naming an unknown user is kept refused, its id taken)
    payer_user_id    text NOT NULL,
    payee_user_id    text NOT NULL,
    -- the wallets (NULL while the request named no usable wallet)
    payer_account_id bigint REFERENCES accounts(id),
    payee_account_id bigint REFERENCES accounts(id),
    amount           numeric(20, 2) NOT NULL CHECK (amount > 0),
    currency         char(3) NOT NULL,
    memo             text,
    notify_url       text,
    status           text NOT NULL CHECK (status IN ('requested', 'refused', 'frozen', 'succeeded', 'failed')),
    detail           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    booked_at        timestamptz,
    UNIQUE (requester_id, request_id),
    CHECK (payer_account_id IS DISTINCT FROM payee_account_id OR payer_account_id IS NULL)
);
-- A payer's transfers of a day (the daily limit).
CREATE INDEX transfers_payer_day ON transfers (payer_user_id, created_at);
-- The invariants: what is still frozen on a payer's wallet.
CREATE INDEX transfers_open ON transfers (payer_account_id) WHERE status = 'frozen';

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('payment', 'top_up', 'charge_held', 'charge_owed_back', 'refund', 'reversal', 'correction',
                    'withdrawal', 'withdrawal_returned', 'transfer'));

-- One statement line per transfer, wallet and movement: the payer's
-- freeze, debit or unfreeze, the payee's credit (written at roll-up).
ALTER TABLE account_statements ADD COLUMN transfer_id uuid;
CREATE UNIQUE INDEX account_statements_transfer_once ON account_statements
    (account_id, transfer_id, kind) WHERE transfer_id IS NOT NULL;

-- Events and webhooks of a transfer: no payment, no withdrawal.
ALTER TABLE payment_events ADD COLUMN transfer_id uuid;
ALTER TABLE payment_events DROP CONSTRAINT payment_events_once;
ALTER TABLE payment_events ADD CONSTRAINT payment_events_once
    UNIQUE NULLS NOT DISTINCT (payment_id, event_type, refund_id, withdrawal_id, transfer_id);
ALTER TABLE payment_events DROP CONSTRAINT payment_events_about_one;
ALTER TABLE payment_events ADD CONSTRAINT payment_events_about_one
    CHECK (num_nonnulls(payment_id, withdrawal_id, transfer_id) = 1);

ALTER TABLE webhook_deliveries ADD COLUMN transfer_id uuid REFERENCES transfers(id);
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_once;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_once
    UNIQUE NULLS NOT DISTINCT (payment_id, event_type, refund_id, withdrawal_id, transfer_id);
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_about_one;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_about_one
    CHECK (num_nonnulls(payment_id, withdrawal_id, transfer_id) = 1);

-- A transfer request refused before it could be kept (forged, an unknown
-- or suspended requester, unreadable, stale, an idempotency conflict).
ALTER TABLE request_rejections ADD COLUMN transfer_request_id text;
