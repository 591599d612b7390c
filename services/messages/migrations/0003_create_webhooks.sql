-- Webhooks (DESIGN §7.6): the endpoints, the dispatcher's cursor over the event log,
-- one delivery per (webhook, event) and the log of its attempts.

CREATE TABLE webhooks (
    id                text PRIMARY KEY,
    account_id        text NOT NULL,
    url               text NOT NULL,
    description       text,
    event_types       text[] NOT NULL,
    pod_ids           text[] NOT NULL DEFAULT '{}',
    inbox_ids         text[] NOT NULL DEFAULT '{}',
    mailbox_ids       text[] NOT NULL DEFAULT '{}',
    -- The reach of the key that made it (a pod, or inboxes and mailboxes): it
    -- delivers only events within it and only keys that reach it manage it.
    reach_pod_id      text,
    reach_owner_ids   text[],
    enabled           boolean NOT NULL DEFAULT true,
    -- The signing secret, Fernet-encrypted with MAILPLANE_WEBHOOK_SECRET_KEY.
    secret_encrypted  bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_account_idx ON webhooks (account_id, created_at, id);

-- How far the dispatcher has fanned the event log out, by (txid, seq); one row.
CREATE TABLE webhook_cursor (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid       xid8 NOT NULL,
    seq        bigint NOT NULL
);
-- Starts at the log's end: events committed before webhooks existed have no webhook.
INSERT INTO webhook_cursor (txid, seq)
SELECT coalesce(max(txid), '0'::xid8), coalesce(max(seq), 0) FROM events;

CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY,
    webhook_id       text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    account_id       text NOT NULL,
    -- The event's ID (not a foreign key: a `webhook.test` has no row in the log).
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    -- While pending: when the next attempt is due; a taken row is leased by
    -- moving it past the attempt's timeout, so a crashed worker's row comes back.
    next_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx
    ON webhook_deliveries (webhook_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    delivery_id   text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    status_code   integer,
    error         text,
    duration_ms   integer NOT NULL,
    attempted_at  timestamptz NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
