-- Refresh tokens no longer reference their device by a foreign key, and lose the index on
-- device_id that the ON DELETE CASCADE needed. Device ids are not in time order, so every
-- token insert (each exchange) wrote a random page of that index: measured at ~7 % of the
-- server's CPU and ~15 % of the exchange rate on SQLite (docs/benchmarks.md, change 19).
-- Nothing looks tokens up by device. A purged key's devices still go with it; its tokens,
-- unusable without the key, go with the hourly purge of expired tokens (docs/design.md,
-- "Data lifecycle").
ALTER TABLE refresh_tokens DROP CONSTRAINT refresh_tokens_device_id_fkey;
DROP INDEX refresh_tokens_device_id;
