//! `auditor record`: kernel events and map counters -> the flow log.
//!
//! The kernel keeps the counters of every flow in an LRU map; the ring buffer
//! carries new flows, failed outcomes, new drops and DNS answers. Every flush
//! interval (and on SIGINT/SIGTERM, and at the end of `--duration`) the recorder
//! drains the ring buffer, reads the maps, and appends one JSON line per flow that
//! was active since the last flush. A flow whose event was lost still reaches the
//! log from the map; lost events are counted per kind and reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auditor_ebpf as abi;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::decode::{self, Event, Flow};
use crate::dns;
use crate::flowlog::{Direction, FlowRecord, FlowState, Protocol};
use crate::probe::{Probe, ProbeError, ProbeOptions};
use crate::procfs::{self, CgroupResolver};

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
    /// Keep only flows of processes with this name (process or thread name); repeatable.
    #[arg(
        long = "comm",
        value_name = "NAME",
        env = "AUDITOR_COMM",
        value_delimiter = ','
    )]
    pub comms: Vec<String>,
    /// Keep only flows of processes in this cgroup v2 directory or below it
    /// (absolute path, or relative to the cgroup v2 mount). Cgroup programs attach here.
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
    /// Kernel drop reasons not to record: frees that are part of normal socket life
    /// (teardown, duplicate segments), not policy or network drops. Repeatable; the
    /// default is the list in `probe::BENIGN_DROP_REASONS`; `none` records every reason.
    #[arg(long = "ignore-drop-reason", value_name = "REASON", default_values_t = crate::probe::BENIGN_DROP_REASONS.iter().map(|s| s.to_string()), env = "AUDITOR_IGNORE_DROP_REASONS", value_delimiter = ',')]
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
    /// are sent once, then once more with the window's total.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "AUDITOR_ALERT_WINDOW")]
    pub alert_window: Duration,
    /// Serve `/metrics`, `/healthz` and `/flows?since=RFC3339` on this address (e.g. `0.0.0.0:9090`).
    #[arg(long, env = "AUDITOR_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Flow log records kept in memory for `/flows`.
    #[arg(long, default_value_t = 200_000, env = "AUDITOR_FLOWS_BUFFER")]
    pub flows_buffer: usize,
    /// Also send drop alerts to this Alertmanager (API v2), e.g. `http://alertmanager.monitoring:9093`.
    #[arg(long, env = "AUDITOR_ALERTMANAGER_URL")]
    pub alertmanager_url: Option<String>,
    /// Node name for alert labels (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "AUDITOR_NODE_NAME")]
    pub node_name: Option<String>,
    /// Rotate the flow log file past this many bytes (keeps `<output>.1`); 0: never.
    #[arg(long, default_value_t = 0, env = "AUDITOR_MAX_LOG_BYTES")]
    pub max_log_bytes: u64,
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
    #[error("{path}: {source}")]
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
    /// Flows whose kernel counters restarted (LRU eviction between two flushes).
    pub flow_map_evictions: u64,
    pub alerts: u64,
    pub degraded: Vec<String>,
    pub attached: Vec<String>,
}

fn kind_name(k: u32) -> &'static str {
    match k {
        abi::EVENT_NEW_FLOW => "new_flow",
        abi::EVENT_OUTCOME => "outcome",
        abi::EVENT_DROP => "drop",
        abi::EVENT_DNS => "dns",
        _ => "other",
    }
}

/// Who a flow belongs to: the same for every flow of a process in a cgroup, so it is
/// interned (one allocation per process and thread name, shared by all their flows).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct Ident {
    /// The owning process: the flow key's, or the receiving socket's owner found in /proc.
    pid: Option<u32>,
    comm: Option<String>,
    thread_comm: Option<String>,
    exe: Option<String>,
    cgroup: Option<String>,
}

/// `Meta::flags`: the flow passes the filters.
const KEEP: u8 = 1;
/// `Meta::flags`: changed since the last record (counters or drops).
const DIRTY: u8 = 2;
/// `Meta::flags`: already counted in `auditor_flows_total`.
const COUNTED: u8 = 4;
/// `Meta::flags`: in the kernel map at this flush (cleared at the end of every flush).
const PRESENT: u8 = 8;

/// What the recorder keeps about a flow between flushes beyond the kernel's counters
/// (about 80 bytes: this is per live flow).
#[derive(Debug, Clone, Default)]
struct Meta {
    ident: Arc<Ident>,
    /// Counters already written: count, established, refused, timed_out, errors, syn_retransmits.
    written: [u64; 6],
    first_seen_ns: u64,
    last_seen_ns: u64,
    /// Initiator port of the first connection; 0: not known.
    src_port: u16,
    /// Initiator port of the latest connection, from the kernel's counters; 0: not known.
    last_src_port: u16,
    /// The kernel's state code at the latest flush that found the flow in the map.
    state: u8,
    flags: u8,
}

impl Meta {
    fn keep(&self) -> bool {
        self.flags & KEEP != 0
    }
}

struct Entry {
    flow: Flow,
    meta: Meta,
}

/// Every flow the recorder has seen, by index: entries in fixed-size chunks (growing
/// never copies them or doubles their memory) and an index from a 32-bit hash of the
/// flow to its entry, the rare flows whose hash is taken kept in an ordinary map.
/// About 136 bytes per flow plus 9-18 bytes of index, against about 600 for a
/// `HashMap<Flow, _>` of the same data at its growth steps.
struct FlowTable {
    chunks: Vec<Vec<Entry>>,
    len: u32,
    hasher: std::hash::RandomState,
    index: HashMap<u32, u32, std::hash::BuildHasherDefault<Mix32>>,
    collisions: HashMap<Flow, u32>,
}

const CHUNK: usize = 4096;

/// Hasher for keys that are already hashes: spreads a u32 over 64 bits.
#[derive(Default)]
struct Mix32(u64);

impl std::hash::Hasher for Mix32 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Default for FlowTable {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            hasher: std::hash::RandomState::new(),
            index: HashMap::default(),
            collisions: HashMap::new(),
        }
    }
}

impl FlowTable {
    fn hash(&self, flow: &Flow) -> u32 {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(flow);
        (h >> 32) as u32 ^ h as u32
    }

    fn get(&self, flow: &Flow) -> Option<u32> {
        let i = *self.index.get(&self.hash(flow))?;
        if self.entry(i).flow == *flow {
            Some(i)
        } else {
            self.collisions.get(flow).copied()
        }
    }

    /// Adds a flow that is not in the table yet.
    fn insert(&mut self, flow: Flow, meta: Meta) -> u32 {
        let i = self.len;
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks
            .last_mut()
            .expect("pushed above")
            .push(Entry { flow, meta });
        self.len += 1;
        match self.index.entry(self.hash(&flow)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.insert(flow, i);
            }
        }
        i
    }

    fn entry(&self, i: u32) -> &Entry {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn meta_mut(&mut self, i: u32) -> &mut Meta {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK].meta
    }

    fn meta_of(&self, flow: &Flow) -> Option<&Meta> {
        self.get(flow).map(|i| &self.entry(i).meta)
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.chunks.iter_mut().flatten()
    }
}

/// Filters and enrichment; the pure part of the recorder.
struct State {
    comms: BTreeSet<String>,
    cgroup_prefix: Option<String>,
    resolver: Option<CgroupResolver>,
    flows: FlowTable,
    /// Interned identities (see `Ident`).
    idents: std::collections::HashSet<Arc<Ident>>,
    /// (cgroup, address) -> DNS name asked for; (0, address) for any cgroup.
    dns: HashMap<(u64, IpAddr), String>,
    drop_written: HashMap<abi::DropKey, u64>,
    drop_reasons: BTreeMap<u32, String>,
    boot_to_unix_ns: i128,
    summary: Summary,
    cluster: Option<crate::enrich::Cluster>,
    dedup: crate::alerts::Deduper,
    alerts_out: AlertSink,
    started: Instant,
    shared: std::sync::Arc<crate::serve::Shared>,
    alertmanager: Option<crate::alertmanager::Target>,
    node_name: Option<String>,
    /// Whether `/flows` is served (the recent records are kept only then).
    serve_flows: bool,
    /// The live cluster view, and the generation the current `cluster` was built from.
    watch: Option<crate::kube::ClusterWatch>,
    watch_generation: u64,
}

impl State {
    fn reason_name(&self, r: u32) -> String {
        self.drop_reasons
            .get(&r)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{r}"))
    }

    fn time(&self, ns: u64) -> Option<String> {
        if ns == 0 {
            return None;
        }
        let unix = ns as i128 + self.boot_to_unix_ns;
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix).ok()?);
        Some(humantime::format_rfc3339_millis(t).to_string())
    }

    /// The flow's index in the table, adding it (named from /proc, filtered) when it is
    /// new; `thread_comm` (the kernel's thread name) is only asked for then.
    fn meta_for(&mut self, flow: &Flow, thread_comm: impl FnOnce() -> Option<String>) -> u32 {
        if let Some(i) = self.flows.get(flow) {
            return i;
        }
        let cgroup = self.resolver.as_mut().and_then(|r| r.path(flow.cgroup_id));
        // Inbound flows seen in softirq context carry no process when the listener
        // started before the recorder: find the socket's owner in the cgroup.
        let mut pid = (flow.tgid != 0).then_some(flow.tgid);
        if pid.is_none() && flow.direction == Direction::Ingress {
            if let (Some(root), Some(path)) = (
                self.resolver.as_ref().map(|r| r.root().to_owned()),
                cgroup.as_ref(),
            ) {
                pid = procfs::receiver_in_cgroup(
                    &root.join(path.trim_start_matches('/')),
                    flow.dst_port,
                    flow.protocol == Protocol::Tcp,
                );
            }
        }
        let info = procfs::proc_info(pid.unwrap_or(0));
        let thread_comm = thread_comm().filter(|t| !t.is_empty());
        let comm = info.comm.clone().or_else(|| thread_comm.clone());
        let mut keep = true;
        if !self.comms.is_empty() {
            keep = comm.as_ref().is_some_and(|c| self.comms.contains(c))
                || thread_comm.as_ref().is_some_and(|c| self.comms.contains(c));
        }
        if let Some(prefix) = &self.cgroup_prefix {
            keep &= cgroup.as_ref().is_some_and(|c| {
                c == prefix
                    || c.starts_with(&format!("{}/", prefix.trim_end_matches('/')))
                    || prefix == "/"
            });
        }
        // The recorder's own connections (the Kubernetes API, Alertmanager) are not audited.
        if flow.tgid == std::process::id() {
            keep = false;
        }
        let thread_comm = thread_comm.filter(|t| Some(t) != comm.as_ref());
        let ident = Ident {
            pid,
            comm,
            thread_comm,
            exe: info.exe,
            cgroup,
        };
        let ident = match self.idents.get(&ident) {
            Some(i) => i.clone(),
            None => {
                let i = Arc::new(ident);
                self.idents.insert(i.clone());
                i
            }
        };
        self.flows.insert(
            *flow,
            Meta {
                ident,
                flags: if keep { KEEP } else { 0 },
                ..Default::default()
            },
        )
    }

    /// Rebuilds the policy engine when the live cluster view changed; a snapshot the
    /// engine rejects keeps the previous view (and says why).
    fn refresh_cluster(&mut self) {
        let Some(w) = &self.watch else { return };
        self.shared
            .cluster_ready
            .store(w.healthy(), std::sync::atomic::Ordering::Relaxed);
        let generation = w.generation();
        if generation == self.watch_generation {
            return;
        }
        let Some(snap) = w.snapshot() else { return };
        match crate::enrich::Cluster::new(&snap) {
            Ok(c) => {
                if self.cluster.is_none() {
                    tracing::info!(pods = snap.pods.len(), policies = snap.network_policies.len(), "cluster view synced: flows are attributed to pods and evaluated against the policies");
                }
                self.cluster = Some(c);
                self.watch_generation = generation;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cluster's objects could not be indexed; keeping the previous view");
                self.watch_generation = generation;
            }
        }
    }

    /// The pod address of a flow's cgroup, when the cluster is known.
    fn pod_ip_of(&self, f: &Flow) -> Option<IpAddr> {
        let c = self.cluster.as_ref()?;
        let path = self.flows.meta_of(f)?.ident.cgroup.as_ref()?;
        let id = c.pod_of_cgroup(path)?;
        c.engine.pods()[id].ips.first().copied()
    }

    /// Pod identities and the live verdict of a record; fills an unbound source address
    /// with the pod's.
    fn enrich(&self, flow: &Flow, r: &mut FlowRecord) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let local = r.cgroup.as_deref().and_then(|p| c.pod_of_cgroup(p));
        match flow.direction {
            Direction::Egress => {
                r.src = local
                    .map(|i| c.endpoint_of_pod(i))
                    .or_else(|| c.endpoint_of_ip(r.src_ip));
                if r.src_ip.is_unspecified() {
                    if let Some(ip) = local.and_then(|i| {
                        c.engine.pods()[i]
                            .ips
                            .iter()
                            .find(|ip| ip.is_ipv4() == r.dst_ip.is_ipv4())
                            .copied()
                    }) {
                        r.src_ip = ip;
                    }
                }
                r.dst = c.endpoint_of_ip(r.dst_ip).or_else(|| {
                    // A Service ClusterIP: name the Service's first backend pod.
                    let (ip, _) = *c.backends(r.dst_ip, r.dst_port, r.protocol).first()?;
                    c.endpoint_of_ip(ip)
                });
            }
            Direction::Ingress => {
                r.dst = local
                    .map(|i| c.endpoint_of_pod(i))
                    .or_else(|| c.endpoint_of_ip(r.dst_ip));
                r.src = c.endpoint_of_ip(r.src_ip);
            }
        }
        Some(c.verdict(r.src_ip, r.dst_ip, r.dst_port, r.protocol).1)
    }

    /// Prometheus counters for one record (labels bounded: namespace and workload only).
    fn count_metrics(&mut self, i: u32, flow: &Flow, r: &FlowRecord, verdict: Option<&str>) {
        let me = match flow.direction {
            Direction::Egress => r.src.as_ref(),
            Direction::Ingress => r.dst.as_ref(),
        };
        let namespace = me.and_then(|e| e.namespace.clone()).unwrap_or_default();
        let workload = me.and_then(|e| e.workload.clone()).unwrap_or_default();
        let first = self.flows.meta_mut(i).flags & COUNTED == 0;
        self.flows.meta_mut(i).flags |= COUNTED;
        let m = &self.shared.metrics;
        if first {
            let verdict = match verdict {
                None => "unknown",
                Some(v) if v.starts_with("denied") => "deny",
                Some(_) => "allow",
            };
            m.flows
                .get_or_create(&crate::serve::FlowLabels {
                    namespace: namespace.clone(),
                    workload: workload.clone(),
                    direction: if flow.direction == Direction::Egress {
                        "egress"
                    } else {
                        "ingress"
                    }
                    .into(),
                    protocol: flow.protocol.to_string(),
                    verdict: verdict.into(),
                })
                .inc();
        }
        if r.drops > 0 {
            let reason = r.drop_reason.clone().unwrap_or_else(|| "unknown".into());
            m.drops
                .get_or_create(&crate::serve::DropLabels {
                    namespace: namespace.clone(),
                    workload: workload.clone(),
                    reason,
                })
                .inc_by(r.drops);
        }
        if r.timed_out > 0 {
            m.connect_timeouts
                .get_or_create(&crate::serve::WorkloadLabels {
                    namespace,
                    workload,
                })
                .inc_by(r.timed_out);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::NewFlow(fe) | Event::Outcome(fe) => {
                let i = self.meta_for(&fe.flow, || Some(fe.comm.clone()));
                let m = self.flows.meta_mut(i);
                if m.src_port == 0 && fe.src_port != 0 {
                    m.src_port = fe.src_port;
                }
                let m = &self.flows.entry(i).meta;
                if fe.kind == abi::EVENT_OUTCOME && m.keep() {
                    let what = match fe.state {
                        Some(FlowState::Refused) => "connection refused".to_string(),
                        Some(FlowState::TimedOut) => format!(
                            "connect timed out after {} SYN retransmits",
                            fe.syn_retransmits
                        ),
                        _ => "connect failed".to_string(),
                    };
                    tracing::debug!(
                        comm = m.ident.comm.as_deref().unwrap_or(""),
                        pid = fe.flow.tgid,
                        dst = %fe.flow.dst_ip,
                        dst_port = fe.flow.dst_port,
                        protocol = %fe.flow.protocol,
                        cgroup = m.ident.cgroup.as_deref().unwrap_or(""),
                        "{what}"
                    );
                }
            }
            Event::Drop { drop, .. } => {
                let reason = self.reason_name(drop.reason);
                tracing::debug!(reason, tuple = ?drop.tuple, "kernel drop");
            }
            Event::Dns(d) => match dns::parse_response(&d.payload) {
                Ok(a) => {
                    self.summary.dns_answers += 1;
                    for (addr, _ttl) in &a.addrs {
                        self.dns.insert((d.cgroup_id, *addr), a.query.clone());
                        self.dns.insert((0, *addr), a.query.clone());
                    }
                    tracing::debug!(query = a.query, answers = a.addrs.len(), cnames = ?a.cnames, "DNS answer");
                }
                Err(e) => tracing::debug!(error = %e, server = %d.server, "unparsable DNS answer"),
            },
        }
    }

    /// Finds the flow a dropped packet belongs to: an outgoing packet of an egress
    /// flow, an incoming request of an ingress flow, or a reply to an egress flow.
    fn attribute_drop(&self, d: &decode::Drop) -> Option<Flow> {
        let (s, sp, dst, dp) = d.tuple?;
        let proto = d.protocol?;
        let unspecified = |ip: &IpAddr| ip.is_unspecified();
        let mut best: Option<(Flow, (bool, u64))> = None;
        for e in self.flows.iter() {
            let f = &e.flow;
            if f.protocol != proto {
                continue;
            }
            // A Service ClusterIP flow: the dropped packet carries a backend after DNAT.
            let backends = self
                .cluster
                .as_ref()
                .map(|c| c.backends(f.dst_ip, f.dst_port, f.protocol))
                .unwrap_or_default();
            let src_ok = |ip: &IpAddr| {
                f.src_ip == *ip
                    || unspecified(&f.src_ip)
                    || self.pod_ip_of(f).is_some_and(|p| p == *ip)
            };
            let hit = match f.direction {
                Direction::Egress => {
                    (f.dst_ip == dst && f.dst_port == dp && src_ok(&s))
                        || (f.dst_ip == s && f.dst_port == sp && src_ok(&dst))
                        || (backends.contains(&(dst, dp)) && src_ok(&s))
                        || (backends.contains(&(s, sp)) && src_ok(&dst))
                }
                Direction::Ingress => f.src_ip == s && f.dst_ip == dst && f.dst_port == dp,
            };
            if hit {
                // Several processes may talk to the same peer: prefer the flow whose first or
                // latest connection used the dropped packet's port, then the latest active.
                let meta = &e.meta;
                let is_reply = f.direction == Direction::Egress
                    && (f.dst_ip == s || backends.contains(&(s, sp)));
                let port = if is_reply { dp } else { sp };
                let port_hit = port != 0 && (meta.src_port == port || meta.last_src_port == port);
                let score = (port_hit, meta.last_seen_ns);
                if best.is_none_or(|(b, bs)| score > bs || (score == bs && f < &b)) {
                    best = Some((*f, score));
                }
            }
        }
        best.map(|(f, _)| f)
    }
}

/// Where alerts go: standard error (the log stream) or a file of JSON lines.
enum AlertSink {
    Stderr,
    File(PathBuf, File),
}

impl State {
    fn send_alerts(&mut self, alerts: Vec<crate::alerts::Alert>) {
        if let (Some(t), false) = (&self.alertmanager, alerts.is_empty()) {
            let now = SystemTime::now();
            let body: Vec<serde_json::Value> = alerts
                .iter()
                .map(|a| {
                    crate::alertmanager::postable(
                        a,
                        self.node_name.as_deref(),
                        now,
                        Duration::from_secs(300),
                    )
                })
                .collect();
            let t = t.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::alertmanager::send(&t, &body, Duration::from_secs(5)).await {
                    tracing::warn!(error = %e, "alert not delivered to Alertmanager");
                }
            });
        }
        for a in alerts {
            self.summary.alerts += 1;
            let line = serde_json::to_string(&a).unwrap_or_default();
            match &mut self.alerts_out {
                AlertSink::Stderr => {
                    tracing::warn!(
                        alert = a.kind,
                        namespace = a.namespace.as_deref().unwrap_or(""),
                        workload = a.workload.as_deref().unwrap_or(""),
                        process = a.process.as_deref().unwrap_or(""),
                        peer = %a.peer,
                        peer_name = a.peer_name.as_deref().unwrap_or(""),
                        port = a.port,
                        protocol = %a.protocol,
                        reason = %a.reason,
                        count = a.count,
                        verdict = a.verdict.as_deref().unwrap_or(""),
                        "{}",
                        a.sentence()
                    );
                }
                AlertSink::File(path, f) => {
                    if let Err(e) = writeln!(f, "{line}") {
                        tracing::error!(path = %path.display(), error = %e, "cannot write alert");
                    }
                }
            }
        }
    }
}

/// Runs the recorder until SIGINT/SIGTERM or `--duration`.
pub async fn run(args: RecordArgs) -> Result<Summary, RecordError> {
    if args.ring_buffer_bytes < 4096 || !args.ring_buffer_bytes.is_power_of_two() {
        return Err(RecordError::RingSize(args.ring_buffer_bytes));
    }
    let _lock = take_lock(&args.lock_file)?;
    let root = procfs::cgroup2_mount();
    let (attach_cgroup, cgroup_prefix) = match (&root, &args.cgroup) {
        (Some(root), Some(cg)) => {
            let abs = if cg.is_absolute() {
                cg.clone()
            } else {
                root.join(cg)
            };
            let rel = abs
                .strip_prefix(root)
                .map(|r| format!("/{}", r.display()))
                .map_err(|_| RecordError::NotCgroup {
                    path: cg.clone(),
                    root: root.display().to_string(),
                })?;
            if !abs.join("cgroup.procs").exists() {
                return Err(RecordError::NotCgroup {
                    path: cg.clone(),
                    root: root.display().to_string(),
                });
            }
            (
                Some(abs),
                Some(if rel == "/" { "/".to_string() } else { rel }),
            )
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
        ignore_drop_reasons: args
            .ignore_drop_reasons
            .iter()
            .filter(|r| !r.eq_ignore_ascii_case("none"))
            .cloned()
            .collect(),
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
    let mut out = Output::open(&args.output, args.max_log_bytes)?;
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
    // SAFETY: the ring buffer owns its fd and outlives the registration (both live in `ring`).
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| e.into_parts().1)
        .map_err(|source| RecordError::Io {
            op: "poll ring buffer",
            path: "EVENTS".into(),
            source,
        })?;

    let cluster = match &args.cluster {
        Some(path) => {
            let snap = crate::cluster::read_snapshot(path)?;
            Some(
                crate::enrich::Cluster::new(&snap).map_err(|source| RecordError::Policy {
                    path: path.clone(),
                    source,
                })?,
            )
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
    let shared = crate::serve::Shared::new(args.flows_buffer);
    if let Some(addr) = args.listen {
        let bound = crate::serve::spawn(addr, shared.clone())
            .await
            .map_err(|source| RecordError::Listen { addr, source })?;
        tracing::info!(%bound, "serving /metrics, /healthz, /flows");
    }
    let mut state = State {
        shared: shared.clone(),
        alertmanager,
        node_name: args.node_name.clone(),
        serve_flows: args.listen.is_some(),
        watch,
        watch_generation: 0,
        cluster,
        dedup: crate::alerts::Deduper::new(args.alert_window),
        alerts_out,
        started: Instant::now(),
        comms: args.comms.iter().cloned().collect(),
        cgroup_prefix,
        resolver: root.clone().map(CgroupResolver::new),
        flows: FlowTable::default(),
        idents: Default::default(),
        dns: HashMap::new(),
        drop_written: HashMap::new(),
        drop_reasons: probe.drop_reasons.clone(),
        boot_to_unix_ns: boot_to_unix_ns(),
        summary: Summary {
            degraded: probe.degraded.clone(),
            attached: probe.attached.clone(),
            ..Default::default()
        },
    };

    if let Some(p) = &args.ready_file {
        std::fs::write(p, format!("{}\n", std::process::id())).map_err(|source| {
            RecordError::Io {
                op: "write ready file",
                path: p.clone(),
                source,
            }
        })?;
    }
    tracing::info!(output = %args.output.display(), hooks = probe.attached.len(), "recording");
    shared
        .recording
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shared.metrics.up.set(1);

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
                flush(&mut probe, ring.get_mut(), &mut state, &mut out)?;
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                if let Ok(mut g) = guard {
                    g.get_inner_mut().flush();
                    g.clear_ready();
                }
            }
            guard = ring.readable_mut(), if !stalled => {
                let mut guard = guard.map_err(|source| RecordError::Io { op: "poll ring buffer", path: "EVENTS".into(), source })?;
                drain(guard.get_inner_mut(), &mut state);
                guard.clear_ready();
            }
        }
    }
    flush(&mut probe, ring.get_mut(), &mut state, &mut out)?;
    let owed = state.dedup.flush();
    state.send_alerts(owed);
    shared
        .recording
        .store(false, std::sync::atomic::Ordering::Relaxed);
    shared.metrics.up.set(0);
    // Let alert deliveries in flight finish (bounded by their own timeout).
    if state.alertmanager.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    state.summary.duration_s = started.elapsed().as_secs_f64();
    state.summary.flows = state.flows.iter().filter(|e| e.meta.keep()).count();
    if let Some(p) = &args.summary {
        let text = serde_json::to_string_pretty(&state.summary).unwrap_or_default();
        std::fs::write(p, text + "\n").map_err(|source| RecordError::Io {
            op: "write summary",
            path: p.clone(),
            source,
        })?;
    }
    Ok(state.summary)
}

fn drain(ring: &mut RingBuf<MapData>, state: &mut State) {
    while let Some(item) = ring.next() {
        match decode::decode(&item) {
            Ok(ev) => {
                let k = match &ev {
                    Event::NewFlow(_) => abi::EVENT_NEW_FLOW,
                    Event::Outcome(_) => abi::EVENT_OUTCOME,
                    Event::Drop { .. } => abi::EVENT_DROP,
                    Event::Dns(_) => abi::EVENT_DNS,
                };
                *state
                    .summary
                    .events
                    .entry(kind_name(k).to_string())
                    .or_default() += 1;
                state.on_event(ev);
            }
            Err(e) => {
                state.summary.decode_errors += 1;
                tracing::warn!(error = %e, "undecodable ring buffer record");
            }
        }
    }
}

/// A flow whose counters changed at this flush: what its record needs from the kernel's
/// counters, which are read once and not kept (about 40 bytes per changed flow).
struct Pending {
    idx: u32,
    /// Kernel state code (0 where the flow was not in the map).
    state: u8,
    count: u64,
    /// established, refused, timed_out, errors, syn_retransmits in the interval.
    rest: [u32; 5],
}

impl Pending {
    fn delta(&self) -> [u64; 6] {
        let r = self.rest.map(u64::from);
        [self.count, r[0], r[1], r[2], r[3], r[4]]
    }
}

/// What a record got from the cluster view (kept between building and writing it).
struct Enriched {
    src_ip: IpAddr,
    src: Option<crate::flowlog::Endpoint>,
    dst: Option<crate::flowlog::Endpoint>,
}

/// A record of this flush, in the order they are written.
enum Item {
    /// A kernel drop of no known flow, built whole.
    Drop(u64, Box<FlowRecord>),
    /// The flow record of `pending[pos]`, rebuilt when written.
    Flow {
        last_ns: u64,
        pos: u32,
        enriched: Option<Box<Enriched>>,
    },
}

/// Records are written in chunks of whole lines of about this size: one `write` for
/// any ordinary flush, without holding a second copy of a very large one.
const WRITE_CHUNK: usize = 8 << 20;

impl State {
    /// The record of a changed flow (before `enrich`).
    fn flow_record(&self, p: &Pending, drops: Option<(u64, u32)>) -> FlowRecord {
        let Entry { flow, meta: m } = self.flows.entry(p.idx);
        let delta = p.delta();
        let drops_n = drops.map_or(0, |d| d.0);
        let dns_name = if flow.direction == Direction::Egress {
            self.dns
                .get(&(flow.cgroup_id, flow.dst_ip))
                .or_else(|| self.dns.get(&(0, flow.dst_ip)))
                .cloned()
        } else {
            None
        };
        let state_v = decode::state(p.state).map(|st| {
            if drops_n > 0 && st == FlowState::Connecting {
                FlowState::Dropped
            } else {
                st
            }
        });
        FlowRecord {
            src_ip: flow.src_ip,
            src_port: (m.src_port != 0).then_some(m.src_port),
            dst_ip: flow.dst_ip,
            dst_port: flow.dst_port,
            protocol: flow.protocol,
            direction: Some(flow.direction),
            state: state_v,
            drop_reason: drops
                .filter(|d| d.0 > 0)
                .map(|(_, reason)| self.reason_name(reason)),
            syn_retransmits: delta[5],
            pid: m.ident.pid,
            comm: m.ident.comm.clone(),
            thread_comm: m.ident.thread_comm.clone(),
            exe: m.ident.exe.clone(),
            cgroup_id: Some(flow.cgroup_id),
            cgroup: m.ident.cgroup.clone(),
            dns_name,
            first_seen: self.time(m.first_seen_ns),
            last_seen: self.time(m.last_seen_ns),
            count: delta[0],
            established: delta[1],
            refused: delta[2],
            timed_out: delta[3],
            drops: drops_n,
            src: None,
            dst: None,
        }
    }
}

/// Drains events, reads the kernel's counters and appends the changed flows to the log.
///
/// Memory: the kernel's counters are streamed from the map (never collected); a changed
/// flow costs a `Pending` until the end of the flush, and records are built and
/// serialised one at a time, in chunks of `WRITE_CHUNK`.
fn flush(
    probe: &mut Probe,
    ring: &mut RingBuf<MapData>,
    state: &mut State,
    out: &mut Output,
) -> Result<(), RecordError> {
    drain(ring, state);
    state.refresh_cluster();
    // Flow counters, read from the kernel once per flush: what changed since the last
    // record is kept as a `Pending`, and `written` moves on to the kernel's counters.
    let mut pending: Vec<Pending> = Vec::new();
    if let Some(map) = probe.ebpf.map("FLOWS") {
        if let Ok(flows) = BpfHashMap::<_, abi::FlowKey, abi::FlowStats>::try_from(map) {
            for entry in flows.iter() {
                let Ok((k, s)) = entry else { continue };
                let Ok(flow) = decode::flow(&k) else { continue };
                let idx = state.meta_for(&flow, || Some(procfs::comm_str(&s.comm)));
                let m = state.flows.meta_mut(idx);
                m.flags |= PRESENT;
                m.state = s.state;
                let now = [
                    s.count,
                    s.established,
                    s.refused,
                    s.timed_out,
                    s.errors,
                    s.syn_retransmits,
                ];
                if now != m.written && m.flags & DIRTY == 0 {
                    m.flags |= DIRTY;
                    // A kernel counter below what was written: the LRU evicted the flow and
                    // it came back; what it counted between the last flush and the eviction
                    // is lost.
                    if now.iter().zip(m.written.iter()).any(|(n, w)| n < w) {
                        state.summary.flow_map_evictions += 1;
                    }
                    let mut delta = [0u64; 6];
                    for i in 0..6 {
                        delta[i] = if now[i] >= m.written[i] {
                            now[i] - m.written[i]
                        } else {
                            now[i]
                        };
                    }
                    if s.count != 0 || now.iter().any(|v| *v != 0) {
                        m.written = now;
                    }
                    // Connection outcomes of one flow in one interval fit in 32 bits.
                    let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
                    pending.push(Pending {
                        idx,
                        state: s.state,
                        count: delta[0],
                        rest: [
                            small(delta[1]),
                            small(delta[2]),
                            small(delta[3]),
                            small(delta[4]),
                            small(delta[5]),
                        ],
                    });
                }
                if m.first_seen_ns == 0 {
                    m.first_seen_ns = s.first_seen_ns;
                }
                m.last_seen_ns = m.last_seen_ns.max(s.last_seen_ns);
                if m.src_port == 0 && s.src_port != 0 {
                    m.src_port = s.src_port;
                }
                if s.last_src_port != 0 {
                    m.last_src_port = s.last_src_port;
                }
            }
        }
    }
    // Drop counters.
    let mut new_drops: Vec<(decode::Drop, u64, u64)> = Vec::new();
    if let Some(map) = probe.ebpf.map("DROPS") {
        if let Ok(drops) = BpfHashMap::<_, abi::DropKey, abi::DropStats>::try_from(map) {
            for entry in drops.iter() {
                let Ok((k, s)) = entry else { continue };
                let before = state.drop_written.get(&k).copied().unwrap_or(0);
                // An LRU eviction and re-insert restarts the kernel counter.
                let delta = if s.count >= before {
                    s.count - before
                } else {
                    s.count
                };
                if delta == 0 {
                    continue;
                }
                state.drop_written.insert(k, s.count);
                if let Ok(d) = decode::drop_key(&k) {
                    new_drops.push((d, delta, s.last_seen_ns));
                }
            }
        }
    }
    let mut items: Vec<Item> = Vec::new();
    // Drops attributed to flows at this flush: flow index -> (packets, last reason).
    let mut flow_drops: HashMap<u32, (u64, u32)> = HashMap::new();
    for (d, delta, last) in new_drops {
        state.summary.drops += delta;
        let reason = state.reason_name(d.reason);
        *state
            .summary
            .drops_by_reason
            .entry(reason.clone())
            .or_default() += delta;
        match state.attribute_drop(&d).and_then(|f| state.flows.get(&f)) {
            Some(idx) => {
                let slot = flow_drops.entry(idx).or_default();
                slot.0 += delta;
                slot.1 = d.reason;
                let m = state.flows.meta_mut(idx);
                m.last_seen_ns = m.last_seen_ns.max(last);
                if m.flags & DIRTY == 0 {
                    m.flags |= DIRTY;
                    // Counters unchanged since the last record, or gone from the map.
                    let present = m.flags & PRESENT != 0;
                    if !present && m.written.iter().any(|w| *w != 0) {
                        state.summary.flow_map_evictions += 1;
                    }
                    pending.push(Pending {
                        idx,
                        state: if present { m.state } else { 0 },
                        count: 0,
                        rest: [0; 5],
                    });
                }
            }
            None if state.comms.is_empty() && state.cgroup_prefix.is_none() => {
                if let (Some((s, sp, dst, dp)), Some(p)) = (d.tuple, d.protocol) {
                    items.push(Item::Drop(
                        last,
                        Box::new(FlowRecord {
                            src_ip: s,
                            src_port: Some(sp),
                            dst_ip: dst,
                            dst_port: dp,
                            protocol: p,
                            direction: None,
                            state: Some(FlowState::Dropped),
                            drop_reason: Some(reason),
                            drops: delta,
                            first_seen: state.time(last),
                            last_seen: state.time(last),
                            ..empty_record(s, dst, dp, p)
                        }),
                    ));
                }
            }
            None => {
                *state.summary.unattributed_drops.entry(reason).or_default() += delta;
            }
        }
    }
    for e in state.flows.iter_mut() {
        e.meta.flags &= !PRESENT;
    }
    // Changed flows -> records, in flow order (metrics and alerts).
    pending.sort_unstable_by(|a, b| {
        state
            .flows
            .entry(a.idx)
            .flow
            .cmp(&state.flows.entry(b.idx).flow)
    });
    for (pos, p) in pending.iter().enumerate() {
        let drops = flow_drops.get(&p.idx).copied();
        let m = state.flows.meta_mut(p.idx);
        m.flags &= !DIRTY;
        if !m.keep() || (p.delta().iter().all(|v| *v == 0) && drops.is_none_or(|d| d.0 == 0)) {
            continue;
        }
        let last_ns = m.last_seen_ns;
        let flow = state.flows.entry(p.idx).flow;
        let mut rec = state.flow_record(p, drops);
        let verdict = state.enrich(&flow, &mut rec);
        state.count_metrics(p.idx, &flow, &rec, verdict.as_deref());
        let enriched = state.cluster.is_some().then(|| {
            Box::new(Enriched {
                src_ip: rec.src_ip,
                src: rec.src.clone(),
                dst: rec.dst.clone(),
            })
        });
        let alerts = crate::alerts::Alert::from_record(&rec, verdict);
        if !alerts.is_empty() {
            let now = state.started.elapsed();
            let send = state.dedup.push(now, alerts);
            state.send_alerts(send);
        }
        items.push(Item::Flow {
            last_ns,
            pos: pos as u32,
            enriched,
        });
    }
    let due = state.dedup.tick(state.started.elapsed());
    state.send_alerts(due);
    state
        .shared
        .metrics
        .set_lost("decode", state.summary.decode_errors);
    // Written in time order, then by (source, destination, port, protocol, pid).
    {
        let key = |it: &Item| match it {
            Item::Drop(last, r) => (*last, sort_key(r)),
            Item::Flow {
                last_ns,
                pos,
                enriched,
            } => {
                let e = state.flows.entry(pending[*pos as usize].idx);
                let src = enriched.as_ref().map_or(e.flow.src_ip, |x| x.src_ip);
                (
                    *last_ns,
                    (
                        src,
                        e.flow.dst_ip,
                        e.flow.dst_port,
                        e.flow.protocol,
                        e.meta.ident.pid,
                    ),
                )
            }
        };
        items.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut written = 0u64;
    for it in items {
        let rec = match it {
            Item::Drop(_, r) => *r,
            Item::Flow { pos, enriched, .. } => {
                let p = &pending[pos as usize];
                let mut r = state.flow_record(p, flow_drops.get(&p.idx).copied());
                if let Some(e) = enriched {
                    r.src_ip = e.src_ip;
                    r.src = e.src;
                    r.dst = e.dst;
                }
                r
            }
        };
        let start = buf.len();
        serde_json::to_writer(&mut buf, &rec).map_err(|e| RecordError::Io {
            op: "write flow log",
            path: out.name(),
            source: std::io::Error::other(e),
        })?;
        if state.serve_flows {
            let json = String::from_utf8_lossy(&buf[start..]).into_owned();
            state
                .shared
                .keep_lines([(rec.last_seen.unwrap_or_default(), json)]);
        }
        buf.push(b'\n');
        written += 1;
        if buf.len() >= WRITE_CHUNK {
            out.write_bytes(&buf)?;
            buf.clear();
        }
    }
    out.write_bytes(&buf)?;
    drop(buf);
    if written > 0 {
        out.end_flush()?;
    }
    state.summary.records_written += written;
    // Lost events.
    if let Some(map) = probe.ebpf.map("LOST") {
        if let Ok(lost) = Array::<_, u64>::try_from(map) {
            for k in 0..abi::EVENT_KINDS {
                if let Ok(n) = lost.get(&k, 0) {
                    if n > 0 {
                        let slot = state
                            .summary
                            .lost_events
                            .entry(kind_name(k).to_string())
                            .or_default();
                        if *slot != n {
                            tracing::warn!(kind = kind_name(k), lost = n - *slot, total = n, "ring buffer full: events lost (flows are still counted in the kernel map)");
                            *slot = n;
                        }
                    }
                }
            }
        }
    }
    state
        .shared
        .metrics
        .set_lost("ringbuf", state.summary.lost_events.values().sum());
    state
        .shared
        .metrics
        .set_lost("flow_map", state.summary.flow_map_evictions);
    Ok(())
}

fn sort_key(r: &FlowRecord) -> (IpAddr, IpAddr, u16, Protocol, Option<u32>) {
    (r.src_ip, r.dst_ip, r.dst_port, r.protocol, r.pid)
}

fn empty_record(src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> FlowRecord {
    FlowRecord {
        src_ip: src,
        src_port: None,
        dst_ip: dst,
        dst_port: port,
        protocol,
        direction: None,
        state: None,
        drop_reason: None,
        syn_retransmits: 0,
        pid: None,
        comm: None,
        thread_comm: None,
        exe: None,
        cgroup_id: None,
        cgroup: None,
        dns_name: None,
        first_seen: None,
        last_seen: None,
        count: 0,
        established: 0,
        refused: 0,
        timed_out: 0,
        drops: 0,
        src: None,
        dst: None,
    }
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

/// The flow log sink: stdout or a file opened for appending. A file that ends in
/// a partial line (a killed earlier run) is cut back to its last complete line.
enum Output {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        max_bytes: u64,
    },
}

impl Output {
    fn open(path: &Path, max_bytes: u64) -> Result<Self, RecordError> {
        if path.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        let io = |op, source| RecordError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io("open flow log", e))?;
        let len = file.metadata().map_err(|e| io("stat flow log", e))?.len();
        if len > 0 {
            let tail = len.min(1 << 20);
            file.seek(SeekFrom::Start(len - tail))
                .map_err(|e| io("read flow log", e))?;
            let mut buf = Vec::with_capacity(tail as usize);
            file.read_to_end(&mut buf)
                .map_err(|e| io("read flow log", e))?;
            if buf.last() != Some(&b'\n') {
                let keep = buf
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| len - tail + i as u64 + 1)
                    .unwrap_or(len - tail);
                tracing::warn!(path = %path.display(), removed_bytes = len - keep, "the flow log ends in a partial line (an earlier run was killed while writing); removing it");
                file.set_len(keep).map_err(|e| io("truncate flow log", e))?;
            }
        }
        Ok(Output::File {
            path: path.to_owned(),
            file,
            max_bytes,
        })
    }

    /// Where the flow log goes, for error messages.
    fn name(&self) -> PathBuf {
        match self {
            Output::Stdout => "-".into(),
            Output::File { path, .. } => path.clone(),
        }
    }

    /// Writes whole records (JSON lines, as `flowlog::write_records` does), then ends the flush.
    #[cfg(test)]
    fn write(&mut self, records: &[FlowRecord]) -> Result<(), RecordError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        crate::flowlog::write_records(&mut buf, records).map_err(|source| RecordError::Io {
            op: "write flow log",
            path: self.name(),
            source,
        })?;
        self.write_bytes(&buf)?;
        self.end_flush()
    }

    /// Writes whole lines with one `write_all`.
    fn write_bytes(&mut self, buf: &[u8]) -> Result<(), RecordError> {
        if buf.is_empty() {
            return Ok(());
        }
        let res = match self {
            Output::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(buf).and_then(|_| o.flush())
            }
            Output::File { file, .. } => file.write_all(buf).and_then(|_| file.flush()),
        };
        res.map_err(|source| RecordError::Io {
            op: "write flow log",
            path: self.name(),
            source,
        })
    }

    /// After a flush's records: a rolling log rotates here, so one flush stays in one file.
    fn end_flush(&mut self) -> Result<(), RecordError> {
        match self {
            Output::Stdout => Ok(()),
            Output::File {
                path,
                file,
                max_bytes,
            } => {
                // A rolling log: past the limit the file becomes `<path>.1` (replacing the
                // previous one) and a new file starts; whole lines only, nothing cut.
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if *max_bytes > 0 && len >= *max_bytes {
                    let mut rotated = path.clone().into_os_string();
                    rotated.push(".1");
                    std::fs::rename(&*path, &rotated).map_err(|source| RecordError::Io {
                        op: "rotate flow log",
                        path: path.clone(),
                        source,
                    })?;
                    *file = OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&*path)
                        .map_err(|source| RecordError::Io {
                            op: "open flow log",
                            path: path.clone(),
                            source,
                        })?;
                    tracing::info!(path = %path.display(), bytes = len, "flow log rotated to {}", PathBuf::from(rotated).display());
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowlog;

    fn state() -> State {
        State {
            comms: BTreeSet::new(),
            cgroup_prefix: None,
            resolver: None,
            flows: FlowTable::default(),
            idents: Default::default(),
            dns: HashMap::new(),
            drop_written: HashMap::new(),
            drop_reasons: BTreeMap::new(),
            boot_to_unix_ns: 0,
            summary: Summary::default(),
            cluster: None,
            dedup: crate::alerts::Deduper::new(Duration::from_secs(60)),
            alerts_out: AlertSink::Stderr,
            started: Instant::now(),
            shared: crate::serve::Shared::new(10),
            alertmanager: None,
            node_name: None,
            serve_flows: false,
            watch: None,
            watch_generation: 0,
        }
    }

    fn flow(dir: Direction, src: &str, dst: &str, port: u16) -> Flow {
        Flow {
            cgroup_id: 1,
            tgid: 0,
            protocol: Protocol::Tcp,
            direction: dir,
            src_ip: src.parse().unwrap(),
            dst_ip: dst.parse().unwrap(),
            dst_port: port,
        }
    }

    #[test]
    fn drops_attribute_to_request_and_reply_directions() {
        let mut s = state();
        let eg = flow(Direction::Egress, "10.0.0.1", "10.0.0.2", 80);
        let ing = flow(Direction::Ingress, "10.0.0.9", "10.0.0.1", 8080);
        s.flows.insert(eg, Meta::default());
        s.flows.insert(ing, Meta::default());
        assert_eq!(s.flows.get(&eg), Some(0));
        assert_eq!(s.flows.get(&ing), Some(1));
        let d = |a: &str, ap, b: &str, bp| decode::Drop {
            reason: 12,
            protocol: Some(Protocol::Tcp),
            tuple: Some((a.parse().unwrap(), ap, b.parse().unwrap(), bp)),
        };
        assert_eq!(
            s.attribute_drop(&d("10.0.0.1", 40000, "10.0.0.2", 80)),
            Some(eg)
        );
        assert_eq!(
            s.attribute_drop(&d("10.0.0.2", 80, "10.0.0.1", 40000)),
            Some(eg)
        );
        assert_eq!(
            s.attribute_drop(&d("10.0.0.9", 5000, "10.0.0.1", 8080)),
            Some(ing)
        );
        assert_eq!(
            s.attribute_drop(&d("10.0.0.9", 5000, "10.0.0.1", 9999)),
            None
        );
    }

    #[test]
    fn flow_table_finds_every_flow_by_index() {
        // 300,000 flows: a few share a 32-bit hash, so the collision path is taken too.
        let mut t = FlowTable::default();
        let f = |i: u32| Flow {
            cgroup_id: u64::from(i % 7),
            tgid: i / 65536,
            protocol: Protocol::Udp,
            direction: Direction::Egress,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: IpAddr::from(i.to_be_bytes()),
            dst_port: (i % 65536) as u16,
        };
        for i in 0..300_000 {
            assert_eq!(t.insert(f(i), Meta::default()), i);
        }
        for i in (0..300_000).step_by(7) {
            assert_eq!(t.get(&f(i)), Some(i));
            assert_eq!(t.entry(i).flow, f(i));
        }
        assert_eq!(t.get(&f(300_001)), None);
        assert_eq!(t.iter().count(), 300_000);
        assert_eq!(t.index.len() + t.collisions.len(), 300_000);
    }

    #[test]
    fn truncated_flow_log_is_repaired_on_open() {
        let dir = std::env::temp_dir().join(format!("auditor-out-{}", std::process::id()));
        std::fs::write(&dir, b"{\"a\":1}\n{\"b\":").unwrap();
        let out = Output::open(&dir, 0).unwrap();
        drop(out);
        assert_eq!(std::fs::read(&dir).unwrap(), b"{\"a\":1}\n");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn rolling_log_keeps_whole_lines() {
        let p = std::env::temp_dir().join(format!("auditor-roll-{}", std::process::id()));
        let r: FlowRecord = serde_json::from_str(
            r#"{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","dst_port":80,"protocol":"TCP"}"#,
        )
        .unwrap();
        let mut out = Output::open(&p, 200).unwrap();
        for _ in 0..5 {
            out.write(&[r.clone(), r.clone()]).unwrap();
        }
        let rotated = PathBuf::from(format!("{}.1", p.display()));
        for f in [&p, &rotated] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "whole lines in {}",
                f.display()
            );
            assert!(flowlog::parse_flow_log(f, text.as_bytes(), false).is_ok());
        }
        assert!(rotated.exists(), "rotated past 200 bytes");
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&rotated);
    }

    #[test]
    fn second_lock_is_refused_with_holder() {
        let p = std::env::temp_dir().join(format!("auditor-lock-{}", std::process::id()));
        let _a = take_lock(&p).unwrap();
        // flock locks are per open file description: a second open conflicts.
        let e = take_lock(&p)
            .err()
            .expect("second lock must fail")
            .to_string();
        assert!(
            e.contains("another auditor") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
