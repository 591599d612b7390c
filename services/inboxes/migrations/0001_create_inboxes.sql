-- Inboxes and their credentials (DESIGN §3, §4 Inboxes; seed 003).
CREATE TABLE inboxes (
    id                text PRIMARY KEY,
    account_id        text NOT NULL,
    pod_id            text NOT NULL,  -- fixed at creation
    username          text NOT NULL CHECK (char_length(username) BETWEEN 1 AND 64),
    domain            text NOT NULL,
    email             text NOT NULL GENERATED ALWAYS AS (username || '@' || domain) STORED,
    display_name      text,
    -- 'pending': child-side create in flight (DESIGN §3), invisible to reads.
    state             text NOT NULL CHECK (state IN ('pending', 'live')),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- One inbox per address across all accounts, whatever the case (seed 003).
CREATE UNIQUE INDEX inboxes_email_key ON inboxes (lower(email));
CREATE INDEX inboxes_listing_idx ON inboxes (account_id, created_at, id);
CREATE INDEX inboxes_pod_idx ON inboxes (account_id, pod_id);
CREATE INDEX inboxes_domain_idx ON inboxes (account_id, domain);
CREATE INDEX inboxes_pending_idx ON inboxes (state_changed_at) WHERE state = 'pending';

-- The IMAP/SMTP password, only as an argon2id hash; removed with its inbox.
CREATE TABLE inbox_credentials (
    inbox_id       text PRIMARY KEY REFERENCES inboxes (id) ON DELETE CASCADE,
    password_hash  text NOT NULL,
    rotated_at     timestamptz NOT NULL DEFAULT now()
);
