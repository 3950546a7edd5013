-- The consumer runtime's tables: inbox, outbox, delivery counts,
-- dead-letter store and replay audit. Domain tables come with the stages.

-- Messages a stage has processed. Written in the same transaction as the
-- stage's effects, so a redelivered message is recognised and acked.
CREATE TABLE inbox (
    stage        text        NOT NULL,
    message_id   text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'stale', 'exception')),
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, message_id)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

-- Messages for the next stage and events, inserted in the same transaction as
-- the effects that caused them, relayed with publisher confirms. A row keeps
-- its message id however often it is published.
CREATE TABLE outbox (
    id               bigserial   PRIMARY KEY,
    message_id       text        NOT NULL,
    exchange         text        NOT NULL,
    routing_key      text        NOT NULL,
    correlation_id   text,
    message_type     text,
    headers          jsonb       NOT NULL DEFAULT '{}',
    body             bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- a relay owns the row until then; also the time of the next try after a failure
    claimed_until    timestamptz,
    publish_attempts integer     NOT NULL DEFAULT 0,
    last_error       text,
    sent_at          timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Redeliveries per message: a message that keeps killing the process is
-- recognised here (classic queues count nothing themselves).
CREATE TABLE delivery_counts (
    stage         text        NOT NULL,
    message_id    text        NOT NULL,
    deliveries    integer     NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, message_id)
);

-- Dead letters drained from every DLQ: bytes and headers kept as they were.
CREATE TABLE dead_letters (
    id               bigserial   PRIMARY KEY,
    -- one row per dead-lettering, however often the keeper sees it
    dead_letter_key  text        NOT NULL UNIQUE,
    stage            text        NOT NULL,
    message_id       text        NOT NULL,
    correlation_id   text,
    error_kind       text        NOT NULL
        CHECK (error_kind IN ('poison', 'permanent', 'exhausted', 'crash-loop', 'broker')),
    error_message    text        NOT NULL,
    attempts         integer     NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    routing_key      text        NOT NULL,
    properties       jsonb       NOT NULL,
    headers          jsonb       NOT NULL,
    body             bytea       NOT NULL,
    status           text        NOT NULL DEFAULT 'parked'
        CHECK (status IN ('parked', 'replayed', 'purged')),
    stored_at        timestamptz NOT NULL DEFAULT now(),
    status_changed_at timestamptz
);
CREATE INDEX dead_letters_stage_status ON dead_letters (stage, status);
CREATE INDEX dead_letters_correlation ON dead_letters (correlation_id);
CREATE INDEX dead_letters_message ON dead_letters (message_id);

-- Every replay and purge of dead letters, by whom and of what.
CREATE TABLE replay_audit (
    id              bigserial   PRIMARY KEY,
    action          text        NOT NULL CHECK (action IN ('replay', 'purge')),
    operator        text        NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    selection       jsonb       NOT NULL,
    dead_letter_ids bigint[]    NOT NULL,
    count           integer     NOT NULL
);
