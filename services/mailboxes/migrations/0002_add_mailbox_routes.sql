-- Every mailbox's address (and, for a catch-all, '*@domain') is a route in the messages
-- service's directory (DESIGN §7.2). route_state: 'unrouted' (a mailbox from before
-- the directory, or whose delete was rolled back: the sweep claims and confirms its
-- routes), 'routed' (its routes are claimed; on a deleted mailbox: still to release),
-- 'conflict' (another owner holds an address; reported, kept), 'released' (deleted,
-- routes released).
ALTER TABLE mailboxes ADD COLUMN route_state text NOT NULL DEFAULT 'unrouted'
    CHECK (route_state IN ('unrouted', 'routed', 'conflict', 'released'));
ALTER TABLE mailboxes ALTER COLUMN route_state SET DEFAULT 'routed';
CREATE INDEX mailboxes_unrouted_idx ON mailboxes (created_at)
    WHERE route_state = 'unrouted' AND deleted_at IS NULL;
CREATE INDEX mailboxes_unreleased_idx ON mailboxes (deleted_at)
    WHERE route_state = 'routed' AND deleted_at IS NOT NULL;
