//! `auditor drill`: block one dependency of one workload for a bounded time, in staging,
//! and say whether the pipeline degraded gracefully.
//!
//! - plan.rs: what to block (peers, ports) and how the outcome is judged (pure);
//! - kernel.rs: the drill's own eBPF object, attached to the target pods' cgroups only.
//!
//! Node-local: the drill runs on the node of the target pods, as root (or with the
//! agent's capabilities), next to or without a recorder. The recorder never blocks
//! anything; only a drill does, only what it was asked to, only for as long as asked.

pub mod kernel;
pub mod plan;
pub mod summary;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attribute::{parse_cgroup_path, CgroupOwner};
use crate::cluster;
use crate::flowlog::Protocol;
use crate::policy::Engine;
use crate::procfs;
use plan::{Direction, Evidence, Outcome, PeerSpec, Rule};

/// No drill lasts longer than this, whatever `--max-duration` says.
pub const HARD_MAX: Duration = Duration::from_secs(3600);

/// Block one dependency of one workload for a bounded time and watch what it does.
///
/// The block is a cgroup program attached only to the target pods' cgroups on this node,
/// through links this process owns (never pinned): it ends after --duration (the kernel
/// itself stops dropping then, even if this process hangs), on Ctrl-C, and when this
/// process dies. Before the block, --baseline watches the target's traffic to the peer;
/// after it, --observe watches whether it comes back. Then the drill says whether the
/// pipeline degraded gracefully (its processes kept running and it talked to the peer again
/// within --recover-within), failed, or was not tested (nothing went to the peer while it
/// was blocked).
///
/// Without --i-mean-it it prints what it would block and exits 2.
///
/// Exit codes: 0 graceful, 1 failed, 3 untested, 2 bad input or refused, 130 interrupted.
///
/// Examples:
///   sudo auditor drill --cluster cluster.yaml --pod media/packager-0 --peer svc/media/cdn --duration 5s --i-mean-it
///   sudo auditor drill --cluster cluster.yaml -n media -l app=transcoder --peer 203.0.113.0/24 --port 443 --protocol tcp --duration 30s --i-mean-it
///   sudo auditor drill --target-cgroup /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice --peer 10.96.0.50 --duration 10s --i-mean-it -o json --output drill.json
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DrillArgs {
    /// Cluster snapshot (as for diff) to resolve --pod, -l, --workload and svc/ or pod/ peers.
    ///
    /// Example: --cluster cluster.yaml
    #[arg(long, value_name = "SNAPSHOT")]
    pub cluster: Option<PathBuf>,
    /// Target pod, NAMESPACE/NAME (repeatable).
    ///
    /// Example: --pod media/packager-0
    #[arg(long = "pod", value_name = "NAMESPACE/NAME")]
    pub pods: Vec<String>,
    /// Target workload, NAMESPACE/NAME: its pods (a Deployment, StatefulSet, DaemonSet, Job
    /// or bare pod of that name).
    ///
    /// Example: --workload media/transcoder
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub workload: Option<String>,
    /// Target pods of this namespace, with -l.
    ///
    /// Example: -n media
    #[arg(long, short = 'n', value_name = "NAMESPACE", requires = "selector")]
    pub namespace: Option<String>,
    /// Target pods whose labels match this selector (kubectl syntax), with -n.
    ///
    /// Example: -l app=transcoder
    #[arg(long, short = 'l', value_name = "SELECTOR", requires = "namespace")]
    pub selector: Option<String>,
    /// Target cgroup, a pod's cgroup directory (repeatable), as the flow log prints
    /// cgroups or under the cgroup v2 mount; no snapshot needed.
    ///
    /// Example: --target-cgroup /kubepods.slice/kubepods-pod0e5c...slice
    #[arg(long = "target-cgroup", value_name = "DIR")]
    pub target_cgroups: Vec<PathBuf>,
    /// The audited subtree (as `record --cgroup`): targets outside it are refused.
    /// Default: the whole cgroup v2 hierarchy.
    ///
    /// Example: --cgroup /kubepods.slice
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// The dependency to block (repeatable): an IP, a CIDR, svc/NAMESPACE/NAME (its
    /// ClusterIPs, external and LoadBalancer IPs, and backends, on its ports) or
    /// pod/NAMESPACE/NAME (its IPs).
    ///
    /// Example: --peer svc/media/cdn
    #[arg(long = "peer", value_name = "PEER", required = true)]
    pub peers: Vec<String>,
    /// Only this port of the peer, or a range N-M (the destination port on egress, the
    /// source port on ingress); TCP and UDP unless --protocol says which.
    ///
    /// Example: --port 443
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Only this protocol.
    ///
    /// Example: --protocol udp
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Which packets: from the target to the peer (egress), from the peer (ingress), both.
    ///
    /// Example: --direction both
    #[arg(long, value_enum, default_value_t = Direction::Egress)]
    pub direction: Direction,
    /// How long the block holds.
    ///
    /// Example: --duration 5s
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Refuse a --duration longer than this (at most 1h).
    ///
    /// Example: --max-duration 2m
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub max_duration: Duration,
    /// Watch the target's traffic this long before the block begins.
    ///
    /// Example: --baseline 2s
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub baseline: Duration,
    /// Watch this long after the release for the target to come back.
    ///
    /// Example: --observe 30s
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub observe: Duration,
    /// Graceful only if traffic to the peer resumed within this time after the release.
    ///
    /// Example: --recover-within 5s
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub recover_within: Duration,
    /// Confirm that real traffic is to be blocked.
    #[arg(long)]
    pub i_mean_it: bool,
    /// Output format of the result, as kubectl's `-o`.
    ///
    /// Example: -o json
    #[arg(long, short = 'o', alias = "output-format", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the result to this file instead of stdout.
    ///
    /// Example: --output drill.json
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("not blocking anything without --i-mean-it. The drill would block, for {duration}:\n{plan}\nAdd --i-mean-it to run it")]
    NotConfirmed { duration: String, plan: String },
    #[error("--duration {duration} is longer than --max-duration {max}")]
    TooLong { duration: String, max: String },
    #[error("--max-duration {0} is longer than the drill's hard limit of 1h")]
    OverHardMax(String),
    #[error("--duration must be more than 0")]
    ZeroDuration,
    #[error("--peer {input:?}: {message}")]
    Peer { input: String, message: String },
    #[error("--port {0}")]
    Port(String),
    #[error("{flag} needs --cluster (a snapshot to find {what} in)")]
    NeedsCluster { flag: String, what: &'static str },
    #[error("no target: give --pod, --workload, -n with -l, or --target-cgroup")]
    NoTarget,
    #[error("{path}: {message}")]
    Target { path: String, message: String },
    #[error("--target-cgroup {path}: {message}")]
    TargetCgroup { path: String, message: String },
    #[error("-l {input:?}: {message} (expected a label selector, e.g. app=ffmpeg,tier in (worker,edge),!canary)")]
    Selector { input: String, message: String },
    #[error("the peers give {n} rules ({rules}), more than the drill's {max}: name fewer peers or one --port/--protocol")]
    TooManyRules { n: usize, max: u32, rules: String },
    #[error("no cgroup v2 mount: the drill attaches cgroup programs")]
    NoCgroup2,
    #[error("{0}")]
    Kernel(String),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("{path}")]
    Policy {
        path: PathBuf,
        #[source]
        source: crate::policy::PolicyError,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A target pod cgroup on this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// `namespace/name` when the snapshot knows it, else the pod UID.
    pub pod: String,
    /// From the cgroup v2 root, as the flow log prints cgroups.
    pub cgroup: String,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// What the drill did and saw; times in milliseconds from the start of the block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub outcome: Outcome,
    pub why: String,
    pub targets: Vec<Target>,
    /// Pods the selection named that have no cgroup on this node.
    pub not_on_this_node: Vec<String>,
    pub rules: Vec<RuleReport>,
    pub direction: Direction,
    pub duration_ms: u64,
    pub baseline_ms: u64,
    pub observe_ms: u64,
    pub recover_within_ms: u64,
    /// The block was ended early by a signal.
    pub interrupted: bool,
    pub traffic: Traffic,
    /// Peers no rule matched that the target sent to after the block began: where it fell back to.
    pub other_peers: Vec<OtherPeer>,
    pub processes: Processes,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets to (or from) the peer before the block: whether the dependency was in use.
    pub before_packets: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Dropped TCP SYNs: connection attempts, the first and the retries.
    pub dropped_connection_attempts: u64,
    pub first_drop_ms: Option<u64>,
    pub last_drop_ms: Option<u64>,
    pub after_packets: u64,
    pub after_bytes: u64,
    /// New TCP connections to the peer after the release.
    pub connections_after: u64,
    /// From the release to the first packet to the peer that passed.
    pub resumed_after_release_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleReport {
    pub peer: String,
    pub rule: String,
    pub dropped_packets: u64,
    pub after_packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct OtherPeer {
    pub peer: String,
    pub packets: u64,
    pub first_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Processes {
    /// `pid (comm)` of the processes in the target cgroups when the block began.
    pub at_start: Vec<String>,
    /// Those gone at the end.
    pub exited: Vec<String>,
    /// Processes at the end that were not there at the start (restarts).
    pub new: Vec<String>,
}

/// Runs `auditor drill`; returns the exit code.
pub async fn run(args: &DrillArgs) -> Result<u8, DrillError> {
    let prepared = prepare(args)?;
    if !args.i_mean_it {
        return Err(DrillError::NotConfirmed {
            duration: humantime::format_duration(args.duration).to_string(),
            plan: prepared.describe(args.direction),
        });
    }
    let report = execute(args, prepared).await?;
    let text = match args.format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report).expect("a drill report serializes");
            s.push('\n');
            s
        }
        Format::Text => render_text(&report),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).map_err(|source| DrillError::Write {
            path: path.clone(),
            source,
        })?,
        None => print!("{text}"),
    }
    Ok(if report.interrupted {
        130
    } else {
        report.outcome.exit_code()
    })
}

/// Everything checked and resolved, nothing attached yet.
#[derive(Debug)]
pub struct Prepared {
    pub targets: Vec<Target>,
    pub not_on_this_node: Vec<String>,
    pub rules: Vec<Rule>,
}

impl Prepared {
    pub fn describe(&self, direction: Direction) -> String {
        let mut s = String::new();
        let way = match direction {
            Direction::Egress => "packets from the target to",
            Direction::Ingress => "packets to the target from",
            Direction::Both => "packets between the target and",
        };
        for r in &self.rules {
            s.push_str(&format!("  {way} {} (--peer {})\n", r.describe(), r.peer));
        }
        s.push_str("  in the cgroups of\n");
        for t in &self.targets {
            s.push_str(&format!("    {} ({})\n", t.pod, t.cgroup));
        }
        for p in &self.not_on_this_node {
            s.push_str(&format!("  (not on this node, not blocked: {p})\n"));
        }
        s.trim_end().to_owned()
    }
}

/// Checks the arguments and resolves targets and rules, without touching the kernel.
pub fn prepare(args: &DrillArgs) -> Result<Prepared, DrillError> {
    if args.max_duration > HARD_MAX {
        return Err(DrillError::OverHardMax(
            humantime::format_duration(args.max_duration).to_string(),
        ));
    }
    if args.duration.is_zero() {
        return Err(DrillError::ZeroDuration);
    }
    if args.duration > args.max_duration {
        return Err(DrillError::TooLong {
            duration: humantime::format_duration(args.duration).to_string(),
            max: humantime::format_duration(args.max_duration).to_string(),
        });
    }
    let peers = args
        .peers
        .iter()
        .map(|p| {
            PeerSpec::parse(p).map_err(|message| DrillError::Peer {
                input: p.clone(),
                message,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = args
        .port
        .as_deref()
        .map(plan::parse_ports)
        .transpose()
        .map_err(DrillError::Port)?;
    let protocol = args.protocol.map(|p| match p {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Udp => Protocol::Udp,
    });
    let by_pod = !args.pods.is_empty() || args.workload.is_some() || args.selector.is_some();
    if !by_pod && args.target_cgroups.is_empty() {
        return Err(DrillError::NoTarget);
    }
    let engine = match &args.cluster {
        Some(path) => {
            let snap = cluster::read_snapshot(path)?;
            cluster::require_pods(path, &snap)?;
            Some(Engine::build(&snap).map_err(|source| DrillError::Policy {
                path: path.clone(),
                source,
            })?)
        }
        None => {
            let flag = if let Some(p) = peers.iter().find(|p| p.needs_cluster()) {
                format!("--peer {p}")
            } else if !args.pods.is_empty() {
                "--pod".to_owned()
            } else if args.workload.is_some() {
                "--workload".to_owned()
            } else if args.selector.is_some() {
                "-l".to_owned()
            } else {
                String::new()
            };
            if !flag.is_empty() {
                return Err(DrillError::NeedsCluster {
                    flag,
                    what: "pods and services",
                });
            }
            None
        }
    };
    let rules = plan::rules(&peers, engine.as_ref(), ports, protocol).map_err(|message| {
        DrillError::Peer {
            input: args.peers.join(" "),
            message,
        }
    })?;
    if rules.len() > auditor_ebpf::DRILL_MAX_RULES as usize {
        return Err(DrillError::TooManyRules {
            n: rules.len(),
            max: auditor_ebpf::DRILL_MAX_RULES,
            rules: rules
                .iter()
                .map(Rule::describe)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let root = procfs::cgroup2_mount().ok_or(DrillError::NoCgroup2)?;
    let (scope_dir, scope) = match &args.cgroup {
        Some(cg) => procfs::cgroup_dir(&root, cg).ok_or_else(|| DrillError::TargetCgroup {
            path: cg.display().to_string(),
            message: format!(
                "--cgroup is not a cgroup v2 directory (cgroup v2 is mounted at {})",
                root.display()
            ),
        })?,
        None => (root.clone(), "/".to_owned()),
    };
    let mut targets = BTreeSet::new();
    let mut not_on_this_node = Vec::new();
    for cg in &args.target_cgroups {
        let bad = |message: String| DrillError::TargetCgroup {
            path: cg.display().to_string(),
            message,
        };
        let (dir, rel) = procfs::cgroup_dir(&root, cg).ok_or_else(|| {
            bad(format!(
                "not a cgroup v2 directory (cgroup v2 is mounted at {})",
                root.display()
            ))
        })?;
        let owner = parse_cgroup_path(&rel).map_err(|e| bad(e.to_string()))?;
        let Some(CgroupOwner::Pod(pod)) = owner else {
            return Err(bad("not a pod's cgroup (no kubepods pod<uid> segment): the drill only blocks audited pods".into()));
        };
        let name = engine
            .as_ref()
            .and_then(|e| {
                e.pods()
                    .iter()
                    .find(|p| p.uid() == Some(pod.uid.as_str()))
                    .map(|p| format!("{}/{}", p.namespace, p.name))
            })
            .unwrap_or(pod.uid.clone());
        targets.insert(Target {
            pod: name,
            cgroup: rel,
            dir,
        });
    }
    if by_pod {
        let engine = engine.as_ref().expect("checked above: pods need --cluster");
        let path = args.cluster.as_ref().expect("engine implies --cluster");
        let selected = select_pods(args, engine, path)?;
        let found = pod_cgroups(&root, &scope_dir);
        for (uid, name) in selected {
            match found.get(&uid) {
                Some((dir, rel)) => {
                    targets.insert(Target {
                        pod: name,
                        cgroup: rel.clone(),
                        dir: dir.clone(),
                    });
                }
                None => not_on_this_node.push(name),
            }
        }
        if targets.is_empty() {
            return Err(DrillError::Target {
                path: path.display().to_string(),
                message: format!(
                    "none of the selected pods ({}) has a cgroup on this node under {}",
                    not_on_this_node.join(", "),
                    scope_dir.display()
                ),
            });
        }
    }
    for t in &targets {
        if !(scope == "/" || t.cgroup == scope || t.cgroup.starts_with(&format!("{scope}/"))) {
            return Err(DrillError::TargetCgroup {
                path: t.cgroup.clone(),
                message: format!("outside the audited subtree --cgroup {scope}: the drill only blocks audited pods"),
            });
        }
    }
    Ok(Prepared {
        targets: targets.into_iter().collect(),
        not_on_this_node,
        rules,
    })
}

/// The pods `--pod`, `--workload` and `-n`/`-l` select: (uid, namespace/name), live pods only.
fn select_pods(
    args: &DrillArgs,
    engine: &Engine,
    path: &Path,
) -> Result<Vec<(String, String)>, DrillError> {
    let target = |message: String| DrillError::Target {
        path: path.display().to_string(),
        message,
    };
    let mut out = BTreeMap::new();
    let mut take = |p: &crate::policy::PodInfo| -> Result<(), DrillError> {
        let uid = p.uid().ok_or_else(|| {
            target(format!(
                "Pod {}/{}: field metadata.uid: missing; the drill finds a pod's cgroup by its UID",
                p.namespace, p.name
            ))
        })?;
        out.insert(uid.to_owned(), format!("{}/{}", p.namespace, p.name));
        Ok(())
    };
    let split = |flag: &str, s: &str| -> Result<(String, String), DrillError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_owned(), name.to_owned()))
            }
            _ => Err(target(format!("{flag} {s:?}: expected NAMESPACE/NAME"))),
        }
    };
    let live = || engine.pods().iter().filter(|p| p.is_live());
    for s in &args.pods {
        let (ns, name) = split("--pod", s)?;
        let pod = live()
            .find(|p| p.namespace == ns && p.name == name)
            .ok_or_else(|| {
                target(format!(
                    "--pod {s}: no running pod {ns}/{name} in the snapshot"
                ))
            })?;
        take(pod)?;
    }
    if let Some(w) = &args.workload {
        let (ns, name) = split("--workload", w)?;
        let mut any = false;
        for p in live()
            .filter(|p| p.namespace == ns && p.workload.rsplit('/').next() == Some(name.as_str()))
        {
            take(p)?;
            any = true;
        }
        if !any {
            return Err(target(format!(
                "--workload {w}: no running pod of a workload {name} in namespace {ns}"
            )));
        }
    }
    if let (Some(ns), Some(sel)) = (&args.namespace, &args.selector) {
        let bad = |message: String| DrillError::Selector {
            input: sel.clone(),
            message,
        };
        let compiled = crate::policy::selector::Selector::from_kubectl(sel).map_err(bad)?;
        let mut any = false;
        for p in live().filter(|p| &p.namespace == ns && compiled.matches(&p.labels)) {
            take(p)?;
            any = true;
        }
        if !any {
            return Err(target(format!("-n {ns} -l {sel}: no running pod matches")));
        }
    }
    Ok(out.into_iter().collect())
}

/// Pod-level cgroups under `scope`: pod UID -> (directory, path from the v2 root).
fn pod_cgroups(root: &Path, scope: &Path) -> BTreeMap<String, (PathBuf, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(scope.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = format!("/{}", rel.display());
            match parse_cgroup_path(&rel) {
                Ok(Some(CgroupOwner::Pod(p))) if p.container.is_none() => {
                    out.entry(p.uid).or_insert((path, rel));
                }
                // A container below a pod already found, or something to look into.
                Ok(Some(CgroupOwner::Pod(_))) => {}
                _ if depth < 8 => stack.push((path, depth + 1)),
                _ => {}
            }
        }
    }
    out
}

/// `pid (comm)` of every process in the cgroups and below.
fn processes(targets: &[Target]) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = targets.iter().map(|t| t.dir.clone()).collect();
    while let Some(dir) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in s.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default();
                out.insert(pid, comm);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

fn pid_comm(pid: u32, comm: &str) -> String {
    format!("pid {pid} ({comm})")
}

async fn execute(args: &DrillArgs, prepared: Prepared) -> Result<DrillReport, DrillError> {
    use tokio::signal::unix::{signal, SignalKind};
    let ns = |d: Duration| d.as_nanos() as u64;
    let t0 = kernel::monotonic_ns();
    let start = t0 + ns(args.baseline);
    let end = start + ns(args.duration);
    let abi: Vec<_> = prepared
        .rules
        .iter()
        .map(|r| r.to_abi(args.direction))
        .collect();
    let dirs: Vec<PathBuf> = prepared.targets.iter().map(|t| t.dir.clone()).collect();
    let mut block = kernel::Block::attach(
        &abi,
        auditor_ebpf::DrillWindow {
            start_ns: start,
            end_ns: end,
        },
        &dirs,
        args.direction,
    )?;
    tracing::info!(
        "drill: attached to {} pod cgroup(s); baseline {}, then blocking for {}:\n{}",
        prepared.targets.len(),
        humantime::format_duration(args.baseline),
        humantime::format_duration(args.duration),
        prepared.describe(args.direction)
    );
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| DrillError::Kernel(format!("signal handler: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| DrillError::Kernel(format!("signal handler: {e}")))?;
    let mut release = end;
    let mut at_start: Option<BTreeMap<u32, String>> = None;
    let mut interrupted = false;
    let mut announced_release = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_progress = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sigint.recv() => interrupted = true,
            _ = sigterm.recv() => interrupted = true,
        }
        let now = kernel::monotonic_ns();
        if interrupted {
            if now < release {
                release = now.max(start);
                block.set_window(auditor_ebpf::DrillWindow {
                    start_ns: start,
                    end_ns: release,
                })?;
            }
            tracing::warn!("drill: interrupted; the block is released");
            break;
        }
        if now >= start && at_start.is_none() {
            let procs = processes(&prepared.targets);
            tracing::info!(
                "drill: blocking now, until {} from now; target processes: {}",
                humantime::format_duration(Duration::from_millis((end - now) / 1_000_000)),
                procs
                    .iter()
                    .map(|(p, c)| pid_comm(*p, c))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            at_start = Some(procs);
        }
        if now >= start && now < end && now - last_progress >= 1_000_000_000 {
            last_progress = now;
            let t = totals(&block.stats()?);
            tracing::info!(
                "drill: {:.1} s of {:.1} s blocked: {} packets dropped ({} connection attempts)",
                (now - start) as f64 / 1e9,
                (end - start) as f64 / 1e9,
                t.dropped_packets,
                t.dropped_syns
            );
        }
        if now >= end && !announced_release {
            announced_release = true;
            tracing::info!(
                "drill: released; observing for {}",
                humantime::format_duration(args.observe)
            );
        }
        if now >= end + ns(args.observe) {
            break;
        }
    }
    let stats = block.stats()?;
    let others = block.others()?;
    drop(block);
    let at_start = at_start.unwrap_or_default();
    let at_end = processes(&prepared.targets);
    let procs = Processes {
        at_start: at_start.iter().map(|(p, c)| pid_comm(*p, c)).collect(),
        exited: at_start
            .iter()
            .filter(|(p, _)| !at_end.contains_key(p))
            .map(|(p, c)| pid_comm(*p, c))
            .collect(),
        new: at_end
            .iter()
            .filter(|(p, _)| !at_start.contains_key(p))
            .map(|(p, c)| pid_comm(*p, c))
            .collect(),
    };
    let rel_ms = |t: u64| (t.saturating_sub(start)) / 1_000_000;
    let tot = totals(&stats);
    let traffic = Traffic {
        before_packets: tot.before_packets,
        dropped_packets: tot.dropped_packets,
        dropped_bytes: tot.dropped_bytes,
        dropped_connection_attempts: tot.dropped_syns,
        first_drop_ms: (tot.first_drop_ns != 0).then(|| rel_ms(tot.first_drop_ns)),
        last_drop_ms: (tot.last_drop_ns != 0).then(|| rel_ms(tot.last_drop_ns)),
        after_packets: tot.after_packets,
        after_bytes: tot.after_bytes,
        connections_after: tot.after_syns,
        resumed_after_release_ms: (tot.first_after_ns != 0)
            .then(|| tot.first_after_ns.saturating_sub(release) / 1_000_000),
    };
    let rules = prepared
        .rules
        .iter()
        .zip(&stats)
        .map(|(r, s)| RuleReport {
            peer: r.peer.clone(),
            rule: r.describe(),
            dropped_packets: s[0].dropped_packets + s[1].dropped_packets,
            after_packets: s[0].after_packets + s[1].after_packets,
        })
        .collect();
    let mut other_peers: Vec<OtherPeer> = others
        .iter()
        .filter(|(_, s)| s.last_ns >= start)
        .map(|(k, s)| OtherPeer {
            peer: describe_peer(k),
            packets: s.packets,
            first_ms: (s.first_ns as i64 - start as i64) / 1_000_000,
        })
        .collect();
    other_peers.sort();
    let evidence = Evidence {
        dropped_packets: traffic.dropped_packets,
        resumed_after_ms: traffic.resumed_after_release_ms,
        exited: procs.exited.clone(),
        recover_within_ms: args.recover_within.as_millis() as u64,
        observe_ms: args.observe.as_millis() as u64,
    };
    let (outcome, why) = if interrupted {
        let (o, w) = plan::judge(&evidence);
        (o, format!("interrupted before the end; so far: {w}"))
    } else {
        plan::judge(&evidence)
    };
    Ok(DrillReport {
        outcome,
        why,
        targets: prepared.targets,
        not_on_this_node: prepared.not_on_this_node,
        rules,
        direction: args.direction,
        duration_ms: (release.saturating_sub(start)) / 1_000_000,
        baseline_ms: args.baseline.as_millis() as u64,
        observe_ms: args.observe.as_millis() as u64,
        recover_within_ms: args.recover_within.as_millis() as u64,
        interrupted,
        traffic,
        other_peers,
        processes: procs,
    })
}

/// The rules' counters added up (first/last times: the earliest/latest).
fn totals(stats: &[[auditor_ebpf::DrillStats; 2]]) -> auditor_ebpf::DrillStats {
    let mut t = auditor_ebpf::DrillStats::default();
    let min_nz = |a: u64, b: u64| match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    for s in stats.iter().flatten() {
        t.before_packets += s.before_packets;
        t.dropped_packets += s.dropped_packets;
        t.dropped_bytes += s.dropped_bytes;
        t.dropped_syns += s.dropped_syns;
        t.after_packets += s.after_packets;
        t.after_bytes += s.after_bytes;
        t.after_syns += s.after_syns;
        t.first_drop_ns = min_nz(t.first_drop_ns, s.first_drop_ns);
        t.last_drop_ns = t.last_drop_ns.max(s.last_drop_ns);
        t.first_after_ns = min_nz(t.first_after_ns, s.first_after_ns);
    }
    t
}

fn describe_peer(k: &auditor_ebpf::DrillPeer) -> String {
    let ip: std::net::IpAddr = if k.family == auditor_ebpf::AF_INET6 {
        std::net::Ipv6Addr::from(k.addr).into()
    } else {
        std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    };
    match Protocol::from_ip_proto(k.protocol) {
        Some(p @ (Protocol::Tcp | Protocol::Udp)) => match ip {
            std::net::IpAddr::V6(_) => format!("[{ip}]:{}/{p}", k.port),
            _ => format!("{ip}:{}/{p}", k.port),
        },
        Some(p) => format!("{ip} {p}"),
        None => format!("{ip} protocol {}", k.protocol),
    }
}

/// The human form of the result.
pub fn render_text(r: &DrillReport) -> String {
    let mut s = String::new();
    let outcome = match r.outcome {
        Outcome::Graceful => "GRACEFUL",
        Outcome::Failed => "FAILED",
        Outcome::Untested => "UNTESTED",
    };
    s.push_str(&format!("drill: {outcome}: {}\n", r.why));
    s.push_str("targets:\n");
    for t in &r.targets {
        s.push_str(&format!("  {} ({})\n", t.pod, t.cgroup));
    }
    for p in &r.not_on_this_node {
        s.push_str(&format!("  not on this node: {p}\n"));
    }
    s.push_str(&format!(
        "blocked ({}) for {:.1} s:\n",
        match r.direction {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
            Direction::Both => "both ways",
        },
        r.duration_ms as f64 / 1000.0
    ));
    for rule in &r.rules {
        s.push_str(&format!(
            "  {} (--peer {}): {} dropped, {} after the release\n",
            rule.rule, rule.peer, rule.dropped_packets, rule.after_packets
        ));
    }
    let t = &r.traffic;
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{:.1} s", v as f64 / 1000.0));
    s.push_str(&format!(
        "traffic to the peer: {} packets in the {:.1} s before; {} dropped ({} bytes, {} connection attempts), first at {}, last at {}; {} after the release ({} new connections), the first {} after it\n",
        t.before_packets,
        r.baseline_ms as f64 / 1000.0,
        t.dropped_packets,
        t.dropped_bytes,
        t.dropped_connection_attempts,
        ms(t.first_drop_ms),
        ms(t.last_drop_ms),
        t.after_packets,
        t.connections_after,
        ms(t.resumed_after_release_ms),
    ));
    if !r.other_peers.is_empty() {
        s.push_str("other peers after the block began:\n");
        for p in &r.other_peers {
            s.push_str(&format!(
                "  {}: {} packets, first at {:.1} s\n",
                p.peer,
                p.packets,
                p.first_ms as f64 / 1000.0
            ));
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    s.push_str(&format!(
        "processes: at the start {}; exited {}; new {}\n",
        list(&r.processes.at_start),
        list(&r.processes.exited),
        list(&r.processes.new)
    ));
    s
}
