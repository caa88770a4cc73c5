-- Endpoints: instances of a service that proxies may send traffic to. Registered through the API
-- until agents report them. `ports` is a JSON object of port-number overrides by port name.
CREATE TABLE endpoints (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    id TEXT NOT NULL,
    region TEXT NOT NULL,
    address TEXT NOT NULL,
    ports TEXT NOT NULL,
    health TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, app, service, id),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
CREATE INDEX endpoints_by_region ON endpoints (region);
