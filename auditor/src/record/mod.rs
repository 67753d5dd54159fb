//! `auditor record`: kernel events and map counters -> the flow log.
//!
//! The kernel keeps the counters of every flow in an LRU map; the ring buffer
//! carries new flows, failed outcomes, new drops and DNS answers. Every flush
//! interval (and on SIGINT/SIGTERM, and at the end of `--duration`) the recorder
//! drains the ring buffer, reads the maps, and appends one JSON line per flow that
//! was active since the last flush. A flow whose event was lost still reaches the
//! log from the map; a flow the map evicted before the flush reaches it from its
//! event; a flow that lost both is counted (`flow_unseen`). Nothing is lost silently.
//!
//! Rooms: `kernel` (the kernel source trait and the aya implementation), `table` (the
//! live flows), `state` (names, filters, cluster, alerts), `flush` (one flush, step by
//! step), `output` (the flow log with its retry buffer and rotation), and the loop below.

#[cfg(test)]
mod fake;
mod flush;
mod kernel;
mod output;
mod reader;
mod state;
mod table;

pub use kernel::{AyaKernel, KernelSource};

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditor_ebpf as abi;
use aya::maps::RingBuf;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::probe::{Probe, ProbeError, ProbeOptions};
use crate::procfs::{self, CgroupResolver};
use output::Output;
use state::{AlertSink, State};

/// Record the connections and packet drops of processes on this host.
///
/// Example: auditor record --comm ffmpeg --comm ffprobe --output flows.jsonl --duration 10m
#[derive(Debug, Clone, clap::Args)]
pub struct RecordArgs {
    /// Flow log to append to (JSON lines); `-` writes to standard output.
    #[arg(long, short, default_value = "-", env = "AUDITOR_OUTPUT")]
    pub output: PathBuf,
    /// Stop after this long (e.g. `30s`, `10m`); without it, record until SIGINT/SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration, env = "AUDITOR_DURATION")]
    pub duration: Option<Duration>,
    /// Audit the pods that run a process with this name (process or thread name);
    /// repeatable. Every flow of such a pod is kept, its sidecars' included, each tagged
    /// with its process: policies select pods, not processes. Outside pods (a plain
    /// cgroup or host process) only the named processes' flows are kept.
    #[arg(
        long = "comm",
        value_name = "NAME",
        env = "AUDITOR_COMM",
        value_delimiter = ','
    )]
    pub comms: Vec<String>,
    /// Keep only flows of processes in this cgroup v2 directory or below it: as the flow
    /// log prints cgroups (`/kubepods.slice`, from the cgroup v2 root), a path under the
    /// cgroup v2 mount (`/sys/fs/cgroup/kubepods.slice`), or relative to it. Cgroup
    /// programs attach here.
    ///
    /// Example: --cgroup /kubepods.slice
    #[arg(long, env = "AUDITOR_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// How often the flow log is written.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "AUDITOR_FLUSH_INTERVAL")]
    pub flush_interval: Duration,
    /// Size of the kernel ring buffer in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 1 << 20, env = "AUDITOR_RING_BUFFER_BYTES")]
    pub ring_buffer_bytes: u32,
    /// Flows the kernel keeps counters for (LRU: the least recently used is evicted).
    #[arg(long, default_value_t = 65536, env = "AUDITOR_MAX_FLOWS")]
    pub max_flows: u32,
    /// Do not record DNS answers.
    #[arg(long, env = "AUDITOR_NO_DNS")]
    pub no_dns: bool,
    /// Do not record kernel packet drops.
    #[arg(long, env = "AUDITOR_NO_DROPS")]
    pub no_drops: bool,
    /// Kernel drop reasons not to record, besides the frees that are part of normal socket
    /// life (teardown, duplicate segments: `probe::BENIGN_DROP_REASONS`), which are never
    /// recorded unless `none` is given: then only the reasons listed with it are left out.
    /// Repeatable, or comma-separated.
    ///
    /// Example: --ignore-drop-reason OTHERHOST   or   --ignore-drop-reason none
    #[arg(
        long = "ignore-drop-reason",
        value_name = "REASON",
        env = "AUDITOR_IGNORE_DROP_REASONS",
        value_delimiter = ','
    )]
    pub ignore_drop_reasons: Vec<String>,
    /// Cluster snapshot (as for `diff`): attribute flows to pods, workloads and Services,
    /// and give drop alerts the policy verdict. Without it flows carry IPs and cgroups only.
    #[arg(long, value_name = "SNAPSHOT", env = "AUDITOR_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Watch the Kubernetes API (this kubeconfig; in a pod, the in-cluster config is used
    /// without this flag) for Pods, Namespaces, Services, EndpointSlices and NetworkPolicies,
    /// instead of a `--cluster` file. If the API server is unreachable, recording goes on with
    /// IP-only attribution and catches up when it is back.
    #[arg(long, env = "AUDITOR_KUBECONFIG", conflicts_with = "cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not use the in-cluster Kubernetes config even when running in a pod.
    #[arg(long, env = "AUDITOR_NO_KUBE")]
    pub no_kube: bool,
    /// Where drop alerts go as JSON lines (`-`: standard error, the default).
    #[arg(long, default_value = "-", env = "AUDITOR_ALERTS")]
    pub alerts: PathBuf,
    /// Alerts of the same stream (workload, process, peer, port, reason) within this window
    /// are sent once, then once more with the window's total. At most 4096 streams are
    /// tracked at once: alerts of further streams add up into one alert per workload,
    /// process and reason (`"peer": "*"`, `"folded"`: how many).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "AUDITOR_ALERT_WINDOW")]
    pub alert_window: Duration,
    /// Serve `/metrics`, `/healthz` and `/flows?since=RFC3339` on this address (e.g. `0.0.0.0:9090`).
    #[arg(long, env = "AUDITOR_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Flow log records kept in memory for `/flows` (at most this many lines...).
    #[arg(long, default_value_t = 200_000, env = "AUDITOR_FLOWS_BUFFER")]
    pub flows_buffer: usize,
    /// ...and at most this much memory; the oldest go first (they stay in the flow log, and
    /// a `/flows` answer that misses some says so).
    #[arg(long, default_value_t = 32 << 20, env = "AUDITOR_FLOWS_BUFFER_BYTES")]
    pub flows_buffer_bytes: usize,
    /// Who may read `/flows`: `none` (anyone who can connect), or `kubernetes`: callers
    /// whose bearer token (audience `auditor`) the API server vouches for and who may
    /// `get` the non-resource URL `/flows` (TokenReview + SubjectAccessReview, as
    /// kube-rbac-proxy does; `auditor collect` sends such a token). `/metrics`, `/healthz`
    /// and `/livez` stay open.
    ///
    /// Example: --flows-auth kubernetes
    #[arg(long, value_enum, default_value = "none", env = "AUDITOR_FLOWS_AUTH")]
    pub flows_auth: FlowsAuth,
    /// Also send drop alerts to this Alertmanager (API v2), e.g. `http://alertmanager.monitoring:9093`
    /// (https too). Deliveries are queued (10,000 alerts), retried with backoff, and
    /// counted in `auditor_alerts_sent_total` / `auditor_alerts_dropped_total`.
    #[arg(long, env = "AUDITOR_ALERTMANAGER_URL")]
    pub alertmanager_url: Option<String>,
    /// Node name for alert labels (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "AUDITOR_NODE_NAME")]
    pub node_name: Option<String>,
    /// Rotate the flow log file past this many bytes (keeps `<output>.1`); 0: never.
    #[arg(long, default_value_t = 0, env = "AUDITOR_MAX_LOG_BYTES")]
    pub max_log_bytes: u64,
    /// A flow whose kernel counters did not move for this long (and are all written)
    /// leaves the kernel map and the recorder's memory; a later packet starts it again
    /// as a new flow. `0s`: never (flows then leave only when the kernel's LRU evicts them).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, env = "AUDITOR_FLOW_IDLE_TIMEOUT")]
    pub flow_idle_timeout: Duration,
    /// Flow log bytes kept in memory while the log cannot be written (a full disk, an
    /// I/O error); retried at every flush. Past it the oldest records are dropped and
    /// counted (`auditor_events_lost_total{kind="log_buffer"}`).
    #[arg(long, default_value_t = 32 << 20, env = "AUDITOR_LOG_BUFFER_BYTES")]
    pub log_buffer_bytes: usize,
    /// DNS names kept (each for its answer's TTL, at least 60 s); past it the names
    /// closest to expiry go first.
    #[arg(long, default_value_t = 16384, env = "AUDITOR_DNS_CACHE_SIZE")]
    pub dns_cache_size: usize,
    /// Lock file that keeps a second recorder from running on the same host.
    #[arg(long, default_value = "/run/auditor.lock", env = "AUDITOR_LOCK_FILE")]
    pub lock_file: PathBuf,
    /// Write the end-of-run summary as JSON to this file.
    #[arg(long, env = "AUDITOR_SUMMARY")]
    pub summary: Option<PathBuf>,
    /// Create this file once every program is attached (for scripts waiting on the recorder).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Record TCP with the host-wide tracepoint sock:inet_sock_set_state instead of cgroup
    /// sock_ops (the automatic fallback where sock_ops cannot attach; costs more per connection).
    #[arg(long, env = "AUDITOR_TCP_TRACEPOINTS")]
    pub tcp_tracepoints: bool,
    /// Benchmark baseline: attach every program but make each return at once.
    #[arg(long, hide = true)]
    pub bench_noop: bool,
    /// Testing aid: do not read the ring buffer for this long after attaching, to provoke overflow.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub stall_reader: Option<Duration>,
}

/// `--flows-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowsAuth {
    /// Anyone who can connect may read `/flows`.
    None,
    /// Only callers the API server vouches for (TokenReview + SubjectAccessReview).
    Kubernetes,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("another auditor is recording on this host (lock {path} held{holder}); stop it, or pass a different --lock-file to run a second one")]
    Locked { path: PathBuf, holder: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ring-buffer-bytes {0} must be a power of two and at least 4096")]
    RingSize(u32),
    #[error("--cgroup {path} is not a cgroup v2 directory (cgroup v2 is mounted at {root})")]
    NotCgroup { path: PathBuf, root: String },
    #[error("ring buffer: {0}")]
    Ring(String),
    #[error(transparent)]
    Alertmanager(#[from] crate::alertmanager::AlertmanagerError),
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    #[error("listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{path}")]
    Policy {
        path: PathBuf,
        #[source]
        source: crate::policy::PolicyError,
    },
}

/// End-of-run figures, printed and optionally written as JSON.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub duration_s: f64,
    /// Flows recorded (passing the filters); a flow that left the recorder's memory and
    /// came back counts again.
    pub flows: usize,
    pub records_written: u64,
    pub drops: u64,
    /// Kernel drops by reason, attributed to a recorded flow or not.
    pub drops_by_reason: BTreeMap<String, u64>,
    /// Drops that belong to no recorded flow (with `--comm`/`--cgroup`, other processes' drops), by reason.
    pub unattributed_drops: BTreeMap<String, u64>,
    pub dns_answers: u64,
    /// Ring buffer records received, by kind.
    pub events: BTreeMap<String, u64>,
    /// Ring buffer records the kernel could not reserve (full buffer), by kind.
    pub lost_events: BTreeMap<String, u64>,
    pub decode_errors: u64,
    /// Flows the kernel's LRU map evicted between two flushes: what they counted after
    /// the last flush (beyond their new-flow event) is missing.
    pub flow_map_evictions: u64,
    /// Flows written from their new-flow event because the map evicted them first.
    pub flows_from_events: u64,
    /// Flows that left the recorder's memory (written and gone from the kernel map, or idle).
    pub flows_released: u64,
    /// Every loss, by the kinds of `auditor_events_lost_total`: `ringbuf` (events),
    /// `flow_unseen` (flows lost before the recorder saw them), `flow_map`, `decode`,
    /// `log_buffer` (records dropped while the log could not be written).
    pub losses: BTreeMap<String, u64>,
    /// Records still in memory, not on disk, at the end (the log could not be written).
    pub records_buffered: u64,
    pub alerts: u64,
    pub degraded: Vec<String>,
    pub attached: Vec<String>,
}

pub(crate) fn kind_name(k: u32) -> &'static str {
    match k {
        abi::EVENT_NEW_FLOW => "new_flow",
        abi::EVENT_OUTCOME => "outcome",
        abi::EVENT_DROP => "drop",
        abi::EVENT_DNS => "dns",
        _ => "other",
    }
}

/// How much work one loop turn or one flush may do (bounded work keeps `/healthz`,
/// signals and flushes on time under any event rate).
pub struct Limits {
    /// Ring-buffer records read per loop turn.
    pub loop_drain_max: usize,
    /// Ring-buffer records read at the start of a flush.
    pub flush_drain_max: usize,
    /// `--flow-idle-timeout` in ns (0: never).
    pub idle_ns: u64,
    /// New flows since the last flush that bring the next flush forward.
    pub early_flush_after: usize,
    /// Entries of the kernel's flow map read at one flush (twice the map: the kernel's
    /// walk restarts when churn evicts the key it stood on).
    pub scan_max: usize,
}

impl Limits {
    pub fn new(args: &RecordArgs) -> Self {
        // A flow event is ~104 bytes in the ring buffer.
        let ring_events = (args.ring_buffer_bytes as usize / 104).max(64);
        Limits {
            loop_drain_max: 4096,
            flush_drain_max: ring_events * 2,
            idle_ns: u64::try_from(args.flow_idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            early_flush_after: (args.max_flows as usize).max(1024),
            scan_max: (args.max_flows as usize).saturating_mul(2).max(1024),
        }
    }
}

/// Runs the recorder until SIGINT/SIGTERM or `--duration`.
/// `--ignore-drop-reason`: the benign defaults plus those given, or with `none` only
/// those given; sorted, without duplicates.
pub fn drop_reasons_to_ignore(given: &[String]) -> Vec<String> {
    let none = given.iter().any(|r| r.eq_ignore_ascii_case("none"));
    let mut out: Vec<String> = if none {
        Vec::new()
    } else {
        crate::probe::BENIGN_DROP_REASONS
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    out.extend(
        given
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty() && !r.eq_ignore_ascii_case("none")),
    );
    out.sort();
    out.dedup();
    out
}

pub async fn run(args: RecordArgs) -> Result<Summary, RecordError> {
    if args.ring_buffer_bytes < 4096 || !args.ring_buffer_bytes.is_power_of_two() {
        return Err(RecordError::RingSize(args.ring_buffer_bytes));
    }
    let _lock = take_lock(&args.lock_file)?;
    limit_heap_growth();
    let root = procfs::cgroup2_mount();
    let (attach_cgroup, cgroup_prefix) = match (&root, &args.cgroup) {
        (Some(root), Some(cg)) => {
            let (abs, rel) =
                procfs::cgroup_dir(root, cg).ok_or_else(|| RecordError::NotCgroup {
                    path: cg.clone(),
                    root: root.display().to_string(),
                })?;
            (Some(abs), Some(rel))
        }
        (Some(root), None) => (Some(root.clone()), None),
        (None, Some(cg)) => {
            return Err(RecordError::NotCgroup {
                path: cg.clone(),
                root: "nowhere".into(),
            })
        }
        (None, None) => (None, None),
    };

    let opts = ProbeOptions {
        cgroup: attach_cgroup.clone(),
        ring_buffer_bytes: args.ring_buffer_bytes,
        max_flows: args.max_flows,
        dns: !args.no_dns,
        drops: !args.no_drops,
        ignore_drop_reasons: drop_reasons_to_ignore(&args.ignore_drop_reasons),
        noop: args.bench_noop,
        tcp_tracepoints: args.tcp_tracepoints,
        filter_cgroup: match (&cgroup_prefix, &attach_cgroup) {
            (Some(rel), Some(abs)) if rel != "/" => {
                let id = procfs::cgroup_id(abs).map_err(|source| RecordError::Io {
                    op: "stat cgroup",
                    path: abs.clone(),
                    source,
                })?;
                Some((id, rel.split('/').filter(|c| !c.is_empty()).count() as u32))
            }
            _ => None,
        },
    };
    let mut probe = Probe::load(&opts)?;
    for d in &probe.degraded {
        tracing::warn!("degraded: {d}");
    }
    let mut out = Output::open(&args.output, args.max_log_bytes, args.log_buffer_bytes)?;
    let limits = Limits::new(&args);
    // Log records of the kernel programs (aya-log), forwarded to our log; keep it alive.
    let mut kernel_log = match aya_log::EbpfLogger::init(&mut probe.ebpf) {
        // SAFETY: the logger owns its ring buffer fd for as long as it is registered.
        Ok(l) => unsafe { AsyncFd::register(l) }.ok(),
        Err(e) => {
            tracing::debug!(error = %e, "no kernel log map");
            None
        }
    };

    let ring = probe
        .ebpf
        .take_map("EVENTS")
        .ok_or(ProbeError::MissingMap("EVENTS"))?;
    let ring = RingBuf::try_from(ring).map_err(|e| RecordError::Ring(e.to_string()))?;
    let mut events = reader::Events::start(ring, args.stall_reader.map(|d| Instant::now() + d))
        .map_err(|source| RecordError::Io {
            op: "start the ring buffer reader",
            path: "EVENTS".into(),
            source,
        })?;

    let cluster = match &args.cluster {
        Some(path) => {
            let snap = crate::cluster::read_snapshot(path)?;
            let cluster =
                crate::enrich::Cluster::new(&snap).map_err(|source| RecordError::Policy {
                    path: path.clone(),
                    source,
                })?;
            crate::cluster::require_pods(path, &snap)?;
            for n in snap.notes.iter().chain(&cluster.engine.notes) {
                tracing::info!(snapshot = %path.display(), "{n}");
            }
            Some(std::sync::Arc::new(cluster))
        }
        None => None,
    };
    let alerts_out = if args.alerts.as_os_str() == "-" {
        AlertSink::Stderr
    } else {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.alerts)
            .map_err(|source| RecordError::Io {
                op: "open alerts file",
                path: args.alerts.clone(),
                source,
            })?;
        AlertSink::File(args.alerts.clone(), f)
    };
    let alertmanager = args
        .alertmanager_url
        .as_deref()
        .map(crate::alertmanager::Target::parse)
        .transpose()?;
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && !args.no_kube;
    let watch = if args.kubeconfig.is_some() || (in_cluster && args.cluster.is_none()) {
        let w = crate::kube::ClusterWatch::start(crate::kube::KubeOptions {
            kubeconfig: args.kubeconfig.clone(),
            node_name: args.node_name.clone(),
        })
        .await?;
        tracing::info!("watching the Kubernetes API for pods, services and policies");
        Some(w)
    } else {
        None
    };
    let shared = crate::serve::Shared::with_buffer(crate::serve::FlowsBuffer {
        lines: args.flows_buffer,
        bytes: args.flows_buffer_bytes,
    });
    if let Some(addr) = args.listen {
        let mut serve = crate::serve::ServeConfig::default();
        if args.flows_auth == FlowsAuth::Kubernetes {
            let config = if args.kubeconfig.is_some() || in_cluster {
                Some(crate::kube::config(args.kubeconfig.as_deref()).await?)
            } else {
                tracing::warn!("--flows-auth kubernetes without an API server (no in-cluster config, no --kubeconfig): /flows answers 503");
                None
            };
            serve.flows_auth = Some(Arc::new(crate::kube::review::Reviewer::new(config)));
        }
        let bound = crate::serve::spawn_with(addr, shared.clone(), serve)
            .await
            .map_err(|source| RecordError::Listen { addr, source })?;
        tracing::info!(%bound, "serving /metrics, /healthz, /flows");
    }
    let mut state = State::new(shared.clone(), args.alert_window);
    state.alertmanager = match alertmanager {
        Some(t) => Some(crate::alertmanager::Delivery::start(t, &shared.metrics)?),
        None => None,
    };
    state.node_name = args.node_name.clone();
    state.serve_flows = args.listen.is_some();
    state.watch = watch;
    state.cluster = cluster;
    state.alerts_out = alerts_out;
    state.comms = args.comms.iter().cloned().collect();
    state.cgroup_prefix = cgroup_prefix;
    state.resolver = root.clone().map(CgroupResolver::new);
    state.dns_capacity = args.dns_cache_size.max(1);
    state.drop_reasons = probe.drop_reasons.clone();
    state.boot_to_unix_ns = boot_to_unix_ns();
    state.summary.degraded = probe.degraded.clone();
    state.summary.attached = probe.attached.clone();

    if let Some(p) = &args.ready_file {
        // A full disk must not stop the recorder: the ready file is only for scripts.
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the ready file");
        }
    }
    tracing::info!(output = %args.output.display(), hooks = probe.attached.len(), "recording");
    shared.set_recording(true);

    let started = Instant::now();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| RecordError::Io {
            op: "install SIGINT handler",
            path: "-".into(),
            source,
        })?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| RecordError::Io {
            op: "install SIGTERM handler",
            path: "-".into(),
            source,
        })?;
    let mut tick = tokio::time::interval(args.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stall_until = args.stall_reader.map(|d| tokio::time::Instant::now() + d);
    let sleep_until = |t: Option<tokio::time::Instant>| async move {
        match t {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };

    loop {
        let stalled = stall_until.is_some_and(|t| tokio::time::Instant::now() < t);
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: flushing and stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: flushing and stopping"); break; }
            _ = sleep_until(deadline) => { break; }
            _ = sleep_until(stall_until), if stalled => {}
            _ = tick.tick(), if !stalled => {
                let mut k = AyaKernel { probe: &mut probe, events: &mut events };
                flush::flush(&mut k, &mut state, &mut out, &limits);
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                if let Ok(mut g) = guard {
                    g.get_inner_mut().flush();
                    g.clear_ready();
                }
            }
            alive = events.ready(), if !stalled => {
                if !alive {
                    return Err(RecordError::Ring("the ring buffer reader stopped".into()));
                }
                let mut k = AyaKernel { probe: &mut probe, events: &mut events };
                // Bounded work per turn: what is left waits for the next turn, which
                // picks among signals, the flush timer and the events fairly.
                flush::drain(&mut k, &mut state, limits.loop_drain_max);
                // Many new flows since the last flush: flush now, so that memory stays
                // bounded and flows the map evicts are written from their events soon.
                if state.new_since_flush > limits.early_flush_after {
                    flush::flush(&mut k, &mut state, &mut out, &limits);
                    tick.reset();
                }
            }
        }
        shared.heartbeat();
        // Let the runtime's other tasks (alert deliveries, the cluster watch) run.
        tokio::task::yield_now().await;
    }
    events.stop(Duration::from_secs(5)).await;
    {
        let mut k = AyaKernel {
            probe: &mut probe,
            events: &mut events,
        };
        // Everything the reader still held, then the last flush.
        flush::drain(&mut k, &mut state, usize::MAX);
        flush::flush(&mut k, &mut state, &mut out, &limits);
    }
    let owed = state.dedup.flush();
    state.send_alerts(owed);
    shared.set_recording(false);
    // Deliver what is queued for Alertmanager, within a bound; what is given up is
    // logged and counted (auditor_alerts_dropped_total{reason="shutdown"}).
    if let Some(d) = state.alertmanager.take() {
        d.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(f) = &out.fault {
        tracing::error!(
            fault = f,
            buffered_records = out.pending_records(),
            "stopping while the flow log cannot be written: the buffered records are lost"
        );
        state.summary.records_buffered = out.pending_records();
        let lost = out.overflowed_records + out.pending_records();
        state.summary.losses.insert("log_buffer".into(), lost);
        shared.metrics.set_lost("log_buffer", lost);
    }
    state.summary.duration_s = started.elapsed().as_secs_f64();
    if let Some(p) = &args.summary {
        let text = serde_json::to_string_pretty(&state.summary).unwrap_or_default();
        if let Err(e) = std::fs::write(p, text + "\n") {
            tracing::error!(path = %p.display(), error = %e, "cannot write the summary");
        }
    }
    Ok(state.summary)
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC (bpf_ktime_get_ns is CLOCK_MONOTONIC), in ns.
fn boot_to_unix_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// glibc: big buffers (a flush's records) are mapped and unmapped instead of growing
/// the heap, and two arenas instead of one per thread, so RSS follows what is live.
fn limit_heap_growth() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A held `flock` on the lock file, released when dropped (or when the process dies).
pub struct Lock(#[allow(dead_code)] File);

fn take_lock(path: &Path) -> Result<Lock, RecordError> {
    let io = |op, source| RecordError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io("open lock file", e))?;
    // SAFETY: flock on an owned, open fd.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(RecordError::Locked {
            path: path.to_owned(),
            holder: if holder.is_empty() {
                String::new()
            } else {
                format!(" by pid {holder}")
            },
        });
    }
    f.set_len(0).map_err(|e| io("write lock file", e))?;
    write!(f, "{}", std::process::id()).map_err(|e| io("write lock file", e))?;
    Ok(Lock(f))
}

#[cfg(test)]
mod args_tests {
    use super::drop_reasons_to_ignore;
    use crate::probe::BENIGN_DROP_REASONS;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn one_ignored_reason_adds_to_the_defaults_and_none_clears_them() {
        let defaults = drop_reasons_to_ignore(&[]);
        assert_eq!(defaults.len(), BENIGN_DROP_REASONS.len());
        let more = drop_reasons_to_ignore(&v(&["OTHERHOST"]));
        assert_eq!(more.len(), BENIGN_DROP_REASONS.len() + 1);
        assert!(more.contains(&"OTHERHOST".to_owned()) && more.contains(&"TCP_CLOSE".to_owned()));
        assert_eq!(drop_reasons_to_ignore(&v(&["none"])), Vec::<String>::new());
        assert_eq!(
            drop_reasons_to_ignore(&v(&["none", "TCP_CLOSE"])),
            v(&["TCP_CLOSE"])
        );
        assert_eq!(
            drop_reasons_to_ignore(&v(&["TCP_CLOSE"])),
            defaults,
            "a default given again is not doubled"
        );
    }
}
