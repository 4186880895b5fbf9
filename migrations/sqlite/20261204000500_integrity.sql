-- Database-writer protection (issue 15 item 8; docs/design.md, "Integrity against a database
-- writer"). One row: a random 32-byte integrity root sealed under the master key
-- (XChaCha20-Poly1305, purpose label as associated data). The keys that MAC API key hashes,
-- the audit chain and audit checkpoints are derived from it, so a master key rotation only
-- re-seals this row. keybound creates it on its first start with this version, in the same
-- transaction that wraps every existing key hash and appends the `integrity.enable` audit row.
CREATE TABLE integrity_keys (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    sealed     BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
