//! Exposed routes on SQLite: table `exposed_routes` keyed by (listener,
//! domain), the record as JSON. A put is one `BEGIN IMMEDIATE` transaction,
//! so the holder check and the write cannot interleave with another daemon's.

use super::{Sql, SqliteStore};
use crate::{ExposedRoute, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

fn decode(key: String, json: String) -> Sql<ExposedRoute> {
    serde_json::from_str(&json).map_err(|e| {
        StoreError::Corrupt {
            name: format!("route {key}"),
            reason: e.to_string(),
        }
        .into()
    })
}

fn all(c: &Connection) -> Sql<Vec<ExposedRoute>> {
    let mut stmt = c.prepare_cached(
        "SELECT listener || ' ' || domain, record FROM exposed_routes ORDER BY listener, domain",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    rows.into_iter().map(|(k, j)| decode(k, j)).collect()
}

fn put(c: &mut Connection, route: &ExposedRoute) -> Sql<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let held: Option<String> = tx
        .query_row(
            "SELECT record FROM exposed_routes WHERE listener = ?1 AND domain = ?2",
            params![route.listener, route.domain],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(json) = held {
        let held = decode(format!("{} {}", route.listener, route.domain), json)?;
        if let Some(e) = route.taken_by(&held) {
            return Err(e.into());
        }
    }
    let json = serde_json::to_string(route).expect("route serialises");
    tx.execute(
        "INSERT INTO exposed_routes (listener, domain, partition, record) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (listener, domain) DO UPDATE SET partition = ?3, record = ?4",
        params![route.listener, route.domain, route.partition, json],
    )?;
    tx.commit()?;
    Ok(())
}

fn remove(c: &mut Connection, partition: &str, domain: Option<&str>) -> Sql<Vec<ExposedRoute>> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let gone: Vec<ExposedRoute> = all(&tx)?
        .into_iter()
        .filter(|r| r.matches(partition, domain))
        .collect();
    for r in &gone {
        tx.execute(
            "DELETE FROM exposed_routes WHERE listener = ?1 AND domain = ?2",
            params![r.listener, r.domain],
        )?;
    }
    tx.commit()?;
    Ok(gone)
}

/// The SQLite side of the trait's route block; `impl Store` forwards here.
impl SqliteStore {
    pub(crate) async fn sql_route_put(&self, route: &ExposedRoute) -> Result<()> {
        let route = route.clone();
        self.call("route_put", move |c| put(c, &route)).await
    }

    pub(crate) async fn sql_route_remove(
        &self,
        partition: &str,
        domain: Option<&str>,
    ) -> Result<Vec<ExposedRoute>> {
        let (p, d) = (partition.to_string(), domain.map(str::to_string));
        self.call("route_remove", move |c| remove(c, &p, d.as_deref()))
            .await
    }

    pub(crate) async fn sql_routes(&self) -> Result<Vec<ExposedRoute>> {
        self.call("routes", |c| all(c)).await
    }
}
