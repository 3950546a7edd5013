-- Top-ups: a user pays at a channel and, once paid, the money lands in
-- the user's wallet. A top-up takes the payment's path through the channel
-- (attempts, status queries, closing, webhooks all hang off a payment id),
-- so it is a payments row of its own kind, with no order behind it.
ALTER TABLE payments ADD COLUMN kind text NOT NULL DEFAULT 'purchase'
    CHECK (kind IN ('purchase', 'top_up'));

-- The requester's own top-up id is a namespace of its own: it may equal
-- one of its merchant order ids without either taking the other.
ALTER TABLE payments DROP CONSTRAINT payments_merchant_id_merchant_order_id_key;
ALTER TABLE payments ADD CONSTRAINT payments_merchant_kind_order_key
    UNIQUE (merchant_id, kind, merchant_order_id);

-- A top-up request refused before it became a top-up (forged, unreadable,
-- its id taken with other content) is kept like the other refusals.
ALTER TABLE request_rejections ADD COLUMN top_up_request_id text;
