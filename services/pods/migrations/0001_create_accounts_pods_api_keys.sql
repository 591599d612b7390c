-- Accounts, their pods and their API keys (DESIGN §4; seeds 000-002).
CREATE TABLE accounts (
    id          text PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    plan        text NOT NULL DEFAULT 'trial'
                CHECK (plan IN ('trial', 'starter', 'growth', 'enterprise')),
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'expired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pods (
    id                text PRIMARY KEY,
    account_id        text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    client_id         text CHECK (char_length(client_id) BETWEEN 1 AND 255),
    name              text CHECK (char_length(name) <= 255),
    is_default        boolean NOT NULL DEFAULT false,
    -- 'deleting' is the parent-side intent of DESIGN §3.
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'deleting')),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX pods_client_id_key ON pods (account_id, client_id) WHERE client_id IS NOT NULL;
CREATE UNIQUE INDEX pods_one_default_key ON pods (account_id) WHERE is_default;
CREATE INDEX pods_listing_idx ON pods (account_id, (NOT is_default), created_at, id);
CREATE INDEX pods_deleting_idx ON pods (state_changed_at) WHERE state = 'deleting';

CREATE TABLE api_keys (
    id             text PRIMARY KEY,
    account_id     text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    secret_sha256  bytea NOT NULL UNIQUE,
    prefix         text NOT NULL,
    last4          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_listing_idx ON api_keys (account_id, created_at, id);
