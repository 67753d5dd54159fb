//! The recorder's state between flushes: filters, the flow table, names (processes,
//! cgroups, DNS), the cluster view, alerts. Everything here is bounded: flows leave the
//! table (see `table`), the DNS cache holds at most `dns_capacity` names for their TTL,
//! drop bookkeeping follows the kernel's `DROPS` map, and unused identities are freed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auditor_ebpf as abi;

use super::table::{FlowTable, Ident, Meta, BLOCKED_COUNTED, COUNTED, FROM_MAP, KEEP, WRITTEN};
use super::Summary;
use crate::decode::{self, Event, Flow};
use crate::dns;
use crate::flowlog::{Direction, FlowRecord, FlowState, Protocol};
use crate::procfs::{self, CgroupResolver};

/// Where alerts go: standard error (the log stream) or a file of JSON lines.
pub enum AlertSink {
    Stderr,
    File(PathBuf, File),
}

/// A DNS name learned from an answer, kept for its TTL (at least `DNS_MIN_KEEP`).
struct DnsName {
    name: Arc<DnsNames>,
    expires: Instant,
}

/// The name a process asked for and the CNAME chain its answer went through.
#[derive(Debug, PartialEq, Eq)]
pub struct DnsNames {
    pub query: String,
    /// CNAMEs from the asked name to the one that holds the address, in order.
    pub cnames: Vec<String>,
}

/// How long a process's /proc name is reused, and how many processes are remembered.
const PROC_TTL: Duration = Duration::from_secs(10);
const PROCS_MAX: usize = 4096;

/// Answers with a TTL of a few seconds are still used by the connection that follows.
const DNS_MIN_KEEP: Duration = Duration::from_secs(60);

/// How long "this pod runs no `--comm` process" is believed before it is checked again.
const POD_RECHECK: Duration = Duration::from_secs(2);
const PODS_MAX: usize = 4096;

/// The pod-level cgroup of a pod's (or one of its containers') cgroup path.
pub fn pod_dir(cgroup: &str) -> Option<&str> {
    match crate::attribute::parse_cgroup_path(cgroup) {
        Ok(Some(crate::attribute::CgroupOwner::Pod(p))) => Some(match p.container {
            Some(_) => cgroup.rsplit_once('/').map_or(cgroup, |(parent, _)| parent),
            None => cgroup,
        }),
        _ => None,
    }
}

/// Filters and enrichment; the pure part of the recorder.
pub struct State {
    pub comms: BTreeSet<String>,
    /// Pod-level cgroups and whether they run a `--comm` process (true is for good;
    /// false is checked again after `POD_RECHECK`).
    audited_pods: HashMap<String, (bool, Instant)>,
    pub cgroup_prefix: Option<String>,
    pub resolver: Option<CgroupResolver>,
    pub flows: FlowTable,
    /// Interned identities (see `Ident`); unused ones are dropped at each flush.
    pub idents: HashSet<Arc<Ident>>,
    /// Recently read /proc names by pid (bounded, see `proc_info`).
    procs: HashMap<u32, (procfs::ProcInfo, Instant)>,
    /// (cgroup, address) -> DNS name asked for; (0, address) for any cgroup.
    dns: HashMap<(u64, IpAddr), DnsName>,
    pub dns_capacity: usize,
    /// Kernel drop counters already accounted, by key (entries follow the `DROPS` map).
    pub drop_written: HashMap<abi::DropKey, u64>,
    pub drop_reasons: BTreeMap<u32, String>,
    pub boot_to_unix_ns: i128,
    pub summary: Summary,
    pub cluster: Option<Arc<crate::enrich::Cluster>>,
    pub dedup: crate::alerts::Deduper,
    pub alerts_out: AlertSink,
    pub started: Instant,
    pub shared: Arc<crate::serve::Shared>,
    pub alertmanager: Option<crate::alertmanager::Delivery>,
    pub node_name: Option<String>,
    /// Whether `/flows` is served (the recent records are kept only then).
    pub serve_flows: bool,
    /// The live cluster view (kept current object by object by the watch).
    pub watch: Option<crate::kube::ClusterWatch>,
    /// New-flow incarnations found in the kernel map without their event (the event
    /// was lost, or is still in the ring buffer: then it is taken back when it comes).
    pub recovered_from_map: u64,
    /// Flows added to the table since the last flush (an early flush bounds them).
    pub new_since_flush: usize,
}

impl State {
    pub fn new(shared: Arc<crate::serve::Shared>, alert_window: Duration) -> Self {
        State {
            comms: BTreeSet::new(),
            audited_pods: HashMap::new(),
            cgroup_prefix: None,
            resolver: None,
            flows: FlowTable::default(),
            idents: HashSet::new(),
            procs: HashMap::new(),
            dns: HashMap::new(),
            dns_capacity: 16384,
            drop_written: HashMap::new(),
            drop_reasons: BTreeMap::new(),
            boot_to_unix_ns: 0,
            summary: Summary::default(),
            cluster: None,
            dedup: crate::alerts::Deduper::new(alert_window),
            alerts_out: AlertSink::Stderr,
            started: Instant::now(),
            shared,
            alertmanager: None,
            node_name: None,
            serve_flows: false,
            watch: None,
            recovered_from_map: 0,
            new_since_flush: 0,
        }
    }

    pub fn reason_name(&self, r: u32) -> String {
        self.drop_reasons
            .get(&r)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{r}"))
    }

    pub fn time(&self, ns: u64) -> Option<String> {
        if ns == 0 {
            return None;
        }
        let unix = ns as i128 + self.boot_to_unix_ns;
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix).ok()?);
        Some(humantime::format_rfc3339_millis(t).to_string())
    }

    /// Whether a flow of this process and cgroup passes `--comm` and `--cgroup`. With
    /// `--comm`, a flow of a pod that runs a named process passes whichever process made
    /// it (the pod is audited, so its sidecars' needs belong in its allowlist).
    fn passes_filters(
        &mut self,
        flow: &Flow,
        comm: Option<&String>,
        thread_comm: Option<&String>,
        cgroup: Option<&String>,
    ) -> bool {
        // The recorder's own connections (the Kubernetes API, Alertmanager) are not audited.
        if flow.tgid == std::process::id() {
            return false;
        }
        if let Some(prefix) = &self.cgroup_prefix {
            let inside = cgroup.is_some_and(|c| {
                c == prefix
                    || c.starts_with(&format!("{}/", prefix.trim_end_matches('/')))
                    || prefix == "/"
            });
            if !inside {
                return false;
            }
        }
        if self.comms.is_empty() {
            return true;
        }
        let by_process = comm.is_some_and(|c| self.comms.contains(c))
            || thread_comm.is_some_and(|c| self.comms.contains(c));
        let Some(pod) = cgroup.and_then(|c| pod_dir(c)).map(str::to_owned) else {
            return by_process;
        };
        if by_process {
            self.pod_audited(&pod);
            return true;
        }
        self.pod_runs_comm(&pod)
    }

    /// Marks a pod audited; the flows of its other processes seen before become kept.
    fn pod_audited(&mut self, pod: &str) {
        let now = Instant::now();
        if let Some(e) = self.audited_pods.get_mut(pod) {
            e.1 = now;
            if e.0 {
                return;
            }
            e.0 = true;
        } else {
            self.bound_pods(now);
            self.audited_pods.insert(pod.to_owned(), (true, now));
        }
        let own = std::process::id();
        let mut kept = 0;
        for e in self.flows.iter_mut() {
            if e.meta.flags & KEEP == 0
                && e.flow.tgid != own
                && e.meta.ident.cgroup.as_deref().and_then(pod_dir) == Some(pod)
            {
                e.meta.flags |= KEEP;
                // Its counters were read but not written while it was left out: all of
                // them are written at the next flush.
                e.meta.written = Default::default();
                kept += 1;
            }
        }
        self.summary.flows += kept;
    }

    /// Whether a pod runs a `--comm` process now (its processes read from the cgroup
    /// tree and /proc, at most once per `POD_RECHECK` while it does not).
    fn pod_runs_comm(&mut self, pod: &str) -> bool {
        let now = Instant::now();
        if let Some((audited, at)) = self.audited_pods.get_mut(pod) {
            if *audited || now.duration_since(*at) < POD_RECHECK {
                *at = if *audited { now } else { *at };
                return *audited;
            }
        }
        let Some(root) = self.resolver.as_ref().map(|r| r.root().to_owned()) else {
            return false;
        };
        let pids = procfs::pids_below(&root.join(pod.trim_start_matches('/')), 256);
        let mut runs = false;
        for pid in pids {
            if let Some(c) = self.proc_info(pid).comm {
                if self.comms.contains(&c) {
                    runs = true;
                    break;
                }
            }
        }
        if runs {
            self.pod_audited(pod);
        } else {
            self.bound_pods(now);
            self.audited_pods.insert(pod.to_owned(), (false, now));
        }
        runs
    }

    /// Keeps the pod memory bounded: past `PODS_MAX`, pods not seen for a while go.
    fn bound_pods(&mut self, now: Instant) {
        if self.audited_pods.len() >= PODS_MAX {
            self.audited_pods
                .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(3600));
            if self.audited_pods.len() >= PODS_MAX {
                self.audited_pods.clear();
            }
        }
    }

    /// A process's name and executable, read from /proc once per `PROC_TTL` (a process
    /// making thousands of new flows a second is read once, not once per flow).
    fn proc_info(&mut self, pid: u32) -> procfs::ProcInfo {
        let now = Instant::now();
        if let Some((info, at)) = self.procs.get(&pid) {
            if now.duration_since(*at) < PROC_TTL {
                return info.clone();
            }
        }
        let info = procfs::proc_info(pid);
        if self.procs.len() >= PROCS_MAX {
            self.procs
                .retain(|_, (_, at)| now.duration_since(*at) < PROC_TTL);
            if self.procs.len() >= PROCS_MAX {
                self.procs.clear();
            }
        }
        self.procs.insert(pid, (info.clone(), now));
        info
    }

    /// The shared identity equal to `ident`.
    fn intern(&mut self, ident: Ident) -> Arc<Ident> {
        match self.idents.get(&ident) {
            Some(i) => i.clone(),
            None => {
                let i = Arc::new(ident);
                self.idents.insert(i.clone());
                i
            }
        }
    }

    /// The flow's index in the table, adding it (named from /proc, filtered) when it is
    /// new; `thread_comm` (the kernel's thread name) is only asked for then.
    /// `src_port` is the peer's port of an inbound flow (its accepted socket is found by
    /// its 4-tuple when the listener is gone).
    pub fn meta_for(
        &mut self,
        flow: &Flow,
        src_port: u16,
        thread_comm: impl FnOnce() -> Option<String>,
    ) -> u32 {
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
                    (src_port != 0).then_some((flow.src_ip, src_port)),
                );
            }
        }
        let info = self.proc_info(pid.unwrap_or(0));
        let thread_comm = thread_comm().filter(|t| !t.is_empty());
        let comm = info.comm.clone().or_else(|| thread_comm.clone());
        let keep = self.passes_filters(flow, comm.as_ref(), thread_comm.as_ref(), cgroup.as_ref());
        let thread_comm = thread_comm.filter(|t| Some(t) != comm.as_ref());
        let ident = self.intern(Ident {
            pid,
            comm,
            thread_comm,
            exe: info.exe,
            cgroup,
        });
        if keep {
            self.summary.flows += 1;
        }
        self.new_since_flush += 1;
        self.flows.insert(
            *flow,
            Meta {
                ident,
                flags: if keep { KEEP } else { 0 },
                ..Default::default()
            },
        )
    }

    /// A new incarnation of flow `i` (its kernel entry started at `first_seen_ns`):
    /// counters start from zero, and it is written even if the map evicts it again.
    pub fn new_incarnation(&mut self, i: u32, first_seen_ns: u64) {
        let m = self.flows.meta_mut(i);
        if m.incarnation_ns != 0 && m.flags & WRITTEN != 0 {
            // The previous entry was evicted by the kernel's LRU: what it counted since
            // the last flush is lost.
            self.summary.flow_map_evictions += 1;
        }
        m.incarnation_ns = first_seen_ns;
        m.written = Default::default();
        m.flags &= !WRITTEN;
        if m.first_seen_ns == 0 {
            m.first_seen_ns = first_seen_ns;
        }
        m.last_seen_ns = m.last_seen_ns.max(first_seen_ns);
    }

    /// Takes the live cluster view: the watch keeps it current object by object (a
    /// rejected object keeps its previous version). Our reference is dropped first, so
    /// pending changes are applied in place instead of copying the engine.
    pub fn refresh_cluster(&mut self) {
        let Some(w) = &self.watch else { return };
        self.shared
            .cluster_ready
            .store(w.healthy(), std::sync::atomic::Ordering::Relaxed);
        let was_synced = self.cluster.is_some();
        self.cluster = None;
        self.cluster = w.cluster();
        self.shared
            .cluster_cached
            .store(self.cluster.is_some(), std::sync::atomic::Ordering::Relaxed);
        if let (false, Some(c)) = (was_synced, &self.cluster) {
            tracing::info!(pods = c.engine.pods().len(), policies = c.engine.policies().len(), "cluster view synced: flows are attributed to pods and evaluated against the policies");
        }
    }

    /// The pod address of a flow's cgroup, when the cluster is known.
    pub fn pod_ip_of(&self, f: &Flow) -> Option<IpAddr> {
        let c = self.cluster.as_ref()?;
        let path = self.flows.meta_of(f)?.ident.cgroup.as_ref()?;
        let id = c.pod_of_cgroup(path)?;
        c.engine.pods()[id].ips.first().copied()
    }

    /// Pod identities and the live verdict of a record; fills an unbound source address
    /// with the pod's.
    pub fn enrich(&self, flow: &Flow, r: &mut FlowRecord) -> Option<String> {
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
    pub fn count_metrics(&mut self, i: u32, flow: &Flow, r: &FlowRecord, verdict: Option<&str>) {
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
                    namespace: namespace.clone(),
                    workload: workload.clone(),
                })
                .inc_by(r.timed_out);
        }
        // Once per flow: the kernel stopped a flow every policy of the view allows.
        let allowed = verdict.is_some_and(|v| !v.starts_with("denied"));
        let mut facts = crate::observed::Facts::default();
        facts.add(r);
        if facts.finding(allowed) == Some(crate::observed::Finding::BlockedAlthoughAllowed)
            && self.flows.meta_mut(i).flags & BLOCKED_COUNTED == 0
        {
            self.flows.meta_mut(i).flags |= BLOCKED_COUNTED;
            m.blocked_although_allowed
                .get_or_create(&crate::serve::WorkloadLabels {
                    namespace,
                    workload,
                })
                .inc();
        }
    }

    /// The DNS name a flow's destination was asked by, pinned on the flow when found.
    pub fn dns_name_of(&mut self, i: u32) -> Option<Arc<DnsNames>> {
        let e = self.flows.entry(i);
        if e.flow.direction != Direction::Egress {
            return None;
        }
        if let Some(n) = &e.meta.dns_name {
            return Some(n.clone());
        }
        let f = e.flow;
        let name = self
            .dns
            .get(&(f.cgroup_id, f.dst_ip))
            .or_else(|| self.dns.get(&(0, f.dst_ip)))
            .map(|d| d.name.clone())?;
        self.flows.meta_mut(i).dns_name = Some(name.clone());
        Some(name)
    }

    fn learn_dns(&mut self, cgroup_id: u64, answer: &dns::DnsAnswer) {
        let now = Instant::now();
        let name = Arc::new(DnsNames {
            query: answer.query.clone(),
            cnames: answer.cnames.clone(),
        });
        for (addr, ttl) in &answer.addrs {
            let expires = now + Duration::from_secs(u64::from(*ttl)).max(DNS_MIN_KEEP);
            for key in [(cgroup_id, *addr), (0, *addr)] {
                self.dns.insert(
                    key,
                    DnsName {
                        name: name.clone(),
                        expires,
                    },
                );
            }
        }
        if self.dns.len() > self.dns_capacity {
            self.expire_dns(now);
        }
    }

    /// Drops expired names; past the capacity, the names closest to expiry go first.
    pub fn expire_dns(&mut self, now: Instant) {
        self.dns.retain(|_, d| d.expires > now);
        if self.dns.len() > self.dns_capacity {
            let mut by_expiry: Vec<Instant> = self.dns.values().map(|d| d.expires).collect();
            by_expiry.sort_unstable();
            let cut = by_expiry[self.dns.len() - self.dns_capacity];
            self.dns.retain(|_, d| d.expires > cut);
        }
    }

    #[cfg(test)]
    pub fn dns_len(&self) -> usize {
        self.dns.len()
    }

    pub fn on_event(&mut self, ev: Event) {
        match ev {
            Event::NewFlow(fe) | Event::Outcome(fe) => {
                let i = self.meta_for(&fe.flow, fe.src_port, || Some(fe.comm.clone()));
                if fe.kind == abi::EVENT_NEW_FLOW {
                    let m = self.flows.meta_mut(i);
                    if m.incarnation_ns == fe.ts_ns && m.flags & FROM_MAP != 0 {
                        // The map scan counted this incarnation as recovered; its event
                        // was only late, not lost.
                        m.flags &= !FROM_MAP;
                        self.recovered_from_map = self.recovered_from_map.saturating_sub(1);
                    } else if m.incarnation_ns != fe.ts_ns {
                        self.new_incarnation(i, fe.ts_ns);
                        let m = self.flows.meta_mut(i);
                        m.flags &= !FROM_MAP;
                        if let Some(st) = fe.state {
                            m.state = state_code(st);
                        }
                    }
                }
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
                    self.learn_dns(d.cgroup_id, &a);
                    tracing::debug!(query = a.query, answers = a.addrs.len(), cnames = ?a.cnames, "DNS answer");
                }
                Err(e) => tracing::debug!(error = %e, server = %d.server, "unparsable DNS answer"),
            },
        }
    }

    /// Frees identities no flow uses any more.
    pub fn free_idents(&mut self) {
        self.idents.retain(|i| Arc::strong_count(i) > 1);
    }
}

/// The kernel's code for a decoded state (for flows written from their event).
fn state_code(s: FlowState) -> u8 {
    match s {
        FlowState::Connecting | FlowState::Dropped => abi::STATE_CONNECTING,
        FlowState::Established => abi::STATE_ESTABLISHED,
        FlowState::Refused => abi::STATE_REFUSED,
        FlowState::TimedOut => abi::STATE_TIMED_OUT,
        FlowState::Accepted => abi::STATE_ACCEPTED,
        FlowState::Error => abi::STATE_ERROR,
        FlowState::Sent => abi::STATE_SENT,
    }
}

/// Drop attribution through an index of the flows by (protocol, address, port) they
/// talk to (and the backends of a Service address), built once per flush that has new
/// drops: O(flows + drops) instead of O(flows x drops).
pub struct DropIndex {
    by_peer: HashMap<(Protocol, IpAddr, u16), Vec<u32>>,
}

impl DropIndex {
    /// The index of the flows that talk to an endpoint of one of `drops` (so its size
    /// follows the drops of one flush, not the flows in memory).
    pub fn build<'a>(state: &State, drops: impl IntoIterator<Item = &'a decode::Drop>) -> Self {
        let mut by_peer: HashMap<(Protocol, IpAddr, u16), Vec<u32>> = HashMap::new();
        for d in drops {
            if let (Some((s, sp, dst, dp)), Some(proto)) = (d.tuple, d.protocol) {
                by_peer.entry((proto, dst, dp)).or_default();
                by_peer.entry((proto, s, sp)).or_default();
            }
        }
        if by_peer.is_empty() {
            return Self { by_peer };
        }
        for (i, e) in state.flows.iter() {
            let f = &e.flow;
            if let Some(v) = by_peer.get_mut(&(f.protocol, f.dst_ip, f.dst_port)) {
                v.push(i);
            }
            if f.direction == Direction::Egress {
                if let Some(c) = &state.cluster {
                    for (ip, port) in c.backends(f.dst_ip, f.dst_port, f.protocol) {
                        if let Some(v) = by_peer.get_mut(&(f.protocol, ip, port)) {
                            v.push(i);
                        }
                    }
                }
            }
        }
        Self { by_peer }
    }

    /// Finds the flow a dropped packet belongs to: an outgoing packet of an egress
    /// flow, an incoming request of an ingress flow, or a reply to an egress flow.
    pub fn attribute(&self, state: &State, d: &decode::Drop) -> Option<u32> {
        let (s, sp, dst, dp) = d.tuple?;
        let proto = d.protocol?;
        let mut best: Option<(u32, (bool, u64))> = None;
        let candidates = self
            .by_peer
            .get(&(proto, dst, dp))
            .into_iter()
            .chain(self.by_peer.get(&(proto, s, sp)))
            .flatten();
        for &i in candidates {
            let e = state.flows.entry(i);
            let f = &e.flow;
            let backends = state
                .cluster
                .as_ref()
                .map(|c| c.backends(f.dst_ip, f.dst_port, f.protocol))
                .unwrap_or_default();
            let src_ok = |ip: &IpAddr| {
                f.src_ip == *ip
                    || f.src_ip.is_unspecified()
                    || state.pod_ip_of(f).is_some_and(|p| p == *ip)
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
                if best.is_none_or(|(b, bs)| {
                    score > bs || (score == bs && *f < state.flows.entry(b).flow)
                }) {
                    best = Some((i, score));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

impl State {
    pub fn send_alerts(&mut self, alerts: Vec<crate::alerts::Alert>) {
        if let (Some(d), false) = (&self.alertmanager, alerts.is_empty()) {
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
            d.enqueue(body);
        }
        for a in alerts {
            self.summary.alerts += 1;
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
                    let line = serde_json::to_string(&a).unwrap_or_default();
                    if let Err(e) = writeln!(f, "{line}") {
                        tracing::error!(path = %path.display(), error = %e, "cannot write alert");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut s = State::new(crate::serve::Shared::new(10), Duration::from_secs(60));
        let eg = flow(Direction::Egress, "10.0.0.1", "10.0.0.2", 80);
        let ing = flow(Direction::Ingress, "10.0.0.9", "10.0.0.1", 8080);
        let eg_i = s.flows.insert(eg, Meta::default());
        let ing_i = s.flows.insert(ing, Meta::default());
        let d = |a: &str, ap, b: &str, bp| decode::Drop {
            reason: 12,
            protocol: Some(Protocol::Tcp),
            tuple: Some((a.parse().unwrap(), ap, b.parse().unwrap(), bp)),
        };
        let drops = [
            (d("10.0.0.1", 40000, "10.0.0.2", 80), Some(eg_i)),
            (d("10.0.0.2", 80, "10.0.0.1", 40000), Some(eg_i)),
            (d("10.0.0.9", 5000, "10.0.0.1", 8080), Some(ing_i)),
            (d("10.0.0.9", 5000, "10.0.0.1", 9999), None),
        ];
        let idx = DropIndex::build(&s, drops.iter().map(|(d, _)| d));
        for (d, want) in &drops {
            assert_eq!(idx.attribute(&s, d), *want, "{d:?}");
        }
        // The index holds only the endpoints of the drops asked about.
        let one = DropIndex::build(&s, [&drops[2].0]);
        assert_eq!(one.attribute(&s, &drops[2].0), Some(ing_i));
        assert_eq!(one.attribute(&s, &drops[0].0), None, "not indexed");
        assert_eq!(one.by_peer.len(), 2);
    }

    /// Issue 15 point 6: `--comm` chooses pods. A sidecar's flow in a pod whose other
    /// container runs the named process is kept (also one seen before the pod was known
    /// to be audited); a pod without it and a plain cgroup keep only named processes.
    #[test]
    fn comm_audits_pods_and_keeps_their_sidecars_flows() {
        let root = std::env::temp_dir().join(format!("auditor-podcomm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pod = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f3c2a1e_8b7d_4c6a_9e5f_1a2b3c4d5e6f.slice";
        let other = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f3c2a1e_8b7d_4c6a_9e5f_1a2b3c4d5e6f.slice";
        let ctr =
            |p: &str, c: char| format!("{p}/cri-containerd-{}.scope", c.to_string().repeat(64));
        for d in [ctr(pod, 'a'), ctr(pod, 'b'), ctr(other, 'c')] {
            std::fs::create_dir_all(root.join(d.trim_start_matches('/'))).unwrap();
        }
        // The test process stands in for ffmpeg in container a of the first pod.
        let me = std::process::id();
        std::fs::write(
            root.join(ctr(pod, 'a').trim_start_matches('/'))
                .join("cgroup.procs"),
            format!("{me}\n"),
        )
        .unwrap();
        let my_comm = procfs::proc_info(me).comm.unwrap();
        let mut s = State::new(crate::serve::Shared::new(10), Duration::from_secs(60));
        s.resolver = Some(procfs::CgroupResolver::new(root.clone()));
        s.comms = BTreeSet::from([my_comm.clone()]);
        let mut f = flow(Direction::Egress, "10.0.0.1", "10.0.0.2", 80);
        f.tgid = 4_000_000;
        let curl = Some("curl".to_owned());
        // A sidecar flow recorded (not kept) before anything is known of its pod.
        let early = s.flows.insert(
            f,
            Meta {
                ident: Arc::new(Ident {
                    pid: Some(4_000_000),
                    comm: curl.clone(),
                    cgroup: Some(ctr(pod, 'b')),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        assert!(
            s.passes_filters(&f, curl.as_ref(), None, Some(&ctr(pod, 'b'))),
            "sidecar of an audited pod"
        );
        assert!(
            s.flows.entry(early).meta.keep(),
            "the earlier sidecar flow is kept too"
        );
        assert_eq!(s.summary.flows, 1);
        assert!(
            !s.passes_filters(&f, curl.as_ref(), None, Some(&ctr(other, 'c'))),
            "a pod without the process"
        );
        assert!(
            !s.passes_filters(
                &f,
                curl.as_ref(),
                None,
                Some(&"/system.slice/cron.service".to_owned())
            ),
            "not a pod: by process"
        );
        assert!(s.passes_filters(
            &f,
            Some(&my_comm),
            None,
            Some(&"/system.slice/cron.service".to_owned())
        ));
        assert_eq!(pod_dir(&ctr(pod, 'b')), Some(pod));
        assert_eq!(pod_dir(pod), Some(pod));
        assert_eq!(pod_dir("/system.slice/cron.service"), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_flow_keeps_the_asked_name_and_its_cname_chain() {
        let mut s = State::new(crate::serve::Shared::new(10), Duration::from_secs(60));
        s.learn_dns(
            7,
            &dns::DnsAnswer {
                query: "cdn.media.test".into(),
                cnames: vec![
                    "media.cdn-provider.test".into(),
                    "edge7.cdn-provider.test".into(),
                ],
                addrs: vec![("10.0.0.2".parse().unwrap(), 30)],
            },
        );
        let mut f = flow(Direction::Egress, "10.0.0.1", "10.0.0.2", 80);
        f.cgroup_id = 7;
        let i = s.flows.insert(f, Meta::default());
        let n = s.dns_name_of(i).expect("named");
        assert_eq!(n.query, "cdn.media.test");
        assert_eq!(
            n.cnames,
            ["media.cdn-provider.test", "edge7.cdn-provider.test"]
        );
        // Pinned on the flow: a later answer for the address does not rename it.
        s.learn_dns(
            7,
            &dns::DnsAnswer {
                query: "other.test".into(),
                cnames: vec![],
                addrs: vec![("10.0.0.2".parse().unwrap(), 30)],
            },
        );
        assert_eq!(s.dns_name_of(i).unwrap().query, "cdn.media.test");
    }

    #[test]
    fn dns_cache_is_bounded_and_expires() {
        let mut s = State::new(crate::serve::Shared::new(10), Duration::from_secs(60));
        s.dns_capacity = 100;
        for i in 0..1000u32 {
            let a = dns::DnsAnswer {
                query: format!("host{i}.example"),
                cnames: vec![],
                addrs: vec![(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), 30)],
            };
            s.learn_dns(7, &a);
            assert!(s.dns_len() <= 100, "{}", s.dns_len());
        }
        // The newest name is still known.
        assert!(s
            .dns
            .contains_key(&(7, IpAddr::from((0x0a00_0000u32 + 999).to_be_bytes()))));
        s.expire_dns(Instant::now() + Duration::from_secs(61));
        assert_eq!(s.dns_len(), 0, "expired after max(TTL, 60 s)");
    }
}
