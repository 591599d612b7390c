-- Custom domains, their records and verification attempts (DESIGN §3, §4 Domains).
CREATE TABLE domains (
    id                          text PRIMARY KEY,
    account_id                  text NOT NULL,
    name                        text NOT NULL CHECK (char_length(name) BETWEEN 3 AND 253),
    pod_id                      text,  -- NULL: account-wide
    -- 'pending': child-side create in flight; 'rescoping'/'deleting': parent-side intents.
    state                       text NOT NULL
                                CHECK (state IN ('pending', 'live', 'rescoping', 'deleting')),
    target_pod_id               text,  -- the pod a re-scope moves it to
    state_changed_at            timestamptz NOT NULL DEFAULT now(),
    status                      text NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'verified', 'failed')),
    records                     jsonb NOT NULL,
    can_send                    boolean NOT NULL DEFAULT false,
    can_receive                 boolean NOT NULL DEFAULT false,
    dkim_private_key_encrypted  bytea NOT NULL,  -- Fernet(PKCS#8 PEM); never returned
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    verified_at                 timestamptz
);
CREATE UNIQUE INDEX domains_account_name_key ON domains (account_id, name);
-- One verified owner per name across all accounts (domain_claimed).
CREATE UNIQUE INDEX domains_verified_name_key ON domains (name) WHERE status = 'verified';
CREATE INDEX domains_listing_idx ON domains (account_id, created_at, id);
CREATE INDEX domains_pod_idx ON domains (account_id, pod_id) WHERE pod_id IS NOT NULL;
CREATE INDEX domains_target_pod_idx ON domains (account_id, target_pod_id)
    WHERE state = 'rescoping';
CREATE INDEX domains_intent_idx ON domains (state_changed_at) WHERE state <> 'live';

CREATE TABLE verification_attempts (
    id          bigserial PRIMARY KEY,
    domain_id   text NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    account_id  text NOT NULL,
    records     jsonb NOT NULL,
    verified    boolean NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verification_attempts_domain_idx ON verification_attempts (domain_id, checked_at);
