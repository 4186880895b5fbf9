-- How many times an operator has re-baselined a device's fingerprint (approved it). A device
-- history written later carries the baseline it was scored against, and leaves the stored
-- fingerprint (attributes, mismatch count and fingerprint) alone when that is no longer the
-- current one: a history queued before an approval cannot undo it.
ALTER TABLE devices ADD COLUMN baseline BIGINT NOT NULL DEFAULT 0;
