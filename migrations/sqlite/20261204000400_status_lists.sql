-- Token status lists (contract section 10): every device gets an index in the status lists,
-- allocated once at enrollment and never reused, so a token's `status.status_list.idx` keeps
-- naming its device for as long as the token lives.
--
-- SQLite serializes writers (BEGIN IMMEDIATE), so a counter row is an atomic allocator.
-- Nullable only because SQLite cannot add a NOT NULL column without a default; every row is
-- filled here and every insert sets it.
ALTER TABLE devices ADD COLUMN status_idx INTEGER;

-- Existing devices, in enrollment order, from 0.
WITH numbered AS (
    SELECT device_id, ROW_NUMBER() OVER (ORDER BY created_at, device_id) - 1 AS idx
    FROM devices
)
UPDATE devices SET status_idx = numbered.idx
FROM numbered WHERE numbered.device_id = devices.device_id;

CREATE UNIQUE INDEX devices_status_idx ON devices (status_idx);
-- Building a list reads the revoked devices in its range; the few revoked ones only.
CREATE INDEX devices_revoked_status_idx ON devices (status_idx) WHERE status = 'revoked';

-- The next index to hand out (one row).
CREATE TABLE status_list_counter (
    id       INTEGER PRIMARY KEY CHECK (id = 0),
    next_idx INTEGER NOT NULL
);
INSERT INTO status_list_counter (id, next_idx) SELECT 0, COUNT(*) FROM devices;

-- The revocation feed is pruned by age and can be entered at a time (`since_time`): both find
-- entries by `at`.
CREATE INDEX revocations_at ON revocations (at);
