//! Where a test's stores live: a SQLite file, or a PostgreSQL cluster of the test's own.

use std::net::{IpAddr, Ipv4Addr};

use meridian_store::testing::TestPostgres;
use meridian_store::SqlStore;

/// The loopback address the tests' PostgreSQL clusters listen on (each at a port of its own).
pub const POSTGRES_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 120, 1));

/// A backend holding one database, in which a test opens its stores.
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite(tempfile::TempDir),
    /// Database `postgres` of a cluster started for the test.
    Postgres(TestPostgres),
}

impl Backend {
    /// An empty SQLite database.
    pub fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    /// An empty PostgreSQL database; `None` (skip) without PostgreSQL, unless strict.
    pub fn postgres() -> Option<Backend> {
        TestPostgres::start(POSTGRES_HOST).map(Backend::Postgres)
    }

    /// A store on another, empty database of the backend, `name`.
    pub async fn open_empty(&self, name: &str) -> SqlStore {
        match self {
            Backend::Sqlite(dir) => {
                let path = dir.path().join(format!("{name}.db"));
                SqlStore::open_sqlite(&path).await
            }
            Backend::Postgres(cluster) => {
                SqlStore::connect_postgres(&cluster.create_database(name)).await
            }
        }
        .unwrap()
    }

    /// A store on the database. Each call opens another, as a restarted (SQLite) or another
    /// (PostgreSQL) control plane would: it sees what the others wrote.
    pub async fn open(&self) -> SqlStore {
        match self {
            Backend::Sqlite(dir) => SqlStore::open_sqlite(&dir.path().join("meridian.db")).await,
            Backend::Postgres(cluster) => SqlStore::connect_postgres(&cluster.url()).await,
        }
        .unwrap()
    }
}
