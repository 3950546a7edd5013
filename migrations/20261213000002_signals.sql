-- The signals collector (workers/src/signals) counts open payments per
-- status, those open past the stuck threshold and the one open longest on
-- every reading: from this index alone, whatever the payments' history.
CREATE INDEX IF NOT EXISTS payments_open_by_age ON payments (created_at) INCLUDE (status)
    WHERE status IN ('validated', 'frozen', 'paid');
