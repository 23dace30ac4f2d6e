-- mailgw schema 1: tenancy (organizations, servers, domains, credentials)
-- and the queue (messages, their bodies in chunks, one queue row per recipient).
-- Times are epoch seconds (REAL); booleans are 0/1.

CREATE TABLE organizations (
    id INTEGER PRIMARY KEY,
    permalink TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    suspended BOOLEAN NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);

CREATE TABLE servers (
    id INTEGER PRIMARY KEY,
    organization_id INTEGER NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    permalink TEXT NOT NULL,
    name TEXT NOT NULL,
    allow_sender_header BOOLEAN NOT NULL DEFAULT 0,
    privacy_mode BOOLEAN NOT NULL DEFAULT 0,
    mode TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'development')),
    suspended BOOLEAN NOT NULL DEFAULT 0,
    send_limit INTEGER,
    created_at REAL NOT NULL,
    UNIQUE (organization_id, permalink)
);

CREATE TABLE domains (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    server_id INTEGER REFERENCES servers(id) ON DELETE CASCADE,
    organization_id INTEGER REFERENCES organizations(id) ON DELETE CASCADE,
    verified BOOLEAN NOT NULL DEFAULT 0,
    use_for_any BOOLEAN NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    CHECK ((server_id IS NULL) <> (organization_id IS NULL))
);
CREATE UNIQUE INDEX domains_server_name ON domains (server_id, name) WHERE server_id IS NOT NULL;
CREATE UNIQUE INDEX domains_organization_name ON domains (organization_id, name) WHERE organization_id IS NOT NULL;

CREATE TABLE credentials (
    id INTEGER PRIMARY KEY,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    type TEXT NOT NULL CHECK (type IN ('smtp', 'smtp-ip', 'api')),
    key TEXT NOT NULL UNIQUE,
    key_digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    hold BOOLEAN NOT NULL DEFAULT 0,
    last_used_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX credentials_server ON credentials (server_id, type);
CREATE INDEX credentials_type ON credentials (type);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    server_id INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    credential_id INTEGER REFERENCES credentials(id) ON DELETE SET NULL,
    mail_from TEXT NOT NULL,
    sender_domain TEXT,
    protocol TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX messages_server_created ON messages (server_id, created_at);

CREATE TABLE message_chunks (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (message_id, seq)
);

CREATE TABLE queue (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rcpt_to TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'held')),
    hold_reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    locked_by TEXT,
    locked_until REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX queue_due ON queue (status, next_attempt_at);
CREATE INDEX queue_message ON queue (message_id);
