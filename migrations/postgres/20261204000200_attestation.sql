-- Platform attestation (contract section 8).
--
-- A key's policy: 'off' ignores attestations, 'preferred' (the default, also for existing
-- keys) makes an attested device trusted at once, 'required' issues nothing to a device
-- without an attestation on record.
ALTER TABLE api_keys ADD COLUMN attestation TEXT NOT NULL DEFAULT 'preferred'
    CHECK (attestation IN ('off', 'preferred', 'required'));

-- A device's attestation, recorded once when it verified and kept for the device's life:
-- the format ('apple-appattest' | 'android-key'; NULL: not attested), when, the Android
-- security level, and App Attest's credential public key and key id (kept for assertion-based
-- step-up later).
ALTER TABLE devices ADD COLUMN attestation_format TEXT;
ALTER TABLE devices ADD COLUMN attested_at BIGINT;
ALTER TABLE devices ADD COLUMN attestation_security_level TEXT;
ALTER TABLE devices ADD COLUMN attestation_public_key BYTEA;
ALTER TABLE devices ADD COLUMN attestation_key_id BYTEA;
