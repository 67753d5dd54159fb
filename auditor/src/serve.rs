//! The agent's HTTP endpoints: `/metrics` (Prometheus), `/healthz`, and `/flows`
//! (this node's recent flow log, for `auditor collect`). Metric names and labels are the
//! contract written down in deploy/METRICS.md.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub namespace: String,
    pub workload: String,
    pub direction: String,
    pub protocol: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub namespace: String,
    pub workload: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Loss kinds, exposed at 0 from the start so that a loss is never silent.
pub const LOSS_KINDS: &[&str] = &["ringbuf", "flow_unseen", "flow_map", "decode", "log_buffer"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Why a POST to Alertmanager failed (`auditor_alert_delivery_failures_total`), exposed at 0.
pub const ALERT_FAILURE_REASONS: &[&str] =
    &["connect", "timeout", "status_5xx", "status_4xx", "other"];
/// Why alerts were given up (`auditor_alerts_dropped_total`), exposed at 0.
pub const ALERT_DROP_REASONS: &[&str] =
    &["queue_full", "retries_exhausted", "rejected", "shutdown"];

/// The agent's metrics.
pub struct Metrics {
    pub registry: Registry,
    pub flows: Family<FlowLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    pub connect_timeouts: Family<WorkloadLabels, Counter>,
    pub lost: Family<KindLabels, Counter>,
    pub up: Gauge<i64, AtomicI64>,
    pub alerts_sent: Counter,
    pub alert_delivery_failures: Family<ReasonLabels, Counter>,
    pub alerts_dropped: Family<ReasonLabels, Counter>,
    pub alert_queue: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("auditor");
        let flows = Family::<FlowLabels, Counter>::default();
        let drops = Family::<DropLabels, Counter>::default();
        let connect_timeouts = Family::<WorkloadLabels, Counter>::default();
        let lost = Family::<KindLabels, Counter>::default();
        let up = Gauge::<i64, AtomicI64>::default();
        let alerts_sent = Counter::default();
        let alert_delivery_failures = Family::<ReasonLabels, Counter>::default();
        let alerts_dropped = Family::<ReasonLabels, Counter>::default();
        let alert_queue = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "flows",
            "New flows recorded for an audited workload",
            flows.clone(),
        );
        registry.register(
            "drops",
            "Packets of an audited workload dropped on this node",
            drops.clone(),
        );
        registry.register(
            "connect_timeouts",
            "Connection attempts that gave up after SYN retransmits",
            connect_timeouts.clone(),
        );
        registry.register(
            "events_lost",
            "Events the agent could not record",
            lost.clone(),
        );
        registry.register(
            "up",
            "1 while the eBPF programs are attached and the flow log is writable",
            up.clone(),
        );
        registry.register(
            "alerts_sent",
            "Alerts delivered to Alertmanager (2xx)",
            alerts_sent.clone(),
        );
        registry.register(
            "alert_delivery_failures",
            "Failed POST attempts to Alertmanager, by reason",
            alert_delivery_failures.clone(),
        );
        registry.register(
            "alerts_dropped",
            "Alerts given up without delivery to Alertmanager, by reason",
            alerts_dropped.clone(),
        );
        registry.register(
            "alert_queue_alerts",
            "Alerts queued or in flight for Alertmanager",
            alert_queue.clone(),
        );
        for k in LOSS_KINDS {
            let _ = lost.get_or_create(&KindLabels {
                kind: (*k).to_string(),
            });
        }
        for (family, reasons) in [
            (&alert_delivery_failures, ALERT_FAILURE_REASONS),
            (&alerts_dropped, ALERT_DROP_REASONS),
        ] {
            for r in reasons {
                let _ = family.get_or_create(&ReasonLabels {
                    reason: (*r).to_string(),
                });
            }
        }
        Self {
            registry,
            flows,
            drops,
            connect_timeouts,
            lost,
            up,
            alerts_sent,
            alert_delivery_failures,
            alerts_dropped,
            alert_queue,
        }
    }
}

impl Metrics {
    /// Sets a loss counter to the absolute total `n` (counters only go up).
    pub fn set_lost(&self, kind: &str, n: u64) {
        let c = self.lost.get_or_create(&KindLabels {
            kind: kind.to_string(),
        });
        let now = c.get();
        if n > now {
            c.inc_by(n - now);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A line of the flow log kept for `/flows`, with its `last_seen` for filtering.
struct Line {
    last_seen: String,
    json: String,
}

/// What the endpoints read; shared with the recording loop.
pub struct Shared {
    pub metrics: Metrics,
    /// Recording (programs attached, log writable).
    pub recording: AtomicBool,
    /// The cluster view is synced (or no cluster view is configured).
    pub cluster_ready: AtomicBool,
    flows: Mutex<VecDeque<Line>>,
    max_lines: usize,
    /// Active faults by kind (e.g. `flow_log`), with the reason; `/healthz` is 503 while any is set.
    faults: Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Shared {
    pub fn new(max_lines: usize) -> Arc<Self> {
        Arc::new(Self {
            metrics: Metrics::default(),
            recording: AtomicBool::new(false),
            cluster_ready: AtomicBool::new(true),
            flows: Mutex::new(VecDeque::new()),
            max_lines,
            faults: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// Sets (or with `None` clears) a fault; `auditor_up` follows.
    pub fn set_fault(&self, kind: &'static str, reason: Option<String>) {
        let mut f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(r) => {
                f.insert(kind, r);
            }
            None => {
                f.remove(kind);
            }
        }
        drop(f);
        self.update_up();
    }

    /// Active faults, one line each.
    pub fn faults(&self) -> Vec<String> {
        let f = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().map(|(k, r)| format!("{k}: {r}")).collect()
    }

    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
        self.update_up();
    }

    /// `auditor_up`: 1 while recording with no fault (the one place it is computed).
    fn update_up(&self) {
        let healthy = self.recording.load(Ordering::Relaxed) && self.faults().is_empty();
        self.metrics.up.set(i64::from(healthy));
    }

    /// Keeps flow log lines for `/flows` (the oldest go first past `max_lines`).
    pub fn keep_lines(&self, lines: impl IntoIterator<Item = (String, String)>) {
        let Ok(mut q) = self.flows.lock() else { return };
        for (last_seen, json) in lines {
            q.push_back(Line { last_seen, json });
            while q.len() > self.max_lines {
                q.pop_front();
            }
        }
    }

    /// Lines whose `last_seen` is at or after `since` (RFC 3339 UTC strings compare in time order).
    pub fn lines_since(&self, since: Option<&str>) -> String {
        let Ok(q) = self.flows.lock() else {
            return String::new();
        };
        let mut out = String::new();
        for l in q.iter() {
            if since.is_none_or(|s| l.last_seen.as_str() >= s) {
                out.push_str(&l.json);
                out.push('\n');
            }
        }
        out
    }
}

#[derive(Deserialize)]
struct FlowsQuery {
    since: Option<String>,
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let faults = s.faults();
    if !faults.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            faults.iter().map(|f| format!("{f}\n")).collect::<String>(),
        );
    }
    if s.recording.load(Ordering::Relaxed) {
        let cluster = if s.cluster_ready.load(Ordering::Relaxed) {
            ""
        } else {
            " (cluster view not synced: IP-only attribution)"
        };
        (StatusCode::OK, format!("ok{cluster}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not recording\n".to_string(),
        )
    }
}

async fn flows(
    State(s): State<Arc<Shared>>,
    Query(q): Query<FlowsQuery>,
) -> axum::response::Response {
    let since = match q.since.as_deref() {
        None => None,
        Some(t) => match humantime::parse_rfc3339_weak(t) {
            Ok(ts) => Some(humantime::format_rfc3339_millis(ts).to_string()),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("since={t}: {e} (expected RFC 3339, e.g. 2026-11-28T10:00:00Z)\n"),
                )
                    .into_response()
            }
        },
    };
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        s.lines_since(since.as_deref()),
    )
        .into_response()
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/flows", get(flows))
        .with_state(shared)
}

/// Binds `addr` and serves in the background on the current runtime.
pub async fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(shared)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_contract_names_and_zero_losses() {
        let m = Metrics::default();
        m.flows
            .get_or_create(&FlowLabels {
                namespace: "media".into(),
                workload: "Deployment/x".into(),
                direction: "egress".into(),
                protocol: "UDP".into(),
                verdict: "deny".into(),
            })
            .inc();
        m.set_lost("ringbuf", 3);
        m.set_lost("ringbuf", 2);
        m.up.set(1);
        let text = m.render();
        for needle in [
            "auditor_flows_total{namespace=\"media\",workload=\"Deployment/x\",direction=\"egress\",protocol=\"UDP\",verdict=\"deny\"} 1",
            "auditor_events_lost_total{kind=\"ringbuf\"} 3",
            "auditor_events_lost_total{kind=\"flow_map\"} 0",
            "auditor_events_lost_total{kind=\"decode\"} 0",
            "auditor_up 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn flows_since_filters_and_bounds() {
        let s = Shared::new(2);
        s.keep_lines([
            (
                "2026-11-28T10:00:00.000Z".to_string(),
                "{\"a\":1}".to_string(),
            ),
            (
                "2026-11-28T10:00:05.000Z".to_string(),
                "{\"b\":2}".to_string(),
            ),
            (
                "2026-11-28T10:00:09.000Z".to_string(),
                "{\"c\":3}".to_string(),
            ),
        ]);
        assert_eq!(
            s.lines_since(None),
            "{\"b\":2}\n{\"c\":3}\n",
            "bounded to 2 lines"
        );
        assert_eq!(
            s.lines_since(Some("2026-11-28T10:00:06.000Z")),
            "{\"c\":3}\n"
        );
    }
}
