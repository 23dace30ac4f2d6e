-- mailgw schema 2: the relay. Every delivery attempt of a queue entry (when,
-- which node, which remote host, the reply code and text), and when an
-- entry's retry clock started (NULL: when it was queued; release and retry
-- restart it, so a released message gets its full max_queue_age of retries).

CREATE TABLE delivery_attempts (
    id INTEGER PRIMARY KEY,
    queue_id INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    attempted_at REAL NOT NULL,
    node TEXT,
    remote_host TEXT,
    code INTEGER,
    text TEXT NOT NULL
);
CREATE INDEX delivery_attempts_queue ON delivery_attempts (queue_id, attempted_at);

ALTER TABLE queue ADD COLUMN age_from REAL;

-- what a node looks for when it claims due entries
CREATE INDEX queue_claim ON queue (next_attempt_at) WHERE status = 'queued';
