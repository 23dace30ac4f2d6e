-- mailgw schema 4: DKIM keys and domain verification tokens.
-- Each domain has DKIM keys (RFC 6376), one active and, during a rotation,
-- retiring ones that stay published until the operator finishes the rotation
-- (mail signed with them may still be in flight or queued elsewhere). The
-- private key is PEM text (PKCS#8). The verification token is what the
-- ownership TXT record carries ("mailgw-verification <token>"); domains that
-- exist already get one here, 24 hex characters from SQLite's CSPRNG.

ALTER TABLE domains ADD COLUMN verification_token TEXT;
UPDATE domains SET verification_token = lower(hex(randomblob(12))) WHERE verification_token IS NULL;

CREATE TABLE dkim_keys (
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    private_key TEXT NOT NULL,
    retiring BOOLEAN NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    UNIQUE (domain_id, selector)
);
