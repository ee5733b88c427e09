//! What only the SQLite backend has: a file that survives reopening, schema
//! migrations, corrupt rows. The shared behaviour is in the conformance suite.

use bulkhead_store::*;

fn rec(name: &str, ip: Option<&str>) -> PartitionRecord {
    let mut r = conformance::record(name);
    r.net = ip.map(|ip| NetRecord {
        ip: ip.into(),
        mac: "52:54:00:00:00:01".into(),
    });
    r
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path, "h").unwrap();
        s.insert(&rec("a", Some("10.0.0.2/24")), "created")
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path, "h").unwrap();
    assert_eq!(
        s.get("a").await.unwrap().unwrap().net.unwrap().ip,
        "10.0.0.2/24"
    );
}

#[tokio::test]
async fn migrates_an_old_database_and_refuses_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        // A database as version 1 of the schema left it: partitions, no events.
        let c = rusqlite_conn(&path);
        c.execute_batch(
            "CREATE TABLE partitions (name TEXT PRIMARY KEY, revision INTEGER NOT NULL,
             ip TEXT UNIQUE, state TEXT NOT NULL, record TEXT NOT NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let json = serde_json_string(&rec("old", None));
        c.execute(
            "INSERT INTO partitions VALUES ('old', 1, NULL, 'defined', ?1)",
            [json],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, "h").unwrap();
    assert_eq!(s.schema_version().unwrap(), 10);
    let old = s.get("old").await.unwrap().unwrap();
    s.update(&old, "migrated").await.unwrap();
    assert_eq!(s.events("old", 5).await.unwrap().len(), 1);
    drop(s);

    rusqlite_conn(&path)
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let e = SqliteStore::open(&path, "h").err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::TooNew {
                found: 99,
                supported: 10
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn migration_pins_hotplug_and_cpu_model_into_older_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        // Version 2 of the schema, with a record written before the fields existed.
        let c = rusqlite_conn(&path);
        c.execute_batch(SCHEMA_2).unwrap();
        let mut old = serde_json::to_value(rec("old", None)).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("hotplug_slots");
        o.remove("cpu_model");
        c.execute(
            "INSERT INTO partitions VALUES ('old', 1, NULL, 'defined', ?1)",
            [old.to_string()],
        )
        .unwrap();
        // A record that already names a model keeps it.
        let mut v1 = rec("v1", None);
        v1.cpu_model = "x86-64-v1".into();
        v1.hotplug_slots = 2;
        c.execute(
            "INSERT INTO partitions VALUES ('v1', 1, NULL, 'defined', ?1)",
            [serde_json_string(&v1)],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, "h").unwrap();
    assert_eq!(s.schema_version().unwrap(), 10);
    let old = s.get("old").await.unwrap().unwrap();
    assert_eq!(
        (old.hotplug_slots, old.cpu_model.as_str()),
        (0, "x86-64-v2")
    );
    let v1 = s.get("v1").await.unwrap().unwrap();
    assert_eq!((v1.hotplug_slots, v1.cpu_model.as_str()), (2, "x86-64-v1"));
    drop(s);
    // Written into the stored JSON, not only defaulted when read.
    let raw: String = rusqlite_conn(&path)
        .query_row(
            "SELECT record FROM partitions WHERE name = 'old'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(raw.contains(r#""cpu_model":"x86-64-v2""#), "{raw}");
    assert!(raw.contains(r#""hotplug_slots":0"#), "{raw}");
}

#[tokio::test]
async fn corrupt_record_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    SqliteStore::open(&path, "h").unwrap();
    rusqlite_conn(&path)
        .execute(
            "INSERT INTO partitions (name, revision, state, record, host)
             VALUES ('bad', 1, 'defined', '{not json', 'h')",
            [],
        )
        .unwrap();
    let s = SqliteStore::open(&path, "h").unwrap();
    let e = s.get("bad").await.unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { ref name, .. } if name == "bad"),
        "{e}"
    );
}

/// The schema as migrations 1 and 2 left it.
const SCHEMA_2: &str = "CREATE TABLE partitions (name TEXT PRIMARY KEY, revision INTEGER NOT NULL,
        ip TEXT UNIQUE, state TEXT NOT NULL, record TEXT NOT NULL);
    CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
        partition TEXT NOT NULL, message TEXT NOT NULL);
    CREATE INDEX events_partition ON events(partition, id);
    PRAGMA user_version = 2;";

fn rusqlite_conn(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn serde_json_string(r: &PartitionRecord) -> String {
    serde_json::to_string(r).unwrap()
}

/// A database written before host ids (schema 3) is migrated, and its
/// records are given to the host that opened it; later opens by another
/// host change nothing.
#[tokio::test]
async fn migration_gives_old_records_the_opening_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE partitions (name TEXT PRIMARY KEY, revision INTEGER NOT NULL,
                 ip TEXT UNIQUE, state TEXT NOT NULL, record TEXT NOT NULL);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
                 partition TEXT NOT NULL, message TEXT NOT NULL);
             CREATE INDEX events_partition ON events(partition, id);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        let mut old = serde_json::to_value(conformance::record("old")).unwrap();
        old.as_object_mut().unwrap().remove("host");
        c.execute(
            "INSERT INTO partitions VALUES ('old', 4, NULL, 'stopped', ?1)",
            [old.to_string()],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, "host-a").unwrap();
    assert_eq!(s.schema_version().unwrap(), 10);
    let old = s.get("old").await.unwrap().unwrap();
    assert_eq!((old.host.as_str(), old.revision), ("host-a", 4));
    assert_eq!(s.list(Scope::Host("host-a")).await.unwrap().len(), 1);
    drop(s);
    let s = SqliteStore::open(&path, "host-b").unwrap();
    assert_eq!(s.get("old").await.unwrap().unwrap().host, "host-a");
    assert!(s.list(Scope::Host("host-b")).await.unwrap().is_empty());
}

/// A database of the daemon before grant tables (schema 4) opens and
/// migrates: its partitions and history are untouched, and the grant tables
/// start empty and work.
#[tokio::test]
async fn schema_4_database_gains_grant_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let c = rusqlite_conn(&path);
        c.execute_batch(
            "CREATE TABLE partitions (name TEXT PRIMARY KEY, revision INTEGER NOT NULL,
                 ip TEXT UNIQUE, state TEXT NOT NULL, record TEXT NOT NULL,
                 host TEXT NOT NULL DEFAULT '');
             CREATE INDEX partitions_host ON partitions(host, name);
             CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
                 partition TEXT NOT NULL, message TEXT NOT NULL);
             CREATE INDEX events_partition ON events(partition, id);
             PRAGMA user_version = 4;",
        )
        .unwrap();
        let mut old = rec("old", Some("10.0.0.7/24"));
        old.host = "host-a".into();
        old.revision = 3;
        c.execute(
            "INSERT INTO partitions VALUES ('old', 3, '10.0.0.7', 'defined', ?1, 'host-a')",
            [serde_json_string(&old)],
        )
        .unwrap();
        c.execute(
            "INSERT INTO events (at, partition, message) VALUES (1, 'old', 'created')",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, "host-b").unwrap();
    assert_eq!(s.schema_version().unwrap(), 10);
    let got = s.get("old").await.unwrap().unwrap();
    assert_eq!((got.host.as_str(), got.revision), ("host-a", 3));
    assert_eq!(got.net.unwrap().ip, "10.0.0.7/24");
    assert_eq!(s.events("old", 10).await.unwrap()[0].message, "created");
    // The address index survived: it is still taken.
    let e = s.insert(&rec("thief", Some("10.0.0.7/24")), "").await;
    assert!(matches!(e, Err(StoreError::AddressInUse(_))), "{e:?}");
    assert_eq!(s.grant_table("host-a").await.unwrap(), None);
    let r = s
        .commit_grant_table("host-a", 0, b"{}", &[(5, "{\"e\":1}".into())])
        .await
        .unwrap();
    drop(s);
    // Reopening migrates nothing again and keeps the grants.
    let s = SqliteStore::open(&path, "host-a").unwrap();
    assert_eq!(s.schema_version().unwrap(), 10);
    let t = s.grant_table("host-a").await.unwrap().unwrap();
    assert_eq!((t.body.as_slice(), t.revision), (&b"{}"[..], r));
    assert_eq!(s.grant_log("host-a", 0, 10).await.unwrap()[0].seq, 1);
}

/// A grant commit that cannot get the write lock (another process holds
/// it past the busy timeout) is `Unavailable`, writes nothing, and reads
/// go on meanwhile (WAL).
#[tokio::test]
async fn grant_commit_under_a_held_lock_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = SqliteStore::open(&path, "h").unwrap();
    let r = s.commit_grant_table("h", 0, b"one", &[]).await.unwrap();
    let other = rusqlite_conn(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = s
        .commit_grant_table("h", r, b"two", &[(1, "{}".into())])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Unavailable {
                op: "commit_grant_table",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.grant_table("h").await.unwrap().unwrap().body, b"one");
    other.execute_batch("ROLLBACK").unwrap();
    assert!(s.grant_log("h", 0, 10).await.unwrap().is_empty());
    s.commit_grant_table("h", r, b"two", &[]).await.unwrap();
}
