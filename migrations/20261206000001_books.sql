-- The books say who gains and who loses (docs/ARCHITECTURE.md, "The books").
--
-- * A channel's fee is the platform's cost: it is posted to a platform cost
--   account (`platform_cost`, one per channel), which may go below zero. The
--   non-negative rule is lifted for that kind only, so one cost account
--   never stops the roll-up of every other account.
-- * Money a channel took that is not (yet) the merchants' goes to payable
--   accounts: `suspense:<channel>` while a mismatched payment waits for
--   review, `payer-refunds:<channel>` while a refund is owed to the payer.
-- * Each attempt records what the channel actually charged and the fee we
--   booked for it, so reconciliation and the books compare like with like.
-- * Postings are never updated (but for their roll-up flag) nor deleted: a
--   correction is a new entry.

ALTER TABLE accounts DROP CONSTRAINT accounts_owner_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_owner_kind_check
    CHECK (owner_kind IN ('user', 'merchant', 'platform', 'platform_cost', 'payable', 'external'));
ALTER TABLE accounts DROP CONSTRAINT accounts_total_check;
ALTER TABLE accounts DROP CONSTRAINT accounts_available_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_non_negative_but_costs
    CHECK (owner_kind = 'platform_cost' OR (total >= 0 AND available >= 0));

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('payment', 'top_up', 'charge_held', 'charge_owed_back', 'refund', 'correction'));
-- the channel attempt whose money the entry moves (channel entries only)
ALTER TABLE journal_entries ADD COLUMN attempt_id uuid;

ALTER TABLE payment_attempts ADD COLUMN charged_amount numeric(20, 2);
ALTER TABLE payment_attempts ADD COLUMN charged_currency char(3);
-- the channel's fee booked for this attempt (set when its money is posted)
ALTER TABLE payment_attempts ADD COLUMN fee numeric(20, 2);

CREATE FUNCTION postings_are_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.entry_id <> OLD.entry_id OR NEW.account_id <> OLD.account_id
       OR NEW.amount <> OLD.amount OR NEW.currency <> OLD.currency THEN
        RAISE EXCEPTION 'posting % is append-only: correct it with a new journal entry', OLD.id;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER postings_append_only
    BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION postings_are_append_only();

-- Earlier books posted channel fees to an external `channel-fees:<channel>`
-- account, as if the channel had paid them in. One correction entry per
-- such account and currency moves them to the platform's cost account.
DO $$
DECLARE
    old record;
    cost_account bigint;
    entry bigint;
BEGIN
    FOR old IN
        SELECT a.id, a.owner_id, a.currency, sum(p.amount) AS booked
        FROM accounts a JOIN postings p ON p.account_id = a.id
        WHERE a.owner_kind = 'external' AND a.owner_id LIKE 'channel-fees:%'
        GROUP BY a.id, a.owner_id, a.currency HAVING sum(p.amount) <> 0
    LOOP
        INSERT INTO accounts (owner_kind, owner_id, currency)
        VALUES ('platform_cost', 'channel-costs:' || substr(old.owner_id, 14), old.currency)
        ON CONFLICT (owner_kind, owner_id, currency) DO UPDATE SET owner_id = EXCLUDED.owner_id
        RETURNING id INTO cost_account;
        INSERT INTO journal_entries (reference, kind)
        VALUES ('correction:' || old.owner_id || ':' || old.currency, 'correction')
        RETURNING id INTO entry;
        INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up)
        VALUES (entry, old.id, -old.booked, old.currency, true),
               (entry, cost_account, old.booked, old.currency, false);
    END LOOP;
END;
$$;

-- Reconciliation compares currency and fee as well as amount and status.
ALTER TABLE reconciliation_items DROP CONSTRAINT reconciliation_items_kind_check;
ALTER TABLE reconciliation_items ADD CONSTRAINT reconciliation_items_kind_check
    CHECK (kind IN ('matched', 'missing_ours', 'missing_theirs', 'amount_mismatch', 'currency_mismatch',
                    'status_mismatch', 'fee_mismatch'));

-- Settled channel payments booked before this migration: their attempts
-- record what was charged and the fee that was booked.
UPDATE payment_attempts t
   SET charged_amount = t.amount, charged_currency = t.currency, fee = p.channel_fee
  FROM payments p
 WHERE p.id = t.payment_id AND p.status = 'settled' AND t.status = 'succeeded'
   AND t.channel <> 'balance' AND t.fee IS NULL;
