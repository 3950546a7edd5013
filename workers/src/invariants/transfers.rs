//! The invariants of transfers between wallets, from what a transfer
//! means: a succeeded one took exactly its amount from the payer's wallet
//! and gave exactly that to the payee's, each on its own statement; a
//! refused or released one moved nothing; every one ended and was told.

pub(super) const WHEN_QUIET: &[(&str, &str)] = &[
    ("every transfer is finished: refused, succeeded or released",
     "SELECT count(*) FROM transfers WHERE status NOT IN ('refused', 'succeeded', 'failed')"),
    ("a succeeded transfer took exactly its amount from the payer's wallet and gave it to the payee's, and nothing else moved money",
     "SELECT count(*) FROM transfers t
        WHERE COALESCE((SELECT sum(p.amount) FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                         WHERE j.reference = t.id::text AND p.account_id = t.payer_account_id), 0)
              <> CASE WHEN t.status = 'succeeded' THEN -t.amount ELSE 0 END
           OR COALESCE((SELECT sum(p.amount) FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                         WHERE j.reference = t.id::text AND p.account_id = t.payee_account_id), 0)
              <> CASE WHEN t.status = 'succeeded' THEN t.amount ELSE 0 END
           OR EXISTS (SELECT 1 FROM postings p JOIN journal_entries j ON j.id = p.entry_id
                       WHERE j.reference = t.id::text
                         AND p.account_id IS DISTINCT FROM t.payer_account_id
                         AND p.account_id IS DISTINCT FROM t.payee_account_id)
           OR (t.status = 'succeeded') <> EXISTS (SELECT 1 FROM journal_entries j
                                                 WHERE j.reference = t.id::text AND j.kind = 'transfer')"),
    ("a transfer's payer and payee are two wallets of two users in its currency",
     "SELECT count(*) FROM transfers t
        WHERE t.status IN ('frozen', 'succeeded', 'failed')
          AND NOT EXISTS (SELECT 1 FROM accounts a JOIN accounts b ON b.id = t.payee_account_id
                           WHERE a.id = t.payer_account_id AND a.owner_kind = 'user' AND b.owner_kind = 'user'
                             AND a.owner_id = t.payer_user_id AND b.owner_id = t.payee_user_id
                             AND a.owner_id <> b.owner_id AND a.currency = t.currency AND b.currency = t.currency)"),
    ("a succeeded transfer is on the payer's statement (freeze, debit) and the payee's (credit); a released one is unfrozen; a refused one on none",
     "SELECT count(*) FROM transfers t
        WHERE (SELECT string_agg(s.kind, ',' ORDER BY s.kind) FROM account_statements s
                WHERE s.transfer_id = t.id AND s.account_id = t.payer_account_id AND s.amount = t.amount)
              IS DISTINCT FROM CASE t.status WHEN 'succeeded' THEN 'debit,freeze'
                                             WHEN 'failed' THEN 'freeze,unfreeze' END
           OR (SELECT string_agg(s.kind, ',') FROM account_statements s
                WHERE s.transfer_id = t.id AND s.account_id = t.payee_account_id AND s.amount = t.amount)
              IS DISTINCT FROM CASE WHEN t.status = 'succeeded' THEN 'credit' END
           OR EXISTS (SELECT 1 FROM account_statements s WHERE s.transfer_id = t.id
                       AND s.account_id IS DISTINCT FROM t.payer_account_id
                       AND s.account_id IS DISTINCT FROM t.payee_account_id)"),
    ("the latest statement line of a wallet a transfer moved shows its balance: every movement is on its statement, in order",
     "SELECT count(*) FROM accounts a
        JOIN LATERAL (SELECT s.available_after, s.frozen_after FROM account_statements s
                       WHERE s.account_id = a.id ORDER BY s.id DESC LIMIT 1) last ON true
        WHERE a.owner_kind = 'user'
          AND EXISTS (SELECT 1 FROM account_statements s WHERE s.account_id = a.id AND s.transfer_id IS NOT NULL)
          AND (last.available_after <> a.available OR last.frozen_after <> a.frozen)"),
    ("every finished transfer has its one outcome event",
     "SELECT count(*) FROM transfers t
        WHERE t.status IN ('refused', 'succeeded', 'failed')
          AND (SELECT count(*) FILTER (WHERE e.event_type = CASE WHEN t.status = 'succeeded'
                                            THEN 'transfer.succeeded' ELSE 'transfer.failed' END)
                      || '/' || count(*)
                 FROM payment_events e WHERE e.transfer_id = t.id) <> '1/1'"),
];
