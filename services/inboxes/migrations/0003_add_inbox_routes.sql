-- Every inbox's address is a route in the messages service's directory (DESIGN §7.2).
-- route_state: 'unrouted' (an inbox from before the directory, or whose delete was
-- rolled back: the sweep claims and confirms its route), 'routed' (claimed when it
-- was created), 'conflict' (another owner holds the address; reported, kept).
ALTER TABLE inboxes ADD COLUMN route_state text NOT NULL DEFAULT 'unrouted'
    CHECK (route_state IN ('unrouted', 'routed', 'conflict'));
ALTER TABLE inboxes ALTER COLUMN route_state SET DEFAULT 'routed';
CREATE INDEX inboxes_unrouted_idx ON inboxes (created_at) WHERE route_state = 'unrouted';
-- 'deleting': a delete's intent (DESIGN §3), invisible to reads, until its route is
-- released; the sweep finishes one a crash left.
ALTER TABLE inboxes DROP CONSTRAINT inboxes_state_check;
ALTER TABLE inboxes ADD CONSTRAINT inboxes_state_check
    CHECK (state IN ('pending', 'live', 'deleting'));
CREATE INDEX inboxes_deleting_idx ON inboxes (state_changed_at) WHERE state = 'deleting';
