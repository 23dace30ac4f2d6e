-- mailgw schema 6: webhooks (docs/webhooks.md). A server's webhooks (a URL
-- and the events it wants, or all of them), the durable outbox of requests
-- to send (one row per webhook and event, written in the same transaction as
-- the change that caused the event), every attempt at sending one, and the
-- RSA key that signs them (one for the whole platform, shared by every node,
-- as Postal's X-Postal-Signature key is). Outbox rows are claimed by a node
-- with a lease, as queue entries are (see the relay's claims).

CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL,
    all_events BOOLEAN NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    last_used_at REAL
);
CREATE INDEX webhooks_server ON webhooks (server_id);

CREATE TABLE webhook_events (
    webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    PRIMARY KEY (webhook_id, event)
);

CREATE TABLE webhook_requests (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    locked_by TEXT,
    locked_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- what a node looks for when it claims due requests
CREATE INDEX webhook_requests_due ON webhook_requests (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_requests_webhook ON webhook_requests (webhook_id, id);
-- what the retention prune deletes
CREATE INDEX webhook_requests_settled ON webhook_requests (updated_at) WHERE status <> 'pending';

CREATE TABLE webhook_attempts (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES webhook_requests(id) ON DELETE CASCADE,
    attempted_at REAL NOT NULL,
    node TEXT,
    status_code INTEGER,
    error TEXT,
    will_retry BOOLEAN NOT NULL DEFAULT 0
);
CREATE INDEX webhook_attempts_request ON webhook_attempts (request_id, attempted_at);

-- one row: the key every node signs with (PKCS#8 PEM)
CREATE TABLE webhook_signing_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    private_key TEXT NOT NULL,
    created_at REAL NOT NULL
);
