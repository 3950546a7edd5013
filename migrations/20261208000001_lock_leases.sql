-- The stand-in for the Redis lock while Redis is unreachable: one lease per
-- stage and business key, taken by INSERT … ON CONFLICT when free or
-- expired, renewed and released by compare-and-set on the token. Only a
-- guard, like the Redis lock: PostgreSQL's compare-and-set and the inbox
-- decide what is applied, so a lease lost in a crash doubles nothing
-- (hence UNLOGGED).
CREATE UNLOGGED TABLE lock_leases (
    stage        text        NOT NULL,
    business_key text        NOT NULL,
    token        uuid        NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (stage, business_key)
);
