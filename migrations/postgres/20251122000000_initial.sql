-- keybound's core tables (PostgreSQL). The SQLite migration has the same tables and columns.
--
-- Times are unix seconds (BIGINT), lists and maps are JSON text (TEXT, not JSONB: the audit log
-- must read back exactly what was hashed, and the other JSON columns follow suit), hashes are
-- BYTEA. Row contents are decoded by column name, so the column order here does not matter.
--
-- Ids that are paginated or sorted on use COLLATE "C" (byte order), the order SQLite uses, so
-- both backends page through keys in the same order whatever the database's locale.

-- API keys. Only the SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    key_id                TEXT COLLATE "C" PRIMARY KEY,
    env                   TEXT     NOT NULL,
    name                  TEXT     NOT NULL,
    description           TEXT,
    secret_hash           BYTEA    NOT NULL,
    scopes                TEXT     NOT NULL,             -- JSON array of strings
    limited_scopes        TEXT,                          -- JSON array; NULL = the default
    rate_limit_per_minute BIGINT   NOT NULL,
    allowed_ips           TEXT     NOT NULL,             -- JSON array of CIDRs
    allowed_origins       TEXT     NOT NULL,             -- JSON array of origins
    max_devices           BIGINT   NOT NULL,
    trust_on_enroll       BOOLEAN  NOT NULL,
    status                TEXT     NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    status_reason         TEXT,
    status_changed_at     BIGINT,
    created_at            BIGINT   NOT NULL,
    expires_at            BIGINT,
    last_used_at          BIGINT,
    -- Informational links between rotated keys: no foreign keys, so purging the old key of a
    -- rotation never has to touch the new one.
    rotated_from          TEXT,
    rotated_to            TEXT
);

-- purge_expired_keys scans by expiry; keys that never expire are left out of the index.
CREATE INDEX api_keys_expires_at ON api_keys (expires_at) WHERE expires_at IS NOT NULL;

-- Devices: one DPoP public key (its RFC 7638 thumbprint) under one API key.
CREATE TABLE devices (
    device_id      TEXT COLLATE "C" PRIMARY KEY,
    key_id         TEXT COLLATE "C" NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    jkt            TEXT     NOT NULL,
    name           TEXT,
    attributes     TEXT     NOT NULL,                    -- JSON object string -> string
    status         TEXT     NOT NULL CHECK (status IN ('active', 'revoked')),
    approved       BOOLEAN  NOT NULL,
    created_at     BIGINT   NOT NULL,
    last_seen_at   BIGINT   NOT NULL,
    exchange_count BIGINT   NOT NULL,
    mismatch_count BIGINT   NOT NULL,
    networks       TEXT     NOT NULL,                    -- JSON array of prefixes
    trust_score    DOUBLE PRECISION NOT NULL,
    trust_level    TEXT     NOT NULL,
    trust_factors  TEXT     NOT NULL,                    -- JSON value
    revoked_at     BIGINT,
    -- Also the index for "devices of a key" (key_id is its first column) and for the cascade
    -- from api_keys, so key_id needs no index of its own.
    UNIQUE (key_id, jkt)
);

-- Refresh tokens, by the SHA-256 of the opaque token.
CREATE TABLE refresh_tokens (
    token_hash BYTEA  PRIMARY KEY,
    family_id  TEXT   NOT NULL,
    -- The key is reached through the device (deleting a key cascades to its devices and from
    -- there to their tokens), so key_id carries no foreign key that a purge would have to check.
    key_id     TEXT   NOT NULL,
    device_id  TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    jkt        TEXT   NOT NULL,
    scope      TEXT   NOT NULL,
    audience   TEXT   NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    spent_at   BIGINT,
    revoked_at BIGINT
);

CREATE INDEX refresh_tokens_family_id ON refresh_tokens (family_id);
-- Needed by the ON DELETE CASCADE from devices.
CREATE INDEX refresh_tokens_device_id ON refresh_tokens (device_id);

-- JWT signing keys; the private half is sealed with the master key.
CREATE TABLE signing_keys (
    kid            TEXT   PRIMARY KEY,
    public_key     BYTEA  NOT NULL,
    sealed_private BYTEA  NOT NULL,
    created_at     BIGINT NOT NULL,
    retired_at     BIGINT
);

-- The hash-chained audit log. seq is assigned by the appender (last + 1, under an advisory
-- lock), never by a sequence, so it has no gaps. details is JSON text, not JSONB, so it reads
-- back exactly as it was hashed.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    target    TEXT,
    ip        TEXT,
    details   TEXT   NOT NULL,
    prev_hash BYTEA  NOT NULL,
    hash      BYTEA  NOT NULL
);

-- Anomaly alerts. No foreign keys: an alert outlives the key or device it names.
CREATE TABLE alerts (
    id        TEXT COLLATE "C" PRIMARY KEY,
    at        BIGINT NOT NULL,
    kind      TEXT   NOT NULL,
    severity  TEXT   NOT NULL,
    key_id    TEXT,
    device_id TEXT,
    ip        TEXT,
    details   TEXT   NOT NULL                            -- JSON value
);

CREATE INDEX alerts_at ON alerts (at);
CREATE INDEX alerts_kind_at ON alerts (kind, at);
CREATE INDEX alerts_key_id_at ON alerts (key_id, at);

-- The revocation feed (contract 3.3). Identity values are handed out at insert time, not at
-- commit, so every insert takes the store's write-order lock first: the order of seq is then
-- the order of commits, and a poller's cursor never passes an entry that commits later.
CREATE TABLE revocations (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind    TEXT   NOT NULL CHECK (kind IN ('key', 'device', 'refresh_family')),
    subject TEXT   NOT NULL,                             -- key id, device thumbprint or family id
    at      BIGINT NOT NULL
);
