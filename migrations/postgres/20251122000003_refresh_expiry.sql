-- The hourly purge finds expired refresh tokens by expiry. expires_at grows with time, so new
-- tokens append to this index.
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
