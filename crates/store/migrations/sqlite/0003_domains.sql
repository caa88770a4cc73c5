-- Public domains: each (or a wildcard covering it) belongs to one service across all orgs. A row
-- is a service's claim, held from the revision `claimed_at` until the service drops the domain
-- or is deleted. The store checks overlaps (equal names, wildcards) in the writing transaction;
-- the primary key makes an equal name impossible twice whatever the code does.
CREATE TABLE domains (
    domain TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
CREATE INDEX domains_by_service ON domains (org, app, service);

-- The domains of current versions stored before claims existed: the earliest claim wins.
INSERT OR IGNORE INTO domains (domain, org, app, service, claimed_at)
SELECT j.value, s.org, s.app, s.name, d.revision
FROM services s
JOIN deployments d ON d.org = s.org AND d.app = s.app AND d.service = s.name
    AND d.version = s.current_version,
    json_each(d.definition, '$.domains') j
ORDER BY d.revision;
