//! bulkheadd's Prometheus endpoint (`[metrics] listen`): `GET /metrics` in
//! the Prometheus text format, encoded by `prometheus-client`. Counters live
//! where things happen (the pools' gateway); gauges are read at each scrape
//! from the allocator and the store, so they never drift.

use crate::manager::Manager;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// `[metrics]` of bulkheadd's configuration.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (`ADDR:PORT`, plain HTTP); none when absent.
    pub listen: Option<SocketAddr>,
}

/// A scraper's request line and headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

/// The registry and the gauges refreshed at each scrape.
struct Exporter {
    registry: Registry,
    partitions: Family<State, Gauge>,
}

impl Exporter {
    fn new(m: &Manager) -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let partitions = Family::<State, Gauge>::default();
        registry.register(
            "partitions",
            "This daemon's partitions by state",
            partitions.clone(),
        );
        m.pools.metrics.register(&mut registry);
        Self {
            registry,
            partitions,
        }
    }

    /// The text exposition, gauges read now.
    async fn scrape(&self, m: &Manager) -> Result<String, String> {
        let recs = m
            .store()
            .list(bulkhead_store::Scope::Host(m.host_id()))
            .await
            .map_err(|e| e.to_string())?;
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        for r in &recs {
            *by_state.entry(r.state.as_str()).or_default() += 1;
        }
        self.partitions.clear();
        for (state, n) in by_state {
            self.partitions.get_or_create(&State { state }).set(n);
        }
        m.pools.refresh_metrics();
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// Serves `GET /metrics` on `l` until the task is dropped.
pub async fn serve(m: Arc<Manager>, l: TcpListener) {
    // One scrape at a time: a scrape clears and refills the gauges.
    let exporter = Arc::new(tokio::sync::Mutex::new(Exporter::new(&m)));
    loop {
        let (s, _) = match l.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (m, exporter) = (m.clone(), exporter.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (m, exporter) = (m.clone(), exporter.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(&m, &exporter, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn answer<B>(
    m: &Manager,
    exporter: &tokio::sync::Mutex<Exporter>,
    req: Request<B>,
) -> Response<Full<Bytes>> {
    let reply = |status, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "only /metrics is served\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, String::new());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match exporter.lock().await.scrape(m).await {
        Ok(text) => {
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape");
            reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
    }
}
