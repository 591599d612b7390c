-- The mail itself (DESIGN §7): the address directory, the inbound spool, raw MIME,
-- messages, threads, attachments and the event log.

-- The address directory (DESIGN §7.2): one row per deliverable address, unique across
-- inboxes, mailboxes and accounts, pending claims and tombstones included. A catch-all
-- is the address '*@<domain>'. A released address's row is deleted.
CREATE TABLE routes (
    address           text PRIMARY KEY CHECK (address = lower(address)),
    domain            text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('inbox', 'mailbox', 'catch_all')),
    owner_id          text NOT NULL,
    account_id        text NOT NULL,
    pod_id            text NOT NULL,
    -- 'pending': a claim whose owner is not live yet (DESIGN §3 child side);
    -- 'tombstone': a deleted inbox's address, bounced until tombstone_until.
    state             text NOT NULL CHECK (state IN ('pending', 'live', 'tombstone')),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    tombstone_until   timestamptz
);
CREATE INDEX routes_owner_idx ON routes (owner_id);
CREATE INDEX routes_domain_idx ON routes (domain);
CREATE INDEX routes_pending_idx ON routes (state_changed_at) WHERE state = 'pending';

-- Custom domains as the domains service last reported them: the account that verified
-- the name and whether it can receive. A custom-domain route delivers only while its
-- account is this row's account and can_receive holds.
CREATE TABLE domains (
    name         text PRIMARY KEY,
    account_id   text NOT NULL,
    can_receive  boolean NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Accepted at the SMTP edge, not yet ingested: committed before the edge answers 250.
CREATE TABLE spool (
    id               bigserial PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    peer             text NOT NULL,
    helo             text NOT NULL,
    mail_from        text NOT NULL,
    -- [{"address", "ownerId", "kind", "accountId", "podId"}], one per accepted RCPT.
    recipients       jsonb NOT NULL,
    raw              bytea NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text
);
CREATE INDEX spool_due_idx ON spool (next_attempt_at);
-- Wakes the ingest worker (LISTEN mailplane_spool) when a message is spooled.
CREATE FUNCTION spool_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mailplane_spool', '');
    RETURN NULL;
END $$;
CREATE TRIGGER spool_notify AFTER INSERT ON spool
    FOR EACH STATEMENT EXECUTE FUNCTION spool_notify();

-- Raw RFC 5322 bytes and attachment bytes, stored once by SHA-256.
CREATE TABLE blobs (
    sha256      bytea PRIMARY KEY,
    size        integer NOT NULL,
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;

-- Conversations, per owner (an inbox 'inb_…' or a mailbox 'mbx_…').
CREATE TABLE threads (
    id               text PRIMARY KEY,
    account_id       text NOT NULL,
    pod_id           text NOT NULL,
    owner_id         text NOT NULL,
    subject          text NOT NULL,
    labels           text[] NOT NULL DEFAULT '{}',
    preview          text NOT NULL DEFAULT '',
    message_count    integer NOT NULL DEFAULT 0,
    senders          text[] NOT NULL DEFAULT '{}',
    recipients       text[] NOT NULL DEFAULT '{}',
    folder_id        text,
    last_message_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_owner_idx ON threads (account_id, owner_id, last_message_at DESC, id DESC);
CREATE INDEX threads_pod_idx ON threads (account_id, pod_id, last_message_at DESC, id DESC);
CREATE INDEX threads_account_idx ON threads (account_id, last_message_at DESC, id DESC);

CREATE TABLE messages (
    id              text PRIMARY KEY,
    account_id      text NOT NULL,
    pod_id          text NOT NULL,
    owner_id        text NOT NULL,
    thread_id       text NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    direction       text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    status          text NOT NULL,
    labels          text[] NOT NULL DEFAULT '{}',
    from_address    text NOT NULL,
    to_addresses    text[] NOT NULL DEFAULT '{}',
    cc_addresses    text[] NOT NULL DEFAULT '{}',
    bcc_addresses   text[] NOT NULL DEFAULT '{}',
    reply_to        text[] NOT NULL DEFAULT '{}',
    subject         text NOT NULL,
    preview         text NOT NULL,
    text_body       text,
    html_body       text,
    extracted_text  text NOT NULL,
    rfc_message_id  text NOT NULL,
    in_reply_to     text,
    refs            text[] NOT NULL DEFAULT '{}',
    authentication  jsonb NOT NULL DEFAULT '{}',
    size            integer NOT NULL,
    raw_sha256      bytea NOT NULL REFERENCES blobs (sha256),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Stored once per owner: an SMTP retry after a lost 250, or an ingest re-run, is absorbed.
CREATE UNIQUE INDEX messages_dedupe_key ON messages (owner_id, rfc_message_id, raw_sha256);
CREATE INDEX messages_owner_idx ON messages (account_id, owner_id, created_at DESC, id DESC);
CREATE INDEX messages_pod_idx ON messages (account_id, pod_id, created_at DESC, id DESC);
CREATE INDEX messages_account_idx ON messages (account_id, created_at DESC, id DESC);
CREATE INDEX messages_thread_idx ON messages (thread_id, created_at, id);
CREATE INDEX messages_raw_idx ON messages (raw_sha256);

CREATE TABLE attachments (
    id            text PRIMARY KEY,
    message_id    text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position      integer NOT NULL,
    filename      text,
    content_type  text NOT NULL,
    size          integer NOT NULL,
    content_id    text,
    disposition   text NOT NULL CHECK (disposition IN ('attachment', 'inline')),
    sha256        bytea NOT NULL REFERENCES blobs (sha256)
);
CREATE INDEX attachments_message_idx ON attachments (message_id, position);
CREATE INDEX attachments_blob_idx ON attachments (sha256);

-- RFC 5322 Message-IDs seen per owner, to thread replies (RFC 5256 REFERENCES, incremental).
CREATE TABLE message_refs (
    owner_id        text NOT NULL,
    rfc_message_id  text NOT NULL,
    thread_id       text NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    PRIMARY KEY (owner_id, rfc_message_id)
);
CREATE INDEX message_refs_thread_idx ON message_refs (thread_id);

-- The durable event log, written in the transaction of the fact it records (an outbox;
-- DESIGN §7.6). Readers page by (txid, seq): an event becomes readable only once every
-- transaction that started before it has ended, so a cursor never skips a late commit.
CREATE TABLE events (
    id          text PRIMARY KEY,
    seq         bigserial NOT NULL,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    account_id  text NOT NULL,
    pod_id      text,
    inbox_id    text,
    mailbox_id  text,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_account_idx ON events (account_id, txid, seq);
CREATE INDEX events_log_idx ON events (txid, seq);
