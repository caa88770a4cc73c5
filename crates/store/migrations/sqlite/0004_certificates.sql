-- Certificates of public domains, owned by the platform: one row per claimed domain that has (or
-- is getting) a certificate. A row lives only as long as its domain's claim: when the service
-- drops the domain or is deleted, the row goes with the claim (ON DELETE CASCADE), so a released
-- domain's certificate is never published again.
-- `sealed_key` is the private key sealed with the control plane's secrets key (AEAD); the
-- store never sees it in clear. Times are seconds since the Unix epoch.
CREATE TABLE certificates (
    domain TEXT PRIMARY KEY REFERENCES domains(domain) ON DELETE CASCADE,
    source TEXT NOT NULL CHECK (source IN ('acme', 'upload', 'local')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'valid', 'failed')),
    issuer TEXT,
    not_before INTEGER,
    not_after INTEGER,
    chain_pem TEXT,
    sealed_key BLOB,
    last_error TEXT,
    next_attempt INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);

-- ACME accounts, one per directory URL: the account's credentials (key and URL), sealed.
CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    sealed_credentials BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- The TLS session ticket keys every edge shares (one row): sealed, rotated by the control plane.
CREATE TABLE ticket_keys (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_keys BLOB NOT NULL,
    rotated_at INTEGER NOT NULL
);
