use bulkhead_store::*;

fn rec(name: &str, ip: Option<&str>) -> PartitionRecord {
    PartitionRecord {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        cpu_percent: 50,
        image: None,
        cmdline: None,
        disks: vec![],
        net: ip.map(|ip| NetRecord {
            ip: ip.into(),
            mac: "52:54:00:00:00:01".into(),
        }),
        restart_policy: RestartPolicy::OnFailure,
        hotplug_slots: 0,
        cpu_model: DEFAULT_CPU_MODEL.into(),
        state: PartitionState::Defined,
        created_at: now_ms(),
        state_since: now_ms(),
        started_at: None,
        last_exit: None,
        pid: None,
        restarts: 0,
        revision: 0,
    }
}

#[test]
fn insert_get_list_roundtrip() {
    let s = SqliteStore::in_memory().unwrap();
    let a = s.insert(&rec("b", Some("10.0.0.3/24")), "created").unwrap();
    assert_eq!(a.revision, 1);
    s.insert(&rec("a", Some("10.0.0.2/24")), "created").unwrap();
    let got = s.get("b").unwrap().unwrap();
    assert_eq!(got, a);
    let names: Vec<_> = s.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(s.get("zz").unwrap().is_none());
}

#[test]
fn duplicate_name_and_address_refused_and_nothing_written() {
    let s = SqliteStore::in_memory().unwrap();
    s.insert(&rec("a", Some("10.0.0.2/24")), "created").unwrap();
    let e = s.insert(&rec("a", Some("10.0.0.9/24")), "x").unwrap_err();
    assert!(
        matches!(e, StoreError::AlreadyExists(ref n) if n == "a"),
        "{e}"
    );
    // Same address with a different prefix length is the same address.
    let e = s.insert(&rec("b", Some("10.0.0.2/16")), "x").unwrap_err();
    assert!(matches!(e, StoreError::AddressInUse(_)), "{e}");
    assert_eq!(s.list().unwrap().len(), 1);
    assert_eq!(s.events("a", 10).unwrap().len(), 1);
    assert!(s.events("b", 10).unwrap().is_empty());
}

#[test]
fn update_is_compare_and_swap() {
    let s = SqliteStore::in_memory().unwrap();
    let a = s.insert(&rec("a", None), "created").unwrap();
    let mut first = a.clone();
    first.state = PartitionState::Starting;
    let stored = s.update(&first, "starting").unwrap();
    assert_eq!(stored.revision, 2);
    // A writer holding the old revision loses, and changes nothing.
    let mut stale = a.clone();
    stale.state = PartitionState::Failed;
    let e = s.update(&stale, "failed").unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.get("a").unwrap().unwrap().state, PartitionState::Starting);
    let ev: Vec<_> = s
        .events("a", 10)
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(ev, ["created", "starting"]);
    let mut gone = stored.clone();
    gone.name = "nope".into();
    assert!(matches!(
        s.update(&gone, "").unwrap_err(),
        StoreError::NotFound(_)
    ));
}

#[test]
fn delete_checks_revision_and_removes_history() {
    let s = SqliteStore::in_memory().unwrap();
    let a = s.insert(&rec("a", Some("10.0.0.2/24")), "created").unwrap();
    assert!(matches!(
        s.delete("a", 7).unwrap_err(),
        StoreError::Conflict { .. }
    ));
    s.delete("a", a.revision).unwrap();
    assert!(s.get("a").unwrap().is_none());
    assert!(s.events("a", 10).unwrap().is_empty());
    // The address is free again.
    s.insert(&rec("b", Some("10.0.0.2/24")), "created").unwrap();
    assert!(matches!(
        s.delete("a", 1).unwrap_err(),
        StoreError::NotFound(_)
    ));
}

#[test]
fn events_keep_newest_in_order() {
    let s = SqliteStore::in_memory().unwrap();
    let mut r = s.insert(&rec("a", None), "e0").unwrap();
    for i in 1..20 {
        r = s.update(&r, &format!("e{i}")).unwrap();
    }
    let ev: Vec<_> = s
        .events("a", 3)
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(ev, ["e17", "e18", "e19"]);
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert(&rec("a", Some("10.0.0.2/24")), "created").unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().net.unwrap().ip, "10.0.0.2/24");
}

#[test]
fn migrates_an_old_database_and_refuses_a_newer_one() {
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
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), 3);
    let old = s.get("old").unwrap().unwrap();
    s.update(&old, "migrated").unwrap();
    assert_eq!(s.events("old", 5).unwrap().len(), 1);
    drop(s);

    rusqlite_conn(&path)
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let e = SqliteStore::open(&path).err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::TooNew {
                found: 99,
                supported: 3
            }
        ),
        "{e}"
    );
}

#[test]
fn migration_pins_hotplug_and_cpu_model_into_older_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        // Version 2 of the schema, with a record written before the fields existed.
        SqliteStore::open(&path).unwrap();
        let c = rusqlite_conn(&path);
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
        c.execute_batch("PRAGMA user_version = 2;").unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), 3);
    let old = s.get("old").unwrap().unwrap();
    assert_eq!(
        (old.hotplug_slots, old.cpu_model.as_str()),
        (0, "x86-64-v2")
    );
    let v1 = s.get("v1").unwrap().unwrap();
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

#[test]
fn corrupt_record_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    SqliteStore::open(&path).unwrap();
    rusqlite_conn(&path)
        .execute(
            "INSERT INTO partitions VALUES ('bad', 1, NULL, 'defined', '{not json')",
            [],
        )
        .unwrap();
    let s = SqliteStore::open(&path).unwrap();
    let e = s.get("bad").unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { ref name, .. } if name == "bad"),
        "{e}"
    );
}

fn rusqlite_conn(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

fn serde_json_string(r: &PartitionRecord) -> String {
    serde_json::to_string(r).unwrap()
}
