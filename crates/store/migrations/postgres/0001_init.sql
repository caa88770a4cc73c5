-- The store's schema on PostgreSQL: the same tables, columns and rules as on SQLite (whose
-- migrations/sqlite/ built it step by step), in PostgreSQL's types. Names sort and compare
-- byte-wise (COLLATE "C"), as on SQLite, whatever the database's locale.

-- The last revision handed out. Every write transaction locks this row first and takes its
-- revisions from it (see src/sql/dialect.rs, `write_lock`): writes are serialized and commit in
-- revision order, and a rolled-back write gives its revision back.
CREATE TABLE revision_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO revision_counter (id, revision) VALUES (1, 0);

-- The change feed: one row per write; `revision` is the global revision.
CREATE TABLE changes (
    revision BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    op TEXT NOT NULL,
    version BIGINT,
    committed_at_us BIGINT NOT NULL
);

-- Every change wakes the stores listening on `meridian_changes` (all control planes on this
-- database), at commit, in commit order; the payload is the revision.
CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meridian_changes', NEW.revision::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER notify_change AFTER INSERT ON changes
    FOR EACH ROW EXECUTE FUNCTION notify_change();

CREATE TABLE tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    org TEXT COLLATE "C",
    label TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE orgs (
    name TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE regions (
    name TEXT COLLATE "C" PRIMARY KEY,
    lat DOUBLE PRECISION NOT NULL,
    lon DOUBLE PRECISION NOT NULL
);

CREATE TABLE apps (
    org TEXT COLLATE "C" NOT NULL REFERENCES orgs(name),
    name TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org, name)
);

CREATE TABLE services (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    current_version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org, app, name),
    FOREIGN KEY (org, app) REFERENCES apps(org, name)
);

CREATE TABLE deployments (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    service TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    origin TEXT NOT NULL,
    rolled_back_from BIGINT,
    definition TEXT NOT NULL,
    PRIMARY KEY (org, app, service, version),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);

-- Which regions the current version of each service runs in.
CREATE TABLE service_regions (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    service TEXT COLLATE "C" NOT NULL,
    region TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org, app, service, region),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
CREATE INDEX service_regions_by_region ON service_regions (region);

-- Endpoints: instances of a service that proxies may send traffic to. `ports` is a JSON object
-- of port-number overrides by port name.
CREATE TABLE endpoints (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    service TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    region TEXT COLLATE "C" NOT NULL,
    address TEXT NOT NULL,
    ports TEXT NOT NULL,
    health TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org, app, service, id),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
CREATE INDEX endpoints_by_region ON endpoints (region);

-- Public domains: each (or a wildcard covering it) belongs to one service across all orgs. A row
-- is a service's claim, held from the revision `claimed_at` until the service drops the domain
-- or is deleted. The store checks overlaps (equal names, wildcards) in the writing transaction;
-- the primary key makes an equal name impossible twice whatever the code does.
CREATE TABLE domains (
    domain TEXT COLLATE "C" PRIMARY KEY,
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    service TEXT COLLATE "C" NOT NULL,
    claimed_at BIGINT NOT NULL,
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
CREATE INDEX domains_by_service ON domains (org, app, service);

-- Certificates of public domains: one row per claimed domain that has (or is getting) one; it
-- goes with the claim. `sealed_key` is the private key sealed with the control plane's secrets
-- key; the store never sees it in clear. Times are seconds since the Unix epoch.
CREATE TABLE certificates (
    domain TEXT COLLATE "C" PRIMARY KEY REFERENCES domains(domain) ON DELETE CASCADE,
    source TEXT NOT NULL CHECK (source IN ('acme', 'upload', 'local')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'valid', 'failed')),
    issuer TEXT,
    not_before BIGINT,
    not_after BIGINT,
    chain_pem TEXT,
    sealed_key BYTEA,
    last_error TEXT,
    next_attempt BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

-- ACME accounts, one per directory URL: the account's credentials (key and URL), sealed.
CREATE TABLE acme_accounts (
    directory TEXT COLLATE "C" PRIMARY KEY,
    sealed_credentials BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- The TLS session ticket keys every edge shares (one row): sealed, rotated by the control plane.
CREATE TABLE ticket_keys (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    sealed_keys BYTEA NOT NULL,
    rotated_at BIGINT NOT NULL
);

-- Each service's rollouts, per region and version, as the regions reported them: the status is
-- the region's RolloutStatus as JSON, `events` what happened to it, oldest first, as JSON.
CREATE TABLE rollouts (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    service TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    region TEXT COLLATE "C" NOT NULL,
    status TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    events TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (org, app, service, version, region),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);

-- A pause or promotion of a service's rollout: at most one per service, a RolloutControl as
-- JSON.
CREATE TABLE rollout_controls (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    service TEXT COLLATE "C" NOT NULL,
    control TEXT NOT NULL,
    PRIMARY KEY (org, app, service),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);

-- An app's secrets, sealed by the control plane (bound to `secret/<org>/<app>/<name>`);
-- `version` starts at 1 and grows by one at each change of the value.
CREATE TABLE secrets (
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    sealed_value BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org, app, name),
    FOREIGN KEY (org, app) REFERENCES apps(org, name) ON DELETE CASCADE
);

-- An org's secrets, seen by every app of the org that has no secret of the same name.
CREATE TABLE org_secrets (
    org TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    sealed_value BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org, name),
    FOREIGN KEY (org) REFERENCES orgs(name) ON DELETE CASCADE
);
