//! What is particular to the PostgreSQL backend: several stores (control planes) on one
//! database, notifications between them, and the database going away and coming back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_model::{Change, Definition, Region};
use meridian_store::{MissingOrg, SqlStore, Store, StoreError, Watch};

use crate::backend::Backend;

/// How long a test waits for something that should happen.
const DEADLINE: Duration = Duration::from_secs(30);

fn definition(name: &str) -> Definition {
    let json = serde_json::json!({
        "org": "acme", "app": "shop", "name": name, "regions": ["fra"],
        "runtime": {"process": {"command": "serve"}}
    });
    meridian_model::parse_definition_json(json.to_string().as_bytes()).unwrap()
}

/// The next change of `watch`, within [`DEADLINE`].
async fn next(watch: &mut Watch) -> Change {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("the watch stalled")
        .unwrap()
}

/// A connection of the test's own to `backend`'s database, for what no store does.
async fn admin(backend: &Backend) -> sqlx::PgPool {
    let Backend::Postgres(cluster) = backend else {
        unreachable!("a PostgreSQL backend")
    };
    sqlx::PgPool::connect(&cluster.url()).await.unwrap()
}

#[tokio::test]
async fn the_writes_of_several_stores_on_one_database_form_one_gapless_feed() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(backend.open().await),
        Arc::new(backend.open().await),
    ];
    let fra = Region {
        name: "fra".into(),
        lat: 50.1,
        lon: 8.7,
    };
    stores[0].put_region(&fra).await.unwrap();
    // Each store's watcher reads while the writes commit: a revision visible before an earlier
    // one would be skipped for good, and show as a gap.
    let mut watches = stores.clone().map(|store| Watch::new(store, 1));
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = stores[w % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..EACH {
                let applied = store
                    .apply_service(&definition(&format!("s{w}-{i}")), MissingOrg::Create)
                    .await
                    .unwrap();
                revisions.push(applied.deployment.revision);
            }
            revisions
        }));
    }
    let expected: Vec<u64> = (2..2 + (WRITERS * EACH) as u64).collect();
    for watch in &mut watches {
        let mut seen = Vec::new();
        while seen.len() < WRITERS * EACH {
            seen.push(next(watch).await);
        }
        let revisions: Vec<u64> = seen.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, expected, "gap or reordering in the feed");
        let keys: BTreeSet<&str> = seen.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys.len(), WRITERS * EACH, "every write appears once");
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, expected, "each write got its own revision");
    // Each store learns of the last write, whichever store made it.
    let last = *expected.last().unwrap();
    for store in &stores {
        let mut latest = store.subscribe();
        let known = tokio::time::timeout(DEADLINE, latest.wait_for(|r| *r >= last)).await;
        assert_eq!(*known.expect("stalled").unwrap(), last);
    }
}

#[tokio::test]
async fn concurrent_writes_of_several_stores_check_and_write_as_one_step() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(backend.open().await),
        Arc::new(backend.open().await),
    ];
    // The same org, created at once through both stores: one succeeds, every other sees it
    // exists (had the existence checks raced, some would fail on the primary key instead).
    let creates = (0..16).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move { store.create_org("same").await })
    });
    let mut created = 0;
    for create in creates.collect::<Vec<_>>() {
        match create.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(stores[0].changes_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn every_change_is_notified_at_commit_with_the_change() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres(cluster) = &backend else {
        unreachable!()
    };
    let store = backend.open().await;
    let mut listener = sqlx::postgres::PgListener::connect(&cluster.url())
        .await
        .unwrap();
    listener.listen("meridian_changes").await.unwrap();
    store.create_org("acme").await.unwrap();
    store.create_app("acme", "shop").await.unwrap();
    for (revision, kind, key) in [(1, "org", "acme"), (2, "app", "acme/shop")] {
        let notification = tokio::time::timeout(DEADLINE, listener.recv())
            .await
            .expect("no notification")
            .unwrap();
        let change: serde_json::Value = serde_json::from_str(notification.payload()).unwrap();
        assert_eq!(change["revision"], revision);
        assert_eq!(change["kind"], kind);
        assert_eq!(change["key"], key);
        assert_eq!(change["op"], "put");
        assert_eq!(change["version"], serde_json::Value::Null);
        assert!(change["committed_at_us"].as_i64().unwrap() > 0);
    }
}

#[tokio::test]
async fn a_store_catches_up_with_writes_whose_notification_was_lost() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let writer = backend.open().await;
    let follower: Arc<dyn Store> = Arc::new(backend.open().await);
    let admin = admin(&backend).await;
    let caught_up = |revision: u64| {
        let mut latest = follower.subscribe();
        async move {
            tokio::time::timeout(DEADLINE, latest.wait_for(|r| *r >= revision))
                .await
                .expect("the store did not catch up")
                .map(|r| *r)
                .unwrap()
        }
    };

    // A commit that notifies nobody.
    sqlx::query("ALTER TABLE changes DISABLE TRIGGER notify_change")
        .execute(&admin)
        .await
        .unwrap();
    writer.create_org("quiet").await.unwrap();
    assert_eq!(caught_up(1).await, 1);

    // A notification sent while the listening connections are down.
    sqlx::query("ALTER TABLE changes ENABLE TRIGGER notify_change")
        .execute(&admin)
        .await
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'meridian-listener'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(terminated, [true, true], "both stores' listeners");
    writer.create_org("unheard").await.unwrap();
    assert_eq!(caught_up(2).await, 2);

    // Watchers read the feed by revision.
    let mut watch = Watch::new(follower.clone(), 0);
    assert_eq!(next(&mut watch).await.key, "quiet");
    assert_eq!(next(&mut watch).await.key, "unheard");
}

#[tokio::test]
async fn operations_fail_as_unavailable_while_the_database_is_down_and_succeed_once_it_is_back() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres(cluster) = &backend else {
        unreachable!()
    };
    let store = backend.open().await;
    let follower: Arc<dyn Store> = Arc::new(backend.open().await);
    let mut watch = Watch::new(follower.clone(), 0);
    store.create_org("before").await.unwrap();
    assert_eq!(next(&mut watch).await.key, "before");

    cluster.stop();
    let started = Instant::now();
    let write = store.create_org("during").await;
    eprintln!(
        "a write with the database down failed after {:?}",
        started.elapsed()
    );
    match write {
        Err(e @ StoreError::Unavailable(_)) => {
            assert!(
                e.to_string().starts_with("the database is unreachable"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.list_orgs().await,
        Err(StoreError::Unavailable(_))
    ));

    cluster.start_again();
    let started = Instant::now();
    let end = started + DEADLINE;
    loop {
        match store.create_org("after").await {
            Ok(_) => break,
            Err(StoreError::Unavailable(e)) if Instant::now() < end => {
                eprintln!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "the first write after the restart took {:?}",
        started.elapsed()
    );
    let names: Vec<String> = store
        .list_orgs()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["after", "before"]);
    let change = next(&mut watch).await;
    assert_eq!((change.revision, change.key.as_str()), (2, "after"));
    let reopened: SqlStore = backend.open().await;
    assert_eq!(reopened.revision().await.unwrap(), 2);
}

#[tokio::test]
async fn a_backup_moves_between_sqlite_and_postgres() {
    let Some(postgres) = Backend::postgres() else {
        return;
    };
    let sqlite = Backend::sqlite();
    let source = sqlite.open().await;
    crate::contents::fill(&source).await;
    let backup = source.backup().await.unwrap();
    let on_postgres = postgres.open().await;
    on_postgres.restore(&backup).await.unwrap();
    let expected = crate::contents::contents(&source).await;
    assert_eq!(crate::contents::contents(&on_postgres).await, expected);
    // And back: the same file, byte for byte.
    let back = on_postgres.backup().await.unwrap();
    assert_eq!(back, backup);
    let on_sqlite = sqlite.open_empty("back").await;
    on_sqlite.restore(&back).await.unwrap();
    assert_eq!(crate::contents::contents(&on_sqlite).await, expected);
}
