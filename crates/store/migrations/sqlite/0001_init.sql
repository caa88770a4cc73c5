-- The change feed: one row per write; `revision` is the global revision.
CREATE TABLE changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    version INTEGER,
    committed_at_us INTEGER NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    org TEXT,
    label TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE orgs (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE regions (
    name TEXT PRIMARY KEY,
    lat REAL NOT NULL,
    lon REAL NOT NULL
);

CREATE TABLE apps (
    org TEXT NOT NULL REFERENCES orgs(name),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, name)
);

CREATE TABLE services (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    current_version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, app, name),
    FOREIGN KEY (org, app) REFERENCES apps(org, name)
);

CREATE TABLE deployments (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    origin TEXT NOT NULL,
    rolled_back_from INTEGER,
    definition TEXT NOT NULL,
    PRIMARY KEY (org, app, service, version),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);

-- Which regions the current version of each service runs in.
CREATE TABLE service_regions (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    region TEXT NOT NULL,
    PRIMARY KEY (org, app, service, region),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
CREATE INDEX service_regions_by_region ON service_regions (region);
