//! What is particular to the SQLite backend: its file's history of schemas.

use meridian_model::SecretOwner;
use meridian_store::Store;

use crate::backend::Backend;

#[tokio::test]
async fn a_database_made_before_org_secrets_gets_their_table_and_keeps_its_app_secrets() {
    let backend = Backend::sqlite();
    let Backend::Sqlite(dir) = &backend else {
        unreachable!()
    };
    let path = dir.path().join("meridian.db");
    let shop = SecretOwner::app("acme", "shop");
    {
        let store = backend.open().await;
        store.create_org("acme").await.unwrap();
        store.put_secret(&shop, "DB", b"sealed").await.unwrap();
    }
    // Back to the schema before org secrets: no table, no record of its migration.
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("DROP TABLE org_secrets")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 9")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = backend.open().await;
    assert_eq!(store.list_secrets(&shop).await.unwrap().len(), 1);
    let acme = SecretOwner::org("acme");
    let info = store.put_secret(&acme, "TOKEN", b"sealed").await.unwrap();
    assert_eq!(info.version, 1);
    let (owner, _, _) = store
        .resolve_secret("acme", "shop", "TOKEN")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner, acme);
}
