-- An app's secrets: the value is sealed by the control plane with its secrets key (bound to
-- `secret/<org>/<app>/<name>`); the store never sees it in clear. `version` starts at 1 and
-- grows by one at each change of the value. Rows go with the app.
CREATE TABLE secrets (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    sealed_value BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org, app, name),
    FOREIGN KEY (org, app) REFERENCES apps(org, name) ON DELETE CASCADE
);
