//! A whole store as one file, and back: every row of every table (definitions and their
//! versions, orgs, tokens as hashes, regions, endpoints, domain claims, certificates, sealed
//! secrets and keys, rollouts, the purges of the edges' caches, and the change feed with its revisions), as JSON. A backup of
//! either backend restores into either; restored into an empty store, it reads exactly as the
//! store it was taken from (same revisions, same feed).
//!
//! The tables are listed here, column by column ([`TABLES`]); a backup first checks that the
//! database has no table or column the list misses, so a migration that adds one cannot make
//! backups silently incomplete.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row};

use super::{publish, SqlStore};
use crate::{Result, StoreError};

/// The format's name and version: a backup's first field.
const FORMAT: &str = "meridian-store-backup/1";

/// How a column's values are stored and written in a backup.
#[derive(Clone, Copy)]
enum Kind {
    /// A 64-bit integer: a JSON number.
    Int,
    /// A double: a JSON number.
    Real,
    /// Text: a JSON string.
    Text,
    /// Bytes: a JSON string of hex digits.
    Bytes,
}

use Kind::{Bytes, Int, Real, Text};

/// A table of the store, as backed up.
struct Table {
    name: &'static str,
    /// Every column, the primary key's first.
    columns: &'static [(&'static str, Kind)],
    /// How many of the first columns make the primary key (rows are written in its order).
    key: usize,
}

/// Every table, each after those it references (the order of a restore).
const TABLES: &[Table] = &[
    Table {
        name: "changes",
        columns: &[
            ("revision", Int),
            ("kind", Text),
            ("key", Text),
            ("op", Text),
            ("version", Int),
            ("committed_at_us", Int),
            ("fence_token", Int),
        ],
        key: 1,
    },
    Table {
        name: "orgs",
        columns: &[("name", Text), ("created_at", Int)],
        key: 1,
    },
    Table {
        name: "tokens",
        columns: &[
            ("id", Text),
            ("org", Text),
            ("label", Text),
            ("hash", Text),
            ("created_at", Int),
        ],
        key: 1,
    },
    Table {
        name: "regions",
        columns: &[("name", Text), ("lat", Real), ("lon", Real)],
        key: 1,
    },
    Table {
        name: "apps",
        columns: &[("org", Text), ("name", Text), ("created_at", Int)],
        key: 2,
    },
    Table {
        name: "services",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("name", Text),
            ("current_version", Int),
            ("updated_at", Int),
        ],
        key: 3,
    },
    Table {
        name: "deployments",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("service", Text),
            ("version", Int),
            ("revision", Int),
            ("created_at", Int),
            ("origin", Text),
            ("rolled_back_from", Int),
            ("definition", Text),
        ],
        key: 4,
    },
    Table {
        name: "service_regions",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("service", Text),
            ("region", Text),
        ],
        key: 4,
    },
    Table {
        name: "endpoints",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("service", Text),
            ("id", Text),
            ("region", Text),
            ("address", Text),
            ("ports", Text),
            ("health", Text),
            ("updated_at", Int),
        ],
        key: 4,
    },
    Table {
        name: "domains",
        columns: &[
            ("domain", Text),
            ("org", Text),
            ("app", Text),
            ("service", Text),
            ("claimed_at", Int),
        ],
        key: 1,
    },
    Table {
        name: "certificates",
        columns: &[
            ("domain", Text),
            ("source", Text),
            ("state", Text),
            ("issuer", Text),
            ("not_before", Int),
            ("not_after", Int),
            ("chain_pem", Text),
            ("sealed_key", Bytes),
            ("last_error", Text),
            ("next_attempt", Int),
            ("attempts", Int),
            ("updated_at", Int),
        ],
        key: 1,
    },
    Table {
        name: "acme_accounts",
        columns: &[
            ("directory", Text),
            ("sealed_credentials", Bytes),
            ("created_at", Int),
        ],
        key: 1,
    },
    Table {
        name: "ticket_keys",
        columns: &[("id", Int), ("sealed_keys", Bytes), ("rotated_at", Int)],
        key: 1,
    },
    Table {
        name: "rollouts",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("service", Text),
            ("version", Int),
            ("region", Text),
            ("status", Text),
            ("recorded_at", Int),
            ("events", Text),
        ],
        key: 5,
    },
    Table {
        name: "rollout_controls",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("service", Text),
            ("control", Text),
        ],
        key: 3,
    },
    Table {
        name: "secrets",
        columns: &[
            ("org", Text),
            ("app", Text),
            ("name", Text),
            ("version", Int),
            ("sealed_value", Bytes),
            ("updated_at", Int),
        ],
        key: 3,
    },
    Table {
        name: "org_secrets",
        columns: &[
            ("org", Text),
            ("name", Text),
            ("version", Int),
            ("sealed_value", Bytes),
            ("updated_at", Int),
        ],
        key: 2,
    },
    Table {
        name: "purges",
        columns: &[
            ("sequence", Int),
            ("org", Text),
            ("app", Text),
            ("target", Text),
            ("created_at", Int),
        ],
        key: 1,
    },
];

/// A backup file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    /// [`FORMAT`].
    format: String,
    /// The revision of the last write in it (0 for an empty store).
    revision: u64,
    /// The rows of each table, by table name.
    tables: BTreeMap<String, Vec<Map<String, Value>>>,
}

impl SqlStore {
    /// The whole store as one file (JSON), read from one snapshot while writes go on. Sealed
    /// values stay sealed: restoring them is useful only with the secrets key they were
    /// sealed with.
    pub async fn backup(&self) -> Result<Vec<u8>> {
        let mut tx = self.reader.begin().await?;
        if let Some(snapshot) = self.dialect.snapshot() {
            sqlx::query(snapshot).execute(&mut *tx).await?;
        }
        check_coverage(&mut tx, self.dialect.columns()).await?;
        let mut tables = BTreeMap::new();
        for table in TABLES {
            let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                names.join(", "),
                table.name,
                names[..table.key].join(", ")
            );
            let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
            let rows = rows
                .iter()
                .map(|row| row_to_json(table, row))
                .collect::<Result<Vec<_>>>()?;
            tables.insert(table.name.to_owned(), rows);
        }
        tx.rollback().await?;
        let revision = tables["changes"]
            .last()
            .and_then(|change| change.get("revision")?.as_u64())
            .unwrap_or(0);
        let backup = Backup {
            format: FORMAT.to_owned(),
            revision,
            tables,
        };
        serde_json::to_vec(&backup)
            .map_err(|e| StoreError::Corrupt(format!("the backup does not serialize: {e}")))
    }

    /// Fills this store, which must be empty, with `backup` (made by [`SqlStore::backup`] on
    /// either backend), in one transaction; returns its revision. Fails with
    /// [`StoreError::InvalidBackup`] naming the first thing wrong in it, and
    /// [`StoreError::Conflict`] when the store is not empty; either way nothing is written.
    pub async fn restore(&self, backup: &[u8]) -> Result<u64> {
        let backup: Backup = serde_json::from_slice(backup)
            .map_err(|e| StoreError::InvalidBackup(format!("not a backup file: {e}")))?;
        if backup.format != FORMAT {
            return Err(StoreError::InvalidBackup(format!(
                "format: `{}` is not `{FORMAT}`",
                backup.format
            )));
        }
        if let Some(unknown) = backup
            .tables
            .keys()
            .find(|name| TABLES.iter().all(|t| t.name != name.as_str()))
        {
            return Err(StoreError::InvalidBackup(format!(
                "tables.{unknown}: no such table (a backup of a newer version?)"
            )));
        }
        let last = backup.tables.get("changes").and_then(|changes| {
            let revision = changes.iter().filter_map(|c| c.get("revision")?.as_u64());
            revision.max()
        });
        if last.unwrap_or(0) != backup.revision {
            return Err(StoreError::InvalidBackup(format!(
                "revision: {} is not the last revision of its changes ({})",
                backup.revision,
                last.unwrap_or(0)
            )));
        }
        let mut tx = self.begin().await?;
        for table in TABLES {
            let sql = format!("SELECT 1 FROM {} LIMIT 1", table.name);
            if sqlx::query(&sql).fetch_optional(&mut *tx).await?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "a backup restores only into an empty store; this one has {}",
                    table.name
                )));
            }
        }
        for table in TABLES {
            for (index, row) in backup
                .tables
                .get(table.name)
                .into_iter()
                .flatten()
                .enumerate()
            {
                insert(&mut tx, table, index, row).await?;
            }
        }
        if let Some(set) = self.dialect.set_revision() {
            let revision = i64::try_from(backup.revision)
                .map_err(|_| StoreError::InvalidBackup("revision: too large".to_owned()))?;
            sqlx::query(set).bind(revision).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.memory.clear();
        publish(&self.latest, backup.revision);
        Ok(backup.revision)
    }
}

/// Fails when the database has a table or column [`TABLES`] misses (`columns`: the statement
/// listing them, table then column).
async fn check_coverage(conn: &mut AnyConnection, columns: &str) -> Result<()> {
    let listed: BTreeSet<(String, String)> = sqlx::query_as(columns)
        .fetch_all(conn)
        .await?
        .into_iter()
        .collect();
    let known: BTreeSet<(String, String)> = TABLES
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .map(|(c, _)| (t.name.to_owned(), (*c).to_owned()))
        })
        .collect();
    match listed.difference(&known).next() {
        None => Ok(()),
        Some((table, column)) => Err(StoreError::Corrupt(format!(
            "column `{column}` of table `{table}` is not in backups; they would be incomplete"
        ))),
    }
}

/// `row` of `table` as a JSON object.
fn row_to_json(table: &Table, row: &AnyRow) -> Result<Map<String, Value>> {
    let mut object = Map::new();
    for (index, (name, kind)) in table.columns.iter().enumerate() {
        let value = match kind {
            Int => row.try_get::<Option<i64>, _>(index)?.map(Value::from),
            Real => row.try_get::<Option<f64>, _>(index)?.map(Value::from),
            Text => row.try_get::<Option<String>, _>(index)?.map(Value::from),
            Bytes => row
                .try_get::<Option<Vec<u8>>, _>(index)?
                .map(|bytes| Value::from(hex::encode(bytes))),
        };
        object.insert((*name).to_owned(), value.unwrap_or(Value::Null));
    }
    Ok(object)
}

/// Inserts `row`, the `index`th of `table` in the backup, inside the restore's transaction.
async fn insert(
    conn: &mut AnyConnection,
    table: &Table,
    index: usize,
    row: &Map<String, Value>,
) -> Result<()> {
    let at = format!("tables.{}[{index}]", table.name);
    let field = |column: &str| format!("{at}.{column}");
    if let Some(unknown) = row
        .keys()
        .find(|name| table.columns.iter().all(|(c, _)| c != name))
    {
        return Err(StoreError::InvalidBackup(format!(
            "{}: no such column",
            field(unknown)
        )));
    }
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.name,
        names.join(", "),
        params.join(", ")
    );
    let mut query = sqlx::query::<Any>(&sql);
    for (name, kind) in table.columns {
        let value = row.get(*name).unwrap_or(&Value::Null);
        let wrong = |expected: &str| {
            StoreError::InvalidBackup(format!("{}: expected {expected}", field(name)))
        };
        query = match (kind, value) {
            (Int, Value::Null) => query.bind(None::<i64>),
            (Int, value) => query.bind(value.as_i64().ok_or_else(|| wrong("an integer"))?),
            (Real, Value::Null) => query.bind(None::<f64>),
            (Real, value) => query.bind(value.as_f64().ok_or_else(|| wrong("a number"))?),
            (Text, Value::Null) => query.bind(None::<String>),
            (Text, value) => {
                query.bind(value.as_str().ok_or_else(|| wrong("a string"))?.to_owned())
            }
            (Bytes, Value::Null) => query.bind(None::<Vec<u8>>),
            (Bytes, value) => {
                let text = value.as_str().ok_or_else(|| wrong("hex digits"))?;
                query.bind(hex::decode(text).map_err(|_| wrong("hex digits"))?)
            }
        };
    }
    query
        .execute(conn)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Backend(e) => {
                StoreError::InvalidBackup(format!("{at}: refused by the database: {e}"))
            }
            other => other,
        })?;
    Ok(())
}
