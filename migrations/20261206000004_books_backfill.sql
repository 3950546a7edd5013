-- Refunds recorded before the books (20261206000001) had no journal entry:
-- a late success was noted as owed, and a refund sent posted nothing. Each
-- gets the entries the ledger writes today (docs/ARCHITECTURE.md, "The
-- books"), so the payer-refunds payable a sent refund debits was credited
-- first, and the roll-up never meets an account below zero:
--   charge_owed_back: clearing −(R − F), channel-costs −F, payer-refunds +R
--   refund (already sent): payer-refunds −R, clearing +R
-- F is the channel's fee at its current rate.

DO $$
DECLARE
    r record;
    charge_fee numeric(20, 2);
    entry bigint;
    clearing bigint;
    costs bigint;
    payable bigint;
BEGIN
    FOR r IN
        SELECT f.id, f.attempt_id, f.channel, f.amount, f.currency, f.status, COALESCE(c.fee_rate, 0) AS fee_rate
        FROM refunds f LEFT JOIN channels c ON c.name = f.channel
        WHERE NOT EXISTS (SELECT 1 FROM journal_entries j
                          WHERE j.reference = f.attempt_id::text AND j.kind IN ('charge_owed_back', 'charge_held'))
        ORDER BY f.created_at
    LOOP
        charge_fee := round(r.amount * r.fee_rate, 2);
        INSERT INTO accounts (owner_kind, owner_id, currency) VALUES ('external', 'clearing:' || r.channel, r.currency)
        ON CONFLICT (owner_kind, owner_id, currency) DO UPDATE SET owner_id = EXCLUDED.owner_id RETURNING id INTO clearing;
        INSERT INTO accounts (owner_kind, owner_id, currency) VALUES ('platform_cost', 'channel-costs:' || r.channel, r.currency)
        ON CONFLICT (owner_kind, owner_id, currency) DO UPDATE SET owner_id = EXCLUDED.owner_id RETURNING id INTO costs;
        INSERT INTO accounts (owner_kind, owner_id, currency) VALUES ('payable', 'payer-refunds:' || r.channel, r.currency)
        ON CONFLICT (owner_kind, owner_id, currency) DO UPDATE SET owner_id = EXCLUDED.owner_id RETURNING id INTO payable;

        INSERT INTO journal_entries (reference, kind, attempt_id)
        VALUES (r.attempt_id::text, 'charge_owed_back', r.attempt_id) RETURNING id INTO entry;
        INSERT INTO postings (entry_id, account_id, amount, currency) VALUES
            (entry, clearing, -(r.amount - charge_fee), r.currency),
            (entry, payable, r.amount, r.currency);
        IF charge_fee <> 0 THEN
            INSERT INTO postings (entry_id, account_id, amount, currency) VALUES (entry, costs, -charge_fee, r.currency);
        END IF;
        UPDATE payment_attempts SET charged_amount = r.amount, charged_currency = r.currency, fee = charge_fee
         WHERE id = r.attempt_id;

        IF r.status = 'succeeded' THEN
            INSERT INTO journal_entries (reference, kind, attempt_id)
            VALUES (r.id::text, 'refund', r.attempt_id) RETURNING id INTO entry;
            INSERT INTO postings (entry_id, account_id, amount, currency) VALUES
                (entry, payable, -r.amount, r.currency),
                (entry, clearing, r.amount, r.currency);
        END IF;
    END LOOP;
END;
$$;

-- Postings are append-only: besides nothing else changing, the roll-up flag
-- only ever goes from false to true (a posting is folded in once).
CREATE OR REPLACE FUNCTION postings_are_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.entry_id <> OLD.entry_id OR NEW.account_id <> OLD.account_id
       OR NEW.amount <> OLD.amount OR NEW.currency <> OLD.currency OR NEW.created_at <> OLD.created_at
       OR (OLD.rolled_up AND NOT NEW.rolled_up) THEN
        RAISE EXCEPTION 'posting % is append-only: correct it with a new journal entry', OLD.id;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
