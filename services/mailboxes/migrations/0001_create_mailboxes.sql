-- Agentic mailboxes, their folders and rules (DESIGN §3, §4 Mailboxes; seed 004).
CREATE TABLE mailboxes (
    id                text PRIMARY KEY,
    account_id        text NOT NULL,
    pod_id            text NOT NULL,
    address           text NOT NULL CHECK (address = lower(address)),
    domain            text NOT NULL,
    shared_domain     boolean NOT NULL,   -- on the platform's own domain
    display_name      text,
    status            text NOT NULL
                      CHECK (status IN ('provisioning', 'active', 'paused', 'error')),
    can_receive       boolean NOT NULL,   -- the domain's last known reception
    config            jsonb NOT NULL DEFAULT '{}'::jsonb,
    catch_all         boolean NOT NULL DEFAULT false,
    autonomy_level    text NOT NULL DEFAULT 'L1' CHECK (autonomy_level IN ('L1', 'L2', 'L3')),
    -- 'pending': child-side create in flight (DESIGN §3), invisible to reads.
    state             text NOT NULL CHECK (state IN ('pending', 'live')),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,        -- soft delete (seed 004): never read again
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT (catch_all AND shared_domain))
);
-- One mailbox per address among those not deleted, across accounts.
CREATE UNIQUE INDEX mailboxes_address_key ON mailboxes (address) WHERE deleted_at IS NULL;
-- One catch-all per domain of an account among those not deleted.
CREATE UNIQUE INDEX mailboxes_catch_all_key ON mailboxes (account_id, domain)
    WHERE catch_all AND deleted_at IS NULL;
CREATE INDEX mailboxes_listing_idx ON mailboxes (account_id, created_at, id)
    WHERE deleted_at IS NULL;
CREATE INDEX mailboxes_pod_idx ON mailboxes (account_id, pod_id) WHERE deleted_at IS NULL;
CREATE INDEX mailboxes_domain_idx ON mailboxes (account_id, domain) WHERE deleted_at IS NULL;
CREATE INDEX mailboxes_pending_idx ON mailboxes (state_changed_at) WHERE state = 'pending';

CREATE TABLE folders (
    id          text PRIMARY KEY,
    mailbox_id  text NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX folders_name_key ON folders (mailbox_id, lower(name));
CREATE UNIQUE INDEX folders_mailbox_key ON folders (id, mailbox_id);

CREATE TABLE rules (
    id          text PRIMARY KEY,
    mailbox_id  text NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    name        text NOT NULL,
    enabled     boolean NOT NULL,
    priority    integer NOT NULL,
    match       jsonb NOT NULL,
    action_type text NOT NULL CHECK (action_type IN ('move_to_folder', 'archive', 'mark_spam')),
    folder_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The folder is one of the same mailbox's, and cannot be deleted while a rule
    -- points at it (folder_in_use).
    FOREIGN KEY (folder_id, mailbox_id) REFERENCES folders (id, mailbox_id) ON DELETE RESTRICT,
    CHECK ((action_type = 'move_to_folder') = (folder_id IS NOT NULL))
);
CREATE INDEX rules_mailbox_idx ON rules (mailbox_id, priority, created_at, id);
CREATE INDEX rules_folder_idx ON rules (folder_id) WHERE folder_id IS NOT NULL;
