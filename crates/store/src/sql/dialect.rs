//! The few statements SQLite and PostgreSQL write differently. Everything else is one SQL text
//! that both accept (`$N` parameters, `ON CONFLICT`, `IS NOT DISTINCT FROM`, `string_agg`).

use sqlx::{AnyConnection, Database, Postgres};

/// Which database a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// SQLite: one writer connection serializes every write.
    Sqlite,
    /// PostgreSQL: writers on any number of connections and processes, serialized by a lock
    /// on the revision counter (see [`Dialect::write_lock`]).
    Postgres,
}

impl Dialect {
    /// The dialect of `conn`.
    pub(super) fn of(conn: &AnyConnection) -> Dialect {
        if conn.backend_name() == <Postgres as Database>::NAME {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    /// The statement a write transaction starts with, if the backend needs one to serialize
    /// writes.
    ///
    /// PostgreSQL: the row lock on the revision counter, held until the transaction ends. With
    /// it taken first, write transactions run one at a time, as on SQLite: the checks a write
    /// makes (exists, already exists, domain claims, secret references) and its writes are one
    /// step, because under READ COMMITTED every statement after the lock sees every write
    /// committed before it and no other write can commit meanwhile. And revisions commit in
    /// order: a transaction takes revision N+1 only once the holder of N has ended, and
    /// PostgreSQL releases a transaction's locks only after its commit is visible to new
    /// snapshots, so a reader that sees N+1 sees N; a transaction that rolls back gives its
    /// revision back (the counter's update is undone), so the feed has no gap. A sequence
    /// would not do: it hands out numbers outside transactions, so N+1 could commit before N
    /// (a reader would skip N for good) and a rollback would leave a hole. An advisory
    /// transaction lock would serialize writers as well; the counter row keeps the lock and the
    /// number it guards in one place, and shares no key space with advisory locks taken for
    /// other work.
    pub(super) fn write_lock(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => {
                Some("SELECT revision FROM revision_counter WHERE id = 1 FOR UPDATE")
            }
        }
    }

    /// The statement that appends a change (binds: kind, key, op, version, committed_at_us)
    /// and returns its revision, one more than the last.
    pub(super) fn record_change(self) -> &'static str {
        match self {
            // The single writer makes AUTOINCREMENT's next value the next revision.
            Dialect::Sqlite => {
                "INSERT INTO changes (kind, key, op, version, committed_at_us) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING revision"
            }
            // The counter row is locked by this transaction already (`write_lock`).
            Dialect::Postgres => {
                "WITH next AS (UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 \
                               RETURNING revision) \
                 INSERT INTO changes (revision, kind, key, op, version, committed_at_us) \
                 SELECT revision, $1, $2, $3, $4, $5 FROM next RETURNING revision"
            }
        }
    }

    /// The one statement that writes a service's new version, if the backend has one (else:
    /// [`Dialect::record_change`], then the `services` row, then the deployment, then the
    /// region index, each a round trip): appends its change, makes it the current version,
    /// stores the deployment and, when `$11` is not null, makes the JSON list of regions in it
    /// the service's regions in the region index; returns the revision. Binds: key, version,
    /// committed_at_us, org, app, service, created_at, origin, rolled_back_from, definition,
    /// regions.
    ///
    /// PostgreSQL: the foreign keys on the `services` row (of the deployment and of the region
    /// index) are checked at the end of the statement, when the row is there. The regions
    /// dropped and those added are disjoint, so the two parts of the index's change do not
    /// meet.
    pub(super) fn write_version(self) -> Option<String> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(format!(
                "WITH next AS (UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 \
                               RETURNING revision), \
                      change AS (INSERT INTO changes \
                                 (revision, kind, key, op, version, committed_at_us) \
                                 SELECT revision, 'service', $1, 'put', $2, $3 FROM next), \
                      current AS (INSERT INTO services \
                                  (org, app, name, current_version, updated_at) \
                                  VALUES ($4, $5, $6, $2, $7) \
                                  ON CONFLICT (org, app, name) DO UPDATE SET \
                                  current_version = excluded.current_version, \
                                  updated_at = excluded.updated_at), \
                      dropped AS (DELETE FROM service_regions \
                                  WHERE $11 IS NOT NULL AND org = $4 AND app = $5 \
                                    AND service = $6 AND region NOT IN (SELECT value FROM {regions})), \
                      added AS (INSERT INTO service_regions (org, app, service, region) \
                                SELECT $4, $5, $6, value FROM {regions} \
                                ON CONFLICT DO NOTHING) \
                 INSERT INTO deployments (org, app, service, version, revision, created_at, \
                                          origin, rolled_back_from, definition) \
                 SELECT $4, $5, $6, $2, revision, $7, $8, $9, $10 FROM next \
                 RETURNING revision",
                regions = self.json_strings("$11"),
            )),
        }
    }

    /// The one statement that writes several new versions of services (each service at most
    /// once), if the backend has one ([`pending`](super::pending)): what
    /// [`Dialect::write_version`] does for each, with consecutive revisions in the order given;
    /// returns their revisions. Binds: the JSON list of versions (`ord`, from 1, `key`, `org`,
    /// `app`, `name`, `version`, `definition`, `regions`: a list, or null to leave the region
    /// index as it is), committed_at_us, created_at.
    pub(super) fn write_versions(self) -> Option<String> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(format!(
                "WITH input AS (SELECT x.* FROM {rows}, \
                                jsonb_to_record(rows.value) AS x(ord BIGINT, key TEXT, org TEXT, \
                                app TEXT, name TEXT, version BIGINT, definition TEXT, \
                                regions JSONB)), \
                      next AS (UPDATE revision_counter \
                               SET revision = revision + (SELECT COUNT(*) FROM input) \
                               WHERE id = 1 RETURNING revision), \
                      numbered AS (SELECT input.*, \
                                   next.revision - (SELECT COUNT(*) FROM input) + input.ord \
                                   AS revision FROM input, next), \
                      change AS (INSERT INTO changes \
                                 (revision, kind, key, op, version, committed_at_us) \
                                 SELECT revision, 'service', key, 'put', version, $2 \
                                 FROM numbered ORDER BY revision), \
                      current AS (INSERT INTO services \
                                  (org, app, name, current_version, updated_at) \
                                  SELECT org, app, name, version, $3 FROM numbered \
                                  ON CONFLICT (org, app, name) DO UPDATE SET \
                                  current_version = excluded.current_version, \
                                  updated_at = excluded.updated_at), \
                      dropped AS (DELETE FROM service_regions r USING numbered n \
                                  WHERE n.regions IS NOT NULL AND r.org = n.org \
                                    AND r.app = n.app AND r.service = n.name \
                                    AND NOT (n.regions @> jsonb_build_array(r.region))), \
                      added AS (INSERT INTO service_regions (org, app, service, region) \
                                SELECT n.org, n.app, n.name, e.value FROM numbered n, \
                                jsonb_array_elements_text(n.regions) AS e(value) \
                                WHERE n.regions IS NOT NULL ON CONFLICT DO NOTHING) \
                 INSERT INTO deployments (org, app, service, version, revision, created_at, \
                                          origin, rolled_back_from, definition) \
                 SELECT org, app, name, version, revision, $3, 'apply', NULL, definition \
                 FROM numbered RETURNING revision",
                rows = Self::json_values("$1", "rows"),
            )),
        }
    }

    /// The statement a read transaction starts with to see one snapshot of the whole database
    /// (SQLite's read transactions do from their first read).
    pub(super) fn snapshot(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
        }
    }

    /// The statement listing the store's tables and their columns (table, column), without
    /// the migrations' own table, PostgreSQL's revision counter and the leases (who works
    /// now is not desired state).
    pub(super) fn columns(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "SELECT m.name, c.name FROM sqlite_master m JOIN pragma_table_info(m.name) c \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
                   AND m.name NOT IN ('_sqlx_migrations', 'leases')"
            }
            Dialect::Postgres => {
                "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) \
                 FROM information_schema.columns WHERE table_schema = current_schema() \
                   AND table_name NOT IN ('_sqlx_migrations', 'revision_counter', 'leases')"
            }
        }
    }

    /// The statement that makes the last revision handed out `$1`, after a restore (SQLite's
    /// AUTOINCREMENT follows the revisions inserted).
    pub(super) fn set_revision(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("UPDATE revision_counter SET revision = $1 WHERE id = 1"),
        }
    }

    /// An expression for the database's clock now, in milliseconds since the Unix epoch
    /// (leases expire by it, so that replicas whose clocks differ agree).
    pub(super) fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// What a `SELECT` in a write transaction ends with to keep the rows it read from being
    /// changed by others until the transaction ends (SQLite: nothing; its one writer does).
    pub(super) fn share_lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR SHARE",
        }
    }

    /// A table of the strings of the JSON array bound at `param` (e.g. `$5`), in a column
    /// named `value`, to use after `FROM`.
    ///
    /// PostgreSQL: the elements go through an array and `unnest`, which the planner expects to
    /// give 10 rows, where it expects 100 from a `jsonb_array_elements` call. These lists are
    /// short (a service's keys, regions or domains), and with 100 rows expected the planner
    /// joins them by reading the whole joined table (`services`: every service, about 1.4 ms
    /// at 10,000 services, per statement) instead of looking each one up in its index.
    pub(super) fn json_strings(self, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_each({param})"),
            Dialect::Postgres => format!(
                "unnest(ARRAY(SELECT jsonb_array_elements_text(CAST({param} AS jsonb)))) \
                 AS strings(value)"
            ),
        }
    }

    /// A table of the service keys in the JSON array of `[org, app, name]` triples bound at
    /// `param`, with columns `org`, `app` and `name`, to use after `FROM` (as `alias`); on
    /// PostgreSQL through `unnest`, for the reason given at [`Dialect::json_strings`].
    pub(super) fn json_keys(self, param: &str, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!(
                "(SELECT json_extract(value, '$[0]') AS org, json_extract(value, '$[1]') AS app, \
                 json_extract(value, '$[2]') AS name FROM json_each({param})) AS {alias}"
            ),
            Dialect::Postgres => format!(
                "(SELECT value->>0 AS org, value->>1 AS app, value->>2 AS name FROM {}) AS {alias}",
                Self::json_values(param, "triples")
            ),
        }
    }

    /// PostgreSQL: a table of the elements of the JSON array bound at `param`, in a column
    /// named `value` (`jsonb`), as `alias`, to use after `FROM`; through `unnest`, for the
    /// reason given at [`Dialect::json_strings`].
    fn json_values(param: &str, alias: &str) -> String {
        format!(
            "unnest(ARRAY(SELECT jsonb_array_elements(CAST({param} AS jsonb)))) AS {alias}(value)"
        )
    }
}
