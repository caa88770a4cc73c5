-- A pause or promotion of a service's rollout (`meridian rollout pause|promote`): at most one
-- per service, for one version; `resume` deletes it. The control is a RolloutControl as JSON
-- (version and mode). Rows go with the service.
CREATE TABLE rollout_controls (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    control TEXT NOT NULL,
    PRIMARY KEY (org, app, service),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
