-- An org's secrets, seen by every app of the org that has no secret of the same name: sealed
-- like an app's (bound to `org-secret/<org>/<name>`); `version` starts at 1 and grows by one at
-- each change of the value. Rows go with the org.
CREATE TABLE org_secrets (
    org TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    sealed_value BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, name),
    FOREIGN KEY (org) REFERENCES orgs(name) ON DELETE CASCADE
);
