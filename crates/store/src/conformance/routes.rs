//! The exposed routes' cases (issue 15): one holder per (listener, domain),
//! decided inside the write, on every backend.

use super::neutral;
use crate::{ExposedRoute, Store, StoreError};
use std::future::Future;
use std::sync::Arc;

const L1: &str = "127.0.0.1:8080";
const L2: &str = "[::1]:8443";

/// Runs every route case, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    routes_round_trip(&*make().await).await;
    a_domain_held_by_another_is_refused(&*make().await).await;
    removal_by_domain_or_all(&*make().await).await;
    concurrent_puts_one_holder(make().await).await;
}

pub fn route(listener: &str, domain: &str, partition: &str, port: u16) -> ExposedRoute {
    ExposedRoute {
        listener: listener.into(),
        domain: domain.into(),
        partition: partition.into(),
        port,
        proxy_protocol: false,
        pool: None,
    }
}

pub async fn routes_round_trip(s: &dyn Store) {
    assert!(s.routes().await.unwrap().is_empty());
    let b = route(L1, "b.example.org", "pb", 8080);
    let a = route(L1, "a.example.org", "pa", 8080);
    let mut w = route(L2, "*.example.org", "pa", 8443);
    w.proxy_protocol = true;
    // A pool's program as the target keeps its user and wait bound.
    let mut p = route(L2, "pool.example.org", "pool:echo", 0);
    p.pool = Some(crate::PoolTarget {
        program: "echo".into(),
        user: "alice".into(),
        wait_ms: 1500,
    });
    for r in [&b, &a, &w, &p] {
        s.route_put(r).await.unwrap();
    }
    assert_eq!(s.routes().await.unwrap(), vec![a.clone(), b, w.clone(), p]);
    // The holder may change its own row (a new port) in place.
    let mut a2 = a.clone();
    a2.port = 9090;
    s.route_put(&a2).await.unwrap();
    let got = s.routes().await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(got.contains(&a2) && !got.contains(&a), "{got:?}");
}

pub async fn a_domain_held_by_another_is_refused(s: &dyn Store) {
    let held = route(L1, "shop.example.org", "pa", 8080);
    s.route_put(&held).await.unwrap();
    let e = s
        .route_put(&route(L1, "shop.example.org", "pb", 80))
        .await
        .unwrap_err();
    neutral(&e);
    match &e {
        StoreError::RouteTaken {
            listener,
            domain,
            holder,
        } => assert_eq!(
            (listener.as_str(), domain.as_str(), holder.as_str()),
            (L1, "shop.example.org", "pa")
        ),
        other => panic!("expected RouteTaken, got {other:?}"),
    }
    assert_eq!(s.routes().await.unwrap(), vec![held.clone()], "unchanged");
    // The same domain on another listener is another row.
    s.route_put(&route(L2, "shop.example.org", "pb", 80))
        .await
        .unwrap();
    assert_eq!(s.routes().await.unwrap().len(), 2);
}

pub async fn removal_by_domain_or_all(s: &dyn Store) {
    for r in [
        route(L1, "a.example.org", "pa", 80),
        route(L2, "a.example.org", "pa", 80),
        route(L1, "x.example.org", "pa", 80),
        route(L1, "b.example.org", "pb", 80),
    ] {
        s.route_put(&r).await.unwrap();
    }
    // Another partition's row is not taken by a removal naming its domain.
    assert!(s
        .route_remove("pb", Some("a.example.org"))
        .await
        .unwrap()
        .is_empty());
    let gone = s.route_remove("pa", Some("a.example.org")).await.unwrap();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(gone.iter().all(|r| r.domain == "a.example.org"));
    let left: Vec<_> = s
        .routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.domain)
        .collect();
    assert_eq!(left, ["b.example.org", "x.example.org"]);
    assert_eq!(s.route_remove("pa", None).await.unwrap().len(), 1);
    assert_eq!(s.routes().await.unwrap().len(), 1);
    assert!(s.route_remove("nobody", None).await.unwrap().is_empty());
}

pub async fn concurrent_puts_one_holder(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.route_put(&route(L1, "race.example.org", &format!("p{i}"), 80))
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(()) => won.push(format!("p{i}")),
            Err(StoreError::RouteTaken { .. }) => {}
            Err(e) => panic!("p{i}: {e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one holder: {won:?}");
    let rows = s.routes().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].partition, won[0]);
}
