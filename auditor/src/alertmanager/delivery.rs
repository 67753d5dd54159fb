//! Alert delivery that does not vanish: a bounded queue, one background task that POSTs
//! and retries, counters for every outcome, and a shutdown with a deadline.
//!
//! The queue is bounded by alerts (queued plus in flight). When it is full, the oldest
//! queued alerts are dropped (`queue_full`); the batch in flight is kept. The task takes
//! the queued batches (up to `max_post_alerts` alerts) as one POST and keeps retrying it
//! until it is delivered (`auditor_alerts_sent_total`), refused with a 4xx other than 429
//! (`rejected`) or has failed `max_attempts` times (`retries_exhausted`). Batches are
//! sent one POST at a time, in order: while Alertmanager is down, new alerts wait in the
//! queue behind the one being retried.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::{AlertmanagerError, Target};
use crate::serve::{Metrics, ReasonLabels};

/// Knobs of [`Delivery`]; the defaults are the agent's.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Alerts kept (queued plus in flight) before the oldest are dropped.
    pub queue_alerts: usize,
    /// At most this many queued alerts are merged into one POST (a bigger batch is sent whole).
    pub max_post_alerts: usize,
    /// Per request: connect, send, response.
    pub timeout: Duration,
    /// Backoff after the first failure; doubled after each further one, up to `backoff_max`.
    /// Each wait is drawn between half and all of it (jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Attempts per POST before its alerts are given up (`retries_exhausted`).
    pub max_attempts: u32,
}

impl Default for DeliveryConfig {
    /// 10,000 alerts; 5 s timeout; 0.5 s doubling to 30 s; 10 attempts, i.e. a POST is
    /// given up after about 2 to 3 minutes of failures.
    fn default() -> Self {
        Self {
            queue_alerts: 10_000,
            max_post_alerts: 1_000,
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_attempts: 10,
        }
    }
}

/// What [`Delivery::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Alerts queued or in flight when the shutdown began.
    pub pending: usize,
    /// Alerts delivered during the shutdown.
    pub delivered: u64,
    /// Alerts still undelivered at the deadline, counted as dropped (`shutdown`).
    pub given_up: usize,
    pub elapsed: Duration,
}

/// The metric handles delivery updates (clones of the registry's).
#[derive(Clone)]
struct Counters {
    sent: Counter,
    failures: Family<ReasonLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
    queue: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl Counters {
    fn new(m: &Metrics) -> Self {
        Self {
            sent: m.alerts_sent.clone(),
            failures: m.alert_delivery_failures.clone(),
            dropped: m.alerts_dropped.clone(),
            queue: m.alert_queue.clone(),
        }
    }

    fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    fn dropped(&self, reason: &str, n: usize) {
        self.dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc_by(n as u64);
    }
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Vec<serde_json::Value>>,
    /// Alerts in `batches`.
    queued: usize,
    /// Alerts the task holds (being POSTed or waiting for a retry).
    in_flight: usize,
    /// Shutting down: the task stops when nothing is left.
    closing: bool,
    /// An overflow was logged since the last successful POST.
    overflow_logged: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Notify,
    counters: Counters,
    cfg: DeliveryConfig,
    url: String,
}

impl Inner {
    /// The queue, also after a panic elsewhere poisoned the lock (its counts stay consistent:
    /// every update is done under one lock without a panic path).
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_gauge(&self, q: &Queue) {
        self.counters.queue.set((q.queued + q.in_flight) as i64);
    }
}

/// Delivers alerts to one Alertmanager in the background (see the module doc).
pub struct Delivery {
    inner: Arc<Inner>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Delivery {
    /// Starts the delivery task on the current tokio runtime with the default config.
    pub fn start(target: Target, metrics: &Metrics) -> Result<Self, AlertmanagerError> {
        Self::start_with(target, metrics, DeliveryConfig::default())
    }

    pub fn start_with(
        target: Target,
        metrics: &Metrics,
        cfg: DeliveryConfig,
    ) -> Result<Self, AlertmanagerError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| AlertmanagerError::NoRuntime {
                url: target.url.clone(),
            })?;
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            counters: Counters::new(metrics),
            cfg,
            url: target.url.clone(),
        });
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(inner.cfg.timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1);
        let task = if target.https {
            // The TLS connector hands https:// URIs to the TCP connector.
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|source| AlertmanagerError::Tls {
                    url: target.url.clone(),
                    source,
                })?
                .https_only()
                .enable_http1()
                .wrap_connector(http);
            runtime.spawn(run(inner.clone(), builder.build(https), target))
        } else {
            runtime.spawn(run(inner.clone(), builder.build(http), target))
        };
        Ok(Self {
            inner,
            task: Some(task),
        })
    }

    /// Queues alerts for delivery; never blocks. When the queue is full the oldest queued
    /// alerts are dropped and counted (`queue_full`).
    pub fn enqueue(&self, alerts: Vec<serde_json::Value>) {
        if alerts.is_empty() {
            return;
        }
        let cap = self.inner.cfg.queue_alerts;
        let (dropped, log) = {
            let mut q = self.inner.lock();
            q.queued += alerts.len();
            q.batches.push_back(alerts);
            let over = (q.queued + q.in_flight).saturating_sub(cap);
            let mut left = over;
            while left > 0 {
                let Some(front) = q.batches.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    q.queued -= front.len();
                    q.batches.pop_front();
                } else {
                    front.drain(..left);
                    q.queued -= left;
                    left = 0;
                }
            }
            self.inner.set_gauge(&q);
            let log = over > 0 && !q.overflow_logged;
            if log {
                q.overflow_logged = true;
            }
            (over - left, log)
        };
        if dropped > 0 {
            self.inner.counters.dropped("queue_full", dropped);
            if log {
                tracing::warn!(
                    url = %self.inner.url,
                    queue_alerts = cap,
                    dropped,
                    "Alertmanager alert queue full: dropping the oldest alerts (counted in auditor_alerts_dropped_total{{reason=\"queue_full\"}})"
                );
            }
        }
        self.inner.wake.notify_one();
    }

    /// Alerts queued or in flight.
    pub fn pending(&self) -> usize {
        let q = self.inner.lock();
        q.queued + q.in_flight
    }

    /// Delivers what is queued or in flight within `deadline`, then gives up the rest:
    /// counted as dropped (`shutdown`) and logged in one warning.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        let sent_before = self.inner.counters.sent.get();
        let pending = {
            let mut q = self.inner.lock();
            q.closing = true;
            q.queued + q.in_flight
        };
        self.inner.wake.notify_one();
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(deadline, &mut task).await.is_err() {
                task.abort();
                // Wait until the task is dropped: the counts below are then final.
                let _ = task.await;
            }
        }
        let given_up = {
            let mut q = self.inner.lock();
            let n = q.queued + q.in_flight;
            q.batches.clear();
            q.queued = 0;
            q.in_flight = 0;
            self.inner.set_gauge(&q);
            n
        };
        let delivered = self.inner.counters.sent.get().saturating_sub(sent_before);
        let elapsed = started.elapsed();
        if given_up > 0 {
            self.inner.counters.dropped("shutdown", given_up);
            tracing::warn!(
                url = %self.inner.url,
                given_up,
                delivered,
                deadline = ?deadline,
                "alerts not delivered to Alertmanager before the shutdown deadline: given up"
            );
        } else if pending > 0 {
            tracing::info!(url = %self.inner.url, delivered, elapsed = ?elapsed, "queued alerts delivered to Alertmanager");
        }
        ShutdownReport {
            pending,
            delivered,
            given_up,
            elapsed,
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Why one POST attempt failed.
#[derive(Debug)]
enum Failure {
    Connect(String),
    Timeout,
    Status(http::StatusCode),
    Other(String),
}

impl Failure {
    /// The `reason` label of `auditor_alert_delivery_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Status(s) if s.is_server_error() => "status_5xx",
            Failure::Status(s) if s.is_client_error() => "status_4xx",
            Failure::Status(_) | Failure::Other(_) => "other",
        }
    }

    /// Worth another attempt: the next one may succeed.
    fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) | Failure::Timeout | Failure::Other(_) => true,
            Failure::Status(s) => s.is_server_error() || *s == http::StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Timeout => write!(f, "no response within the timeout"),
            Failure::Status(s) => write!(f, "answered {s}"),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

/// An error and its sources, `a: b: c` (hyper's own message is only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn post_once<C>(
    client: &Client<C, Full<Bytes>>,
    target: &Target,
    body: Bytes,
    timeout: Duration,
) -> Result<(), Failure>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let req = http::Request::post(target.uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("auditor/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| Failure::Other(e.to_string()))?;
    let attempt = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                Failure::Connect(chain(&e))
            } else {
                Failure::Other(chain(&e))
            }
        })?;
        let status = resp.status();
        // Read the (small) answer so that the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Status(status))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// The wait after `failures` consecutive failures: `backoff_min * 2^(failures-1)` capped at
/// `backoff_max`, drawn between half and all of it.
fn backoff(cfg: &DeliveryConfig, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    let full = cfg.backoff_min.saturating_mul(factor).min(cfg.backoff_max);
    let half = full / 2;
    let span = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random() % span.saturating_add(1))
}

/// A random u64 from the standard library's per-instance random hash keys (no rand crate).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Takes the queued batches (up to `max_post_alerts`, at least one) as the next POST.
fn take(q: &mut Queue, max: usize) -> Option<Vec<serde_json::Value>> {
    let mut post = q.batches.pop_front()?;
    while let Some(next) = q.batches.front() {
        if post.len() + next.len() > max {
            break;
        }
        if let Some(next) = q.batches.pop_front() {
            post.extend(next);
        }
    }
    q.queued -= post.len();
    q.in_flight = post.len();
    Some(post)
}

async fn run<C>(inner: Arc<Inner>, client: Client<C, Full<Bytes>>, target: Target)
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let cfg = &inner.cfg;
    // Consecutive failed attempts (across POSTs), for logging the start and end of an outage.
    let mut failing = 0u64;
    loop {
        let post = loop {
            {
                let mut q = inner.lock();
                if let Some(p) = take(&mut q, cfg.max_post_alerts) {
                    break p;
                }
                if q.closing {
                    return;
                }
            }
            // notify_one keeps a permit when nobody waits: a wake-up is never missed.
            inner.wake.notified().await;
        };
        let n = post.len();
        let body = Bytes::from(serde_json::to_vec(&post).unwrap_or_default());
        drop(post);
        let mut attempts = 0u32;
        let outcome = loop {
            attempts += 1;
            match post_once(&client, &target, body.clone(), cfg.timeout).await {
                Ok(()) => break Ok(()),
                Err(f) => {
                    inner.counters.failed(f.reason());
                    failing += 1;
                    if !f.retryable() {
                        break Err(("rejected", f));
                    }
                    if attempts >= cfg.max_attempts {
                        break Err(("retries_exhausted", f));
                    }
                    let wait = backoff(cfg, attempts);
                    if failing == 1 {
                        tracing::warn!(url = %target.url, error = %f, alerts = n, retry_in = ?wait, "alerts not delivered to Alertmanager: retrying");
                    } else {
                        tracing::debug!(url = %target.url, error = %f, alerts = n, attempts, retry_in = ?wait, "alerts not delivered to Alertmanager: retrying");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        };
        // No await from here to the next take(): an abort cannot split the accounting.
        {
            let mut q = inner.lock();
            q.in_flight = 0;
            if outcome.is_ok() {
                q.overflow_logged = false;
            }
            inner.set_gauge(&q);
        }
        match outcome {
            Ok(()) => {
                inner.counters.sent.inc_by(n as u64);
                if failing > 0 {
                    tracing::info!(url = %target.url, failed_attempts = failing, "alerts delivered to Alertmanager again");
                    failing = 0;
                }
            }
            Err((reason, f)) => {
                inner.counters.dropped(reason, n);
                tracing::warn!(url = %target.url, error = %f, alerts = n, attempts, reason, "alerts given up (counted in auditor_alerts_dropped_total)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the fake Alertmanager answers one request.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        Status(u16),
        /// Reads the request, never answers, keeps the connection open.
        Hang,
    }

    /// One request the fake received.
    #[derive(Clone, Debug)]
    struct Seen {
        host: String,
        path: String,
        ids: Vec<u64>,
    }

    #[derive(Clone)]
    struct Fake {
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        fn requests(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
        fn alerts(&self) -> Vec<u64> {
            self.requests().into_iter().flat_map(|s| s.ids).collect()
        }
    }

    /// An Alertmanager on `listener` answering `plan` in order, then `then` (raw HTTP/1.1).
    fn fake_am(listener: TcpListener, plan: Vec<Reply>, then: Reply) -> Fake {
        let fake = Fake {
            seen: Default::default(),
        };
        let seen = fake.seen.clone();
        let plan = Arc::new(Mutex::new(VecDeque::from(plan)));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                let plan = plan.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                    let ids = body
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a["id"].as_u64().unwrap())
                        .collect();
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    seen.lock().unwrap().push(Seen {
                        host: header("host"),
                        path,
                        ids,
                    });
                    let reply = plan.lock().unwrap().pop_front().unwrap_or(then);
                    match reply {
                        Reply::Status(code) => {
                            let _ = s
                                .write_all(
                                    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                        .as_bytes(),
                                )
                                .await;
                            let _ = s.shutdown().await;
                        }
                        Reply::Hang => {
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        fake
    }

    fn fast() -> DeliveryConfig {
        DeliveryConfig {
            queue_alerts: 1_000,
            max_post_alerts: 1_000,
            timeout: Duration::from_millis(300),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            max_attempts: 1_000,
        }
    }

    /// Alerts with ids `from..to` (the fake reads the ids back).
    fn alerts(from: u64, to: u64) -> Vec<serde_json::Value> {
        (from..to)
            .map(|id| serde_json::json!({ "id": id }))
            .collect()
    }

    fn target(addr: SocketAddr) -> Target {
        Target::parse(&format!("http://{addr}")).unwrap()
    }

    /// A port nothing listens on (bound, then released).
    async fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn failures(m: &Metrics, reason: &str) -> u64 {
        m.alert_delivery_failures
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    fn dropped(m: &Metrics, reason: &str) -> u64 {
        m.alerts_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .get()
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn down_then_up_retries_and_delivers_everything() {
        let addr = free_addr().await;
        let m = Metrics::default();
        let d = Delivery::start_with(target(addr), &m, fast()).unwrap();
        d.enqueue(alerts(0, 3));
        d.enqueue(alerts(3, 5));
        wait_for("3 refused connections", || failures(&m, "connect") >= 3).await;
        assert_eq!(m.alerts_sent.get(), 0);
        assert_eq!(m.alert_queue.get(), 5);
        let fake = fake_am(
            TcpListener::bind(addr).await.unwrap(),
            vec![],
            Reply::Status(200),
        );
        wait_for("5 alerts sent", || m.alerts_sent.get() == 5).await;
        let mut got = fake.alerts();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4], "each alert delivered once");
        assert_eq!(m.alert_queue.get(), 0);
        for r in ["timeout", "status_5xx", "status_4xx", "other"] {
            assert_eq!(failures(&m, r), 0, "{r}");
        }
        for r in crate::serve::ALERT_DROP_REASONS {
            assert_eq!(dropped(&m, r), 0, "{r}");
        }
        let r = d.shutdown(Duration::from_secs(1)).await;
        assert_eq!((r.pending, r.given_up), (0, 0));
    }

    #[tokio::test]
    async fn retries_exhausted_are_counted() {
        let m = Metrics::default();
        let cfg = DeliveryConfig {
            max_attempts: 3,
            ..fast()
        };
        let d = Delivery::start_with(target(free_addr().await), &m, cfg).unwrap();
        d.enqueue(alerts(0, 4));
        wait_for("4 alerts given up", || {
            dropped(&m, "retries_exhausted") == 4
        })
        .await;
        assert_eq!(failures(&m, "connect"), 3, "exactly max_attempts attempts");
        assert_eq!(m.alerts_sent.get(), 0);
        assert_eq!(m.alert_queue.get(), 0);
        let r = d.shutdown(Duration::from_secs(1)).await;
        assert_eq!(r.given_up, 0);
    }

    #[tokio::test]
    async fn hanging_alertmanager_times_out_and_shutdown_keeps_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fake = fake_am(l, vec![], Reply::Hang);
        let m = Metrics::default();
        let cfg = DeliveryConfig {
            timeout: Duration::from_millis(150),
            ..fast()
        };
        let d = Delivery::start_with(target(addr), &m, cfg).unwrap();
        d.enqueue(alerts(0, 4));
        d.enqueue(alerts(4, 6));
        wait_for("2 timeouts", || failures(&m, "timeout") >= 2).await;
        assert!(fake.requests().len() >= 2, "the POSTs reached the fake");
        assert_eq!(failures(&m, "connect"), 0);
        let deadline = Duration::from_millis(400);
        let t0 = Instant::now();
        let r = d.shutdown(deadline).await;
        let took = t0.elapsed();
        assert!(
            took >= deadline && took < deadline + Duration::from_millis(200),
            "shutdown took {took:?}"
        );
        assert_eq!((r.pending, r.delivered, r.given_up), (6, 0, 6));
        assert_eq!(dropped(&m, "shutdown"), 6);
        assert_eq!(m.alerts_sent.get(), 0);
        assert_eq!(m.alert_queue.get(), 0);
    }

    #[tokio::test]
    async fn status_500_and_429_are_retried_then_delivered() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fake = fake_am(
            l,
            vec![Reply::Status(500), Reply::Status(503), Reply::Status(429)],
            Reply::Status(200),
        );
        let m = Metrics::default();
        let d = Delivery::start_with(target(addr), &m, fast()).unwrap();
        d.enqueue(alerts(0, 3));
        wait_for("3 alerts sent", || m.alerts_sent.get() == 3).await;
        assert_eq!(failures(&m, "status_5xx"), 2);
        assert_eq!(failures(&m, "status_4xx"), 1, "429");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 4, "3 failed attempts and the delivery");
        assert!(reqs.iter().all(|r| r.ids == vec![0, 1, 2]), "{reqs:?}");
        assert!(reqs.iter().all(|r| r.path == "/api/v2/alerts"));
        assert_eq!(r_dropped_total(&m), 0);
        d.shutdown(Duration::from_secs(1)).await;
    }

    fn r_dropped_total(m: &Metrics) -> u64 {
        crate::serve::ALERT_DROP_REASONS
            .iter()
            .map(|r| dropped(m, r))
            .sum()
    }

    #[tokio::test]
    async fn queue_overflow_drops_exactly_the_oldest() {
        let addr = free_addr().await;
        let m = Metrics::default();
        let cfg = DeliveryConfig {
            queue_alerts: 10,
            ..fast()
        };
        let d = Delivery::start_with(target(addr), &m, cfg).unwrap();
        // No await in between: the task has not taken anything yet.
        for i in 0..4 {
            d.enqueue(alerts(i * 4, i * 4 + 4));
        }
        assert_eq!(dropped(&m, "queue_full"), 6, "16 enqueued, 10 kept");
        assert_eq!(m.alert_queue.get(), 10);
        assert_eq!(d.pending(), 10);
        wait_for("a refused connection", || failures(&m, "connect") >= 1).await;
        // The 10 are in flight now and are kept: 3 more exceed the bound and are the
        // oldest queued ones, so they go.
        d.enqueue(alerts(100, 103));
        assert_eq!(dropped(&m, "queue_full"), 9);
        assert_eq!(m.alert_queue.get(), 10);
        let fake = fake_am(
            TcpListener::bind(addr).await.unwrap(),
            vec![],
            Reply::Status(200),
        );
        wait_for("10 alerts sent", || m.alerts_sent.get() == 10).await;
        assert_eq!(
            fake.alerts(),
            (6..16).collect::<Vec<_>>(),
            "the newest 10, in order"
        );
        assert_eq!(m.alert_queue.get(), 0);
        assert_eq!(r_dropped_total(&m), 9);
        let r = d.shutdown(Duration::from_secs(1)).await;
        assert_eq!(r.given_up, 0);
    }

    #[tokio::test]
    async fn status_400_is_rejected_without_retry() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fake = fake_am(l, vec![Reply::Status(400)], Reply::Status(200));
        let m = Metrics::default();
        let d = Delivery::start_with(target(addr), &m, fast()).unwrap();
        d.enqueue(alerts(0, 3));
        wait_for("3 alerts rejected", || dropped(&m, "rejected") == 3).await;
        // Well past several backoffs: a retry would have happened.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(fake.requests().len(), 1, "not retried");
        assert_eq!(failures(&m, "status_4xx"), 1);
        assert_eq!(m.alerts_sent.get(), 0);
        // The next batch goes through: a rejection does not stop delivery.
        d.enqueue(alerts(3, 4));
        wait_for("1 alert sent", || m.alerts_sent.get() == 1).await;
        assert_eq!(fake.alerts(), vec![0, 1, 2, 3]);
        d.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn shutdown_delivers_what_is_queued() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fake = fake_am(l, vec![Reply::Status(500)], Reply::Status(200));
        let m = Metrics::default();
        let d = Delivery::start_with(target(addr), &m, fast()).unwrap();
        d.enqueue(alerts(0, 2));
        d.enqueue(alerts(2, 5));
        let r = d.shutdown(Duration::from_secs(5)).await;
        assert_eq!((r.pending, r.delivered, r.given_up), (5, 5, 0));
        assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
        assert_eq!(fake.alerts(), vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        assert_eq!(m.alerts_sent.get(), 5);
        assert_eq!(dropped(&m, "shutdown"), 0);
    }

    #[tokio::test]
    async fn ipv6_target_sends_a_bracketed_host_header() {
        let l = match TcpListener::bind("[::1]:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("SKIPPED: cannot bind [::1]: {e}");
                return;
            }
        };
        let port = l.local_addr().unwrap().port();
        let fake = fake_am(l, vec![], Reply::Status(200));
        let m = Metrics::default();
        let t = Target::parse(&format!("http://[::1]:{port}/am/")).unwrap();
        let d = Delivery::start_with(t, &m, fast()).unwrap();
        d.enqueue(alerts(0, 1));
        wait_for("1 alert sent", || m.alerts_sent.get() == 1).await;
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].host, format!("[::1]:{port}"));
        assert_eq!(reqs[0].path, "/am/api/v2/alerts");
        d.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn https_target_speaks_tls() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Answers plain HTTP at once: the TLS handshake fails. It keeps the first byte it
        // got: 0x16 is a TLS handshake record (the ClientHello).
        let first = Arc::new(Mutex::new(Vec::new()));
        let firsts = first.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    firsts.lock().unwrap().push(b[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let m = Metrics::default();
        let url = format!("https://{addr}");
        let d = match Delivery::start_with(Target::parse(&url).unwrap(), &m, fast()) {
            Ok(d) => d,
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("--alertmanager-url {url}")) && e.contains("SSL_CERT_FILE"),
                    "{e}"
                );
                eprintln!("SKIPPED: no system CA certificates here: {e}");
                return;
            }
        };
        d.enqueue(alerts(0, 1));
        wait_for("2 failed handshakes", || failures(&m, "connect") >= 2).await;
        assert_eq!(m.alerts_sent.get(), 0);
        assert_eq!(failures(&m, "timeout"), 0);
        let first = first.lock().unwrap().clone();
        assert!(
            !first.is_empty() && first.iter().all(|b| *b == 0x16),
            "TLS ClientHello expected, got first bytes {first:?}"
        );
        let r = d.shutdown(Duration::from_millis(50)).await;
        assert_eq!(r.given_up, 1);
    }

    #[test]
    fn start_outside_a_runtime_is_an_error_not_a_panic() {
        let m = Metrics::default();
        let e = Delivery::start(target("127.0.0.1:9".parse().unwrap()), &m)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("inside the tokio runtime"), "{e}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let cfg = DeliveryConfig::default();
        for (failures, lo, hi) in [
            (1, 250, 500),
            (2, 500, 1_000),
            (3, 1_000, 2_000),
            (7, 15_000, 30_000),
            (40, 15_000, 30_000),
        ] {
            for _ in 0..50 {
                let d = backoff(&cfg, failures).as_millis();
                assert!((lo..=hi).contains(&d), "{failures}: {d} ms");
            }
        }
        let draws: std::collections::HashSet<_> = (0..20).map(|_| backoff(&cfg, 5)).collect();
        assert!(draws.len() > 1, "jittered");
    }

    #[test]
    fn metrics_are_exposed_at_zero() {
        let text = Metrics::default().render();
        for needle in [
            "auditor_alerts_sent_total 0",
            "auditor_alert_queue_alerts 0",
            "auditor_alerts_dropped_total{reason=\"queue_full\"} 0",
            "auditor_alerts_dropped_total{reason=\"retries_exhausted\"} 0",
            "auditor_alerts_dropped_total{reason=\"rejected\"} 0",
            "auditor_alerts_dropped_total{reason=\"shutdown\"} 0",
            "auditor_alert_delivery_failures_total{reason=\"connect\"} 0",
            "auditor_alert_delivery_failures_total{reason=\"timeout\"} 0",
            "auditor_alert_delivery_failures_total{reason=\"status_5xx\"} 0",
            "auditor_alert_delivery_failures_total{reason=\"status_4xx\"} 0",
            "auditor_alert_delivery_failures_total{reason=\"other\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
