-- keybound's core tables (SQLite). The PostgreSQL migration has the same tables and columns.
--
-- Times are unix seconds (INTEGER), lists and maps are JSON text, hashes are BLOBs. Booleans are
-- declared BOOLEAN (stored as 0/1). Row contents are decoded by column name, so the column order
-- here does not matter to the code.

-- API keys. Only the SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    key_id                TEXT    PRIMARY KEY,
    env                   TEXT    NOT NULL,
    name                  TEXT    NOT NULL,
    description           TEXT,
    secret_hash           BLOB    NOT NULL,
    scopes                TEXT    NOT NULL,              -- JSON array of strings
    limited_scopes        TEXT,                          -- JSON array; NULL = the default
    rate_limit_per_minute INTEGER NOT NULL,
    allowed_ips           TEXT    NOT NULL,              -- JSON array of CIDRs
    allowed_origins       TEXT    NOT NULL,              -- JSON array of origins
    max_devices           INTEGER NOT NULL,
    trust_on_enroll       BOOLEAN NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    status_reason         TEXT,
    status_changed_at     INTEGER,
    created_at            INTEGER NOT NULL,
    expires_at            INTEGER,
    last_used_at          INTEGER,
    -- Informational links between rotated keys: no foreign keys, so purging the old key of a
    -- rotation never has to touch the new one.
    rotated_from          TEXT,
    rotated_to            TEXT
);

-- purge_expired_keys scans by expiry; keys that never expire are left out of the index.
CREATE INDEX api_keys_expires_at ON api_keys (expires_at) WHERE expires_at IS NOT NULL;

-- Devices: one DPoP public key (its RFC 7638 thumbprint) under one API key.
CREATE TABLE devices (
    device_id      TEXT    PRIMARY KEY,
    key_id         TEXT    NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    jkt            TEXT    NOT NULL,
    name           TEXT,
    attributes     TEXT    NOT NULL,                     -- JSON object string -> string
    status         TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    approved       BOOLEAN NOT NULL,
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    exchange_count INTEGER NOT NULL,
    mismatch_count INTEGER NOT NULL,
    networks       TEXT    NOT NULL,                     -- JSON array of prefixes
    trust_score    REAL    NOT NULL,
    trust_level    TEXT    NOT NULL,
    trust_factors  TEXT    NOT NULL,                     -- JSON value
    revoked_at     INTEGER,
    -- Also the index for "devices of a key" (key_id is its first column) and for the cascade
    -- from api_keys, so key_id needs no index of its own.
    UNIQUE (key_id, jkt)
);

-- Refresh tokens, by the SHA-256 of the opaque token. WITHOUT ROWID: the hash is the only
-- lookup key, so the table is stored in its primary-key B-tree and each insert (the token hot
-- path) writes one B-tree fewer.
CREATE TABLE refresh_tokens (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    family_id  TEXT    NOT NULL,
    -- The key is reached through the device (deleting a key cascades to its devices and from
    -- there to their tokens), so key_id carries no foreign key that a purge would have to check.
    key_id     TEXT    NOT NULL,
    device_id  TEXT    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    jkt        TEXT    NOT NULL,
    scope      TEXT    NOT NULL,
    audience   TEXT    NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at   INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

CREATE INDEX refresh_tokens_family_id ON refresh_tokens (family_id);
-- Needed by the ON DELETE CASCADE from devices.
CREATE INDEX refresh_tokens_device_id ON refresh_tokens (device_id);

-- JWT signing keys; the private half is sealed with the master key.
CREATE TABLE signing_keys (
    kid            TEXT    PRIMARY KEY,
    public_key     BLOB    NOT NULL,
    sealed_private BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    retired_at     INTEGER
);

-- The hash-chained audit log. seq is assigned by the appender (last + 1, under the write lock),
-- never by the database, so it has no gaps. details is JSON text, not a JSON type, so it reads
-- back exactly as it was hashed.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT,
    ip        TEXT,
    details   TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL
);

-- Anomaly alerts. No foreign keys: an alert outlives the key or device it names.
CREATE TABLE alerts (
    id        TEXT    PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    severity  TEXT    NOT NULL,
    key_id    TEXT,
    device_id TEXT,
    ip        TEXT,
    details   TEXT    NOT NULL                           -- JSON value
);

CREATE INDEX alerts_at ON alerts (at);
CREATE INDEX alerts_kind_at ON alerts (kind, at);
CREATE INDEX alerts_key_id_at ON alerts (key_id, at);

-- The revocation feed (contract 3.3). AUTOINCREMENT: a seq is never reused, even after the
-- newest row is deleted, so a verifier's cursor can never skip a later entry.
CREATE TABLE revocations (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL CHECK (kind IN ('key', 'device', 'refresh_family')),
    subject TEXT    NOT NULL,                            -- key id, device thumbprint or family id
    at      INTEGER NOT NULL
);
