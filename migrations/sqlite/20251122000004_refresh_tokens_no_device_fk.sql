-- Refresh tokens no longer reference their device by a foreign key, and lose the index on
-- device_id that the ON DELETE CASCADE needed. Device ids are not in time order, so every
-- token insert (each exchange) wrote a random page of that index: measured at ~7 % of the
-- server's CPU and ~15 % of the exchange rate (docs/benchmarks.md, change 19). Nothing looks
-- tokens up by device. A purged key's devices still go with it; its tokens, unusable without
-- the key, go with the hourly purge of expired tokens (docs/design.md, "Data lifecycle").
--
-- SQLite cannot drop a foreign key, so the table is rebuilt (no other table references it).
CREATE TABLE refresh_tokens_new (
    token_hash BLOB    NOT NULL PRIMARY KEY,
    family_id  TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    jkt        TEXT    NOT NULL,
    scope      TEXT    NOT NULL,
    audience   TEXT    NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at   INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

INSERT INTO refresh_tokens_new (token_hash, family_id, key_id, device_id, jkt, scope, audience,
                                issued_at, expires_at, spent_at, revoked_at)
SELECT token_hash, family_id, key_id, device_id, jkt, scope, audience,
       issued_at, expires_at, spent_at, revoked_at
FROM refresh_tokens;

DROP TABLE refresh_tokens;
ALTER TABLE refresh_tokens_new RENAME TO refresh_tokens;

CREATE INDEX refresh_tokens_family_id ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
