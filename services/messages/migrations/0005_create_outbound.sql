-- Mail leaves (DESIGN §7.4-7.5): the outbound queue, suppressions, idempotency keys,
-- drafts, send limits and the per-owner counters behind mailbox stats (seed 004).

-- Outbound messages: when a scheduled one goes out, its envelope sender (a VERP
-- return path `local+bounce-<ulid>@domain`, or '' for a null sender: auto-replies,
-- RFC 3834 §4), and whether its stored raw bytes carry its DKIM signature yet (the
-- delivery worker signs each message once, through the domains service, before its
-- first attempt).
ALTER TABLE messages ADD COLUMN send_at timestamptz;
ALTER TABLE messages ADD COLUMN return_path text;
ALTER TABLE messages ADD COLUMN dkim_signed boolean NOT NULL DEFAULT false;

-- Whether a custom domain can send (SPF and DKIM valid), as the domains service last
-- reported it. The shared domain always sends.
ALTER TABLE domains ADD COLUMN can_send boolean NOT NULL DEFAULT false;

-- One row per (outbound message, recipient domain): the durable queue (SKIP LOCKED).
-- A row is due when next_attempt_at has passed and its state is queued, deferred or
-- sending (a lease that ran out: the worker that took it died). Held rows are not due;
-- resume puts them back. Local recipients' rows are delivered into the store directly.
CREATE TABLE deliveries (
    id               bigserial PRIMARY KEY,
    message_id       text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    account_id       text NOT NULL,
    owner_id         text NOT NULL,
    domain           text NOT NULL CHECK (domain = lower(domain)),
    recipients       text[] NOT NULL,
    state            text NOT NULL CHECK (state IN (
        'queued', 'held', 'sending', 'deferred', 'sent', 'delivered', 'bounced', 'rejected')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    last_reply       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at)
    WHERE state IN ('queued', 'deferred', 'sending');
CREATE INDEX deliveries_message_idx ON deliveries (message_id);
CREATE INDEX deliveries_owner_open_idx ON deliveries (owner_id)
    WHERE state IN ('queued', 'deferred', 'sending', 'held');
-- Wakes the delivery worker (LISTEN mailplane_outbound) when a delivery is queued.
CREATE FUNCTION deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mailplane_outbound', '');
    RETURN NULL;
END $$;
CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_notify();

-- The account's suppression list: sends to these addresses are refused
-- (recipient_suppressed); a hard bounce adds one.
CREATE TABLE suppressions (
    account_id  text NOT NULL,
    address     text NOT NULL CHECK (address = lower(address)),
    reason      text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'manual')),
    message_id  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, address)
);

-- Send idempotency (DESIGN §7.5): a row per (account, Idempotency-Key) for 24 h.
-- `response` is NULL while the first request is in flight, then its serialized reply.
CREATE TABLE idempotency_keys (
    account_id      text NOT NULL,
    key             text NOT NULL,
    request_sha256  bytea NOT NULL,
    response        bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_age_idx ON idempotency_keys (created_at);

-- Drafts (seed 001): unsent messages of an inbox or mailbox.
CREATE TABLE drafts (
    id              text PRIMARY KEY,
    account_id      text NOT NULL,
    pod_id          text NOT NULL,
    owner_id        text NOT NULL,
    -- The message it replies to (threading), if any.
    reply_to_message_id  text,
    to_addresses    text[] NOT NULL DEFAULT '{}',
    cc_addresses    text[] NOT NULL DEFAULT '{}',
    bcc_addresses   text[] NOT NULL DEFAULT '{}',
    reply_to        text[] NOT NULL DEFAULT '{}',
    subject         text NOT NULL DEFAULT '',
    text_body       text,
    html_body       text,
    -- [{"filename", "contentType", "sha256" (hex), "size", "contentId", "disposition"}];
    -- the bytes are in blobs.
    attachments     jsonb NOT NULL DEFAULT '[]',
    headers         jsonb NOT NULL DEFAULT '{}',
    labels          text[] NOT NULL DEFAULT '{}',
    send_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drafts_owner_idx ON drafts (account_id, owner_id, updated_at DESC, id DESC);
CREATE INDEX drafts_pod_idx ON drafts (account_id, pod_id, updated_at DESC, id DESC);

-- Fixed-window send counters per owner (per-minute and per-day limits, DESIGN §7.5).
CREATE TABLE send_counts (
    owner_id      text NOT NULL,
    window_kind   text NOT NULL CHECK (window_kind IN ('minute', 'day')),
    window_start  timestamptz NOT NULL,
    n             integer NOT NULL,
    PRIMARY KEY (owner_id, window_kind, window_start)
);

-- Hourly counters per owner, kept as messages move (seed 004 stats): sends and inbound
-- on the hour a message was stored; delivered and bounced on the hour of the message
-- they settle (so rates over a period compare like with like).
CREATE TABLE mail_counts (
    owner_id    text NOT NULL,
    hour        timestamptz NOT NULL,
    sends       integer NOT NULL DEFAULT 0,
    inbound     integer NOT NULL DEFAULT 0,
    delivered   integer NOT NULL DEFAULT 0,
    bounced     integer NOT NULL DEFAULT 0,
    complained  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (owner_id, hour)
);
