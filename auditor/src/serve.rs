//! The agent's HTTP endpoints: `/metrics` (Prometheus), `/healthz`, and `/flows`
//! (this node's recent flow log, for `auditor collect`). Metric names and labels are the
//! contract written down in deploy/METRICS.md.
//!
//! The server runs on its own OS thread with its own (current-thread) tokio runtime, so it
//! answers while the recorder's event loop is busy; the thread is detached and ends with the
//! process. Its own accept loop (hyper's HTTP/1 connection driver, no HTTP/2) bounds what
//! clients can cost, see [`ServeConfig`]:
//! - at most `max_connections` connections; past it, up to `reserved_connections` more are
//!   accepted in *probe-only* mode: `/healthz` and `/metrics` are answered, anything else
//!   gets `503` and the connection is closed, so a flood of `/flows` clients cannot fail the
//!   kubelet's liveness probe. Past both, new connections are closed at once. At most
//!   `max_flows_streams` `/flows` answers run at a time (more get `503`). All of these count
//!   in `auditor_http_connections_rejected_total`.
//! - a request head must arrive within `header_read_timeout` (this also closes keep-alive
//!   connections idle that long); a connection on which no byte moves in either direction
//!   for `idle_timeout` (a client that stops reading its answer) is dropped; a `/flows`
//!   answer is aborted (no final chunk, so the client sees it incomplete) after
//!   `flows_deadline`. Clients dropped so count in `auditor_http_clients_timed_out_total`
//!   (keep-alive connections closed while idle after an answer do not).
//!
//! `/flows` streams: it takes the lock, copies out up to ~64 KiB (or scans at most a few
//! thousand lines), releases the lock and sends that chunk, then goes on from a cursor (the
//! sequence number of the next line). Memory per client is bounded whatever the buffer
//! size, and a slow client never holds the lock while it waits on the socket. An answer
//! covers the lines kept when the request arrived (lines added meanwhile are for the next
//! request); a line evicted from the buffer before the stream reached it is skipped.
//!
//! Health: [`Shared::set_fault`] records a fault the recorder detects (e.g. the flow log
//! cannot be written); `/healthz` answers `503` with one line per fault while any is set.
//! `auditor_up` is computed in one place ([`Shared::is_up`]: recording and no fault), and
//! refreshed whenever recording or a fault changes and on every scrape.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

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
    /// Flows every NetworkPolicy of the cluster view allows that were dropped or timed out.
    pub blocked_although_allowed: Family<WorkloadLabels, Counter>,
    pub lost: Family<KindLabels, Counter>,
    pub up: Gauge<i64, AtomicI64>,
    /// Flushes of the flow log done (the loop's progress under load).
    pub flushes: Counter,
    /// How long the last flush took, in seconds.
    pub flush_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Flows the recorder holds in memory (bounded by the kernel map plus one interval).
    pub flows_in_memory: Gauge<i64, AtomicI64>,
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
        let blocked_although_allowed = Family::<WorkloadLabels, Counter>::default();
        let lost = Family::<KindLabels, Counter>::default();
        let up = Gauge::<i64, AtomicI64>::default();
        let flushes = Counter::default();
        let flush_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let flows_in_memory = Gauge::<i64, AtomicI64>::default();
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
            "flows_blocked_although_allowed",
            "Flows every NetworkPolicy allows that were dropped or timed out",
            blocked_although_allowed.clone(),
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
            "flushes",
            "Flushes of the flow log (every --flush-interval, earlier under churn)",
            flushes.clone(),
        );
        registry.register(
            "flush_seconds",
            "How long the last flush took",
            flush_seconds.clone(),
        );
        registry.register(
            "flows_in_memory",
            "Flows the recorder holds in memory",
            flows_in_memory.clone(),
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
            blocked_although_allowed,
            lost,
            up,
            flushes,
            flush_seconds,
            flows_in_memory,
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

/// Fault kinds exposed at 0 in `auditor_fault` from the start (others appear when first set).
pub const FAULT_KINDS: &[&str] = &["flow_log"];

/// Limits and timeouts of the HTTP server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Connections served normally at a time.
    pub max_connections: usize,
    /// Extra connections accepted past `max_connections` that are only answered on
    /// `/healthz` and `/metrics` (then closed), so probes get through a flood.
    pub reserved_connections: usize,
    /// `/flows` answers streaming at a time.
    pub max_flows_streams: usize,
    /// Time a client has to send a request head (also the keep-alive idle time).
    pub header_read_timeout: Duration,
    /// A connection on which nothing is read or written for this long is dropped.
    pub idle_timeout: Duration,
    /// A `/flows` answer still streaming after this long is aborted (checked before each
    /// chunk; a client that reads nothing at all is dropped by `idle_timeout` instead).
    pub flows_deadline: Duration,
    /// Who may read `/flows` (`--flows-auth kubernetes`); None: anyone who can connect.
    pub flows_auth: Option<Arc<crate::kube::review::Reviewer>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_connections: 64,
            reserved_connections: 8,
            max_flows_streams: 8,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            flows_deadline: Duration::from_secs(300),
            flows_auth: None,
        }
    }
}

/// The HTTP server's own metrics and the fault gauge, registered next to [`Metrics`].
struct ServeMetrics {
    connections_rejected: Counter,
    clients_timed_out: Counter,
    fault: Family<KindLabels, Gauge<i64, AtomicI64>>,
    buffer_bytes: Gauge<i64, AtomicI64>,
    buffer_lines: Gauge<i64, AtomicI64>,
    buffer_evicted: Counter,
    flows_denied: Family<ReasonLabels, Counter>,
}

impl ServeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let connections_rejected = Counter::default();
        let clients_timed_out = Counter::default();
        let fault = Family::<KindLabels, Gauge<i64, AtomicI64>>::default();
        let buffer_bytes = Gauge::<i64, AtomicI64>::default();
        let buffer_lines = Gauge::<i64, AtomicI64>::default();
        let buffer_evicted = Counter::default();
        let flows_denied = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "flows_requests_denied",
            "/flows requests refused by --flows-auth: no or bad token (unauthenticated), no RBAC grant (forbidden), API server not answering (unavailable)",
            flows_denied.clone(),
        );
        for r in crate::kube::review::DENIED_REASONS {
            let _ = flows_denied.get_or_create(&ReasonLabels {
                reason: (*r).to_string(),
            });
        }
        registry.register(
            "flows_buffer_bytes",
            "Memory held by the flow log lines kept for /flows (bounded by --flows-buffer-bytes)",
            buffer_bytes.clone(),
        );
        registry.register(
            "flows_buffer_lines",
            "Flow log lines kept for /flows",
            buffer_lines.clone(),
        );
        registry.register(
            "flows_buffer_evicted",
            "Flow log lines evicted from the /flows buffer (they stay in the flow log)",
            buffer_evicted.clone(),
        );
        registry.register(
            "http_connections_rejected",
            "HTTP connections or requests refused because a connection or /flows limit was reached",
            connections_rejected.clone(),
        );
        registry.register(
            "http_clients_timed_out",
            "HTTP clients dropped for a header, idle or /flows deadline timeout",
            clients_timed_out.clone(),
        );
        registry.register(
            "fault",
            "1 while a fault of this kind keeps the agent from recording correctly",
            fault.clone(),
        );
        for k in FAULT_KINDS {
            let _ = fault.get_or_create(&KindLabels {
                kind: (*k).to_string(),
            });
        }
        Self {
            connections_rejected,
            clients_timed_out,
            fault,
            buffer_bytes,
            buffer_lines,
            buffer_evicted,
            flows_denied,
        }
    }
}

/// A line of the flow log kept for `/flows`: its `last_seen` (for filtering) and its JSON
/// in one allocation of exactly their size.
struct Line {
    text: Box<str>,
    /// `text[..split]` is `last_seen`, the rest the JSON.
    split: usize,
}

impl Line {
    fn new(last_seen: &str, json: &str) -> Self {
        let mut text = String::with_capacity(last_seen.len() + json.len());
        text.push_str(last_seen);
        text.push_str(json);
        Self {
            text: text.into_boxed_str(),
            split: last_seen.len(),
        }
    }
    fn last_seen(&self) -> &str {
        &self.text[..self.split]
    }
    fn json(&self) -> &str {
        &self.text[self.split..]
    }
    /// What the line holds in memory: the text, the queue slot, the allocator's header.
    fn cost(&self) -> usize {
        self.text.len() + std::mem::size_of::<Self>() + 16
    }
}

/// The kept lines; `q[i]` has sequence number `first_seq + i`.
#[derive(Default)]
struct Lines {
    q: VecDeque<Line>,
    first_seq: u64,
    /// What the kept lines cost ([`Line::cost`]).
    bytes: usize,
    /// The latest `last_seen` among the lines evicted so far: a `/flows` answer for a
    /// `since` at or before it is missing lines (they are only in the flow log).
    evicted_until: Option<Box<str>>,
}

impl Lines {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.q.len() as u64
    }

    fn evict_oldest(&mut self) {
        if let Some(line) = self.q.pop_front() {
            self.first_seq += 1;
            self.bytes -= line.cost();
            if self
                .evicted_until
                .as_deref()
                .is_none_or(|u| line.last_seen() > u)
            {
                self.evicted_until = Some(line.last_seen().into());
            }
        }
    }
}

/// How much of the flow log `/flows` keeps in memory (the oldest lines go first past
/// either bound).
#[derive(Debug, Clone, Copy)]
pub struct FlowsBuffer {
    pub lines: usize,
    pub bytes: usize,
}

impl FlowsBuffer {
    /// At most `lines` lines, however big.
    pub fn lines(lines: usize) -> Self {
        Self {
            lines,
            bytes: usize::MAX,
        }
    }
}

/// The `/flows` answer header saying lines at or after `since` were evicted from the
/// buffer; its value is the latest `last_seen` evicted.
pub const EVICTED_HEADER: &str = "auditor-flows-evicted-until";

/// A `/flows` chunk is cut after about this many bytes...
const CHUNK_BYTES: usize = 64 * 1024;
/// ...or after this many lines examined, so the lock is held briefly even when few match.
const SCAN_LINES: usize = 4096;

/// What the endpoints read; shared with the recording loop.
pub struct Shared {
    pub metrics: Metrics,
    /// Recording (programs attached, log writable). Prefer [`Shared::set_recording`], which
    /// also updates `auditor_up`.
    pub recording: AtomicBool,
    /// The cluster view is synced (or no cluster view is configured).
    pub cluster_ready: AtomicBool,
    /// A cluster view from an earlier sync is in use while it is not synced.
    pub cluster_cached: AtomicBool,
    serve: ServeMetrics,
    faults: Mutex<BTreeMap<&'static str, String>>,
    /// When the recorder's loop last went round (ms on a monotonic clock); `/livez` fails
    /// when it stalls.
    heartbeat_ms: std::sync::atomic::AtomicU64,
    flows: Mutex<Lines>,
    buffer: FlowsBuffer,
}

/// Milliseconds on CLOCK_MONOTONIC.
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// `/livez` fails when the recorder's loop has not gone round for this long.
pub const LIVENESS_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// A poisoned lock only means a panic elsewhere; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Shared state keeping at most `max_lines` lines for `/flows`.
    pub fn new(max_lines: usize) -> Arc<Self> {
        Self::with_buffer(FlowsBuffer::lines(max_lines))
    }

    pub fn with_buffer(buffer: FlowsBuffer) -> Arc<Self> {
        let mut metrics = Metrics::default();
        let serve = ServeMetrics::register(&mut metrics.registry);
        Arc::new(Self {
            metrics,
            recording: AtomicBool::new(false),
            cluster_ready: AtomicBool::new(true),
            cluster_cached: AtomicBool::new(false),
            serve,
            faults: Mutex::new(BTreeMap::new()),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(monotonic_ms()),
            flows: Mutex::new(Lines::default()),
            buffer,
        })
    }

    /// Recording started (`true`) or stopped; updates `auditor_up`.
    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
        self.update_up();
    }

    /// Sets (`Some(reason)`) or clears (`None`) the fault `kind` (a fixed name such as
    /// `"flow_log"`, so the `auditor_fault` series stay bounded). While any fault is set,
    /// `/healthz` answers 503 with `kind: reason` lines and `auditor_up` is 0.
    pub fn set_fault(&self, kind: &'static str, reason: Option<String>) {
        let active = {
            let mut f = lock(&self.faults);
            match reason {
                Some(r) => {
                    // One line per fault on /healthz.
                    f.insert(kind, r.replace(['\n', '\r'], " "));
                    1
                }
                None => {
                    f.remove(kind);
                    0
                }
            }
        };
        self.serve
            .fault
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(active);
        self.update_up();
    }

    /// The active faults, by kind.
    pub fn faults(&self) -> Vec<(&'static str, String)> {
        lock(&self.faults)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The recorder's loop went round (called every turn; `/livez` watches it).
    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long since the loop last went round.
    pub fn since_heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            monotonic_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)),
        )
    }

    /// What `auditor_up` says: recording and no fault.
    pub fn is_up(&self) -> bool {
        self.recording.load(Ordering::Relaxed) && lock(&self.faults).is_empty()
    }

    fn update_up(&self) {
        self.metrics.up.set(i64::from(self.is_up()));
    }

    /// Keeps flow log lines (`last_seen`, JSON) for `/flows`; the oldest go first past
    /// either bound of the buffer.
    pub fn keep_lines<S: AsRef<str>, J: AsRef<str>>(
        &self,
        lines: impl IntoIterator<Item = (S, J)>,
    ) {
        let mut l = lock(&self.flows);
        let before = l.first_seq;
        for (last_seen, json) in lines {
            let line = Line::new(last_seen.as_ref(), json.as_ref());
            l.bytes += line.cost();
            l.q.push_back(line);
            while l.q.len() > self.buffer.lines || (l.bytes > self.buffer.bytes && l.q.len() > 1) {
                l.evict_oldest();
            }
        }
        self.serve.buffer_evicted.inc_by(l.first_seq - before);
        self.serve.buffer_bytes.set(l.bytes as i64);
        self.serve.buffer_lines.set(l.q.len() as i64);
    }

    /// The latest `last_seen` evicted from the buffer, when it is at or after `since`
    /// (or when anything was evicted and there is no `since`): the answer is incomplete.
    fn evicted_since(&self, since: Option<&str>) -> Option<String> {
        let l = lock(&self.flows);
        let until = l.evicted_until.as_deref()?;
        since.is_none_or(|s| until >= s).then(|| until.to_owned())
    }

    /// The sequence number the next kept line will get: a stream started now ends there.
    fn flows_end(&self) -> u64 {
        lock(&self.flows).end_seq()
    }

    /// Appends to `out` the lines from `*cursor` (a sequence number) up to `end` whose
    /// `last_seen` is at or after `since`, stopping after about [`CHUNK_BYTES`] or
    /// [`SCAN_LINES`] lines examined, and moves the cursor past what it examined. Lines
    /// evicted before the cursor reached them are skipped.
    fn copy_chunk(&self, cursor: &mut u64, end: u64, since: Option<&str>, out: &mut Vec<u8>) {
        let l = lock(&self.flows);
        let stop = end.min(l.end_seq());
        let mut seq = (*cursor).max(l.first_seq);
        let mut scanned = 0;
        let limit = out.len() + CHUNK_BYTES;
        while seq < stop && scanned < SCAN_LINES && out.len() < limit {
            let Some(line) = l.q.get((seq - l.first_seq) as usize) else {
                break;
            };
            if since.is_none_or(|s| line.last_seen() >= s) {
                out.extend_from_slice(line.json().as_bytes());
                out.push(b'\n');
            }
            seq += 1;
            scanned += 1;
        }
        *cursor = if seq >= stop { end.max(seq) } else { seq };
    }

    /// Lines whose `last_seen` is at or after `since` (RFC 3339 UTC strings compare in time
    /// order), as one string: what a `/flows` answer started now contains. The endpoint
    /// streams the same in chunks instead.
    pub fn lines_since(&self, since: Option<&str>) -> String {
        let end = self.flows_end();
        let mut cursor = 0;
        let mut out = Vec::new();
        while cursor < end {
            self.copy_chunk(&mut cursor, end, since, &mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Deserialize)]
struct FlowsQuery {
    since: Option<String>,
}

/// The router's state: the shared data and the server's limits.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    streams: Arc<Semaphore>,
    flows_deadline: Duration,
    auth: Option<Arc<crate::kube::review::Reviewer>>,
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    // auditor_up is derived, so a stale direct write can never be scraped.
    app.shared.update_up();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.shared.metrics.render(),
    )
}

/// Liveness (the kubelet restarts the pod when it fails): only a stalled recorder loop
/// fails it. A fault the agent recovers from by itself (a full disk, the API server
/// gone) fails `/healthz` (readiness) but not this: restarting would not help.
async fn livez(State(app): State<App>) -> impl IntoResponse {
    let stalled = app.shared.since_heartbeat();
    if stalled > LIVENESS_STALL {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("recorder loop stalled for {} s\n", stalled.as_secs()),
        )
    } else {
        (StatusCode::OK, "alive\n".to_string())
    }
}

async fn healthz(State(app): State<App>) -> impl IntoResponse {
    let s = &app.shared;
    let faults = s.faults();
    let recording = s.recording.load(Ordering::Relaxed);
    if faults.is_empty() && recording {
        let cluster = if s.cluster_ready.load(Ordering::Relaxed) {
            ""
        } else if s.cluster_cached.load(Ordering::Relaxed) {
            " (API server unreachable or resyncing: attributing with the last cluster view)"
        } else {
            " (cluster view not synced: IP-only attribution)"
        };
        return (StatusCode::OK, format!("ok{cluster}\n"));
    }
    let mut body = String::new();
    for (kind, reason) in faults {
        body.push_str(&format!("{kind}: {reason}\n"));
    }
    if !recording {
        body.push_str("not recording\n");
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

fn too_busy(what: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONNECTION, "close"), (header::RETRY_AFTER, "5")],
        format!("too many {what}: try again later\n"),
    )
        .into_response()
}

/// Where a `/flows` stream is.
struct FlowStream {
    shared: Arc<Shared>,
    since: Option<String>,
    cursor: u64,
    end: u64,
    deadline: tokio::time::Instant,
    /// Held for the stream's life (the body is dropped when done or disconnected).
    _permit: OwnedSemaphorePermit,
}

async fn next_chunk(mut st: FlowStream) -> Option<(std::io::Result<Bytes>, FlowStream)> {
    loop {
        if st.cursor >= st.end {
            return None;
        }
        if tokio::time::Instant::now() >= st.deadline {
            st.shared.serve.clients_timed_out.inc();
            st.cursor = st.end;
            return Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "/flows answer deadline passed",
                )),
                st,
            ));
        }
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 1024);
        st.shared
            .copy_chunk(&mut st.cursor, st.end, st.since.as_deref(), &mut buf);
        if !buf.is_empty() {
            return Some((Ok(Bytes::from(buf)), st));
        }
        // Nothing matched in that slice: let other connections run before the next one.
        tokio::task::yield_now().await;
    }
}

/// `--flows-auth`: None when the caller may read `/flows`, else the answer.
async fn refuse(app: &App, headers: &axum::http::HeaderMap) -> Option<Response> {
    use crate::kube::review::{Decision, Reviewer};
    let reviewer = app.auth.as_ref()?;
    let decision = reviewer.check(Reviewer::token(headers)).await;
    let reason = decision.denied_reason()?;
    app.shared
        .serve
        .flows_denied
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
    let (code, message) = match decision {
        Decision::Allowed { .. } => return None,
        Decision::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
        Decision::Forbidden { reason, .. } => (StatusCode::FORBIDDEN, reason),
        Decision::Unavailable(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot check the caller: {m}"),
        ),
    };
    tracing::debug!(status = code.as_u16(), %message, "/flows request refused");
    let mut r = (code, format!("/flows: {message}\n")).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"auditor\""),
        );
    }
    Some(r)
}

async fn flows(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    Query(q): Query<FlowsQuery>,
) -> Response {
    if let Some(refused) = refuse(&app, &headers).await {
        return refused;
    }
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
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        app.shared.serve.connections_rejected.inc();
        return too_busy("/flows clients");
    };
    let evicted = app.shared.evicted_since(since.as_deref());
    let st = FlowStream {
        end: app.shared.flows_end(),
        shared: app.shared.clone(),
        since,
        cursor: 0,
        deadline: tokio::time::Instant::now() + app.flows_deadline,
        _permit: permit,
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(futures::stream::unfold(st, next_chunk)),
    )
        .into_response();
    if let Some(v) = evicted.and_then(|u| header::HeaderValue::from_str(&u).ok()) {
        response.headers_mut().insert(EVICTED_HEADER, v);
    }
    response
}

/// The endpoints with the default limits (without the connection-level ones, which
/// [`spawn_with`] adds).
pub fn router(shared: Arc<Shared>) -> Router {
    router_with(shared, &ServeConfig::default())
}

fn router_with(shared: Arc<Shared>, cfg: &ServeConfig) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/flows", get(flows))
        .with_state(App {
            shared,
            streams: Arc::new(Semaphore::new(cfg.max_flows_streams)),
            flows_deadline: cfg.flows_deadline,
            auth: cfg.flows_auth.clone(),
        })
}

/// Binds `addr` and serves with the default [`ServeConfig`] on a thread of its own.
pub async fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    spawn_with(addr, shared, ServeConfig::default()).await
}

/// Binds `addr` (a bind error is returned here) and serves on a detached OS thread with
/// its own current-thread runtime, which ends with the process. Returns the bound address.
pub async fn spawn_with(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cfg: ServeConfig,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let (started, ready) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("auditor-http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let _ = started.send(Ok(()));
                        accept_loop(l, shared, cfg).await;
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            });
        })?;
    ready
        .await
        .map_err(|_| std::io::Error::other("HTTP server thread ended before serving"))??;
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, cfg: ServeConfig) {
    let router = router_with(shared.clone(), &cfg);
    let regular = Arc::new(Semaphore::new(cfg.max_connections));
    let reserve = Arc::new(Semaphore::new(cfg.reserved_connections));
    let mut last_warn: Option<tokio::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: say so now and then, retry soon.
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    last_warn = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (permit, probe_only) = if let Ok(p) = regular.clone().try_acquire_owned() {
            (p, false)
        } else if let Ok(p) = reserve.clone().try_acquire_owned() {
            (p, true)
        } else {
            shared.serve.connections_rejected.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            shared.clone(),
            router.clone(),
            cfg.clone(),
            permit,
            probe_only,
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    router: Router,
    cfg: ServeConfig,
    _permit: OwnedSemaphorePermit,
    probe_only: bool,
) {
    let io = IdleIo::new(stream, cfg.idle_timeout);
    let stalled = io.stalled.clone();
    let requests = Arc::new(AtomicUsize::new(0));
    let served = requests.clone();
    let rejected = shared.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        served.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let rejected = rejected.clone();
        async move {
            if probe_only && !matches!(req.uri().path(), "/healthz" | "/livez" | "/metrics") {
                rejected.serve.connections_rejected.inc();
                return Ok::<_, Infallible>(too_busy("connections"));
            }
            router.oneshot(req).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(!probe_only);
    let result = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        // A client that stopped reading counts; one that sent nothing (or no whole head)
        // in time counts unless it was only idle between requests (keep-alive).
        let fresh = requests.load(Ordering::Relaxed) == 0;
        let counted = match stalled.load(Ordering::Relaxed) {
            STALL_WRITE => true,
            STALL_READ => fresh,
            _ => e.is_timeout() && fresh,
        };
        if counted {
            shared.serve.clients_timed_out.inc();
        }
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// The idle timeout fired waiting for the client to send.
const STALL_READ: u8 = 1;
/// The idle timeout fired waiting for the client to read.
const STALL_WRITE: u8 = 2;

/// A socket that fails with `TimedOut` once no byte moved either way for `idle`.
struct IdleIo {
    inner: tokio::net::TcpStream,
    idle: Duration,
    last_progress: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The last write (or flush) did not go through.
    write_pending: bool,
    /// Set when the timeout fired: [`STALL_READ`] or [`STALL_WRITE`].
    stalled: Arc<AtomicU8>,
}

impl IdleIo {
    fn new(inner: tokio::net::TcpStream, idle: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            idle,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            write_pending: false,
            stalled: Arc::new(AtomicU8::new(0)),
        }
    }

    /// After the inner socket made progress (or failed), pass its result on; while it is
    /// pending, wait for the idle deadline.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
        stall: u8,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.last_progress = tokio::time::Instant::now();
                if stall == STALL_WRITE {
                    self.write_pending = false;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if stall == STALL_WRITE {
                    self.write_pending = true;
                }
                let deadline = self.last_progress + self.idle;
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        // Waiting on an answer the client does not read, even if the
                        // timeout shows first on the (keep-alive) read side.
                        let stall = if self.write_pending {
                            STALL_WRITE
                        } else {
                            stall
                        };
                        self.stalled.store(stall, Ordering::Relaxed);
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "HTTP client idle",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.check(cx, r, STALL_READ)
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, r, STALL_WRITE)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, r, STALL_WRITE)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, r, STALL_WRITE)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_md_lists_exactly_the_exposed_metrics() {
        let shared = Shared::new(1);
        // Families without a series render nothing: give each labelled one a series.
        let m = &shared.metrics;
        let w = WorkloadLabels {
            namespace: "n".into(),
            workload: "w".into(),
        };
        m.connect_timeouts.get_or_create(&w).inc();
        m.blocked_although_allowed.get_or_create(&w).inc();
        m.drops
            .get_or_create(&DropLabels {
                namespace: "n".into(),
                workload: "w".into(),
                reason: "r".into(),
            })
            .inc();
        m.flows
            .get_or_create(&FlowLabels {
                namespace: "n".into(),
                workload: "w".into(),
                direction: "egress".into(),
                protocol: "UDP".into(),
                verdict: "allow".into(),
            })
            .inc();
        let text = shared.metrics.render();
        let exposed: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let (name, kind) = l.split_once(' ')?;
                Some(if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_string()
                })
            })
            .collect();
        let doc = include_str!("../../deploy/METRICS.md");
        let documented: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `auditor_"))
            .filter_map(|l| l.split_once('`').map(|(n, _)| format!("auditor_{n}")))
            .collect();
        assert_eq!(
            exposed, documented,
            "deploy/METRICS.md's table and /metrics must list the same metrics"
        );
    }

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

    #[test]
    fn flows_buffer_is_bounded_by_bytes_and_says_what_it_evicted() {
        // Lines of about 1 KiB: a 100 KiB buffer keeps fewer than 100 of them.
        let s = Shared::with_buffer(FlowsBuffer {
            lines: 1_000_000,
            bytes: 100 << 10,
        });
        assert_eq!(s.evicted_since(None), None, "nothing evicted yet");
        fill(&s, 0, 1000, 1000);
        let l = lock(&s.flows);
        assert!(l.bytes <= 100 << 10, "{} bytes kept", l.bytes);
        assert!(
            l.q.len() > 90 && l.q.len() < 100,
            "{} lines kept",
            l.q.len()
        );
        assert_eq!(l.first_seq, 1000 - l.q.len() as u64);
        let kept = l.q.len();
        let oldest_kept = l.q[0].last_seen().to_owned();
        drop(l);
        let text = s.metrics.render();
        assert!(
            text.contains(&format!(
                "auditor_flows_buffer_evicted_total {}",
                1000 - kept
            )),
            "{text}"
        );
        assert!(text.contains(&format!("auditor_flows_buffer_lines {kept}")));
        // The latest evicted line is the one just before the oldest kept.
        let until = last_seen(999 - kept);
        assert_eq!(s.evicted_since(None).as_deref(), Some(until.as_str()));
        assert_eq!(
            s.evicted_since(Some(&until)).as_deref(),
            Some(until.as_str())
        );
        assert_eq!(
            s.evicted_since(Some(&last_seen(0))).as_deref(),
            Some(until.as_str())
        );
        assert_eq!(
            s.evicted_since(Some(&oldest_kept)),
            None,
            "a window starting at the oldest kept line is complete"
        );
        assert_eq!(s.lines_since(Some(&oldest_kept)).lines().count(), kept);
    }

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Instant, SystemTime};

    /// The HTTP tests measure time and memory: one at a time.
    static HTTP_TESTS: Mutex<()> = Mutex::new(());

    fn start(shared: &Arc<Shared>, cfg: ServeConfig) -> SocketAddr {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(spawn_with(
            "127.0.0.1:0".parse().unwrap(),
            shared.clone(),
            cfg,
        ))
        .unwrap()
    }

    fn last_seen(i: usize) -> String {
        let t = SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_795_860_000)
            + Duration::from_millis(i as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }

    fn json(i: usize, pad: usize) -> String {
        format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(pad))
    }

    /// Keeps lines `from..to`, each about `pad` + 20 bytes.
    fn fill(s: &Shared, from: usize, to: usize, pad: usize) {
        s.keep_lines((from..to).map(|i| (last_seen(i), json(i, pad))));
    }

    fn request(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // A connection refused by a limit may be closed before the request is written;
        // the caller sees it as no answer.
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        );
        s
    }

    fn find(h: &[u8], n: &[u8]) -> Option<usize> {
        h.windows(n.len()).position(|w| w == n)
    }

    /// Decodes a chunked body; `true` if it ended with the final chunk.
    fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            let Some(eol) = find(b, b"\r\n") else {
                return (out, false);
            };
            let size = std::str::from_utf8(&b[..eol]).unwrap_or("?");
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                return (out, false);
            };
            b = &b[eol + 2..];
            if n == 0 {
                return (out, true);
            }
            if b.len() < n + 2 {
                out.extend_from_slice(&b[..b.len().min(n)]);
                return (out, false);
            }
            out.extend_from_slice(&b[..n]);
            b = &b[n + 2..];
        }
    }

    /// Status, body, and whether the body was complete. An aborted answer still gives what
    /// arrived before the abort.
    fn response(mut s: TcpStream) -> (u16, String, bool) {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let head_end = find(&raw, b"\r\n\r\n").expect("a response head");
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let body = &raw[head_end + 4..];
        let (body, complete) = if head.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            (body.to_vec(), true)
        };
        (status, String::from_utf8(body).unwrap(), complete)
    }

    /// `None` if the connection was closed unanswered.
    fn try_get(addr: SocketAddr, path: &str) -> Option<u16> {
        let mut s = request(addr, path);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let head = String::from_utf8_lossy(raw.get(..12)?).into_owned();
        head[9..12].parse().ok()
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let (status, body, complete) = response(request(addr, path));
        assert!(complete, "GET {path}: incomplete answer");
        (status, body)
    }

    fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    }

    fn ids(body: &str) -> Vec<usize> {
        body.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["i"].as_u64().unwrap() as usize
            })
            .collect()
    }

    #[test]
    fn slow_flows_clients_keep_memory_bounded_and_healthz_answers() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(200_000);
        fill(&shared, 0, 200_000, 380);
        shared.set_recording(true);
        let cfg = ServeConfig {
            max_flows_streams: 32,
            ..Default::default()
        };
        let addr = start(&shared, cfg);
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
        // Give memory freed by earlier tests back to the system, so that reuse of it
        // cannot hide growth.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe {
            libc::malloc_trim(0);
        }
        let before = rss_bytes();
        // 20 clients ask for the whole buffer (~80 MB each) and read nothing.
        let mut clients: Vec<TcpStream> = (0..20).map(|_| request(addr, "/flows")).collect();
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        let health = get(addr, "/healthz");
        let latency = t.elapsed();
        let after = rss_bytes();
        let growth = after.saturating_sub(before);
        eprintln!(
            "20 stalled /flows clients: RSS {} -> {} MiB (+{} KiB), /healthz in {latency:?}",
            before >> 20,
            after >> 20,
            growth >> 10
        );
        assert_eq!(health, (200, "ok\n".to_string()));
        assert!(
            latency < Duration::from_secs(1),
            "/healthz took {latency:?}"
        );
        assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);
        // They were being served: one now reads its whole answer.
        let (status, body, complete) = response(clients.remove(0));
        assert_eq!(status, 200);
        assert!(complete);
        let got = ids(&body);
        assert_eq!(got.len(), 200_000);
        assert!(got.iter().enumerate().all(|(n, i)| n == *i), "in order");
    }

    #[test]
    fn flows_answer_names_what_the_buffer_evicted() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(100);
        fill(&shared, 0, 150, 10);
        let addr = start(&shared, ServeConfig::default());
        let head = |path: &str| {
            let mut raw = Vec::new();
            let _ = request(addr, path).read_to_end(&mut raw);
            let end = find(&raw, b"\r\n\r\n").expect("a response head");
            String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase()
        };
        let header = format!("{EVICTED_HEADER}: {}", last_seen(49).to_ascii_lowercase());
        // Lines 0..50 were evicted: a window from line 10 or from the start misses some...
        for path in [
            "/flows".to_owned(),
            format!("/flows?since={}", last_seen(10)),
        ] {
            let h = head(&path);
            assert!(h.starts_with("http/1.1 200"), "{h}");
            assert!(h.contains(&header), "{path}: {h}");
        }
        // ...a window from the oldest kept line does not.
        let h = head(&format!("/flows?since={}", last_seen(50)));
        assert!(h.starts_with("http/1.1 200"), "{h}");
        assert!(!h.contains(EVICTED_HEADER), "{h}");
    }

    #[test]
    fn connection_limit_reserves_probe_slots_and_rejects_the_rest() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(100);
        fill(&shared, 0, 3, 10);
        shared.set_recording(true);
        let cfg = ServeConfig {
            max_connections: 4,
            reserved_connections: 2,
            ..Default::default()
        };
        let addr = start(&shared, cfg);
        let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        // Every regular slot is held: probes still get through on a reserved one...
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
        // ...but /flows is refused there, and counted.
        let (status, body) = get(addr, "/flows");
        assert_eq!(status, 503);
        assert_eq!(body, "too many connections: try again later\n");
        assert_eq!(shared.serve.connections_rejected.get(), 1);
        let (status, metrics) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            metrics.contains("auditor_http_connections_rejected_total 1\n"),
            "{metrics}"
        );
        // With the reserved slots held too, a new connection is closed unanswered.
        std::thread::sleep(Duration::from_millis(100));
        let more: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut s = request(addr, "/healthz");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(
            raw.is_empty(),
            "answered: {}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(shared.serve.connections_rejected.get(), 2);
        // Slots come back when clients leave.
        drop(idle);
        drop(more);
        wait_for("/flows served again", Duration::from_secs(2), || {
            try_get(addr, "/flows") == Some(200)
        });
        assert_eq!(ids(&get(addr, "/flows").1), vec![0, 1, 2]);
    }

    #[test]
    fn flows_streams_are_limited() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(50_000);
        fill(&shared, 0, 50_000, 380);
        let cfg = ServeConfig {
            max_flows_streams: 2,
            ..Default::default()
        };
        let addr = start(&shared, cfg);
        let streams: Vec<TcpStream> = (0..2).map(|_| request(addr, "/flows")).collect();
        std::thread::sleep(Duration::from_millis(200));
        let (status, body) = get(addr, "/flows");
        assert_eq!(
            (status, body.as_str()),
            (503, "too many /flows clients: try again later\n")
        );
        assert_eq!(shared.serve.connections_rejected.get(), 1);
        drop(streams);
        wait_for("a stream slot again", Duration::from_secs(2), || {
            try_get(addr, "/flows") == Some(200)
        });
    }

    #[test]
    fn stalled_and_slow_clients_are_dropped_and_counted() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(50_000);
        // ~20 MB: more than the socket buffers hold.
        fill(&shared, 0, 50_000, 380);
        shared.set_recording(true);
        let cfg = ServeConfig {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let addr = start(&shared, cfg);
        let timed_out = || shared.serve.clients_timed_out.get();

        // A client that reads nothing is dropped once its buffers are full for 500 ms.
        let s = request(addr, "/flows");
        let took = wait_for("stalled client dropped", Duration::from_secs(5), || {
            timed_out() == 1
        });
        assert!(took >= Duration::from_millis(450), "dropped after {took:?}");
        let (status, body, complete) = response(s);
        assert_eq!(status, 200);
        assert!(!complete, "answer cut short");
        assert!(
            ids(&body
                .lines()
                .take_while(|l| l.ends_with('}'))
                .collect::<Vec<_>>()
                .join("\n"))
            .len()
                < 50_000
        );

        // Half a request head: closed after the header timeout, counted.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /flo").unwrap();
        let t = Instant::now();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "closed after {:?}",
            t.elapsed()
        );
        wait_for("header timeout counted", Duration::from_secs(2), || {
            timed_out() == 2
        });

        // A keep-alive connection idle after its answer is closed, but not counted.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(
            raw.ends_with(b"\r\n\r\nok\n"),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(timed_out(), 2);

        // A client that reads steadily, for longer in total than the idle timeout, is
        // served in full.
        let mut s = request(addr, "/flows");
        let t = Instant::now();
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let elapsed = t.elapsed();
        let head_end = find(&raw, b"\r\n\r\n").unwrap();
        let (body, complete) = dechunk(&raw[head_end + 4..]);
        assert!(complete, "steady reader cut after {elapsed:?}");
        assert_eq!(ids(std::str::from_utf8(&body).unwrap()).len(), 50_000);
        assert!(elapsed > Duration::from_millis(500), "read in {elapsed:?}");
        assert_eq!(timed_out(), 2);
    }

    #[test]
    fn flows_deadline_aborts_the_answer() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(50_000);
        fill(&shared, 0, 50_000, 380);
        let cfg = ServeConfig {
            flows_deadline: Duration::from_millis(300),
            ..Default::default()
        };
        let addr = start(&shared, cfg);
        let s = request(addr, "/flows");
        std::thread::sleep(Duration::from_millis(800));
        let (status, body, complete) = response(s);
        assert_eq!(status, 200);
        assert!(!complete, "answer not aborted");
        assert!(body.len() < 50_000 * 400);
        assert_eq!(shared.serve.clients_timed_out.get(), 1);
    }

    #[test]
    fn flows_stream_is_exact_while_lines_are_added() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(100_000);
        fill(&shared, 0, 100_000, 380);
        let addr = start(&shared, ServeConfig::default());
        let mut s = request(addr, &format!("/flows?since={}", last_seen(50_000)));
        // The answer has started...
        let mut raw = vec![0u8; 64 * 1024];
        s.read_exact(&mut raw).unwrap();
        // ...when 20k newer lines arrive and evict the 20k oldest (none of which match).
        fill(&shared, 100_000, 120_000, 380);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        raw.extend_from_slice(&rest);
        let head_end = find(&raw, b"\r\n\r\n").unwrap();
        assert!(raw.starts_with(b"HTTP/1.1 200"));
        let (body, complete) = dechunk(&raw[head_end + 4..]);
        assert!(complete);
        let expected: String = (50_000..100_000).map(|i| json(i, 380) + "\n").collect();
        assert!(
            body == expected.as_bytes(),
            "lines 50000..100000 exactly, in order"
        );
        // The new lines are there for the next request.
        let (status, body) = get(addr, &format!("/flows?since={}", last_seen(119_998)));
        assert_eq!((status, ids(&body)), (200, vec![119_998, 119_999]));
        // And a bad since= keeps its message.
        let (status, body) = get(addr, "/flows?since=yesterday");
        assert_eq!(status, 400);
        assert!(
            body.starts_with("since=yesterday: ")
                && body.ends_with(" (expected RFC 3339, e.g. 2026-11-28T10:00:00Z)\n"),
            "{body}"
        );
    }

    #[test]
    fn cursor_skips_lines_evicted_before_they_are_sent() {
        let s = Shared::new(10_000);
        fill(&s, 0, 10_000, 5);
        let end = s.flows_end();
        let mut cursor = 0;
        let mut out = Vec::new();
        s.copy_chunk(&mut cursor, end, None, &mut out);
        let sent = cursor as usize;
        assert!(
            sent > 1_000 && sent <= SCAN_LINES,
            "first chunk: {sent} lines"
        );
        // 6000 more evict lines 0..6000: sent..6000 were not sent yet.
        fill(&s, 10_000, 16_000, 5);
        while cursor < end {
            s.copy_chunk(&mut cursor, end, None, &mut out);
        }
        let got = ids(std::str::from_utf8(&out).unwrap());
        let expected: Vec<usize> = (0..sent).chain(6_000..10_000).collect();
        assert_eq!(got, expected);
        // A chunk stays near its byte bound.
        let big = Shared::new(1_000);
        fill(&big, 0, 1_000, 1_000);
        let (mut cursor, mut out) = (0, Vec::new());
        big.copy_chunk(&mut cursor, big.flows_end(), None, &mut out);
        assert!(
            out.len() >= CHUNK_BYTES && out.len() < CHUNK_BYTES + 1_100,
            "{}",
            out.len()
        );
    }

    #[test]
    fn livez_fails_only_when_the_loop_stalls() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(10);
        let addr = start(&shared, ServeConfig::default());
        shared.set_recording(true);
        shared.set_fault("flow_log", Some("disk full".into()));
        assert_eq!(
            get(addr, "/livez"),
            (200, "alive\n".to_string()),
            "a fault is not a reason to restart"
        );
        shared.heartbeat_ms.store(
            monotonic_ms() - LIVENESS_STALL.as_millis() as u64 - 5000,
            Ordering::Relaxed,
        );
        let (code, body) = get(addr, "/livez");
        assert_eq!(code, 503);
        assert!(body.starts_with("recorder loop stalled for 35 s"), "{body}");
        shared.heartbeat();
        assert_eq!(get(addr, "/livez").0, 200);
    }

    #[test]
    fn faults_fail_healthz_and_up() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(10);
        let addr = start(&shared, ServeConfig::default());
        assert_eq!(get(addr, "/healthz"), (503, "not recording\n".to_string()));
        shared.set_recording(true);
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
        let m = get(addr, "/metrics").1;
        assert!(
            m.contains("auditor_up 1\n") && m.contains("auditor_fault{kind=\"flow_log\"} 0\n"),
            "{m}"
        );

        let reason =
            "write flows.jsonl: No space left on device (os error 28); 1234 records buffered";
        shared.set_fault("flow_log", Some(reason.to_string()));
        assert_eq!(
            get(addr, "/healthz"),
            (503, format!("flow_log: {reason}\n"))
        );
        // A direct write to the gauge cannot make it lie.
        shared.metrics.up.set(1);
        let m = get(addr, "/metrics").1;
        assert!(
            m.contains("auditor_up 0\n") && m.contains("auditor_fault{kind=\"flow_log\"} 1\n"),
            "{m}"
        );
        assert!(!shared.is_up());

        shared.set_fault("flow_log", None);
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
        let m = get(addr, "/metrics").1;
        assert!(
            m.contains("auditor_up 1\n") && m.contains("auditor_fault{kind=\"flow_log\"} 0\n"),
            "{m}"
        );
        shared.cluster_ready.store(false, Ordering::Relaxed);
        assert_eq!(
            get(addr, "/healthz"),
            (
                200,
                "ok (cluster view not synced: IP-only attribution)\n".to_string()
            )
        );
        shared.cluster_cached.store(true, Ordering::Relaxed);
        assert_eq!(
            get(addr, "/healthz"),
            (
                200,
                "ok (API server unreachable or resyncing: attributing with the last cluster view)\n"
                    .to_string()
            )
        );
        shared.set_recording(false);
        assert_eq!(shared.metrics.up.get(), 0);
    }

    #[test]
    fn healthz_answers_while_the_callers_runtime_is_busy() {
        let _serial = lock(&HTTP_TESTS);
        let shared = Shared::new(10);
        shared.set_recording(true);
        // The recorder's runtime: current-thread, as in main.rs.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (answer, latency) = rt.block_on(async {
            let addr = spawn("127.0.0.1:0".parse().unwrap(), shared.clone())
                .await
                .unwrap();
            let probe = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let t = Instant::now();
                let answer = get(addr, "/healthz");
                (answer, t.elapsed())
            });
            // A hot loop that never yields, for 2 s.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(2) {
                std::hint::spin_loop();
            }
            probe.join().unwrap()
        });
        eprintln!("/healthz during a busy caller runtime: {latency:?}");
        assert_eq!(answer, (200, "ok\n".to_string()));
        assert!(latency < Duration::from_secs(1), "{latency:?}");
    }

    #[test]
    fn spawn_fails_on_a_taken_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(spawn(taken.local_addr().unwrap(), Shared::new(1)));
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
    }
}
