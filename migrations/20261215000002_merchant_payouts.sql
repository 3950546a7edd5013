-- Merchant settlement payouts: a merchant's settled balance paid out to
-- its registered bank account through the withdrawal path. A payout is a
-- withdrawals row whose owner is the merchant (`owner_kind = 'merchant'`,
-- `user_id` naming the merchant, `account_id` its merchant account).
ALTER TABLE merchants ADD COLUMN payout_account text
    CHECK (payout_account IS NULL OR (length(payout_account) BETWEEN 1 AND 128));

ALTER TABLE withdrawals ADD COLUMN owner_kind text NOT NULL DEFAULT 'user'
    CHECK (owner_kind IN ('user', 'merchant'));
COMMENT ON COLUMN withdrawals.user_id IS
    'the owner whose money leaves: the user, or for a settlement payout (owner_kind merchant) the merchant';

-- `merchant balance`: a merchant's payouts, paid out and in flight.
CREATE INDEX withdrawals_merchant_payouts ON withdrawals (user_id, currency) WHERE owner_kind = 'merchant';

-- A merchant's payout request ids are a namespace of their own, apart from
-- the withdrawals it asks for users when it acts for them.
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_requester_id_request_id_key;
ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_requester_owner_request_key
    UNIQUE (requester_id, owner_kind, request_id);
