-- The fingerprint of a device's last counted stable-attribute mismatch (a digest, not the
-- attributes): the same changed fingerprint presented again is not counted again.
ALTER TABLE devices ADD COLUMN mismatch_fingerprint TEXT;
