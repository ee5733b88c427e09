//! Schema migrations, applied in order. The database's `user_version` is the
//! number of migrations applied; append new ones, never edit old ones.

pub const MIGRATIONS: &[&str] = &[
    // 1: partitions. Queryable fields are columns; the rest of the record is JSON
    // so that adding a field needs no migration.
    "CREATE TABLE partitions (
        name     TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        ip       TEXT UNIQUE,
        state    TEXT NOT NULL,
        record   TEXT NOT NULL
    );",
    // 2: a history of state changes per partition.
    "CREATE TABLE events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        INTEGER NOT NULL,
        partition TEXT NOT NULL,
        message   TEXT NOT NULL
    );
    CREATE INDEX events_partition ON events(partition, id);",
    // 3: hot-plug ports and the named CPU model are part of a partition's
    // definition. Records made before ran with no hot-plug ports; they get the
    // CPU model that was the default when this migration was written, pinned in
    // the record, so a later change of the default never changes a partition.
    "UPDATE partitions SET record = json_set(record, '$.hotplug_slots', 0)
        WHERE json_type(record, '$.hotplug_slots') IS NULL;
    UPDATE partitions SET record = json_set(record, '$.cpu_model', 'x86-64-v2')
        WHERE json_type(record, '$.cpu_model') IS NULL;",
    // 4: every record names its owning host, as a column so a host's records
    // are one indexed query. Existing rows get '' here; the opening daemon's
    // id is written into them right after (sqlite.rs `migrate`), since the id is
    // not known to a static migration.
    "ALTER TABLE partitions ADD COLUMN host TEXT NOT NULL DEFAULT '';
    CREATE INDEX partitions_host ON partitions(host, name);",
    // 5: each host's grant table (issue 11), opaque to the store, and its log.
    // `last_seq` is the newest log seq ever given, so a seq is never reused
    // even after pruning emptied the log.
    "CREATE TABLE grant_tables (
        host     TEXT PRIMARY KEY,
        body     BLOB NOT NULL,
        revision INTEGER NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE grant_log (
        host  TEXT NOT NULL,
        seq   INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (host, seq)
    ) WITHOUT ROWID;",
    // 6: cluster membership (issue 14). One row per daemon; a host is lost
    // when its heartbeat is older than its own ttl. Names are unique.
    "CREATE TABLE hosts (
        id        TEXT PRIMARY KEY,
        name      TEXT NOT NULL UNIQUE,
        record    TEXT NOT NULL,
        heartbeat INTEGER NOT NULL,
        ttl_ms    INTEGER NOT NULL
    );",
    // 7: LUs of the repository and the locks of their attachments (issue 14).
    // Records are JSON as for partitions; a lock's key is its holder's adapter.
    "CREATE TABLE lus (
        name     TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        record   TEXT NOT NULL
    );
    CREATE TABLE lu_locks (
        lu        TEXT NOT NULL,
        partition TEXT NOT NULL,
        adapter   TEXT NOT NULL,
        record    TEXT NOT NULL,
        PRIMARY KEY (lu, partition, adapter)
    );
    CREATE INDEX lu_locks_partition ON lu_locks(partition);",
    // 8: routes of the shared port (issue 15): (listener, domain) is held by
    // one partition; the record is JSON as elsewhere.
    "CREATE TABLE exposed_routes (
        listener  TEXT NOT NULL,
        domain    TEXT NOT NULL,
        partition TEXT NOT NULL,
        record    TEXT NOT NULL,
        PRIMARY KEY (listener, domain)
    );
    CREATE INDEX exposed_routes_partition ON exposed_routes(partition);",
    // 9: service pools (issue 17): pool statements and pool users, each a
    // JSON body the manager owns, keyed by kind ('pools', 'pool-users') and name.
    "CREATE TABLE pool_docs (
        kind     TEXT NOT NULL,
        name     TEXT NOT NULL,
        revision INTEGER NOT NULL,
        body     TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    ) WITHOUT ROWID;",
    // 10: remote-restart operations (issue 12): one row per partition, the
    // record JSON as elsewhere; the token is a column for lookups by token.
    "CREATE TABLE rr_operations (
        partition TEXT PRIMARY KEY,
        token     TEXT NOT NULL,
        revision  INTEGER NOT NULL,
        record    TEXT NOT NULL
    ) WITHOUT ROWID;",
];
