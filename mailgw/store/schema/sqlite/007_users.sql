-- mailgw schema 7: the web interface's users (docs/web.md). A user is an
-- admin (sees every organization) or a member of some organizations. A
-- password is stored only as its Argon2id hash; sessions and one-time
-- set-password links only as the SHA-256 of their random token, so that a
-- copy of the database opens no session.

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    -- NULL until a password is set (through a set-password link)
    password_hash TEXT,
    admin BOOLEAN NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);

CREATE TABLE user_organizations (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    organization_id INTEGER NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, organization_id)
);
CREATE INDEX user_organizations_org ON user_organizations (organization_id);

-- purpose 'session': a login, with its CSRF token; 'set_password': a link
CREATE TABLE user_tokens (
    digest TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    purpose TEXT NOT NULL CHECK (purpose IN ('session', 'set_password')),
    csrf_token TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX user_tokens_expires ON user_tokens (expires_at);
CREATE INDEX user_tokens_user ON user_tokens (user_id);
