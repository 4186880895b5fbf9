-- Usage as per-minute totals per key (issue 18): the usage report only ever read requests,
-- errors, mean and maximum latency per minute or hour, so a row per request (with its IP and
-- User-Agent, which nothing read) is replaced by one row per key and minute, added to by the
-- server's usage flush (at most once a second per instance; several instances add up).
-- Existing events are folded into their minutes; nothing the report showed is lost.
CREATE TABLE usage_minutes (
    key_id         TEXT    NOT NULL,
    minute         INTEGER NOT NULL,
    requests       INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    latency_sum_us INTEGER NOT NULL,
    latency_max_us INTEGER NOT NULL,
    PRIMARY KEY (key_id, minute)
);

CREATE INDEX usage_minutes_minute ON usage_minutes (minute);

INSERT INTO usage_minutes (key_id, minute, requests, errors, latency_sum_us, latency_max_us)
SELECT key_id, (at / 60) * 60, COUNT(*),
       SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(latency_us), MAX(latency_us)
FROM usage_events
GROUP BY key_id, (at / 60) * 60;

DROP TABLE usage_events;
