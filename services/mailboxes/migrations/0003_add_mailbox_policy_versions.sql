-- A mailbox's receiving policy (status, config, address, enabled rules) is recorded by
-- the messages service, which applies it at ingest (DESIGN §7.3). Every change bumps
-- policy_version (these triggers, so no write path can forget it); policy_published is
-- the last version the messages service acknowledged; the sweep publishes the rest.
ALTER TABLE mailboxes ADD COLUMN policy_version bigint NOT NULL DEFAULT 1,
    ADD COLUMN policy_published bigint NOT NULL DEFAULT 0;
CREATE INDEX mailboxes_unpublished_idx ON mailboxes (id)
    WHERE policy_published < policy_version AND state = 'live' AND deleted_at IS NULL;

CREATE FUNCTION mailbox_policy_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.status, NEW.config, NEW.address, NEW.display_name, NEW.pod_id, NEW.state)
        IS DISTINCT FROM (OLD.status, OLD.config, OLD.address, OLD.display_name, OLD.pod_id,
                          OLD.state) THEN
        NEW.policy_version := OLD.policy_version + 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER mailbox_policy_changed BEFORE UPDATE ON mailboxes
    FOR EACH ROW EXECUTE FUNCTION mailbox_policy_changed();

CREATE FUNCTION rule_policy_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mailboxes SET policy_version = policy_version + 1
    WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.mailbox_id ELSE NEW.mailbox_id END;
    RETURN NULL;
END $$;
CREATE TRIGGER rule_policy_changed AFTER INSERT OR UPDATE OR DELETE ON rules
    FOR EACH ROW EXECUTE FUNCTION rule_policy_changed();
