-- `payfleet merchant balance` without b-trees on the hot path: the two
-- indexes 20261213000001 made for it (postings by account and day,
-- sub-orders awaiting by seller) slowed settlement measurably
-- (BENCHMARKS.md, "What the ops indexes cost"). What it was credited on a
-- day is found through a BRIN on postings' time instead — postings are
-- appended in time order, so a block range per few pages finds a day's
-- postings at next to no cost — and what is in flight through the open
-- payments' partial index. On a large live database create the BRIN first
-- with CREATE INDEX CONCURRENTLY under the same name: this migration then
-- skips it.
DROP INDEX IF EXISTS postings_account_day;
DROP INDEX IF EXISTS transaction_details_awaiting_by_seller;
CREATE INDEX IF NOT EXISTS postings_created_brin ON postings USING brin (created_at);
