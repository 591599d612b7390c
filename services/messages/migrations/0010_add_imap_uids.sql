-- IMAP over the store (DESIGN §7.1, RFC 3501 §2.3.1.1): each message's folder, UID and
-- modification sequence, kept by triggers so that every insert path (ingest, sends,
-- replies, auto-replies) and every relabel or delete (REST, gRPC, IMAP) keeps them.
--
-- One counter per owner hands out both UIDs and modification sequences. The counter is a
-- row, not a sequence: its row lock is held until the writer commits, so an owner's
-- numbers are taken in commit order and a session that has seen N has seen every change
-- numbered below N (a sequence would let 11 commit before 10). A message entering a folder
-- (inserted, or moved by a label such as `trash`) takes a fresh UID, so UIDs only grow
-- within a folder; leaving one writes an expunge row that sessions read back by modseq.

-- A message's folder from its direction and labels: Trash, then Junk, then Archive, then
-- Sent (outbound) or INBOX (inbound).
CREATE FUNCTION imap_folder_of(direction text, labels text[]) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
SELECT CASE WHEN 'trash' = ANY(labels) THEN 'Trash'
            WHEN 'spam' = ANY(labels) THEN 'Junk'
            WHEN 'archived' = ANY(labels) THEN 'Archive'
            WHEN direction = 'outbound' THEN 'Sent'
            ELSE 'INBOX' END
$$;

-- Per owner: UIDVALIDITY (fixed when the row is made, RFC 3501 §2.3.1.1) and the last
-- number handed out as a UID or modseq.
CREATE TABLE imap_owners (
    owner_id      text PRIMARY KEY,
    account_id    text NOT NULL,
    uid_validity  bigint NOT NULL DEFAULT (extract(epoch FROM now())::bigint % 2147483647 + 1),
    last_value    bigint NOT NULL DEFAULT 0
);

-- UIDs that left a folder (moved by a label, or deleted), for sessions' EXPUNGE responses.
CREATE TABLE imap_expunges (
    account_id  text NOT NULL,
    owner_id    text NOT NULL,
    folder      text NOT NULL,
    uid         bigint NOT NULL,
    modseq      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, folder, modseq, uid)
);
CREATE INDEX imap_expunges_age_idx ON imap_expunges (created_at);

ALTER TABLE messages
    ADD COLUMN imap_folder text,
    ADD COLUMN imap_uid bigint,
    ADD COLUMN imap_modseq bigint,
    -- IMAP-only system flags (\Answered, \Deleted, \Draft); \Seen, \Flagged and keywords
    -- live in `labels`.
    ADD COLUMN imap_flags text[] NOT NULL DEFAULT '{}';

-- Messages stored before this migration: numbered per owner in arrival order.
WITH numbered AS (
    SELECT id, row_number() OVER (PARTITION BY owner_id ORDER BY created_at, id) AS n
    FROM messages
)
UPDATE messages m SET imap_folder = imap_folder_of(m.direction, m.labels),
                      imap_uid = numbered.n, imap_modseq = numbered.n
FROM numbered WHERE numbered.id = m.id;
INSERT INTO imap_owners (owner_id, account_id, last_value)
SELECT owner_id, min(account_id), max(imap_uid) FROM messages GROUP BY owner_id;

ALTER TABLE messages
    ALTER COLUMN imap_folder SET NOT NULL,
    ALTER COLUMN imap_uid SET NOT NULL,
    ALTER COLUMN imap_modseq SET NOT NULL;
CREATE INDEX messages_imap_uid_idx ON messages (owner_id, imap_folder, imap_uid);
CREATE INDEX messages_imap_modseq_idx ON messages (owner_id, imap_folder, imap_modseq);

-- Takes the owner's next number (and its row lock, until commit).
CREATE FUNCTION imap_next(owner text, account text) RETURNS bigint LANGUAGE sql AS $$
INSERT INTO imap_owners AS o (owner_id, account_id, last_value) VALUES (owner, account, 1)
ON CONFLICT (owner_id) DO UPDATE SET last_value = o.last_value + 1
RETURNING last_value
$$;

CREATE FUNCTION imap_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    folder text := imap_folder_of(NEW.direction, NEW.labels);
    n bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.labels IS NOT DISTINCT FROM NEW.labels
            AND OLD.imap_flags IS NOT DISTINCT FROM NEW.imap_flags THEN
        RETURN NEW;
    END IF;
    n := imap_next(NEW.owner_id, NEW.account_id);
    NEW.imap_modseq := n;
    IF TG_OP = 'INSERT' OR folder IS DISTINCT FROM OLD.imap_folder THEN
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO imap_expunges (account_id, owner_id, folder, uid, modseq)
            VALUES (OLD.account_id, OLD.owner_id, OLD.imap_folder, OLD.imap_uid, n);
            NEW.imap_flags := '{}';  -- \Deleted and the like stay behind in the old folder
        END IF;
        NEW.imap_folder := folder;
        NEW.imap_uid := n;
    END IF;
    PERFORM pg_notify('mailplane_imap', NEW.owner_id);
    RETURN NEW;
END $$;
CREATE TRIGGER imap_track BEFORE INSERT OR UPDATE OF labels, imap_flags ON messages
    FOR EACH ROW EXECUTE FUNCTION imap_track();

CREATE FUNCTION imap_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO imap_expunges (account_id, owner_id, folder, uid, modseq)
    VALUES (OLD.account_id, OLD.owner_id, OLD.imap_folder, OLD.imap_uid,
            imap_next(OLD.owner_id, OLD.account_id));
    PERFORM pg_notify('mailplane_imap', OLD.owner_id);
    RETURN NULL;
END $$;
CREATE TRIGGER imap_forget AFTER DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION imap_forget();

-- A deleted inbox or mailbox: its IMAP sessions are closed (LISTEN mailplane_imap_closed).
CREATE FUNCTION imap_owner_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mailplane_imap_closed', NEW.owner_id);
    RETURN NULL;
END $$;
CREATE TRIGGER imap_owner_deleted AFTER INSERT ON deleted_owners
    FOR EACH ROW EXECUTE FUNCTION imap_owner_deleted();
