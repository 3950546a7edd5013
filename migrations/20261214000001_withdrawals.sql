-- Withdrawals: a user's money leaving a wallet for a bank card or account,
-- paid out by a payout channel. Asked for by a registered requester (a
-- merchant row: a shop, or the platform's own wallet application) signing
-- with its request key, keyed by (requester, the requester's own request
-- id) and compared by content like payments.
--
--   requested ─ Try ─▶ frozen ─ channel-call ─▶ sending ─▶ succeeded ─ bank ─▶ returned
--       │                 │                        ├▶ failed
--       └▶ refused        └▶ refused               └▶ unknown ─ query ─▶ succeeded | failed
--                                                        └▶ exception (queries ran out: stays frozen)
--
-- The amount is what leaves the wallet; the payee receives amount − fee
-- (the platform's withdrawal fee); the channel's own fee is the platform's
-- cost. settlement books it (`booked_at`): Confirm posts the `withdrawal`
-- entry, Cancel releases the freeze; a returned payout is booked once more
-- (`returned_booked_at`, the `withdrawal_returned` entry).
CREATE TABLE withdrawals (
    id                 uuid PRIMARY KEY,
    requester_id       text NOT NULL REFERENCES merchants(id),
    request_id         text NOT NULL,
    request_hash       text NOT NULL,
    -- as asked (a request for an unknown user is kept refused, its id taken)
    user_id            text NOT NULL,
    -- the wallet it leaves (NULL while the request named no wallet of the user)
    account_id         bigint REFERENCES accounts(id),
    amount             numeric(20, 2) NOT NULL CHECK (amount > 0),
    fee                numeric(20, 2) NOT NULL DEFAULT 0 CHECK (fee >= 0 AND fee < amount),
    currency           char(3) NOT NULL,
    -- the payee's bank card or account, tokenised
    payee_account      text NOT NULL,
    -- the payout channel (NULL when refused before one was chosen)
    channel            text REFERENCES channels(name),
    -- what the channel took for paying it out, as it said
    channel_fee        numeric(20, 2) CHECK (channel_fee >= 0),
    notify_url         text,
    status             text NOT NULL CHECK (status IN (
        'requested', 'refused', 'frozen', 'sending', 'unknown', 'succeeded', 'failed', 'exception', 'returned')),
    detail             text,
    last_error         text,
    sends              integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    paid_at            timestamptz,
    booked_at          timestamptz,
    returned_at        timestamptz,
    returned_booked_at timestamptz,
    UNIQUE (requester_id, request_id)
);
-- A user's withdrawals of a day (the daily limit).
CREATE INDEX withdrawals_user_day ON withdrawals (user_id, created_at);
-- `payfleet reconcile`: a channel's payouts of a day.
CREATE INDEX withdrawals_paid ON withdrawals (channel, paid_at) WHERE paid_at IS NOT NULL;
-- `payfleet status` and the invariants: what is still frozen.
CREATE INDEX withdrawals_open ON withdrawals (account_id) WHERE status IN ('frozen', 'sending', 'unknown', 'exception');

-- Every call about a withdrawal to its channel and every notice from it:
-- the integration log of payouts.
CREATE TABLE withdrawal_log (
    id               bigserial PRIMARY KEY,
    withdrawal_id    uuid NOT NULL REFERENCES withdrawals(id),
    channel          text NOT NULL,
    direction        text NOT NULL CHECK (direction IN ('request', 'callback')),
    payload          jsonb NOT NULL,
    raw_body         bytea,
    signed_timestamp text,
    signature        text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX withdrawal_log_withdrawal ON withdrawal_log (withdrawal_id);

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('payment', 'top_up', 'charge_held', 'charge_owed_back', 'refund', 'reversal', 'correction',
                    'withdrawal', 'withdrawal_returned'));

-- One wallet statement line per withdrawal and movement (freeze, debit,
-- unfreeze, credit). Its own index: a withdrawal's lines carry no payment,
-- and account_statements_once, with its nullable payment_id, would let
-- them repeat.
ALTER TABLE account_statements ADD COLUMN withdrawal_id uuid;
CREATE UNIQUE INDEX account_statements_withdrawal_once ON account_statements
    (account_id, withdrawal_id, kind) WHERE withdrawal_id IS NOT NULL;

-- Events and webhooks of a withdrawal: no payment.
ALTER TABLE payment_events ALTER COLUMN payment_id DROP NOT NULL;
ALTER TABLE payment_events ADD COLUMN withdrawal_id uuid;
ALTER TABLE payment_events DROP CONSTRAINT payment_events_once;
ALTER TABLE payment_events ADD CONSTRAINT payment_events_once
    UNIQUE NULLS NOT DISTINCT (payment_id, event_type, refund_id, withdrawal_id);
ALTER TABLE payment_events ADD CONSTRAINT payment_events_about_one
    CHECK ((payment_id IS NULL) <> (withdrawal_id IS NULL));

ALTER TABLE webhook_deliveries ALTER COLUMN payment_id DROP NOT NULL;
ALTER TABLE webhook_deliveries ADD COLUMN withdrawal_id uuid REFERENCES withdrawals(id);
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_once;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_once
    UNIQUE NULLS NOT DISTINCT (payment_id, event_type, refund_id, withdrawal_id);
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_about_one
    CHECK ((payment_id IS NULL) <> (withdrawal_id IS NULL));

-- Reconciliation matches the payouts on a channel's statement with our
-- withdrawals, by withdrawal id (the payout_no).
ALTER TABLE reconciliation_items DROP CONSTRAINT reconciliation_items_kind_check;
ALTER TABLE reconciliation_items ADD CONSTRAINT reconciliation_items_kind_check
    CHECK (kind IN ('matched', 'missing_ours', 'missing_theirs', 'amount_mismatch', 'currency_mismatch',
                    'status_mismatch', 'fee_mismatch',
                    'refund_matched', 'refund_missing_ours', 'refund_missing_theirs', 'refund_amount_mismatch',
                    'reversal_matched', 'reversal_missing_ours', 'reversal_missing_theirs', 'reversal_amount_mismatch',
                    'payout_matched', 'payout_missing_ours', 'payout_missing_theirs', 'payout_amount_mismatch',
                    'payout_status_mismatch'));

-- A withdrawal request refused before it could be kept (forged, an unknown
-- or suspended requester, unreadable, stale, an idempotency conflict).
ALTER TABLE request_rejections ADD COLUMN withdrawal_request_id text;
