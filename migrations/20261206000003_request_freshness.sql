-- When order-validation first received each ingress message. A request's
-- `requested_at` is judged against this moment, not against the time of a
-- retry or an ops replay of the same message id; the same body published
-- again under a new message id gets a receipt of its own, and is judged by it.
-- Rows are written on first sight, committed before the stage's transaction
-- (a rollback keeps them), and pruned before the inbox rows of the same
-- messages (see order_validation::prune_receipts).
CREATE TABLE request_receipts (
    message_id        text PRIMARY KEY,
    first_received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX request_receipts_first_received_at ON request_receipts (first_received_at);
