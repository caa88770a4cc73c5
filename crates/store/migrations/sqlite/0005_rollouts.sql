-- Each service's rollouts, per region and version, as the regions reported them: the history
-- behind `meridian rollout history`. The status is the region's RolloutStatus as JSON (phase,
-- strategy, steps, times, the failed gate with its figures). Rows go with the service.
CREATE TABLE rollouts (
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    version INTEGER NOT NULL,
    region TEXT NOT NULL,
    status TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (org, app, service, version, region),
    FOREIGN KEY (org, app, service) REFERENCES services(org, app, name) ON DELETE CASCADE
);
