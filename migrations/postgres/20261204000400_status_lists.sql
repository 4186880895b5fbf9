-- Token status lists (contract section 10): every device gets an index in the status lists,
-- allocated once at enrollment and never reused, so a token's `status.status_list.idx` keeps
-- naming its device for as long as the token lives.
--
-- A sequence hands indexes out atomically without serializing enrollments under different
-- keys (an index taken by a rolled-back enrollment is skipped: a gap reads as 0, and no token
-- names it).
ALTER TABLE devices ADD COLUMN status_idx BIGINT;

-- Existing devices, in enrollment order, from 0.
UPDATE devices SET status_idx = numbered.idx
FROM (
    SELECT device_id, ROW_NUMBER() OVER (ORDER BY created_at, device_id) - 1 AS idx
    FROM devices
) AS numbered
WHERE numbered.device_id = devices.device_id;

ALTER TABLE devices ALTER COLUMN status_idx SET NOT NULL;
CREATE UNIQUE INDEX devices_status_idx ON devices (status_idx);
-- Building a list reads the revoked devices in its range; the few revoked ones only.
CREATE INDEX devices_revoked_status_idx ON devices (status_idx) WHERE status = 'revoked';

CREATE SEQUENCE device_status_idx AS BIGINT MINVALUE 0 START WITH 0;
SELECT setval('device_status_idx', (SELECT COUNT(*) FROM devices), false);

-- The revocation feed is pruned by age and can be entered at a time (`since_time`): both find
-- entries by `at`.
CREATE INDEX revocations_at ON revocations (at);
