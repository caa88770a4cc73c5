//! Where a store is, as an operator names it: a SQLite file, or a PostgreSQL URL (`--store`).

use std::fmt;
use std::path::PathBuf;

use crate::{Result, SqlStore};

/// Where a store is.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database: `postgres://user:password@host:port/database`.
    Postgres(String),
}

impl StoreLocation {
    /// The PostgreSQL database `url` names; an error saying what is expected when it is not
    /// a `postgres://` or `postgresql://` URL.
    pub fn postgres(url: &str) -> Result<StoreLocation, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a PostgreSQL URL: expected postgres://user:password@host:port/database \
                 (without it, the store is SQLite in the data directory)",
                redact(url)
            ))
        }
    }

    /// Opens the store there (see [`SqlStore::open_sqlite`] and
    /// [`SqlStore::connect_postgres`]).
    pub async fn open(&self) -> Result<SqlStore> {
        match self {
            StoreLocation::Sqlite(path) => SqlStore::open_sqlite(path).await,
            StoreLocation::Postgres(url) => SqlStore::connect_postgres(url).await,
        }
    }
}

/// The location without secrets: a URL's password and parameters are left out.
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `url` without its password (`user:***@`) and without its query (which may hold one).
fn redact(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password_or_parameters() {
        let shown = |url: &str| StoreLocation::Postgres(url.into()).to_string();
        assert_eq!(
            shown("postgres://meridian:s3cr@t@db.example:5432/meridian?sslmode=require"),
            "postgres://meridian:***@db.example:5432/meridian"
        );
        assert_eq!(
            shown("postgresql://db.example/meridian?password=x"),
            "postgresql://db.example/meridian"
        );
        assert_eq!(shown("postgres://me@db/m"), "postgres://me@db/m");
    }

    #[test]
    fn only_postgres_urls_are_accepted() {
        assert!(StoreLocation::postgres("postgresql://db/m").is_ok());
        let refused = StoreLocation::postgres("mysql://u:pw@db/m").unwrap_err();
        assert!(
            refused.contains("`mysql://u:***@db/m` is not a PostgreSQL URL"),
            "{refused}"
        );
    }
}
