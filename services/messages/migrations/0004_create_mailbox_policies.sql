-- Mailbox semantics at ingest (DESIGN §7.3, seed 004) and owner deletes (DESIGN §7.4).

-- Each mailbox's receiving policy as the mailboxes service last recorded it
-- (SetMailboxPolicy); only a higher version replaces a row.
CREATE TABLE mailbox_policies (
    mailbox_id          text PRIMARY KEY,
    account_id          text NOT NULL,
    pod_id              text NOT NULL,
    version             bigint NOT NULL,
    status              text NOT NULL,
    address             text NOT NULL,
    display_name        text,
    inbound_rate_limit  integer CHECK (inbound_rate_limit > 0),
    paused_auto_reply   text,
    reply_to            text,
    -- [{"id", "priority", "from", "to", "subjectContains", "action", "folderId"}],
    -- enabled rules in ascending priority.
    rules               jsonb NOT NULL DEFAULT '[]',
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Messages accepted at the edge per mailbox with an inboundRateLimit, per minute:
-- the rolling hour is the sum of the last 60 rows (one indexed read at RCPT).
CREATE TABLE inbound_counts (
    owner_id  text NOT NULL,
    minute    timestamptz NOT NULL,
    n         integer NOT NULL,
    PRIMARY KEY (owner_id, minute)
);

-- The last paused auto-reply per (mailbox, sender): at most one per 24 h (RFC 3834).
CREATE TABLE auto_replies (
    owner_id    text NOT NULL,
    sender      text NOT NULL CHECK (sender = lower(sender)),
    replied_at  timestamptz NOT NULL,
    PRIMARY KEY (owner_id, sender)
);

-- Owners whose routes were all released (deleted): an inbox's mail is purged, a
-- mailbox's threads trashed; mail spooled for them afterwards is dropped
-- (inbox) or stored trashed (mailbox). Claiming a route again removes the row.
CREATE TABLE deleted_owners (
    owner_id    text PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
