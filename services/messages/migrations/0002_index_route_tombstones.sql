-- The directory sweep (DESIGN §7.2) deletes tombstones whose reclaim window has passed.
CREATE INDEX routes_tombstone_idx ON routes (tombstone_until) WHERE state = 'tombstone';
ALTER TABLE routes ADD CONSTRAINT routes_tombstone_until_check
    CHECK ((state = 'tombstone') = (tombstone_until IS NOT NULL));
