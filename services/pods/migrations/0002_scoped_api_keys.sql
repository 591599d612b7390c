-- Scoped API keys (issue 6; seeds 001, 004): a key is account-wide or scoped to one
-- pod, one inbox or some mailboxes, with read/write/admin permissions and an
-- optional expiry. Keys made before this migration keep the whole account and
-- every permission, as mailplane-admin keys do.
ALTER TABLE api_keys
    ADD COLUMN scope_type    text NOT NULL DEFAULT 'account'
                             CHECK (scope_type IN ('account', 'pod', 'inbox', 'mailbox')),
    ADD COLUMN scope_ids     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN permissions   text[] NOT NULL DEFAULT '{read,write,admin}'
                             CHECK (permissions <@ ARRAY['read', 'write', 'admin']
                                    AND cardinality(permissions) > 0),
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN last_used_at  timestamptz,
    ADD CONSTRAINT api_keys_scope_ids_check
        CHECK ((scope_type = 'account') = (cardinality(scope_ids) = 0));
CREATE INDEX api_keys_scope_idx ON api_keys USING gin (scope_ids);
