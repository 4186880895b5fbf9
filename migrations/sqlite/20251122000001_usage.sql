-- Per-request usage of each key, written in batches off the request path and kept for the
-- retention period (--usage-retention-days). Never holds a secret: key id, route, status.
CREATE TABLE usage_events (
    key_id     TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    endpoint   TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    ip         TEXT,
    user_agent TEXT
);

CREATE INDEX usage_events_key_at ON usage_events (key_id, at);
CREATE INDEX usage_events_at ON usage_events (at);
