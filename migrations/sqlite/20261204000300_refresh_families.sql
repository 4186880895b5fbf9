-- Refresh tokens are sealed (src/tokens/refresh.rs): a token carries its own claims, so an
-- exchange writes nothing for it. What storage keeps is one row per refresh family, written
-- at the family's first refresh: the generation whose token is live, the family's revocation,
-- and for the grace window of contract 9.2 the successor sealed under a key derived from the
-- master key (never a plaintext token). docs/design.md, "Refresh tokens".
--
-- The old per-token table goes: its tokens were random strings that mean nothing without it,
-- and they are not of the sealed format, so their holders (a refresh session at most
-- `--refresh-ttl-seconds` old) fall back to an exchange with their API key, as they would
-- after that token expired.
DROP TABLE refresh_tokens;

CREATE TABLE refresh_families (
    family_id   TEXT    NOT NULL PRIMARY KEY,
    key_id      TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    jkt         TEXT    NOT NULL,
    -- The generation of the family's live token: a token of any other generation is spent.
    generation  INTEGER NOT NULL CHECK (generation >= 0),
    created_at  INTEGER NOT NULL,
    -- When the live generation was issued (the previous one spent).
    rotated_at  INTEGER NOT NULL,
    -- The latest expiry of any token of the family: after it, the row cannot matter.
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    -- Contract 9.2: the live token sealed for the grace window, and the window's end.
    grace_token BLOB,
    grace_until INTEGER
) WITHOUT ROWID;

CREATE INDEX refresh_families_expires_at ON refresh_families (expires_at);
CREATE INDEX refresh_families_grace_until ON refresh_families (grace_until)
    WHERE grace_until IS NOT NULL;
