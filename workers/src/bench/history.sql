-- History for `payfleet bench --history N` and tests/growth.rs:
-- `growth.payments` payments by the merchant
-- `shop` over the last 25 days, with every row the fleet writes for them,
-- shaped as the stages write it (see order_validation, fund_freeze,
-- channel_call, callback, settlement, ledger, notification), so that the
-- planner sees real table sizes and value distributions.
--
-- Mix (by a hash of the payment number): 60 % wallet balance, 25 % the
-- async wallet channel, 15 % the card channel; 3 % rejected and 1 %
-- challenged at validation; balance payments fail 4 % for an insufficient
-- balance at Try; channel payments are declined 3 % and expire 1 % (a
-- quarter of those charged late and refunded); the rest settle.
--
-- Run as one session with `session_replication_role = replica` (triggers
-- off for the bulk load, the balance check would run once per posting):
-- every foreign key holds by construction (children are selected from their
-- parents), and so does each entry's balance, which the invariants check.
-- Everything ends quiet: terminal payments, rolled-up postings, balances
-- equal to their postings, no open reservations, a sent outbox.

CREATE TEMP TABLE g_param AS
SELECT current_setting('growth.payments')::int AS payments, 20000 AS users;

-- Sellers, users, catalogue, coupon.
INSERT INTO merchants (id, name, signing_key, notify_url, fee_rate)
SELECT 's' || lpad(i::text, 3, '0'), 'Seller ' || i, 'seller-key-' || i, NULL, (5 + i % 16) / 1000.0
FROM generate_series(1, 40) i;

INSERT INTO users (id, name, blocked)
SELECT 'u' || lpad(i::text, 5, '0'), 'User ' || i, i % 997 = 0
FROM generate_series(1, (SELECT users FROM g_param)) i;

INSERT INTO products (sku, merchant_id, name, spec, category, warehouse, unit_price, currency)
SELECT 'p' || lpad(i::text, 3, '0'), 's' || lpad((1 + i % 40)::text, 3, '0'), 'Product ' || i,
       jsonb_build_object('size', i % 5, 'colour', i % 7), 'general', 'wh-' || (i % 3),
       9.90 + (i * 37 % 1900) / 10.0, 'CNY'
FROM generate_series(0, 199) i;
-- (into the buckets directly: the view's insert trigger is off in replica mode)
INSERT INTO stock_buckets (sku, bucket, available)
SELECT sku, b, 125000 FROM products, generate_series(0, 7) b WHERE sku ~ '^p[0-9]{3}$';

INSERT INTO coupons (code, kind, currency, threshold, amount_off, valid_from, valid_until, total_limit, per_user_limit)
VALUES ('HIST-5', 'full_reduction', 'CNY', 50, 5, now() - interval '60 days', now() + interval '365 days', 10000000, 100000);

INSERT INTO accounts (owner_kind, owner_id, currency) SELECT 'user', id, 'CNY' FROM users WHERE id LIKE 'u%';
INSERT INTO accounts (owner_kind, owner_id, currency) SELECT 'merchant', id, 'CNY' FROM merchants WHERE id LIKE 's%';
INSERT INTO accounts (owner_kind, owner_id, currency) VALUES
    ('platform', 'fees', 'CNY'), ('external', 'world', 'CNY'),
    ('external', 'clearing:sandbox-wallet', 'CNY'), ('platform_cost', 'channel-costs:sandbox-wallet', 'CNY'),
    ('payable', 'payer-refunds:sandbox-wallet', 'CNY'),
    ('external', 'clearing:sandbox-card', 'CNY'), ('platform_cost', 'channel-costs:sandbox-card', 'CNY'),
    ('payable', 'payer-refunds:sandbox-card', 'CNY')
ON CONFLICT DO NOTHING;

-- The payments: who, when, how, and how each one ended.
CREATE TEMP TABLE g AS
SELECT n,
       md5('growth-payment-' || n)::uuid AS id,
       'u' || lpad((1 + abs(hashint4(n * 5)::bigint) % p.users)::text, 5, '0') AS user_id,
       now() - interval '25 days' + (n::float8 / p.payments) * interval '24 days 20 hours' AS at,
       CASE WHEN abs(hashint4(n)::bigint) % 20 < 12 THEN 'balance'
            WHEN abs(hashint4(n)::bigint) % 20 < 17 THEN 'wallet' ELSE 'card' END AS method,
       abs(hashint4(n * 3 + 1)::bigint) % 100 AS fate,
       abs(hashint4(n * 11)::bigint) % 10 = 0 AS wants_coupon
FROM generate_series(1, (SELECT payments FROM g_param)) n, g_param p;
ALTER TABLE g ADD COLUMN channel text, ADD COLUMN status text, ADD COLUMN reason text,
    ADD COLUMN tried boolean, ADD COLUMN attempt_status text, ADD COLUMN late_refund boolean;
UPDATE g SET
    channel = CASE method WHEN 'balance' THEN 'balance' WHEN 'wallet' THEN 'sandbox-wallet' ELSE 'sandbox-card' END,
    status = CASE
        WHEN fate < 3 THEN 'rejected'
        WHEN fate = 3 THEN 'challenged'
        WHEN method = 'balance' AND fate < 8 THEN 'failed'
        WHEN method <> 'balance' AND fate < 7 THEN 'failed'
        WHEN method <> 'balance' AND fate = 7 THEN 'cancelled'
        ELSE 'settled' END;
UPDATE g SET
    reason = CASE
        WHEN status = 'rejected' THEN 'price_mismatch: expected 0.01 less'
        WHEN status = 'challenged' THEN 'risk_challenge: amount'
        WHEN status = 'failed' AND method = 'balance' THEN 'insufficient_balance: short'
        WHEN status = 'failed' THEN 'card_declined'
        WHEN status = 'cancelled' THEN 'expired' END,
    -- Try ran (reservations, details, an attempt) unless refused before it
    tried = status IN ('settled', 'cancelled') OR (status = 'failed' AND method <> 'balance'),
    late_refund = status = 'cancelled' AND n % 4 = 0;
UPDATE g SET attempt_status = CASE
    WHEN NOT tried THEN NULL
    WHEN status = 'settled' OR late_refund THEN 'succeeded'
    WHEN status = 'failed' THEN 'failed'
    ELSE 'closed' END;
CREATE INDEX ON g (id);
ANALYZE g;

-- Lines: one to three distinct products, each sold by its product's seller.
CREATE TEMP TABLE g_line AS
SELECT g.n, g.id AS payment_id, k, pr.sku, pr.merchant_id AS seller_id, pr.warehouse, pr.spec, pr.unit_price,
       1 + (g.n + k) % 3 AS quantity, (pr.unit_price * (1 + (g.n + k) % 3))::numeric(20, 2) AS line_amount,
       0::numeric(20, 2) AS discount_amount
FROM g
CROSS JOIN LATERAL generate_series(0, abs(hashint4(g.n * 7 + 2)::bigint) % 3) k
-- half the carts buy from one seller's warehouse (one sub-order), half across several
JOIN products pr ON pr.sku = 'p' || lpad(((abs(hashint4(g.n * 13)::bigint) % 200 + k * CASE WHEN g.n % 2 = 0 THEN 120 ELSE 67 END) % 200)::text, 3, '0')
WHERE g.status NOT IN ('rejected', 'challenged');
ANALYZE g_line;

CREATE TEMP TABLE g_amount AS
SELECT payment_id AS id, sum(line_amount) AS gross FROM g_line GROUP BY payment_id;
ALTER TABLE g_amount ADD COLUMN discount numeric(20, 2) NOT NULL DEFAULT 0;
UPDATE g_amount a SET discount = 5 FROM g WHERE g.id = a.id AND g.wants_coupon AND a.gross >= 50;
-- the coupon's discount sits on the first line (every price is above it)
UPDATE g_line l SET discount_amount = a.discount FROM g_amount a WHERE a.id = l.payment_id AND l.k = 0 AND a.discount > 0;
ANALYZE g_amount;

ALTER TABLE g ADD COLUMN amount numeric(20, 2), ADD COLUMN discount numeric(20, 2), ADD COLUMN channel_fee numeric(20, 2);
UPDATE g SET amount = a.gross - a.discount, discount = a.discount FROM g_amount a WHERE a.id = g.id;
UPDATE g SET amount = 10 + n % 490, discount = 0 WHERE amount IS NULL;
UPDATE g SET channel_fee = CASE
    WHEN status IN ('rejected', 'challenged') OR method = 'balance' THEN 0
    WHEN method = 'wallet' THEN round(amount * 0.0040, 2)
    ELSE round(amount * 0.0120, 2) END;
-- the channel's fee booked on the attempt whose money came in
ALTER TABLE g ADD COLUMN attempt_fee numeric(20, 2);
UPDATE g SET attempt_fee = channel_fee WHERE method <> 'balance' AND (status = 'settled' OR late_refund);
ANALYZE g;

INSERT INTO payments (id, merchant_id, merchant_order_id, request_hash, user_id, method, channel, currency, amount,
                      status, reason, risk_decision, risk_reasons, notify_url, expires_at, requested_at,
                      created_at, updated_at, finished_at, payer_token, channel_fee, close_requested_at)
SELECT id, 'shop', 'h-' || n, md5('growth-request-' || n), user_id, method,
       CASE WHEN status IN ('rejected', 'challenged') THEN NULL ELSE channel END, 'CNY', amount,
       status, reason,
       CASE status WHEN 'rejected' THEN NULL WHEN 'challenged' THEN 'challenge' ELSE 'allow' END,
       CASE status WHEN 'challenged' THEN '["amount"]'::jsonb ELSE '[]'::jsonb END,
       'https://shop.example/payfleet/notify', at + interval '15 minutes', at - interval '80 milliseconds',
       at, at + interval '2 seconds', at + interval '2 seconds',
       CASE WHEN method = 'balance' THEN NULL ELSE 'tok_success' END, channel_fee,
       CASE WHEN status = 'cancelled' THEN at + interval '15 minutes' END
FROM g;

INSERT INTO orders (payment_id, merchant_id, merchant_order_id, user_id, currency, gross_amount, discount_amount,
                    payable_amount, coupon_code, status, created_at)
SELECT g.id, 'shop', 'h-' || g.n, g.user_id, 'CNY', a.gross, a.discount, a.gross - a.discount,
       CASE WHEN a.discount > 0 THEN 'HIST-5' END, CASE g.status WHEN 'settled' THEN 'paid' ELSE 'closed' END, g.at
FROM g JOIN g_amount a ON a.id = g.id;

INSERT INTO sub_orders (id, payment_id, seller_id, warehouse, currency, gross_amount, discount_amount, payable_amount, fee_amount)
SELECT md5(l.payment_id::text || l.seller_id || l.warehouse)::uuid, l.payment_id, l.seller_id, l.warehouse, 'CNY',
       sum(l.line_amount), sum(l.discount_amount), sum(l.line_amount - l.discount_amount),
       round(sum(l.line_amount - l.discount_amount) * m.fee_rate, 2)
FROM g_line l JOIN merchants m ON m.id = l.seller_id
GROUP BY l.payment_id, l.seller_id, l.warehouse, m.fee_rate;

INSERT INTO order_details (payment_id, sub_order_id, sku, spec, buyer_id, seller_id, unit_price, quantity,
                           line_amount, discount_amount, currency)
SELECT l.payment_id, md5(l.payment_id::text || l.seller_id || l.warehouse)::uuid, l.sku, l.spec, g.user_id, l.seller_id,
       l.unit_price, l.quantity, l.line_amount, l.discount_amount, 'CNY'
FROM g_line l JOIN g ON g.id = l.payment_id
ORDER BY g.n, l.k;

-- What Try took, and how Confirm or Cancel ended it.
INSERT INTO transaction_details (payment_id, sub_order_id, seller_id, amount, fee_amount, currency, status)
SELECT s.payment_id, s.id, s.seller_id, s.payable_amount, s.fee_amount, 'CNY',
       CASE g.status WHEN 'settled' THEN 'paid' ELSE 'cancelled' END
FROM g JOIN sub_orders s ON s.payment_id = g.id
WHERE g.tried
ORDER BY g.n, s.seller_id;

INSERT INTO reservations (payment_id, account_id, amount, currency, status, created_at, finished_at)
SELECT g.id, a.id, g.amount, 'CNY', CASE g.status WHEN 'settled' THEN 'confirmed' ELSE 'cancelled' END,
       g.at + interval '300 milliseconds', g.at + interval '1500 milliseconds'
FROM g LEFT JOIN accounts a ON g.method = 'balance' AND a.owner_kind = 'user' AND a.owner_id = g.user_id AND a.currency = 'CNY'
WHERE g.tried;

INSERT INTO stock_reservations (payment_id, sku, quantity, status)
SELECT l.payment_id, l.sku, l.quantity, CASE g.status WHEN 'settled' THEN 'deducted' ELSE 'released' END
FROM g_line l JOIN g ON g.id = l.payment_id
WHERE g.tried;
INSERT INTO stock_reservation_buckets (payment_id, sku, bucket, quantity)
SELECT payment_id, sku, (hashtext(payment_id::text) & 7)::smallint, quantity FROM stock_reservations;

INSERT INTO coupon_redemptions (payment_id, coupon_code, user_id, amount, status, created_at)
SELECT g.id, 'HIST-5', g.user_id, g.discount, CASE g.status WHEN 'settled' THEN 'consumed' ELSE 'released' END,
       g.at + interval '300 milliseconds'
FROM g WHERE g.tried AND g.discount > 0;
UPDATE coupons c SET used = (SELECT count(*) FROM coupon_redemptions r WHERE r.coupon_code = c.code AND r.status <> 'released')
WHERE c.code = 'HIST-5';

INSERT INTO account_statements (account_id, payment_id, kind, amount, currency, available_after, frozen_after, created_at)
SELECT r.account_id, r.payment_id, k.kind, r.amount, 'CNY', 5000, CASE k.kind WHEN 'freeze' THEN r.amount ELSE 0 END,
       g.at + k.after
FROM reservations r JOIN g ON g.id = r.payment_id
CROSS JOIN (VALUES ('freeze', interval '300 milliseconds'), ('debit', interval '1500 milliseconds')) k (kind, after)
WHERE r.account_id IS NOT NULL;

-- The channel side: one attempt per payment that got past Try, logged.
INSERT INTO payment_attempts (id, payment_id, channel, amount, currency, status, channel_reference, created_at,
                              resolved_at, charged_amount, charged_currency, fee)
SELECT md5('growth-attempt-' || n)::uuid, id, channel, amount, 'CNY', attempt_status,
       CASE WHEN method <> 'balance' THEN channel || '-' || n END,
       at + interval '500 milliseconds', at + interval '1200 milliseconds',
       CASE WHEN attempt_fee IS NOT NULL THEN amount END, CASE WHEN attempt_fee IS NOT NULL THEN 'CNY' END, attempt_fee
FROM g WHERE tried
ORDER BY n;

INSERT INTO integration_log (payment_id, attempt_id, channel, direction, payload, created_at)
SELECT g.id, md5('growth-attempt-' || g.n)::uuid, g.channel, d.direction,
       jsonb_build_object('call', d.call, 'out_trade_no', md5('growth-attempt-' || g.n)::uuid, 'amount', g.amount::text,
                          'currency', 'CNY', 'status', g.attempt_status),
       g.at + d.after
FROM g
CROSS JOIN (VALUES ('request', 'charge', interval '500 milliseconds', 0),
                   ('response', 'charge', interval '900 milliseconds', 1),
                   ('callback', 'notice', interval '1100 milliseconds', 2),
                   ('query', 'query', interval '6 seconds', 3),
                   ('request', 'close', interval '15 minutes', 4),
                   ('request', 'refund', interval '16 minutes', 5)) d (direction, call, after, step)
WHERE g.tried AND CASE d.step
    WHEN 0 THEN true
    WHEN 1 THEN true
    WHEN 2 THEN g.method = 'wallet'
    WHEN 3 THEN g.n % 20 = 0 AND g.method <> 'balance'
    WHEN 4 THEN g.status = 'cancelled'
    ELSE g.late_refund END
ORDER BY g.n, d.step;

INSERT INTO refunds (id, payment_id, attempt_id, channel, amount, currency, reason, status, created_at, sends, refunded_at)
SELECT md5('growth-refund-' || n)::uuid, id, md5('growth-attempt-' || n)::uuid, channel, amount, 'CNY', 'late_success',
       'succeeded', at + interval '16 minutes', 1, at + interval '16 minutes'
FROM g WHERE late_refund;

-- The journal (workers/src/ledger.rs): a top-up per user; one entry per
-- settled payment; a late success's charge owed back and its refund.
INSERT INTO journal_entries (reference, kind, created_at)
SELECT 'growth-top-up:' || id, 'top_up', now() - interval '26 days' FROM users WHERE id LIKE 'u%' ORDER BY id;
INSERT INTO journal_entries (reference, kind, attempt_id, created_at)
SELECT id::text, 'payment', CASE WHEN method <> 'balance' THEN md5('growth-attempt-' || n)::uuid END,
       at + interval '1500 milliseconds'
FROM g WHERE status = 'settled' ORDER BY n;
INSERT INTO journal_entries (reference, kind, attempt_id, created_at)
SELECT r.reference, r.kind, md5('growth-attempt-' || g.n)::uuid, g.at + r.after
FROM g CROSS JOIN LATERAL (VALUES (md5('growth-attempt-' || g.n)::uuid::text, 'charge_owed_back', interval '15 minutes'),
                                  (md5('growth-refund-' || g.n)::uuid::text, 'refund', interval '16 minutes')) r (reference, kind, after)
WHERE g.late_refund ORDER BY g.n, r.after;
-- the joins below need the planner to know the sizes just loaded
ANALYZE accounts, journal_entries, sub_orders, transaction_details;

CREATE TEMP TABLE g_post (entry_id bigint, account_id bigint, amount numeric(20, 2), created_at timestamptz, seq int);
CREATE TEMP TABLE g_account AS SELECT id, owner_kind, owner_id FROM accounts WHERE owner_kind NOT IN ('user', 'merchant');
-- top-ups: 5000.00 left in every wallet after its settled balance payments
INSERT INTO g_post
SELECT j.id, w.id, 5000 + COALESCE(spent.amount, 0), j.created_at, 0
FROM journal_entries j
JOIN accounts w ON w.owner_kind = 'user' AND w.owner_id = substr(j.reference, 15) AND w.currency = 'CNY'
LEFT JOIN (SELECT user_id, sum(amount) AS amount FROM g WHERE status = 'settled' AND method = 'balance' GROUP BY user_id) spent
    ON spent.user_id = w.owner_id
WHERE j.kind = 'top_up' AND j.reference LIKE 'growth-top-up:%';
INSERT INTO g_post
SELECT p.entry_id, (SELECT id FROM g_account WHERE owner_id = 'world'), -p.amount, p.created_at, 1
FROM g_post p;
-- settled payments: the payer's side, from the wallet or the channel (its
-- clearing account hands over the charge less its fee, the platform's cost)
INSERT INTO g_post
SELECT j.id, w.id, -g.amount, j.created_at, 0
FROM g JOIN journal_entries j ON j.reference = g.id::text AND j.kind = 'payment'
JOIN accounts w ON w.owner_kind = 'user' AND w.owner_id = g.user_id AND w.currency = 'CNY'
WHERE g.method = 'balance';
INSERT INTO g_post
SELECT j.id, a.id, CASE a.owner_kind WHEN 'external' THEN -(g.amount - g.attempt_fee) ELSE -g.attempt_fee END,
       j.created_at, CASE a.owner_kind WHEN 'external' THEN 0 ELSE 1 END
FROM g JOIN journal_entries j ON j.attempt_id = md5('growth-attempt-' || g.n)::uuid AND j.kind IN ('payment', 'charge_owed_back')
JOIN g_account a ON a.owner_id IN ('clearing:' || g.channel, 'channel-costs:' || g.channel)
WHERE g.attempt_fee IS NOT NULL AND (a.owner_kind = 'external' OR g.attempt_fee <> 0);
-- the sellers, each transaction detail less its fee, and the platform's fees
INSERT INTO g_post
SELECT j.id, m.id, d.amount - d.fee_amount, j.created_at, 2
FROM g JOIN journal_entries j ON j.reference = g.id::text AND j.kind = 'payment'
JOIN transaction_details d ON d.payment_id = g.id
JOIN accounts m ON m.owner_kind = 'merchant' AND m.owner_id = d.seller_id AND m.currency = 'CNY'
WHERE d.amount - d.fee_amount <> 0;
INSERT INTO g_post
SELECT j.id, (SELECT id FROM g_account WHERE owner_kind = 'platform' AND owner_id = 'fees'), sum(d.fee_amount), j.created_at, 3
FROM g JOIN journal_entries j ON j.reference = g.id::text AND j.kind = 'payment'
JOIN transaction_details d ON d.payment_id = g.id
GROUP BY j.id, j.created_at HAVING sum(d.fee_amount) <> 0;
-- a late success: owed back to the payer in full, then paid back through the channel
INSERT INTO g_post
SELECT j.id, a.id, CASE j.kind WHEN 'charge_owed_back' THEN g.amount ELSE -g.amount END, j.created_at, 2
FROM g JOIN journal_entries j ON j.attempt_id = md5('growth-attempt-' || g.n)::uuid AND j.kind IN ('charge_owed_back', 'refund')
JOIN g_account a ON a.owner_id = 'payer-refunds:' || g.channel
WHERE g.late_refund;
INSERT INTO g_post
SELECT j.id, a.id, g.amount, j.created_at, 3
FROM g JOIN journal_entries j ON j.attempt_id = md5('growth-attempt-' || g.n)::uuid AND j.kind = 'refund'
JOIN g_account a ON a.owner_id = 'clearing:' || g.channel
WHERE g.late_refund;
ANALYZE g_post;
INSERT INTO postings (entry_id, account_id, amount, currency, rolled_up, created_at)
SELECT entry_id, account_id, amount, 'CNY', true, created_at FROM g_post ORDER BY entry_id, seq;

INSERT INTO account_statements (account_id, kind, amount, currency, available_after, frozen_after, created_at)
SELECT account_id, 'top_up', amount, 'CNY', amount, 0, created_at FROM g_post WHERE seq = 0 AND amount > 0
  AND entry_id IN (SELECT id FROM journal_entries WHERE kind = 'top_up');

-- Every balance is the sum of its postings (all rolled up).
UPDATE accounts a SET total = s.total, available = s.total, updated_at = now()
FROM (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) s
WHERE a.id = s.account_id AND a.owner_kind <> 'external';

-- Notification: the outcome event and the merchant's webhook, delivered.
INSERT INTO payment_events (event_id, payment_id, event_type, created_at)
SELECT md5('growth-event-' || g.id || e.event_type)::uuid, g.id, e.event_type, g.at + interval '2 seconds'
FROM g CROSS JOIN LATERAL (
    SELECT CASE WHEN g.status = 'settled' THEN 'payment.succeeded'
                WHEN g.status IN ('failed', 'cancelled') THEN 'payment.failed'
                ELSE 'payment.rejected' END
    UNION ALL SELECT 'payment.exception' WHERE g.late_refund) e (event_type)
ORDER BY g.n;

INSERT INTO webhook_deliveries (id, payment_id, merchant_id, event_type, url, payload, status, attempts,
                                next_attempt_at, created_at, delivered_at)
SELECT md5('growth-webhook-' || e.event_id)::uuid, e.payment_id, 'shop', e.event_type, 'https://shop.example/payfleet/notify',
       jsonb_build_object('event_id', e.event_id, 'event_type', e.event_type, 'payment_id', e.payment_id),
       CASE WHEN g.n % 200 = 0 THEN 'exhausted' ELSE 'delivered' END,
       CASE WHEN g.n % 200 = 0 THEN 10 ELSE 1 END,
       e.created_at, e.created_at, CASE WHEN g.n % 200 <> 0 THEN e.created_at + interval '40 milliseconds' END
FROM payment_events e JOIN g ON g.id = e.payment_id
ORDER BY g.n;
INSERT INTO webhook_attempts (delivery_id, attempt, http_status, error, duration_ms, at)
SELECT d.id, a, CASE WHEN d.status = 'delivered' THEN 200 ELSE 503 END, NULL, 40, d.created_at + (a - 1) * interval '10 minutes'
FROM webhook_deliveries d CROSS JOIN LATERAL generate_series(1, d.attempts) a
ORDER BY d.created_at, a;

-- The runtime: every message each stage processed (kept for the inbox
-- retention), and the last day's messages, sent, in the outbox.
CREATE TEMP TABLE g_msg AS
SELECT g.n, g.id, g.at, s.stage, s.step, md5('growth-message-' || s.stage || g.n)::uuid::text AS message_id
FROM g CROSS JOIN (VALUES ('order-validation', 0), ('fund-freeze', 1), ('channel-call', 2), ('callback', 3),
                          ('settlement', 4), ('notification', 5)) s (stage, step)
WHERE s.step = 0 OR s.step = 5
   OR (s.step = 1 AND g.status NOT IN ('rejected', 'challenged'))
   OR (s.step IN (2, 3) AND g.tried)
   OR (s.step = 4 AND g.tried);
ANALYZE g_msg;
INSERT INTO inbox (stage, message_id, outcome, processed_at)
SELECT stage, message_id, 'applied', at + step * interval '200 milliseconds' FROM g_msg ORDER BY n, step;
INSERT INTO outbox (message_id, exchange, routing_key, correlation_id, message_type, headers, body, created_at,
                    publish_attempts, sent_at)
SELECT message_id, CASE WHEN step = 5 THEN 'payfleet.events' ELSE 'payfleet.stages' END,
       CASE WHEN step = 5 THEN 'payment.outcome' ELSE stage END, id::text, 'growth.history', '{}',
       convert_to(jsonb_build_object('payment_id', id, 'step', step)::text, 'UTF8'),
       at + step * interval '200 milliseconds', 1, at + step * interval '200 milliseconds' + interval '5 milliseconds'
FROM g_msg WHERE at > now() - interval '23 hours'
ORDER BY n, step;

-- Requests refused before a payment existed, and a few parked dead letters.
INSERT INTO request_rejections (message_id, merchant_id, merchant_order_id, reason, detail, created_at)
SELECT md5('growth-refused-' || i)::uuid::text, 'shop', 'h-refused-' || i, 'bad_signature',
       'signature does not match the body', now() - interval '25 days' + i * interval '20 minutes'
FROM generate_series(1, (SELECT payments FROM g_param) / 100) i;

INSERT INTO dead_letters (dead_letter_key, stage, message_id, correlation_id, error_kind, error_message, attempts,
                          first_failed_at, last_failed_at, routing_key, properties, headers, body, status, stored_at)
SELECT 'growth-dead-' || i, 'notification', md5('growth-dead-' || i)::uuid::text, NULL, 'poison', 'undecodable body', 1,
       now() - i * interval '1 hour', now() - i * interval '1 hour', 'notification', '{}', '{}', '\x00'::bytea,
       CASE WHEN i % 3 = 0 THEN 'purged' ELSE 'parked' END, now() - i * interval '1 hour'
FROM generate_series(1, 30) i;
