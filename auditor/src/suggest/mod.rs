//! `auditor suggest`: NetworkPolicies from observed flows.
//!
//! Two modes (design.md, "Suggestions"):
//! - **allowlist**: for each audited workload (by default the pods in which a process named
//!   `ffmpeg` or `ffprobe` made or accepted connections; `--select` takes a label selector
//!   instead) one policy that isolates it for ingress and egress and allows exactly what
//!   was observed, plus a separate policy for kubelet health checks, plus, where an
//!   observed peer pod is isolated by its own policies and would refuse the flow, a policy
//!   on the peer's side.
//! - **fix**: the smallest additions (new policies, nothing installed is changed) that
//!   allow every observed flow denied today. Each addition selects only pods that are
//!   already isolated in its direction (its selector is the workload's AND the selector of
//!   a policy that isolates it), so no other flow changes its verdict.
//!
//! The result is checked before it is written: each policy's YAML tree is read into a
//! typed NetworkPolicy (the value a YAML reader gets from its text: [`yaml::to_value`],
//! whose equality with serde_yaml's reading of the text is a property test of `yaml`), the
//! policy engine is built over the snapshot with the suggestion, and every observed flow
//! (and, in allowlist mode, a sample of unobserved flows from and to each audited
//! workload) is evaluated again. A failed check is an error.
//!
//! Pure apart from [`run`]: [`suggest`] takes a snapshot and merged flows.
//!
//! Scale (figure 6 of the benchmarks: 10,000 pods, 1,000 policies, 1,000,000 records):
//! records are merged while the log is parsed (no parsed record is kept), workloads are
//! small integers ordered as their names, needs are grouped by policy once, and the
//! evaluations (before, after, the unobserved sample) run on two threads.

pub mod cidr;
pub mod labels;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use crate::cluster::{ClusterError, ClusterSource, Snapshot};
use crate::filter::{Filter, FilterArgs, FilterError, VerdictFilter};
use crate::flowlog::{read_input, visit_flow_log, Direction, FlowLogError, FlowRecord, Protocol};
use crate::identity::{FlowName, Hint, Hints, Resolved};
use crate::policy::{
    AdminRuleRef, Engine, FlowResult, Party, PodId, PolicyError, PolicyId, Side, Target,
};
use labels::{dns_name_part, group_of, split_group, workload_labels, LabelSel, SelectorParseError};
use yaml::{map, s, seq, Item, Node};

/// The NodeLocal DNSCache address most clusters use.
pub const NODE_LOCAL_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10));
/// Annotation with the DNS names of the external peers of a policy.
pub const DNS_NAMES_ANNOTATION: &str = "auditor.dev/dns-names";
/// Annotation naming the mode and the tool that wrote a policy.
pub const GENERATED_ANNOTATION: &str = "auditor.dev/generated";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
pub enum Mode {
    /// The complete policies for the audited workloads: every observed flow allowed, nothing else.
    #[default]
    Allowlist,
    /// The smallest additions to the installed policies that allow every observed flow denied today.
    Fix,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowlist => "allowlist",
            Self::Fix => "fix",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Flavor {
    /// networking.k8s.io/v1 NetworkPolicy.
    #[default]
    Kubernetes,
    /// cilium.io/v2 CiliumNetworkPolicy, with toFQDNs for external peers that have DNS names.
    Cilium,
}

/// Suggest NetworkPolicies from observed flows: a minimal allowlist per audited workload,
/// or the smallest additions that unblock what is denied. The suggestion is checked with
/// the policy engine before it is written. Exit code 0, or 1 when part of the input could
/// not be covered (stated on stderr and in the YAML).
///
/// The summary and the YAML also state each audited workload's observation coverage (how
/// long it was watched, its pods and Job runs, when its last new peer or port appeared)
/// and warn when an allowlist rests on thin evidence (see `--min-observation`).
///
/// `-n` and `-l` choose whose policies you get: only workloads with a pod in the
/// namespace (matching the selector) are audited, among those `--comm` or `--select`
/// finds. An audited workload's allowlist still carries every flow it had, also with
/// peers elsewhere, and where such a flow also needs a peer's ingress (or egress) in
/// another namespace, that policy is written too (a cross-namespace flow needs both
/// sides). With `--mode fix`, only the denied flows from or to those pods are fixed.
///
/// Example: auditor suggest --cluster cluster.yaml --flows flows.jsonl --output suggested/
///
/// Example: auditor suggest --cluster cluster.yaml --flows flows.jsonl -n media -l app=packager
///
/// Example: auditor suggest --context staging --flows flows.jsonl    (the live cluster)
#[derive(Debug, Clone, clap::Args)]
pub struct SuggestArgs {
    // The cluster: a snapshot file (`--cluster`) or the live API server.
    #[command(flatten)]
    pub source: ClusterSource,
    /// Flow log (JSON lines; the recorder's flow log works as is).
    ///
    /// Example: --flows flows.jsonl
    #[arg(long, value_name = "FLOWS")]
    pub flows: PathBuf,
    /// allowlist: complete policies for the audited workloads; fix: additions that allow
    /// the observed flows denied today.
    ///
    /// Example: --mode fix
    #[arg(long, value_enum, default_value_t = Mode::Allowlist)]
    pub mode: Mode,
    /// Audit the pods this label selector matches instead of those where an audited
    /// process (`--comm`) was seen.
    ///
    /// Example: --select app=ffmpeg,tier in (worker,edge)
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,
    /// Process names (comm) whose pods are audited (repeatable).
    ///
    /// Example: --comm ffmpeg --comm gst-launch-1.0
    #[arg(long, value_name = "COMM", default_values_t = ["ffmpeg".to_owned(), "ffprobe".to_owned()])]
    pub comm: Vec<String>,
    /// Policy flavor.
    ///
    /// Example: --flavor cilium
    #[arg(long, value_enum, default_value_t = Flavor::Kubernetes)]
    pub flavor: Flavor,
    /// Widest IPv4 prefix external addresses may be aggregated into (32: no widening;
    /// observed addresses that fill a prefix exactly are always merged).
    ///
    /// Example: --max-prefix 24
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub max_prefix: u8,
    /// Widest IPv6 prefix external addresses may be aggregated into.
    ///
    /// Example: --max-prefix-v6 64
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub max_prefix_v6: u8,
    /// Count and skip invalid flow lines instead of failing on the first one.
    ///
    /// Example: --skip-invalid
    #[arg(long)]
    pub skip_invalid: bool,
    /// `-` for stdout, or a directory to write `<mode>.yaml` (`<mode>.cilium.yaml`) into.
    /// No short form: kubectl users read `-o` as an output format (`auditor diff -o json`),
    /// and suggest has one format, YAML.
    ///
    /// Example: --output suggested/
    #[arg(long, value_name = "DIR|-", default_value = "-")]
    pub output: PathBuf,
    // -n/-A and -l narrow the audited workloads (--verdict is refused).
    #[command(flatten)]
    pub filter: FilterArgs,
    /// A workload watched for less than this is on thin evidence: its allowlist gets a
    /// warning (so do CronJobs/Jobs seen in fewer than 2 runs, and workloads whose peers
    /// or ports were still growing in the last 10% of the recording).
    ///
    /// Example: --min-observation 30m
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub min_observation: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{path}: {error}")]
    Policy { path: PathBuf, error: PolicyError },
    #[error(transparent)]
    Flows(#[from] FlowLogError),
    #[error(transparent)]
    Select(#[from] SelectorParseError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("--verdict {0}: suggest does not filter by verdict: an allowlist must carry every flow of its workloads, and --mode fix is already the suggestion for the denied flows")]
    Verdict(&'static str),
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The generated YAML did not parse back or the engine rejected it: a bug in suggest.
    #[error("the generated {mode} suggestion is not valid: {message}")]
    Generated { mode: &'static str, message: String },
    #[error("the {mode} suggestion failed its round-trip check through the policy engine ({} problem(s)); first: {}", failures.len(), failures.first().map(String::as_str).unwrap_or(""))]
    Verification {
        mode: &'static str,
        failures: Vec<String>,
    },
}

/// Which pods are audited.
#[derive(Debug, Clone)]
pub enum Audit {
    /// Pods where a process with one of these names made or accepted connections.
    Comms(Vec<String>),
    /// Pods this selector matches.
    Selector(LabelSel),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub audit: Audit,
    pub flavor: Flavor,
    pub max_prefix_v4: u8,
    pub max_prefix_v6: u8,
    /// `-n`/`-l`: only workloads of pods this keeps are audited, and only flows from or to
    /// them are considered (all of them: an audited workload's allowlist carries every flow
    /// it had, and the peer-side policies those flows need are written where they are).
    pub pods: Filter,
    /// Watched for less is thin evidence (see [`crate::coverage`]).
    pub min_observation: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Allowlist,
            audit: Audit::Comms(vec!["ffmpeg".into(), "ffprobe".into()]),
            flavor: Flavor::Kubernetes,
            max_prefix_v4: 32,
            max_prefix_v6: 128,
            pods: Filter::default(),
            min_observation: crate::coverage::DEFAULT_MIN_OBSERVATION,
        }
    }
}

/// The records of one distinct flow, merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
    pub direction: Option<Direction>,
    pub comms: BTreeSet<String>,
    pub dns_names: BTreeSet<String>,
    /// The CNAME chain each of `dns_names` went through (the first one recorded).
    pub cname_chains: BTreeMap<String, Vec<String>>,
    pub records: u64,
    pub count: u64,
    /// What the kernel saw of it: drops and their reasons, timeouts, refusals.
    pub facts: crate::observed::Facts,
    pub first_line: usize,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// What the records say about its pods (cgroup pod UID, recorded identity).
    pub hint: Option<Arc<Hint>>,
    /// The pods its ends are, from `hint` ([`resolve_identities`]); none: the addresses tell.
    pub who: Resolved,
}

/// Merges records of the same flow (`src_ip, dst_ip, dst_port, protocol` and what they say
/// about their pods: what a verdict depends on), adding up counts; sorted by that key.
pub fn merge_flows<'a>(
    records: impl IntoIterator<Item = (usize, &'a FlowRecord)>,
) -> Vec<Observed> {
    let mut m = FlowMerger::default();
    for (line, r) in records {
        m.add(line, r);
    }
    m.finish()
}

/// [`merge_flows`] one record at a time, so that a large log is merged while it is parsed
/// and no record is kept. Strings are copied only when they add something to the flow.
#[derive(Debug, Default)]
pub struct FlowMerger {
    /// The hint by its address: interned, one `Arc` per distinct hint.
    index: HashMap<(IpAddr, IpAddr, u16, Protocol, Option<*const Hint>), usize>,
    flows: Vec<Observed>,
    hints: Hints,
}

impl FlowMerger {
    /// Adds the record read from (1-based) `line`.
    pub fn add(&mut self, line: usize, r: &FlowRecord) {
        let key = (
            r.src_ip.to_canonical(),
            r.dst_ip.to_canonical(),
            r.dst_port,
            r.protocol,
            self.hints.intern(r),
        );
        let (src_ip, dst_ip, dst_port, protocol, hint) = key;
        let id = (
            src_ip,
            dst_ip,
            dst_port,
            protocol,
            hint.as_ref().map(Arc::as_ptr),
        );
        let i = *self.index.entry(id).or_insert_with(|| {
            self.flows.push(Observed {
                hint,
                who: Resolved::default(),
                src_ip,
                dst_ip,
                dst_port,
                protocol,
                direction: r.direction,
                comms: BTreeSet::new(),
                dns_names: BTreeSet::new(),
                cname_chains: BTreeMap::new(),
                records: 0,
                count: 0,
                facts: Default::default(),
                first_line: line,
                first_seen: None,
                last_seen: None,
            });
            self.flows.len() - 1
        });
        let o = &mut self.flows[i];
        o.records += 1;
        o.count += r.count;
        o.facts.add(r);
        o.direction = o.direction.or(r.direction);
        fn add_new(set: &mut BTreeSet<String>, v: &str) {
            if !set.contains(v) {
                set.insert(v.to_owned());
            }
        }
        if let Some(c) = &r.comm {
            add_new(&mut o.comms, c);
        }
        if let Some(n) = &r.dns_name {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            if !r.dns_cnames.is_empty() && !o.cname_chains.contains_key(&n) {
                o.cname_chains.insert(n.clone(), r.dns_cnames.clone());
            }
            add_new(&mut o.dns_names, &n);
        }
        if let Some(f) = &r.first_seen {
            if o.first_seen.as_ref().is_none_or(|x| f < x) {
                o.first_seen = Some(f.clone());
            }
        }
        if let Some(l) = &r.last_seen {
            if o.last_seen.as_ref().is_none_or(|x| l > x) {
                o.last_seen = Some(l.clone());
            }
        }
    }

    /// The merged flows, sorted by their key.
    pub fn finish(self) -> Vec<Observed> {
        let mut flows = self.flows;
        flows.sort_unstable_by(|a, b| {
            (a.src_ip, a.dst_ip, a.dst_port, a.protocol, &a.hint)
                .cmp(&(b.src_ip, b.dst_ip, b.dst_port, b.protocol, &b.hint))
        });
        flows
    }
}

/// [`crate::identity::add_missing_pods`] for the pods `flows` name; the caller builds
/// the engine again when a pod was added (the notes say which).
pub fn add_missing_pods(snapshot: &mut Snapshot, flows: &[Observed]) -> Vec<String> {
    crate::identity::add_missing_pods(snapshot, flows.iter().filter_map(|f| f.hint.as_deref()))
}

/// Resolves the pods of each flow ([`crate::identity`]) into [`Observed::who`]; returns
/// the warnings where a record's identities disagree, in flow order, for the notes.
pub fn resolve_identities(engine: &Engine, flows: &mut [Observed]) -> Vec<String> {
    let mut warnings = Vec::new();
    for f in flows.iter_mut() {
        let (who, w) = crate::identity::resolve(
            engine,
            &FlowName {
                line: f.first_line,
                src_ip: f.src_ip,
                dst_ip: f.dst_ip,
                dst_port: f.dst_port,
                protocol: f.protocol,
                hint: f.hint.as_deref(),
            },
        );
        f.who = who;
        warnings.extend(w.into_iter().map(|w| format!("identity: {w}")));
    }
    warnings
}

/// `f` over `items` on two threads (one a half), results in order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let (first, second) = items.split_at(items.len() / 2);
    std::thread::scope(|scope| {
        let a = scope.spawn(|| first.iter().map(&f).collect::<Vec<R>>());
        let b: Vec<R> = second.iter().map(&f).collect();
        let mut a = a
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        a.extend(b);
        a
    })
}

impl Observed {
    /// The address of the recorded process: the destination for ingress, else the source.
    pub fn local_ip(&self) -> IpAddr {
        match self.direction {
            Some(Direction::Ingress) => self.dst_ip,
            _ => self.src_ip,
        }
    }

    /// What the recorded process is: its pod by identity, else by address.
    pub fn local_party(&self, engine: &Engine) -> Party {
        let pod = match self.direction {
            Some(Direction::Ingress) => self.who.dst,
            _ => self.who.src,
        };
        pod.map_or_else(|| engine.classify(self.local_ip()), Party::Pod)
    }

    /// The verdict of `engine` for this flow, its ends as [`Observed::who`] resolved them.
    pub fn evaluate(&self, engine: &Engine) -> FlowResult {
        self.who.evaluate(
            engine,
            self.src_ip,
            self.dst_ip,
            self.dst_port,
            self.protocol,
        )
    }
}

/// The outcome of the round-trip check.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub observed_checked: usize,
    pub unobserved_checked: usize,
    pub failures: Vec<String>,
}

/// One rule of the suggestion, for the report: who needed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleSummary {
    pub policy: String,
    pub direction: &'static str,
    pub rule: usize,
    pub peers: String,
    pub ports: String,
    pub processes: Vec<String>,
    pub flows: usize,
}

/// A suggestion, rendered and checked.
#[derive(Debug, Clone)]
pub struct Suggestion {
    pub mode: Mode,
    pub flavor: Flavor,
    /// Workloads audited (`namespace/Kind/name`), sorted.
    pub audited: Vec<String>,
    /// The YAML in the requested flavor.
    pub yaml: String,
    /// The NetworkPolicy YAML (what was checked; equal to `yaml` for the kubernetes flavor).
    pub kubernetes_yaml: String,
    pub policies: usize,
    pub rules: Vec<RuleSummary>,
    /// What could not be covered (also stated in the YAML).
    pub gaps: Vec<String>,
    /// Things to look at (also in the YAML).
    pub warnings: Vec<String>,
    /// How much evidence each audited workload's allowlist rests on.
    pub coverage: crate::coverage::Coverage,
    pub verification: Verification,
}

/// Runs `auditor suggest`; returns the exit code.
///
/// The snapshot (YAML parsing dominates) and the flow log (merged as it is parsed) are
/// read on two threads.
pub fn run(args: &SuggestArgs) -> Result<i32, SuggestError> {
    if let Some(v) = args.filter.verdict {
        return Err(SuggestError::Verdict(match v {
            VerdictFilter::Allowed => "allowed",
            VerdictFilter::Denied => "denied",
        }));
    }
    args.source.check(&args.flows)?;
    let mut phase = Phase::start();
    let (built, read) = std::thread::scope(|scope| {
        let cluster = scope.spawn(|| -> Result<(Snapshot, Engine, PathBuf), SuggestError> {
            let loaded = args.source.read()?;
            let (snapshot, origin) = (loaded.snapshot, loaded.origin);
            let engine = Engine::build(&snapshot).map_err(|error| SuggestError::Policy {
                path: origin.clone(),
                error,
            })?;
            crate::cluster::require_pods(&origin, &snapshot)?;
            Ok((snapshot, engine, origin))
        });
        let read = (|| -> Result<(Vec<Observed>, usize), FlowLogError> {
            let data = read_input(&args.flows).map_err(|source| FlowLogError::Io {
                path: args.flows.clone(),
                source,
            })?;
            let mut merger = FlowMerger::default();
            let skipped = visit_flow_log(&args.flows, &data, args.skip_invalid, |line, _, r| {
                merger.add(line, &r)
            })?;
            Ok((merger.finish(), skipped.len()))
        })();
        let built = cluster
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (built, read)
    });
    let (mut snapshot, mut engine, origin) = built?;
    let (mut flows, skipped_lines) = read?;
    let mut identity_warnings = add_missing_pods(&mut snapshot, &flows);
    if !identity_warnings.is_empty() {
        engine = Engine::build(&snapshot).map_err(|error| SuggestError::Policy {
            path: origin.clone(),
            error,
        })?;
    }
    let pods = Filter::compile(&args.filter, &engine, &origin)?;
    identity_warnings.extend(resolve_identities(&engine, &mut flows));
    phase.done("read the snapshot and the flow log, built the engine");
    let audit = match &args.select {
        Some(sel) => Audit::Selector(labels::parse_selector(sel)?),
        None => Audit::Comms(args.comm.clone()),
    };
    let opts = Options {
        mode: args.mode,
        audit,
        flavor: args.flavor,
        max_prefix_v4: args.max_prefix,
        max_prefix_v6: args.max_prefix_v6,
        pods,
        min_observation: args.min_observation,
    };
    let sug = suggest(&snapshot, &engine, &flows, &opts)?;
    let out_path = if args.output.as_os_str() == "-" {
        None
    } else {
        let ext = if args.flavor == Flavor::Cilium {
            "cilium.yaml"
        } else {
            "yaml"
        };
        Some(args.output.join(format!("{}.{ext}", args.mode.as_str())))
    };
    match &out_path {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(sug.yaml.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|source| SuggestError::Output {
                    path: "-".into(),
                    source,
                })?;
        }
        Some(p) => {
            let io = |source| SuggestError::Output {
                path: p.clone(),
                source,
            };
            std::fs::create_dir_all(&args.output).map_err(io)?;
            std::fs::write(p, &sug.yaml).map_err(io)?;
        }
    }
    eprint!("{}", summary_text(&sug, out_path.as_deref(), skipped_lines));
    // What the snapshot and the engine left out, as `diff` lists it.
    for n in snapshot
        .notes
        .iter()
        .chain(&engine.notes)
        .chain(&identity_warnings)
    {
        eprintln!("auditor suggest: note: {n}");
    }
    if !sug.verification.failures.is_empty() {
        return Err(SuggestError::Verification {
            mode: sug.mode.as_str(),
            failures: sug.verification.failures,
        });
    }
    Ok(if sug.gaps.is_empty() { 0 } else { 1 })
}

/// How long each phase took, at debug level (`--log debug`): where a slow run spends it.
struct Phase(std::time::Instant);

impl Phase {
    fn start() -> Self {
        Phase(std::time::Instant::now())
    }
    fn done(&mut self, what: &str) {
        tracing::debug!("{what} in {:.2} s", self.0.elapsed().as_secs_f64());
        self.0 = std::time::Instant::now();
    }
}

/// The stderr summary of a suggestion.
pub fn summary_text(sug: &Suggestion, written: Option<&Path>, skipped_lines: usize) -> String {
    let mut t = String::new();
    let where_ = written
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdout".into());
    t.push_str(&format!(
        "auditor suggest: {} mode, {} polic{} for {} audited workload(s), {} rule(s), written to {where_}\n",
        sug.mode.as_str(),
        sug.policies,
        if sug.policies == 1 { "y" } else { "ies" },
        sug.audited.len(),
        sug.rules.len()
    ));
    let v = &sug.verification;
    if v.failures.is_empty() {
        let what = match sug.mode {
            Mode::Allowlist => format!("{} observed flows allowed, {} sampled unobserved flows denied", v.observed_checked, v.unobserved_checked),
            Mode::Fix => format!("{} observed flows re-evaluated: every denied one now allowed, no other verdict or pod isolation changed", v.observed_checked),
        };
        t.push_str(&format!(
            "auditor suggest: round trip through the policy engine OK: {what}\n"
        ));
        if sug.flavor == Flavor::Cilium {
            t.push_str("auditor suggest: (checked on the equivalent NetworkPolicies; toFQDNs rules cannot be checked offline)\n");
        }
    } else {
        t.push_str(&format!(
            "auditor suggest: ROUND TRIP FAILED: {} problem(s):\n",
            v.failures.len()
        ));
        for f in &v.failures {
            t.push_str(&format!("  - {f}\n"));
        }
    }
    if skipped_lines > 0 {
        t.push_str(&format!(
            "auditor suggest: {skipped_lines} invalid flow line(s) skipped\n"
        ));
    }
    for g in &sug.gaps {
        t.push_str(&format!("auditor suggest: gap: {g}\n"));
    }
    for w in &sug.coverage.workloads {
        t.push_str(&format!(
            "auditor suggest: coverage: {}: {}\n",
            w.workload,
            w.line()
        ));
    }
    for w in &sug.warnings {
        t.push_str(&format!("auditor suggest: warning: {w}\n"));
    }
    t
}

// ---------------------------------------------------------------------------------------
// Context: workloads, DNS, probes.

/// A workload group (`namespace/Kind/name`, see [`group_of`]) as an index into
/// `Ctx::group_names`, which is sorted: ids order as the names do.
type GroupId = usize;

/// What suggest knows about the cluster beyond the engine.
struct Ctx<'a> {
    engine: &'a Engine,
    snapshot: &'a Snapshot,
    /// Every pod's workload group name, sorted and deduplicated.
    group_names: Vec<String>,
    /// Pods (not hostNetwork) by workload group, sorted.
    groups: Vec<Vec<PodId>>,
    /// Each pod's group.
    group_of: Vec<GroupId>,
    group_labels: Vec<Option<BTreeMap<String, String>>>,
    /// Pods (not hostNetwork) by namespace, sorted.
    pods_by_ns: HashMap<&'a str, Vec<PodId>>,
    /// Installed policies by `namespace/name` (the first of a name), as indexes into
    /// `snapshot.network_policies`.
    installed: HashMap<String, usize>,
    /// The namespace and labels that select the cluster's DNS pods.
    dns_selector: Option<(String, BTreeMap<String, String>)>,
    dns_pods: BTreeSet<PodId>,
    /// ClusterIPs of the DNS Service (when known).
    dns_service_ips: BTreeSet<IpAddr>,
    /// Ports the pod spec names for kubelet health checks (probes) or as container ports.
    probe_ports: Vec<BTreeSet<PortKey>>,
    container_ports: Vec<BTreeSet<PortKey>>,
}

impl<'a> Ctx<'a> {
    fn new(snapshot: &'a Snapshot, engine: &'a Engine) -> Self {
        let pods = engine.pods();
        let names: Vec<String> = pods.iter().map(|p| group_of(&p.workload)).collect();
        let mut group_names = names.clone();
        group_names.sort_unstable();
        group_names.dedup();
        let group_of: Vec<GroupId> = names
            .iter()
            .map(|n| group_names.binary_search(n).unwrap_or_default())
            .collect();
        let mut groups: Vec<Vec<PodId>> = vec![Vec::new(); group_names.len()];
        let mut pods_by_ns: HashMap<&str, Vec<PodId>> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            if !p.host_network {
                groups[group_of[i]].push(i);
                pods_by_ns.entry(p.namespace.as_str()).or_default().push(i);
            }
        }
        let group_labels = groups
            .iter()
            .map(|ids| {
                if ids.is_empty() {
                    None
                } else {
                    workload_labels(ids.iter().map(|&i| &pods[i].labels))
                }
            })
            .collect();
        let mut installed = HashMap::new();
        for (i, np) in snapshot.network_policies.iter().enumerate() {
            let name = format!(
                "{}/{}",
                np.metadata.namespace.as_deref().unwrap_or("default"),
                np.metadata.name.as_deref().unwrap_or("")
            );
            installed.entry(name).or_insert(i);
        }
        // DNS: the pods behind kube-system/kube-dns, else pods labelled k8s-app=kube-dns.
        let mut dns_pods = BTreeSet::new();
        let mut dns_service_ips = BTreeSet::new();
        for svc in engine
            .services()
            .iter()
            .filter(|s| s.namespace == "kube-system" && s.service == "kube-dns")
        {
            for b in &svc.backends {
                if let Party::Pod(p) = engine.classify(b.ip) {
                    dns_pods.insert(p);
                }
            }
        }
        for s in &snapshot.services {
            let is_dns = s.metadata.namespace.as_deref() == Some("kube-system")
                && s.metadata.name.as_deref() == Some("kube-dns");
            if is_dns {
                let spec = s.spec.clone().unwrap_or_default();
                for ip in spec
                    .cluster_ips
                    .unwrap_or_default()
                    .iter()
                    .chain(spec.cluster_ip.iter())
                {
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        dns_service_ips.insert(ip.to_canonical());
                    }
                }
            }
        }
        if dns_pods.is_empty() {
            dns_pods = pods
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    !p.host_network
                        && p.labels.get("k8s-app").map(String::as_str) == Some("kube-dns")
                })
                .map(|(i, _)| i)
                .collect();
        }
        let by_name: HashMap<(String, String), &k8s_openapi::api::core::v1::Pod> = snapshot
            .pods
            .iter()
            .map(|p| {
                (
                    (
                        p.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        p.metadata.name.clone().unwrap_or_default(),
                    ),
                    p,
                )
            })
            .collect();
        let container_ports: Vec<BTreeSet<PortKey>> = pods
            .iter()
            .map(|p| {
                p.ports
                    .iter()
                    .map(|c| PortKey {
                        protocol: c.protocol,
                        port: c.port,
                        name: c.name.clone(),
                    })
                    .collect()
            })
            .collect();
        let probe_ports = pods
            .iter()
            .enumerate()
            .map(
                |(i, p)| match by_name.get(&(p.namespace.clone(), p.name.clone())) {
                    Some(pod) => probe_ports_of(pod, &container_ports[i]),
                    None => BTreeSet::new(),
                },
            )
            .collect();
        let dns_selector = dns_pods.first().and_then(|&first| {
            let labels = workload_labels(dns_pods.iter().map(|&p| &pods[p].labels))?;
            Some((pods[first].namespace.clone(), labels))
        });
        Self {
            engine,
            snapshot,
            group_names,
            groups,
            group_of,
            group_labels,
            pods_by_ns,
            installed,
            dns_selector,
            dns_pods,
            dns_service_ips,
            probe_ports,
            container_ports,
        }
    }

    fn labels_of_group(&self, g: GroupId) -> Option<&BTreeMap<String, String>> {
        self.group_labels[g].as_ref()
    }

    /// A port as the destination pod names it.
    fn port_key(&self, dst_pod: Option<PodId>, port: u16, protocol: Protocol) -> PortKey {
        let name = dst_pod.and_then(|p| {
            self.container_ports[p]
                .iter()
                .find(|c| c.port == port && c.protocol == protocol && c.name.is_some())
                .and_then(|c| c.name.clone())
        });
        PortKey {
            protocol,
            port,
            name,
        }
    }

    fn is_dns_target(
        &self,
        t: &Target,
        service: Option<usize>,
        protocol: Protocol,
    ) -> Option<PeerKey> {
        if t.dst_port != 53 || !matches!(protocol, Protocol::Udp | Protocol::Tcp) {
            return None;
        }
        if t.dst_ip == NODE_LOCAL_DNS {
            return Some(PeerKey::NodeLocalDns(t.dst_ip));
        }
        if let Party::Pod(p) = t.dst {
            if self.dns_pods.contains(&p) {
                return Some(PeerKey::Dns);
            }
        }
        let via_dns_service = service.is_some_and(|s| {
            let sp = &self.engine.services()[s];
            sp.namespace == "kube-system" && sp.service == "kube-dns"
        });
        if via_dns_service || self.dns_service_ips.contains(&t.dst_ip) {
            return Some(PeerKey::Dns);
        }
        None
    }
}

fn probe_ports_of(
    pod: &k8s_openapi::api::core::v1::Pod,
    container_ports: &BTreeSet<PortKey>,
) -> BTreeSet<PortKey> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = BTreeSet::new();
    let Some(spec) = &pod.spec else { return out };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            let ports: Vec<IntOrString> = [
                probe.http_get.as_ref().map(|h| h.port.clone()),
                probe.tcp_socket.as_ref().map(|t| t.port.clone()),
                probe.grpc.as_ref().map(|g| IntOrString::Int(g.port)),
            ]
            .into_iter()
            .flatten()
            .collect();
            for port in ports {
                let key = match port {
                    IntOrString::Int(n) => u16::try_from(n).ok().filter(|&n| n > 0).map(|n| {
                        container_ports
                            .iter()
                            .find(|k| k.port == n && k.protocol == Protocol::Tcp)
                            .cloned()
                            .unwrap_or(PortKey {
                                protocol: Protocol::Tcp,
                                port: n,
                                name: None,
                            })
                    }),
                    IntOrString::String(name) => container_ports
                        .iter()
                        .find(|k| {
                            k.name.as_deref() == Some(name.as_str()) && k.protocol == Protocol::Tcp
                        })
                        .cloned(),
                };
                out.extend(key);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Needs: what each side of each flow requires.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: Protocol,
    pub port: u16,
    /// The destination pod's name for the port, when it has one.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeerKey {
    Dns,
    NodeLocalDns(IpAddr),
    Pod(PodId),
    Node(IpAddr),
    External(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PlanKind {
    Allowlist,
    Probes,
    PeerSide,
    Fix,
}

/// Which policy a need goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PlanKey {
    group: GroupId,
    kind: PlanKind,
    /// Fix and peer-side plans: the direction, and the installed policy that isolates the
    /// pods (the plan's selector is AND-ed with its pod selector).
    direction: Option<Direction>,
    anchor: Option<PolicyId>,
}

#[derive(Debug, Clone)]
struct Need {
    plan: PlanKey,
    direction: Direction,
    peer: PeerKey,
    port: PortKey,
    /// (flow index, target index)
    evidence: (usize, usize),
}

fn peer_key(party: &Party, ip: IpAddr) -> PeerKey {
    match party {
        Party::Pod(p) => PeerKey::Pod(*p),
        Party::Node(_) => PeerKey::Node(ip),
        Party::External => PeerKey::External(ip),
    }
}

// ---------------------------------------------------------------------------------------
// The suggestion.

/// Computes, renders and checks a suggestion.
pub fn suggest(
    snapshot: &Snapshot,
    engine: &Engine,
    flows: &[Observed],
    opts: &Options,
) -> Result<Suggestion, SuggestError> {
    let mut phase = Phase::start();
    let ctx = Ctx::new(snapshot, engine);
    let mut gaps = Vec::new();
    let mut warnings = Vec::new();
    let mut results: Vec<FlowResult> = par_map(flows, |f| f.evaluate(engine));
    // -n/-l: the flows from or to the pods they keep.
    let kept: Vec<Observed>;
    let flows = if opts.pods.all_pods() {
        flows
    } else {
        let keep: Vec<bool> = results
            .iter()
            .map(|r| opts.pods.keeps_pods_of(engine, r))
            .collect();
        kept = flows
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(f, _)| f.clone())
            .collect();
        let mut k = keep.iter();
        results.retain(|_| k.next().copied().unwrap_or(false));
        &kept[..]
    };
    let in_scope = |p: PodId| opts.pods.keeps_pod(engine, p);

    // Audited workloads.
    let mut audited: BTreeSet<GroupId> = BTreeSet::new();
    match &opts.audit {
        Audit::Comms(comms) => {
            let mut missing: BTreeMap<IpAddr, (BTreeSet<String>, usize)> = BTreeMap::new();
            for f in flows {
                if !f.comms.iter().any(|c| comms.contains(c)) {
                    continue;
                }
                match f.local_party(engine) {
                    Party::Pod(p) => {
                        if in_scope(p) {
                            audited.insert(ctx.group_of[p]);
                        }
                    }
                    _ => {
                        let e = missing
                            .entry(f.local_ip())
                            .or_insert_with(|| (BTreeSet::new(), f.first_line));
                        e.0.extend(f.comms.iter().filter(|c| comms.contains(c)).cloned());
                    }
                }
            }
            for (ip, (comms, line)) in missing {
                gaps.push(format!(
                    "{} at {ip} (first at flow line {line}) ran in no pod of the snapshot: the pod is missing from the snapshot (take the snapshot while the pipeline runs) or it is not a pod; no policy written for it",
                    comms.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            if audited.is_empty() && opts.mode == Mode::Allowlist {
                gaps.push(format!(
                    "no audited workload found: no flow with comm {} from or to a pod of the snapshot{}; pass --select with a label selector, or --comm",
                    comms.join("/"),
                    if opts.pods.all_pods() { "" } else { " that -n/-l keep" }
                ));
            }
        }
        Audit::Selector(sel) => {
            for (i, p) in engine.pods().iter().enumerate() {
                if !p.host_network && sel.matches(&p.labels) && in_scope(i) {
                    audited.insert(ctx.group_of[i]);
                }
            }
            if audited.is_empty() && opts.mode == Mode::Allowlist {
                gaps.push(format!("no audited workload found: --select matches no pod of the snapshot{} (hostNetwork pods are out of scope)",
                    if opts.pods.all_pods() { "" } else { " that -n/-l keep" }));
            }
        }
    }
    let is_audited =
        |p: PodId| !engine.pods()[p].host_network && audited.contains(&ctx.group_of[p]);

    // Needs.
    let mut needs: Vec<Need> = Vec::new();
    let mut dns_seen_without_pods = BTreeSet::new();
    let mut admin_denied = AdminDenied::default();
    for (fi, (f, r)) in flows.iter().zip(&results).enumerate() {
        for (ti, t) in r.targets.iter().enumerate() {
            // A side an AdminNetworkPolicy Deny decides: no NetworkPolicy can allow it (and
            // in fix mode, one the baseline denies cannot be allowed without isolating the
            // pod); say so instead of writing a rule that changes nothing.
            let [egress_blocked, ingress_blocked] =
                [&t.egress, &t.ingress].map(|side| admin_block(engine, side, opts.mode));
            for a in egress_blocked.iter().chain(&ingress_blocked) {
                admin_denied.add(*a, || describe_flow(engine, f, r, ti));
            }
            let src_pod = match t.src {
                Party::Pod(p) if !engine.pods()[p].host_network => Some(p),
                _ => None,
            };
            let dst_pod = match t.dst {
                Party::Pod(p) if !engine.pods()[p].host_network => Some(p),
                _ => None,
            };
            let dns = ctx.is_dns_target(t, r.service, f.protocol);
            if dns == Some(PeerKey::Dns) && ctx.dns_pods.is_empty() {
                dns_seen_without_pods.insert(t.dst_ip);
            }
            let egress_peer = dns.clone().unwrap_or_else(|| peer_key(&t.dst, t.dst_ip));
            let egress_port = ctx.port_key(dst_pod, t.dst_port, f.protocol);
            let ingress_peer = peer_key(&t.src, f.src_ip);
            let mut push = |plan: PlanKey, direction: Direction| {
                // The flow stays denied whatever is written: a rule for its other side
                // would be useless too.
                if egress_blocked.is_some() || ingress_blocked.is_some() {
                    return;
                }
                let (peer, port) = match direction {
                    Direction::Egress => (egress_peer.clone(), egress_port.clone()),
                    Direction::Ingress => (ingress_peer.clone(), egress_port.clone()),
                };
                needs.push(Need {
                    plan,
                    direction,
                    peer,
                    port,
                    evidence: (fi, ti),
                });
            };
            let same_pod = src_pod.is_some() && src_pod == dst_pod;
            if same_pod {
                continue;
            }
            match opts.mode {
                Mode::Allowlist => {
                    if let Some(s) = src_pod.filter(|&s| is_audited(s)) {
                        push(
                            PlanKey {
                                group: ctx.group_of[s],
                                kind: PlanKind::Allowlist,
                                direction: None,
                                anchor: None,
                            },
                            Direction::Egress,
                        );
                        if let Some(d) = dst_pod.filter(|&d| !is_audited(d) && !t.ingress.allowed) {
                            push(
                                PlanKey {
                                    group: ctx.group_of[d],
                                    kind: PlanKind::PeerSide,
                                    direction: Some(Direction::Ingress),
                                    anchor: t.ingress.isolated_by.first().copied(),
                                },
                                Direction::Ingress,
                            );
                        }
                    }
                    if let Some(d) = dst_pod.filter(|&d| is_audited(d)) {
                        let probe = matches!(t.src, Party::Node(_))
                            && (ctx.probe_ports[d].contains(&egress_port)
                                || ctx.container_ports[d].contains(&egress_port));
                        let kind = if probe {
                            PlanKind::Probes
                        } else {
                            PlanKind::Allowlist
                        };
                        push(
                            PlanKey {
                                group: ctx.group_of[d],
                                kind,
                                direction: None,
                                anchor: None,
                            },
                            Direction::Ingress,
                        );
                        if let Some(s) = src_pod.filter(|&s| !is_audited(s) && !t.egress.allowed) {
                            push(
                                PlanKey {
                                    group: ctx.group_of[s],
                                    kind: PlanKind::PeerSide,
                                    direction: Some(Direction::Egress),
                                    anchor: t.egress.isolated_by.first().copied(),
                                },
                                Direction::Egress,
                            );
                        }
                    }
                }
                Mode::Fix => {
                    if t.allowed {
                        continue;
                    }
                    if let (Some(s), false) = (src_pod, t.egress.allowed) {
                        push(
                            PlanKey {
                                group: ctx.group_of[s],
                                kind: PlanKind::Fix,
                                direction: Some(Direction::Egress),
                                anchor: t.egress.isolated_by.first().copied(),
                            },
                            Direction::Egress,
                        );
                    }
                    if let (Some(d), false) = (dst_pod, t.ingress.allowed) {
                        let probe = matches!(t.src, Party::Node(_))
                            && (ctx.probe_ports[d].contains(&egress_port)
                                || ctx.container_ports[d].contains(&egress_port));
                        let kind = if probe {
                            PlanKind::Probes
                        } else {
                            PlanKind::Fix
                        };
                        push(
                            PlanKey {
                                group: ctx.group_of[d],
                                kind,
                                direction: Some(Direction::Ingress),
                                anchor: t.ingress.isolated_by.first().copied(),
                            },
                            Direction::Ingress,
                        );
                    }
                }
            }
        }
    }
    gaps.extend(admin_denied.gaps(engine, opts.mode));
    if !dns_seen_without_pods.is_empty() {
        gaps.push(format!(
            "no DNS pods in the snapshot (no endpoints behind kube-system/kube-dns and no pod labelled k8s-app=kube-dns): DNS egress is written for the conventional labels and the observed DNS address(es) {}; check it",
            dns_seen_without_pods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    // Allowlist: every audited workload gets its policy (and its probe policy when its
    // spec declares probes), flows or not.
    let mut by_plan: BTreeMap<PlanKey, Vec<&Need>> = BTreeMap::new();
    for n in &needs {
        by_plan.entry(n.plan).or_default().push(n);
    }
    if opts.mode == Mode::Allowlist {
        for &g in &audited {
            by_plan
                .entry(PlanKey {
                    group: g,
                    kind: PlanKind::Allowlist,
                    direction: None,
                    anchor: None,
                })
                .or_default();
            if ctx.groups[g]
                .iter()
                .any(|&p| !ctx.probe_ports[p].is_empty())
            {
                by_plan
                    .entry(PlanKey {
                        group: g,
                        kind: PlanKind::Probes,
                        direction: None,
                        anchor: None,
                    })
                    .or_default();
            }
        }
    }

    // DNS names per external address, and names whose addresses changed.
    let mut names_of: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in flows {
        for (n, c) in &f.cname_chains {
            chains.entry(n.clone()).or_insert_with(|| c.clone());
        }
    }
    let mut addrs_of: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for f in flows {
        for n in &f.dns_names {
            names_of.entry(f.dst_ip).or_default().insert(n.clone());
            if engine.classify(f.dst_ip) == Party::External {
                addrs_of.entry(n.clone()).or_default().insert(f.dst_ip);
            }
        }
    }
    let changing: BTreeMap<String, BTreeSet<IpAddr>> =
        addrs_of.into_iter().filter(|(_, a)| a.len() > 1).collect();
    for (name, addrs) in &changing {
        warnings.push(format!(
            "{name} resolved to {} addresses during the recording ({}): its addresses change, so CIDRs will go stale; use --flavor cilium (toFQDNs) if the cluster runs Cilium, or reach it through a stable in-cluster Service",
            addrs.len(),
            addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ));
    }

    // How much evidence each audited workload rests on; thin evidence is a warning.
    let coverage = {
        let names: Vec<&str> = audited
            .iter()
            .map(|&g| ctx.group_names[g].as_str())
            .collect();
        let th = crate::coverage::Thresholds {
            min_observation: opts.min_observation,
        };
        crate::coverage::compute(engine, flows, &results, &names, &th)
    };
    if opts.mode == Mode::Allowlist {
        warnings.extend(coverage.warnings().map(str::to_owned));
    }

    let build = Builder {
        ctx: &ctx,
        flows,
        results: &results,
        opts,
        names_of: &names_of,
        chains: &chains,
        changing: &changing,
    };
    let mut plans: Vec<Plan> = Vec::new();
    let mut used_names = BTreeSet::new();
    for (key, mine) in &by_plan {
        if let Some(plan) = build.plan(key, mine, &mut used_names, &mut warnings) {
            plans.push(plan);
        }
    }
    drop(by_plan);
    drop(needs);
    phase.done("evaluated the flows and planned the policies");
    plans.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let audited_names: Vec<&str> = audited
        .iter()
        .map(|&g| ctx.group_names[g].as_str())
        .collect();
    let header = build.header(&audited_names, &coverage, &gaps, &warnings);
    let (mut kubernetes_yaml, generated) = render_all(&header, &plans, Flavor::Kubernetes, &ctx);
    let cilium_yaml = match opts.flavor {
        Flavor::Kubernetes => None,
        Flavor::Cilium => Some(render_all(&header, &plans, Flavor::Cilium, &ctx).0),
    };
    // Comments are only for the text: free them before the engines are built.
    for p in &mut plans {
        p.comments = Vec::new();
        for r in p.ingress.iter_mut().chain(&mut p.egress) {
            r.comments = Vec::new();
        }
    }

    phase.done("rendered the YAML");
    let generated = generated.map_err(|message| SuggestError::Generated {
        mode: opts.mode.as_str(),
        message,
    })?;
    let verification = verify(
        &ctx, flows, &results, &audited, &plans, generated, opts.mode,
    )?;
    phase.done("checked the suggestion through the policy engine");
    let rules = plans.iter().flat_map(|p| p.summaries(&build)).collect();
    kubernetes_yaml.shrink_to_fit();
    let yaml = cilium_yaml.unwrap_or_else(|| kubernetes_yaml.clone());
    warnings.sort();
    warnings.dedup();
    Ok(Suggestion {
        mode: opts.mode,
        flavor: opts.flavor,
        audited: audited_names.into_iter().map(str::to_owned).collect(),
        yaml,
        kubernetes_yaml,
        policies: plans.len(),
        rules,
        gaps,
        warnings,
        coverage,
        verification,
    })
}

/// The AdminNetworkPolicy Deny rule that denies this side whatever NetworkPolicies say
/// (in fix mode also the baseline's: a fix cannot allow it without isolating the pod).
fn admin_block(engine: &Engine, side: &Side, mode: Mode) -> Option<AdminRuleRef> {
    side.denied_by_admin()
        .filter(|r| mode == Mode::Fix || !engine.admin_policies()[r.policy].is_baseline())
}

/// Whether some side of a flow is denied by an admin rule a suggestion cannot change.
fn admin_blocked(engine: &Engine, r: &FlowResult, mode: Mode) -> bool {
    r.targets.iter().any(|t| {
        admin_block(engine, &t.egress, mode).is_some()
            || admin_block(engine, &t.ingress, mode).is_some()
    })
}

/// Observed flows an AdminNetworkPolicy (or, in fix mode, the baseline) denies, per rule:
/// how many sides, and the first one.
#[derive(Default)]
struct AdminDenied {
    by_rule: BTreeMap<AdminRuleRef, (usize, String)>,
}

impl AdminDenied {
    fn add(&mut self, r: AdminRuleRef, describe: impl FnOnce() -> String) {
        self.by_rule.entry(r).or_insert_with(|| (0, describe())).0 += 1;
    }

    /// One gap per rule: why no NetworkPolicy is written for those flows, and what to change.
    fn gaps(&self, engine: &Engine, mode: Mode) -> Vec<String> {
        self.by_rule
            .iter()
            .map(|(r, (n, first))| {
                let p = &engine.admin_policies()[r.policy];
                let who = engine.admin_rule_text(r);
                let flows = if *n == 1 {
                    format!("1 observed flow ({first})")
                } else {
                    format!("{n} observed flows (the first: {first})")
                };
                let dir = direction_str(r.direction);
                match p.priority {
                    Some(pr) => format!(
                        "{flows} denied on {dir} by {who}: an AdminNetworkPolicy Deny comes before every NetworkPolicy, so a NetworkPolicy allow cannot help and none is written; change that rule (narrow its peers or ports, or remove it), or allow these flows with an Allow rule (or a Pass rule, to let NetworkPolicy decide) in an AdminNetworkPolicy whose priority number is below {pr}"
                    ),
                    None => {
                        let _ = mode;
                        format!(
                            "{flows} denied on {dir} by {who}: the baseline applies because no NetworkPolicy isolates the pod, and a fix would have to isolate it (changing the verdict of its other traffic), so none is written; change that rule, or use --mode allowlist, whose policies replace the baseline for the audited pods"
                        )
                    }
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Plans: policies before rendering.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeerDesc {
    Dns,
    NodeLocalDns(IpAddr),
    /// `namespace: None`: the policy's own namespace.
    Pods {
        namespace: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// Every node address the snapshot knows (kubelet health checks).
    Nodes,
    /// Addresses: externals (aggregated), nodes, pods without labels.
    Blocks(Vec<IpNet>),
}

#[derive(Debug, Clone)]
struct RulePlan {
    peer: PeerDesc,
    ports: BTreeSet<PortKey>,
    evidence: BTreeSet<(usize, usize)>,
    comments: Vec<String>,
    /// DNS names of the addresses in this rule (externals).
    dns_names: BTreeSet<String>,
    /// The same per ipBlock of the rule, in rule order (for the dns-names annotation).
    names_by_net: Vec<(IpNet, BTreeSet<String>)>,
}

#[derive(Debug, Clone)]
struct Plan {
    namespace: String,
    name: String,
    selector: LabelSel,
    types: Vec<Direction>,
    ingress: Vec<RulePlan>,
    egress: Vec<RulePlan>,
    comments: Vec<String>,
    annotations: BTreeMap<String, String>,
}

struct Builder<'a> {
    ctx: &'a Ctx<'a>,
    flows: &'a [Observed],
    results: &'a [FlowResult],
    opts: &'a Options,
    names_of: &'a BTreeMap<IpAddr, BTreeSet<String>>,
    /// The CNAME chain of each asked name, for the rule comments.
    chains: &'a BTreeMap<String, Vec<String>>,
    changing: &'a BTreeMap<String, BTreeSet<IpAddr>>,
}

const MAX_EVIDENCE_LINES: usize = 6;

/// (flow index, target index) pairs that need a rule.
type Evidence = BTreeSet<(usize, usize)>;

impl Builder<'_> {
    fn header(
        &self,
        audited: &[&str],
        coverage: &crate::coverage::Coverage,
        gaps: &[String],
        warnings: &[String],
    ) -> Vec<String> {
        let mut h = vec![format!(
            "Suggested by `auditor suggest --mode {}` from {} observed flow(s).",
            self.opts.mode.as_str(),
            self.flows.len()
        )];
        match self.opts.mode {
            Mode::Allowlist => {
                h.push("Allowlist: each audited workload may send and receive exactly what was observed, nothing else.".into());
                h.push("Policies select pods, not processes: sidecars' flows are included; each rule names the processes that needed it.".into());
            }
            Mode::Fix => h.push("Fix: new policies only; each selects only pods already isolated in its direction, so no other verdict changes.".into()),
        }
        if !audited.is_empty() {
            h.push(format!("Audited workloads: {}", audited.join(", ")));
        }
        for w in &coverage.workloads {
            h.push(format!("Coverage: {}: {}", w.workload, w.line()));
        }
        for g in gaps {
            h.push(format!("GAP: {g}"));
        }
        for w in warnings {
            h.push(format!("WARNING: {w}"));
        }
        h
    }

    fn plan(
        &self,
        key: &PlanKey,
        needs: &[&Need],
        used_names: &mut BTreeSet<(String, String)>,
        warnings: &mut Vec<String>,
    ) -> Option<Plan> {
        let ctx = self.ctx;
        let engine = ctx.engine;
        let group = ctx.group_names[key.group].as_str();
        let (namespace, kind_name, wname) = split_group(group);
        let namespace = namespace.to_owned();
        let mut comments = vec![format!("Workload {group}.")];
        let Some(workload_sel) = ctx.labels_of_group(key.group).cloned() else {
            let msg = format!(
                "{group} has no labels a selector could use; no policy written for it (label its pods)"
            );
            if !warnings.contains(&msg) {
                warnings.push(msg);
            }
            return None;
        };
        let mut selector = LabelSel::labels(workload_sel);
        if let Some(anchor) = key.anchor {
            if let Some(np) = self.installed(anchor) {
                let pod_selector = np.spec.as_ref().and_then(|s| s.pod_selector.as_ref());
                selector = selector.and(&LabelSel::from_k8s(
                    pod_selector.unwrap_or(&Default::default()),
                ));
                comments.push(format!("Selects only pods that {} already isolates, so no other pod's isolation changes.", engine.policy_name(anchor)));
            }
        }
        // Pods the selector selects beyond the workload.
        let extra: Vec<String> = ctx
            .pods_by_ns
            .get(namespace.as_str())
            .into_iter()
            .flatten()
            .filter(|&&i| {
                ctx.group_of[i] != key.group && selector.matches(&engine.pods()[i].labels)
            })
            .map(|&i| engine.pod_name(i))
            .collect();
        if !extra.is_empty() {
            let msg = format!(
                "the selector for {group} also selects {} (they share its labels)",
                extra.join(", ")
            );
            comments.push(format!("Note: {msg}."));
            warnings.push(msg);
        }
        let base = dns_name_part(wname);
        let suffix = match (&key.kind, key.direction) {
            (PlanKind::Allowlist, _) => "allowlist".to_owned(),
            (PlanKind::Probes, _) => "kubelet-probes".to_owned(),
            (PlanKind::PeerSide, Some(d)) => format!("allow-{}-for-audited", direction_str(d)),
            (PlanKind::Fix, Some(d)) => format!("fix-{}", direction_str(d)),
            (_, None) => "fix".to_owned(),
        };
        let mut name = format!("{base}-{suffix}");
        if used_names.contains(&(namespace.clone(), name.clone())) {
            name = format!("{base}-{}-{suffix}", dns_name_part(kind_name));
        }
        let mut n = 2;
        while used_names.contains(&(namespace.clone(), name.clone())) {
            name = format!("{base}-{suffix}-{n}");
            n += 1;
        }
        used_names.insert((namespace.clone(), name.clone()));

        let types = match (&key.kind, key.direction) {
            (PlanKind::Allowlist, _) => vec![Direction::Ingress, Direction::Egress],
            (PlanKind::Probes, None) => vec![Direction::Ingress],
            (_, Some(d)) => vec![d],
            (_, None) => vec![Direction::Ingress],
        };
        match key.kind {
            PlanKind::Allowlist => {}
            PlanKind::Probes => comments.push("Kubelet health checks: from node addresses to the ports the pod spec names for probes (and container ports node traffic was seen on).".into()),
            PlanKind::PeerSide => comments.push("Peer side: this pod is isolated by its own policies and would refuse observed traffic of an audited workload.".into()),
            PlanKind::Fix => {}
        }

        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            if !types.contains(&direction) {
                continue;
            }
            let rules = self.rules(
                key,
                needs.iter().filter(|n| n.direction == direction).copied(),
                &namespace,
                direction,
            );
            match direction {
                Direction::Ingress => ingress = rules,
                Direction::Egress => egress = rules,
            }
        }
        let mut annotations = BTreeMap::new();
        annotations.insert(
            GENERATED_ANNOTATION.to_owned(),
            format!("auditor suggest --mode {}", self.opts.mode.as_str()),
        );
        // One `cidr=name,name` per ipBlock, so each address keeps its own names.
        let join = |n: &BTreeSet<String>| n.iter().cloned().collect::<Vec<_>>().join(",");
        let names: Vec<String> = ingress
            .iter()
            .chain(&egress)
            .filter(|r| !r.dns_names.is_empty())
            .flat_map(|r| {
                if r.names_by_net.is_empty() {
                    vec![format!("={}", join(&r.dns_names))]
                } else {
                    r.names_by_net
                        .iter()
                        .map(|(net, n)| format!("{net}={}", join(n)))
                        .collect()
                }
            })
            .collect();
        if !names.is_empty() {
            annotations.insert(DNS_NAMES_ANNOTATION.to_owned(), names.join("; "));
        }
        if key.kind == PlanKind::Allowlist && ingress.is_empty() && egress.is_empty() {
            comments.push(
                "No flow of this workload was observed: it is isolated and allowed nothing.".into(),
            );
        }
        Some(Plan {
            namespace,
            name,
            selector,
            types,
            ingress,
            egress,
            comments,
            annotations,
        })
    }

    fn installed(&self, id: PolicyId) -> Option<&k8s_openapi::api::networking::v1::NetworkPolicy> {
        let i = *self.ctx.installed.get(&self.ctx.engine.policy_name(id))?;
        self.ctx.snapshot.network_policies.get(i)
    }

    fn rules<'n>(
        &self,
        key: &PlanKey,
        needs: impl Iterator<Item = &'n Need>,
        namespace: &str,
        direction: Direction,
    ) -> Vec<RulePlan> {
        let ctx = self.ctx;
        let mut by_peer: BTreeMap<PeerDesc, (BTreeSet<PortKey>, Evidence)> = BTreeMap::new();
        let mut externals: BTreeMap<IpAddr, (BTreeSet<PortKey>, Evidence)> = BTreeMap::new();
        let mut notes: BTreeMap<PeerDesc, Vec<String>> = BTreeMap::new();
        // Pods selected by their workload's labels, by (workload, pod namespace): many
        // needs, few distinct peers; turned into `PeerDesc::Pods` once each below.
        let mut by_workload: HashMap<(GroupId, &str), (BTreeSet<PortKey>, Evidence)> =
            HashMap::new();
        for n in needs {
            let desc = match &n.peer {
                PeerKey::Dns => PeerDesc::Dns,
                PeerKey::NodeLocalDns(ip) => PeerDesc::NodeLocalDns(*ip),
                PeerKey::Node(_) if key.kind == PlanKind::Probes => PeerDesc::Nodes,
                PeerKey::Node(ip) => PeerDesc::Blocks(vec![IpNet::from(*ip)]),
                PeerKey::External(ip) => {
                    let e = externals.entry(*ip).or_default();
                    e.0.insert(n.port.clone());
                    e.1.insert(n.evidence);
                    continue;
                }
                PeerKey::Pod(q) => {
                    let g = ctx.group_of[*q];
                    match ctx.labels_of_group(g) {
                        Some(_) => {
                            let peer_ns = ctx.engine.pods()[*q].namespace.as_str();
                            let e = by_workload.entry((g, peer_ns)).or_default();
                            if !e.0.contains(&n.port) {
                                e.0.insert(n.port.clone());
                            }
                            e.1.insert(n.evidence);
                            continue;
                        }
                        None => {
                            let ip = match direction {
                                Direction::Egress => {
                                    self.results[n.evidence.0].targets[n.evidence.1].dst_ip
                                }
                                Direction::Ingress => self.flows[n.evidence.0].src_ip,
                            };
                            let d = PeerDesc::Blocks(vec![IpNet::from(ip)]);
                            notes.entry(d.clone()).or_default().push(format!("{} has no labels to select it by: its pod address is used and goes stale when the pod is replaced", ctx.engine.pod_name(*q)));
                            d
                        }
                    }
                }
            };
            let e = by_peer.entry(desc).or_default();
            e.0.insert(n.port.clone());
            e.1.insert(n.evidence);
        }
        for ((g, peer_ns), (ports, evidence)) in by_workload {
            let desc = PeerDesc::Pods {
                namespace: (peer_ns != namespace).then(|| peer_ns.to_owned()),
                labels: ctx.labels_of_group(g).cloned().unwrap_or_default(),
            };
            let e = by_peer.entry(desc).or_default();
            e.0.extend(ports);
            e.1.extend(evidence);
        }
        if key.kind == PlanKind::Probes && direction == Direction::Ingress {
            // The declared probe ports, observed or not.
            let e = by_peer.entry(PeerDesc::Nodes).or_default();
            for &p in &ctx.groups[key.group] {
                e.0.extend(ctx.probe_ports[p].iter().cloned());
            }
        }
        let mut rules: Vec<RulePlan> = Vec::new();
        for (peer, (ports, evidence)) in by_peer {
            let mut comments = notes.remove(&peer).unwrap_or_default();
            comments.dedup();
            let ports = match &peer {
                PeerDesc::Dns | PeerDesc::NodeLocalDns(_) => [Protocol::Udp, Protocol::Tcp]
                    .into_iter()
                    .map(|protocol| PortKey {
                        protocol,
                        port: 53,
                        name: None,
                    })
                    .collect(),
                _ => ports,
            };
            if peer == PeerDesc::Dns {
                comments.push("DNS: only to the cluster's DNS pods, UDP and TCP 53.".into());
            }
            if peer == PeerDesc::Nodes && evidence.is_empty() {
                comments.push(
                    "Declared probes in the pod spec (no probe traffic was recorded).".into(),
                );
            }
            rules.push(RulePlan {
                peer,
                ports,
                evidence,
                comments,
                dns_names: BTreeSet::new(),
                names_by_net: Vec::new(),
            });
        }
        // Externals: aggregated per identical port set, so no address gains a port.
        let mut by_ports: BTreeMap<BTreeSet<PortKey>, (BTreeSet<IpAddr>, Evidence)> =
            BTreeMap::new();
        for (ip, (ports, ev)) in externals {
            let e = by_ports.entry(ports).or_default();
            e.0.insert(ip);
            e.1.extend(ev);
        }
        for (ports, (ips, evidence)) in by_ports {
            let nets = cidr::aggregate(&ips, self.opts.max_prefix_v4, self.opts.max_prefix_v6);
            let mut comments = Vec::new();
            let mut dns_names = BTreeSet::new();
            let mut names_by_net = Vec::new();
            for net in &nets {
                // A range of the sorted set: exactly the addresses `net.contains`.
                let inside: Vec<&IpAddr> = ips.range(net.network()..=net.broadcast()).collect();
                let names: BTreeSet<String> = inside
                    .iter()
                    .flat_map(|ip| self.names_of.get(ip).into_iter().flatten().cloned())
                    .collect();
                let widened = net.prefix_len() < net.max_prefix_len()
                    && (inside.len() as u128)
                        < (1u128 << (net.max_prefix_len() - net.prefix_len()));
                let mut line = format!("{net}");
                if !names.is_empty() {
                    line.push_str(&format!(
                        ": {}",
                        names
                            .iter()
                            .map(|n| match self.chains.get(n) {
                                Some(c) => format!("{n} (CNAME {})", c.join(" -> ")),
                                None => n.clone(),
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if widened {
                    line.push_str(&format!(
                        " (aggregated from {} observed address(es), as --max-prefix allows)",
                        inside.len()
                    ));
                }
                for n in &names {
                    if let Some(addrs) = self.changing.get(n) {
                        line.push_str(&format!(
                            "; WARNING: {n} had {} addresses during recording",
                            addrs.len()
                        ));
                    }
                }
                comments.push(line);
                if !names.is_empty() {
                    names_by_net.push((*net, names.clone()));
                }
                dns_names.extend(names);
            }
            rules.push(RulePlan {
                peer: PeerDesc::Blocks(nets),
                ports,
                evidence,
                comments,
                dns_names,
                names_by_net,
            });
        }
        for r in &mut rules {
            let mut ev = self.evidence_lines(&r.evidence);
            ev.append(&mut r.comments);
            r.comments = ev;
        }
        rules
    }

    fn evidence_lines(&self, evidence: &BTreeSet<(usize, usize)>) -> Vec<String> {
        if evidence.is_empty() {
            return Vec::new();
        }
        let flows: BTreeSet<usize> = evidence.iter().map(|e| e.0).collect();
        let comms: BTreeSet<&str> = flows
            .iter()
            .flat_map(|&f| self.flows[f].comms.iter().map(String::as_str))
            .collect();
        let mut out = vec![format!(
            "Needed by {} observed flow(s){}:",
            flows.len(),
            if comms.is_empty() {
                String::new()
            } else {
                format!(
                    " of process(es) {}",
                    comms.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        )];
        for &(f, t) in evidence.iter().take(MAX_EVIDENCE_LINES) {
            out.push(format!(
                "  {}",
                describe_flow(self.ctx.engine, &self.flows[f], &self.results[f], t)
            ));
        }
        if evidence.len() > MAX_EVIDENCE_LINES {
            out.push(format!(
                "  ... and {} more",
                evidence.len() - MAX_EVIDENCE_LINES
            ));
        }
        out
    }
}

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// `namespace/pod`, `node n (ip)` or the address.
pub fn party_text(engine: &Engine, party: &Party, ip: IpAddr) -> String {
    match party {
        Party::Pod(p) => engine.pod_name(*p),
        Party::Node(Some(n)) => format!("node {n} ({ip})"),
        Party::Node(None) => format!("node {ip}"),
        Party::External => ip.to_string(),
    }
}

/// One line about one target of a flow: `src -> dst:port/proto [via Service] (dns) [comm]`.
pub fn describe_flow(engine: &Engine, f: &Observed, r: &FlowResult, target: usize) -> String {
    let t = &r.targets[target.min(r.targets.len().saturating_sub(1))];
    let mut s = format!("{} -> ", party_text(engine, &t.src, f.src_ip));
    if let Some(svc) = r.service.map(|i| &engine.services()[i]) {
        s.push_str(&format!(
            "Service {}/{}:{}/{} -> ",
            svc.namespace, svc.service, svc.port, svc.protocol
        ));
    }
    s.push_str(&format!(
        "{}:{}/{}",
        party_text(engine, &t.dst, t.dst_ip),
        t.dst_port,
        f.protocol
    ));
    if !f.dns_names.is_empty() {
        s.push_str(&format!(
            " ({})",
            f.dns_names.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !f.comms.is_empty() {
        s.push_str(&format!(
            " [{}]",
            f.comms.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    s
}

impl Plan {
    fn summaries(&self, b: &Builder) -> Vec<RuleSummary> {
        let mut out = Vec::new();
        for (direction, rules) in [
            (Direction::Ingress, &self.ingress),
            (Direction::Egress, &self.egress),
        ] {
            for (i, r) in rules.iter().enumerate() {
                let flows: BTreeSet<usize> = r.evidence.iter().map(|e| e.0).collect();
                out.push(RuleSummary {
                    policy: format!("{}/{}", self.namespace, self.name),
                    direction: direction_str(direction),
                    rule: i,
                    peers: peer_text(&r.peer),
                    ports: ports_text(&r.ports),
                    processes: flows
                        .iter()
                        .flat_map(|&f| b.flows[f].comms.iter().cloned())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    flows: flows.len(),
                });
            }
        }
        out
    }
}

fn peer_text(p: &PeerDesc) -> String {
    match p {
        PeerDesc::Dns => "cluster DNS pods".into(),
        PeerDesc::NodeLocalDns(ip) => format!("NodeLocal DNS {ip}"),
        PeerDesc::Pods { namespace, labels } => format!(
            "{}pods {}",
            namespace
                .as_ref()
                .map(|n| format!("namespace {n}, "))
                .unwrap_or_default(),
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        PeerDesc::Nodes => "node addresses".into(),
        PeerDesc::Blocks(b) => b
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn ports_text(ports: &BTreeSet<PortKey>) -> String {
    port_docs(ports)
        .iter()
        .map(|p| match p {
            PortDoc::Named { protocol, name } => format!("{name}/{protocol}"),
            PortDoc::Num {
                protocol,
                port,
                end: None,
            } => format!("{port}/{protocol}"),
            PortDoc::Num {
                protocol,
                port,
                end: Some(e),
            } => format!("{port}-{e}/{protocol}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// Ports: named where the destination names them, runs merged into endPort ranges.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortDoc {
    Named {
        protocol: Protocol,
        name: String,
    },
    Num {
        protocol: Protocol,
        port: u16,
        end: Option<u16>,
    },
}

/// Ports as a policy writes them: named ports by name, numeric ports per protocol with
/// runs of consecutive ports merged into `port`/`endPort` ranges. Sorted.
pub fn port_docs(ports: &BTreeSet<PortKey>) -> Vec<PortDoc> {
    let mut out = Vec::new();
    let mut numeric: BTreeMap<Protocol, BTreeSet<u16>> = BTreeMap::new();
    let mut named = BTreeSet::new();
    for p in ports {
        match &p.name {
            Some(n) => {
                named.insert((p.protocol, n.clone()));
            }
            None => {
                numeric.entry(p.protocol).or_default().insert(p.port);
            }
        }
    }
    for (protocol, set) in numeric {
        let mut run: Option<(u16, u16)> = None;
        for port in set {
            run = match run {
                Some((a, b)) if b.checked_add(1) == Some(port) => Some((a, port)),
                Some((a, b)) => {
                    out.push(PortDoc::Num {
                        protocol,
                        port: a,
                        end: (b > a).then_some(b),
                    });
                    Some((port, port))
                }
                None => Some((port, port)),
            };
        }
        if let Some((a, b)) = run {
            out.push(PortDoc::Num {
                protocol,
                port: a,
                end: (b > a).then_some(b),
            });
        }
    }
    out.extend(
        named
            .into_iter()
            .map(|(protocol, name)| PortDoc::Named { protocol, name }),
    );
    out
}

// ---------------------------------------------------------------------------------------
// Rendering.

fn sel_node(sel: &LabelSel) -> Node {
    let mut entries = Vec::new();
    if !sel.match_labels.is_empty() {
        entries.push((
            "matchLabels".to_owned(),
            Node::Map(
                sel.match_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), s(v.clone())))
                    .collect(),
            ),
        ));
    }
    if !sel.expressions.is_empty() {
        entries.push((
            "matchExpressions".to_owned(),
            seq(sel.expressions.iter().map(|(k, op, values)| {
                let mut m = vec![
                    ("key".to_owned(), s(k.clone())),
                    ("operator".to_owned(), s(op.clone())),
                ];
                if !values.is_empty() {
                    m.push((
                        "values".to_owned(),
                        seq(values.iter().map(|v| s(v.clone()))),
                    ));
                }
                Node::Map(m)
            })),
        ));
    }
    Node::Map(entries)
}

fn ns_sel(ns: &str) -> Node {
    map([(
        "matchLabels",
        Node::Map(vec![("kubernetes.io/metadata.name".to_owned(), s(ns))]),
    )])
}

fn k8s_ports(ports: &BTreeSet<PortKey>) -> Node {
    seq(port_docs(ports).into_iter().map(|p| match p {
        PortDoc::Named { protocol, name } => {
            map([("protocol", s(protocol.as_str())), ("port", s(name))])
        }
        PortDoc::Num {
            protocol,
            port,
            end,
        } => {
            let mut m = vec![
                ("protocol".to_owned(), s(protocol.as_str())),
                ("port".to_owned(), Node::Int(port.into())),
            ];
            if let Some(e) = end {
                m.push(("endPort".to_owned(), Node::Int(e.into())));
            }
            Node::Map(m)
        }
    }))
}

fn k8s_peers(peer: &PeerDesc, ctx: &Ctx) -> Vec<Node> {
    match peer {
        PeerDesc::Dns => {
            let mut v = Vec::new();
            match &ctx.dns_selector {
                Some((ns, labels)) => v.push(map([
                    ("namespaceSelector", ns_sel(ns)),
                    ("podSelector", sel_node(&LabelSel::labels(labels.clone()))),
                ])),
                None => {
                    v.push(map([
                        ("namespaceSelector", ns_sel("kube-system")),
                        (
                            "podSelector",
                            map([("matchLabels", map([("k8s-app", s("kube-dns"))]))]),
                        ),
                    ]));
                }
            }
            if ctx.dns_pods.is_empty() {
                for ip in &ctx.dns_service_ips {
                    v.push(map([(
                        "ipBlock",
                        map([("cidr", s(IpNet::from(*ip).to_string()))]),
                    )]));
                }
            }
            v
        }
        PeerDesc::NodeLocalDns(ip) => vec![map([(
            "ipBlock",
            map([("cidr", s(IpNet::from(*ip).to_string()))]),
        )])],
        PeerDesc::Pods { namespace, labels } => {
            let mut m = Vec::new();
            if let Some(ns) = namespace {
                m.push(("namespaceSelector".to_owned(), ns_sel(ns)));
            }
            m.push((
                "podSelector".to_owned(),
                sel_node(&LabelSel::labels(labels.clone())),
            ));
            vec![Node::Map(m)]
        }
        PeerDesc::Nodes => ctx
            .engine
            .node_addresses()
            .into_iter()
            .map(|ip| map([("ipBlock", map([("cidr", s(IpNet::from(ip).to_string()))]))]))
            .collect(),
        PeerDesc::Blocks(nets) => nets
            .iter()
            .map(|n| map([("ipBlock", map([("cidr", s(n.to_string()))]))]))
            .collect(),
    }
}

fn metadata(plan: &Plan) -> Node {
    map([
        ("name", s(plan.name.clone())),
        ("namespace", s(plan.namespace.clone())),
        (
            "annotations",
            Node::Map(
                plan.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), s(v.clone())))
                    .collect(),
            ),
        ),
    ])
}

fn render_k8s(plan: &Plan, ctx: &Ctx) -> Node {
    let mut spec = vec![("podSelector".to_owned(), sel_node(&plan.selector))];
    spec.push((
        "policyTypes".to_owned(),
        seq(plan.types.iter().map(|d| {
            s(if *d == Direction::Ingress {
                "Ingress"
            } else {
                "Egress"
            })
        })),
    ));
    for (key, rules, peer_key) in [
        ("ingress", &plan.ingress, "from"),
        ("egress", &plan.egress, "to"),
    ] {
        if rules.is_empty() {
            continue;
        }
        let items = rules
            .iter()
            .map(|r| {
                let mut m = vec![(peer_key.to_owned(), seq(k8s_peers(&r.peer, ctx)))];
                if !r.ports.is_empty() {
                    m.push(("ports".to_owned(), k8s_ports(&r.ports)));
                }
                Item {
                    comments: r.comments.clone(),
                    node: Node::Map(m),
                }
            })
            .collect();
        spec.push((key.to_owned(), Node::Seq(items)));
    }
    Node::Map(vec![
        ("apiVersion".to_owned(), s("networking.k8s.io/v1")),
        ("kind".to_owned(), s("NetworkPolicy")),
        ("metadata".to_owned(), metadata(plan)),
        ("spec".to_owned(), Node::Map(spec)),
    ])
}

fn cilium_sel(namespace: Option<&str>, labels: &BTreeMap<String, String>) -> Node {
    let mut m: Vec<(String, Node)> = labels
        .iter()
        .map(|(k, v)| (k.clone(), s(v.clone())))
        .collect();
    if let Some(ns) = namespace {
        m.insert(0, ("k8s:io.kubernetes.pod.namespace".to_owned(), s(ns)));
    }
    map([("matchLabels", Node::Map(m))])
}

fn cilium_ports(ports: &BTreeSet<PortKey>) -> Node {
    let list = port_docs(ports)
        .into_iter()
        .map(|p| match p {
            PortDoc::Named { protocol, name } => {
                map([("port", s(name)), ("protocol", s(protocol.as_str()))])
            }
            PortDoc::Num {
                protocol,
                port,
                end,
            } => {
                let mut m = vec![
                    ("port".to_owned(), s(port.to_string())),
                    ("protocol".to_owned(), s(protocol.as_str())),
                ];
                if let Some(e) = end {
                    m.push(("endPort".to_owned(), Node::Int(e.into())));
                }
                Node::Map(m)
            }
        })
        .collect::<Vec<_>>();
    seq([map([(
        "ports",
        Node::Seq(list.into_iter().map(Item::new).collect()),
    )])])
}

fn render_cilium(plan: &Plan, ctx: &Ctx) -> Node {
    let mut spec = vec![("endpointSelector".to_owned(), sel_node(&plan.selector))];
    let dns_sel = ctx.dns_selector.clone().unwrap_or_else(|| {
        (
            "kube-system".to_owned(),
            [("k8s-app".to_owned(), "kube-dns".to_owned())].into(),
        )
    });
    for (key, rules, direction) in [
        ("ingress", &plan.ingress, Direction::Ingress),
        ("egress", &plan.egress, Direction::Egress),
    ] {
        let isolates = plan.types.contains(&direction);
        if !isolates {
            continue;
        }
        let (from_ep, from_cidr, from_ent) = match direction {
            Direction::Ingress => ("fromEndpoints", "fromCIDR", "fromEntities"),
            Direction::Egress => ("toEndpoints", "toCIDR", "toEntities"),
        };
        let mut items: Vec<Item> = Vec::new();
        for r in rules {
            let mut m: Vec<(String, Node)> = Vec::new();
            let mut comments = r.comments.clone();
            match &r.peer {
                PeerDesc::Dns => {
                    m.push((
                        from_ep.to_owned(),
                        seq([cilium_sel(Some(&dns_sel.0), &dns_sel.1)]),
                    ));
                    comments.push("Cilium learns the names for toFQDNs from this rule's DNS proxy (dns matchPattern).".into());
                    let ports = seq([map([("port", s("53")), ("protocol", s("ANY"))])]);
                    m.push((
                        "toPorts".to_owned(),
                        seq([map([
                            ("ports", ports),
                            (
                                "rules",
                                map([("dns", seq([map([("matchPattern", s("*"))])]))]),
                            ),
                        ])]),
                    ));
                    items.push(Item {
                        comments,
                        node: Node::Map(m),
                    });
                    continue;
                }
                PeerDesc::Pods { namespace, labels } => {
                    let ns = namespace.clone().unwrap_or_else(|| plan.namespace.clone());
                    m.push((from_ep.to_owned(), seq([cilium_sel(Some(&ns), labels)])));
                }
                PeerDesc::Nodes => {
                    m.push((from_ent.to_owned(), seq([s("host"), s("remote-node")])))
                }
                PeerDesc::NodeLocalDns(ip) => {
                    m.push((from_cidr.to_owned(), seq([s(IpNet::from(*ip).to_string())])))
                }
                PeerDesc::Blocks(nets)
                    if direction == Direction::Egress && !r.dns_names.is_empty() =>
                {
                    comments.push("toFQDNs instead of the observed addresses: they follow the names' DNS answers.".into());
                    m.push((
                        "toFQDNs".to_owned(),
                        seq(r
                            .dns_names
                            .iter()
                            .map(|n| map([("matchName", s(n.clone()))]))),
                    ));
                    let _ = nets;
                }
                PeerDesc::Blocks(nets) => m.push((
                    from_cidr.to_owned(),
                    seq(nets.iter().map(|n| s(n.to_string()))),
                )),
            }
            if !r.ports.is_empty() {
                m.push(("toPorts".to_owned(), cilium_ports(&r.ports)));
            }
            items.push(Item {
                comments,
                node: Node::Map(m),
            });
        }
        if direction == Direction::Egress
            && rules.iter().any(|r| !r.dns_names.is_empty())
            && !rules.iter().any(|r| r.peer == PeerDesc::Dns)
        {
            let ports = seq([map([("port", s("53")), ("protocol", s("ANY"))])]);
            items.push(Item {
                comments: vec![
                    "DNS visibility for toFQDNs: Cilium must see the lookups of these names."
                        .into(),
                ],
                node: map([
                    (
                        "toEndpoints",
                        seq([cilium_sel(Some(&dns_sel.0), &dns_sel.1)]),
                    ),
                    (
                        "toPorts",
                        seq([map([
                            ("ports", ports),
                            (
                                "rules",
                                map([("dns", seq([map([("matchPattern", s("*"))])]))]),
                            ),
                        ])]),
                    ),
                ]),
            });
        }
        if items.is_empty() {
            // An empty rule list isolates without allowing anything in Cilium too.
            spec.push((key.to_owned(), seq([map([])])));
            continue;
        }
        spec.push((key.to_owned(), Node::Seq(items)));
    }
    Node::Map(vec![
        ("apiVersion".to_owned(), s("cilium.io/v2")),
        ("kind".to_owned(), s("CiliumNetworkPolicy")),
        ("metadata".to_owned(), metadata(plan)),
        ("spec".to_owned(), Node::Map(spec)),
    ])
}

type NetworkPolicy = k8s_openapi::api::networking::v1::NetworkPolicy;

/// The YAML of the header and the plans (rendered on two threads) and, for the
/// kubernetes flavor, each policy as a reader of the text gets it (from its tree, see
/// [`yaml::to_value`]), or what is wrong with one.
fn render_all(
    header: &[String],
    plans: &[Plan],
    flavor: Flavor,
    ctx: &Ctx,
) -> (String, Result<Vec<NetworkPolicy>, String>) {
    let mut out = yaml::stream_header(header);
    if plans.is_empty() {
        out.push_str("# No policy to write.\n");
    }
    let halves: Vec<&[Plan]> = plans.chunks(plans.len().div_ceil(2).max(1)).collect();
    let rendered = par_map(&halves, |half| {
        let mut text = String::new();
        let mut typed = Vec::new();
        for p in *half {
            let node = match flavor {
                Flavor::Kubernetes => render_k8s(p, ctx),
                Flavor::Cilium => render_cilium(p, ctx),
            };
            text.push_str(&yaml::document(&p.comments, &node));
            if flavor == Flavor::Kubernetes {
                typed.push(typed_policy(p, &node));
            }
        }
        (text, typed)
    });
    out.reserve_exact(rendered.iter().map(|r| r.0.len()).sum());
    let mut policies = Vec::new();
    for (text, typed) in rendered {
        out.push_str(&text);
        drop(text);
        policies.extend(typed);
    }
    (out, policies.into_iter().collect())
}

/// A rendered NetworkPolicy as the snapshot reader types it.
fn typed_policy(plan: &Plan, node: &Node) -> Result<NetworkPolicy, String> {
    let what = format!("NetworkPolicy {}/{}", plan.namespace, plan.name);
    let value = yaml::to_value(node).map_err(|e| format!("{what}: {e}"))?;
    let field = |k: &str| value.get(k).and_then(serde_yaml::Value::as_str);
    if (field("apiVersion"), field("kind")) != (Some("networking.k8s.io/v1"), Some("NetworkPolicy"))
    {
        return Err(format!("{what}: not a networking.k8s.io/v1 NetworkPolicy"));
    }
    // serde_path_to_error only to name the field of an error: it is slow.
    match serde_yaml::from_value(value) {
        Ok(np) => Ok(np),
        Err(_) => serde_path_to_error::deserialize(yaml::to_value(node)?)
            .map_err(|e| format!("{what}: field {}: {}", e.path(), e.inner())),
    }
}

// ---------------------------------------------------------------------------------------
// Round trip.

fn verify(
    ctx: &Ctx,
    flows: &[Observed],
    before: &[FlowResult],
    audited: &BTreeSet<GroupId>,
    plans: &[Plan],
    generated: Vec<NetworkPolicy>,
    mode: Mode,
) -> Result<Verification, SuggestError> {
    let generated_error = |message: String| SuggestError::Generated {
        mode: mode.as_str(),
        message,
    };
    let mut phase = Phase::start();
    let engine0 = ctx.engine;
    // The snapshot's objects with installed + generated policies, then generated alone.
    let snapshot = ctx.snapshot;
    let full = Engine::build_with(snapshot, snapshot.network_policies.iter().chain(&generated))
        .map_err(|e| generated_error(e.to_string()))?;
    phase.done("check: built the engine of installed + suggested policies");
    let mut v = Verification::default();
    let is_audited = |p: PodId| audited.contains(&ctx.group_of[p]);
    let touches_audited = |r: &FlowResult| {
        r.targets.iter().any(|t| {
            [&t.src, &t.dst]
                .into_iter()
                .any(|x| matches!(x, Party::Pod(p) if is_audited(*p)))
        })
    };
    let flow_ids: Vec<usize> = (0..flows.len()).collect();
    match mode {
        Mode::Fix => {
            drop(generated);
            let failures = par_map(&flow_ids, |&i| {
                let f = &flows[i];
                if admin_blocked(engine0, &before[i], mode) {
                    return None; // stated as a gap: no NetworkPolicy can change it
                }
                let after = f.evaluate(&full);
                if !after.allowed {
                    Some(format!(
                        "observed flow still denied: {}",
                        describe_flow(&full, f, &after, 0)
                    ))
                } else if before[i].allowed != after.allowed && before[i].allowed {
                    Some(format!(
                        "verdict changed: {}",
                        describe_flow(&full, f, &after, 0)
                    ))
                } else {
                    None
                }
            });
            v.observed_checked += flows.len();
            v.failures.extend(failures.into_iter().flatten());
            for (i, (a, b)) in engine0.pods().iter().zip(full.pods()).enumerate() {
                if a.ingress_policies.is_empty() != b.ingress_policies.is_empty()
                    || a.egress_policies.is_empty() != b.egress_policies.is_empty()
                {
                    v.failures
                        .push(format!("pod {} changed isolation", engine0.pod_name(i)));
                }
            }
        }
        Mode::Allowlist => {
            // One engine at a time: the observed flows against installed + suggested
            // first, then that engine is dropped before the suggestion alone is built.
            let with_all = par_map(&flow_ids, |&i| -> Option<Option<String>> {
                let f = &flows[i];
                if !touches_audited(&before[i]) || admin_blocked(engine0, &before[i], mode) {
                    return None;
                }
                let after = f.evaluate(&full);
                if after.allowed {
                    return Some(None);
                }
                let t = after.deciding_target();
                let side = if t.egress.allowed {
                    "ingress"
                } else {
                    "egress"
                };
                Some(Some(format!(
                    "observed flow denied ({side}) with the suggestion applied: {}",
                    describe_flow(&full, f, &after, 0)
                )))
            });
            drop(full);
            phase.done("check: observed flows with installed + suggested policies");
            let alone = Engine::build_with(snapshot, &generated)
                .map_err(|e| generated_error(e.to_string()))?;
            drop(generated);
            phase.done("check: built the engine of the suggested policies alone");
            let own_failures = par_map(&flow_ids, |&i| -> Option<String> {
                if !matches!(with_all[i], Some(None)) {
                    return None; // not checked, or already failed with installed + suggested
                }
                let f = &flows[i];
                let own = f.evaluate(&alone);
                let bad = own.targets.iter().any(|t| {
                    (matches!(t.src, Party::Pod(p) if is_audited(p)) && !t.egress.allowed)
                        || (matches!(t.dst, Party::Pod(p) if is_audited(p)) && !t.ingress.allowed)
                });
                bad.then(|| {
                    format!(
                        "observed flow not allowed by the suggestion alone: {}",
                        describe_flow(&alone, f, &own, 0)
                    )
                })
            });
            // Failures in flow order: each flow's first failed check.
            for (c, own) in with_all.into_iter().zip(own_failures) {
                let Some(c) = c else { continue };
                v.observed_checked += 1;
                v.failures.extend(c.or(own));
            }
            phase.done("check: observed flows with the suggested policies alone");
            sample_unobserved(ctx, &alone, flows, before, audited, plans, &mut v);
            phase.done("check: sampled unobserved flows");
        }
    }
    Ok(v)
}

/// Addresses for "somewhere nobody talked to" (benchmarking, documentation, shared and
/// reserved ranges), first one outside every CIDR the plan allows is used.
const UNOBSERVED_V4: &[[u8; 4]] = &[
    [198, 18, 0, 1],
    [198, 19, 255, 254],
    [192, 0, 2, 254],
    [100, 64, 0, 1],
    [240, 0, 0, 1],
    [233, 252, 0, 1],
];
const UNOBSERVED_PORTS: &[u16] = &[9, 7, 13, 37, 113, 65001];

/// What a workload was observed doing: its ports and pod peers.
#[derive(Default)]
struct Seen {
    egress_ports: BTreeSet<(u16, Protocol)>,
    ingress_ports: BTreeSet<(u16, Protocol)>,
    egress_peers: BTreeSet<PodId>,
}

fn sample_unobserved(
    ctx: &Ctx,
    alone: &Engine,
    flows: &[Observed],
    before: &[FlowResult],
    audited: &BTreeSet<GroupId>,
    plans: &[Plan],
    v: &mut Verification,
) {
    // Observed ports and peers of each audited workload, in one pass over the flows.
    let mut seen: HashMap<GroupId, Seen> = audited.iter().map(|&g| (g, Seen::default())).collect();
    for (f, r) in flows.iter().zip(before) {
        for t in &r.targets {
            if let Party::Pod(s) = t.src {
                if let Some(w) = seen.get_mut(&ctx.group_of[s]) {
                    w.egress_ports.insert((t.dst_port, f.protocol));
                    if let Party::Pod(q) = t.dst {
                        w.egress_peers.insert(q);
                    }
                }
            }
            if let Party::Pod(d) = t.dst {
                if let Some(w) = seen.get_mut(&ctx.group_of[d]) {
                    w.ingress_ports.insert((t.dst_port, f.protocol));
                }
            }
        }
    }
    let mut plans_by_ns: HashMap<&str, Vec<&Plan>> = HashMap::new();
    for pl in plans {
        plans_by_ns
            .entry(pl.namespace.as_str())
            .or_default()
            .push(pl);
    }
    let groups: Vec<GroupId> = audited.iter().copied().collect();
    let sampled = par_map(&groups, |&g| {
        sample_workload(ctx, alone, g, &seen[&g], &plans_by_ns)
    });
    for (checked, failures) in sampled {
        v.unobserved_checked += checked;
        v.failures.extend(failures);
    }
}

/// The unobserved flows of one audited workload: how many were checked, and those the
/// suggestion allows.
fn sample_workload(
    ctx: &Ctx,
    alone: &Engine,
    g: GroupId,
    seen: &Seen,
    plans_by_ns: &HashMap<&str, Vec<&Plan>>,
) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut failures = Vec::new();
    let pods = alone.pods();
    let Some(&p) = ctx.groups[g].iter().find(|&&i| !pods[i].ips.is_empty()) else {
        return (checked, failures);
    };
    let pip = pods[p].ips[0];
    let mine: Vec<&Plan> = plans_by_ns
        .get(pods[p].namespace.as_str())
        .into_iter()
        .flatten()
        .copied()
        .filter(|pl| pl.selector.matches(&pods[p].labels))
        .collect();
    if mine.is_empty() {
        return (checked, failures);
    }
    let Seen {
        egress_ports,
        ingress_ports,
        egress_peers,
    } = seen;
    let blocks = |dir: Direction| -> Vec<IpNet> {
        mine.iter()
            .flat_map(|pl| {
                if dir == Direction::Ingress {
                    &pl.ingress
                } else {
                    &pl.egress
                }
            })
            .flat_map(|r| match &r.peer {
                PeerDesc::Blocks(b) => b.clone(),
                PeerDesc::NodeLocalDns(ip) => vec![IpNet::from(*ip)],
                _ => Vec::new(),
            })
            .collect()
    };
    let pod_peer_matches = |dir: Direction, q: PodId| -> bool {
        mine.iter()
            .flat_map(|pl| {
                if dir == Direction::Ingress {
                    &pl.ingress
                } else {
                    &pl.egress
                }
            })
            .any(|r| match &r.peer {
                PeerDesc::Pods { namespace, labels } => {
                    let ns = namespace.as_deref().unwrap_or(&pods[p].namespace);
                    pods[q].namespace == ns
                        && labels.iter().all(|(k, v)| pods[q].labels.get(k) == Some(v))
                }
                PeerDesc::Dns => ctx.dns_pods.contains(&q),
                PeerDesc::Blocks(b) => pods[q]
                    .ips
                    .iter()
                    .any(|ip| b.iter().any(|n| n.contains(ip))),
                _ => false,
            })
    };
    let outside = |nets: &[IpNet]| -> Option<IpAddr> {
        UNOBSERVED_V4.iter().map(|o| IpAddr::from(*o)).find(|ip| {
            !nets.iter().any(|n| n.contains(ip)) && alone.classify(*ip) == Party::External
        })
    };
    let free_port = |used: &BTreeSet<(u16, Protocol)>, proto: Protocol| {
        UNOBSERVED_PORTS.iter().copied().find(|pt| {
            !used.contains(&(*pt, proto)) && !ctx.probe_ports[p].iter().any(|k| k.port == *pt)
        })
    };
    let group = &ctx.group_names[g];
    let mut check = |src: IpAddr,
                     dst: IpAddr,
                     port: u16,
                     proto: Protocol,
                     dir: Direction,
                     what: &str| {
        let r = alone.evaluate(src, dst, port, proto);
        checked += 1;
        for t in &r.targets {
            let side = if dir == Direction::Egress {
                &t.egress
            } else {
                &t.ingress
            };
            // An AdminNetworkPolicy Allow is the cluster admin's, not the suggestion's.
            if side.allowed && side.exception.is_none() && side.admin.is_none() {
                failures.push(format!("{what}: {src} -> {dst}:{port}/{proto} is allowed by the suggestion for {group} but was never observed"));
                break;
            }
        }
    };
    let mut e_ports: Vec<(u16, Protocol)> = egress_ports.iter().copied().collect();
    e_ports.extend(free_port(egress_ports, Protocol::Tcp).map(|pt| (pt, Protocol::Tcp)));
    if let Some(x) = outside(&blocks(Direction::Egress)) {
        for &(port, proto) in &e_ports {
            check(
                pip,
                x,
                port,
                proto,
                Direction::Egress,
                "egress to an unobserved address",
            );
        }
    }
    for &q in egress_peers {
        if q == p || pods[q].ips.is_empty() || pods[q].host_network {
            continue;
        }
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let used: BTreeSet<(u16, Protocol)> = ctx.container_ports[q]
                .iter()
                .map(|k| (k.port, k.protocol))
                .chain(egress_ports.iter().copied())
                .chain([(53, Protocol::Tcp), (53, Protocol::Udp)])
                .collect();
            if let Some(port) = free_port(&used, proto) {
                check(
                    pip,
                    pods[q].ips[0],
                    port,
                    proto,
                    Direction::Egress,
                    "egress to an observed peer on an unobserved port",
                );
            }
        }
    }
    // A pod of another workload that no observed peer rule of `dir` covers.
    let unobserved_pod = |dir: Direction| {
        (0..pods.len()).find(|&r| {
            !pods[r].host_network
                && !pods[r].ips.is_empty()
                && ctx.group_of[r] != g
                && !pod_peer_matches(dir, r)
        })
    };
    if let Some(r) = unobserved_pod(Direction::Egress) {
        for &(port, proto) in &e_ports {
            check(
                pip,
                pods[r].ips[0],
                port,
                proto,
                Direction::Egress,
                "egress to an unobserved pod",
            );
        }
    }
    let mut i_ports: Vec<(u16, Protocol)> = ingress_ports.iter().copied().collect();
    i_ports.extend(free_port(ingress_ports, Protocol::Tcp).map(|pt| (pt, Protocol::Tcp)));
    if let Some(x) = outside(&blocks(Direction::Ingress)) {
        for &(port, proto) in &i_ports {
            check(
                x,
                pip,
                port,
                proto,
                Direction::Ingress,
                "ingress from an unobserved address",
            );
        }
    }
    if let Some(r) = unobserved_pod(Direction::Ingress) {
        for &(port, proto) in &i_ports {
            check(
                pods[r].ips[0],
                pip,
                port,
                proto,
                Direction::Ingress,
                "ingress from an unobserved pod",
            );
        }
    }
    (checked, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[(Protocol, u16)]) -> BTreeSet<PortKey> {
        v.iter()
            .map(|&(protocol, port)| PortKey {
                protocol,
                port,
                name: None,
            })
            .collect()
    }

    #[test]
    fn udp_runs_become_end_port_ranges() {
        use Protocol::*;
        let got = port_docs(&keys(&[
            (Udp, 5000),
            (Udp, 5001),
            (Udp, 5002),
            (Udp, 5004),
            (Tcp, 80),
            (Udp, 65535),
            (Udp, 65534),
        ]));
        assert_eq!(
            got,
            vec![
                PortDoc::Num {
                    protocol: Tcp,
                    port: 80,
                    end: None
                },
                PortDoc::Num {
                    protocol: Udp,
                    port: 5000,
                    end: Some(5002)
                },
                PortDoc::Num {
                    protocol: Udp,
                    port: 5004,
                    end: None
                },
                PortDoc::Num {
                    protocol: Udp,
                    port: 65534,
                    end: Some(65535)
                },
            ]
        );
        let mut named = keys(&[(Tcp, 8080)]);
        named.insert(PortKey {
            protocol: Tcp,
            port: 1935,
            name: Some("rtmp".into()),
        });
        assert_eq!(
            port_docs(&named)[1],
            PortDoc::Named {
                protocol: Tcp,
                name: "rtmp".into()
            }
        );
    }

    #[test]
    fn merging_adds_counts_and_processes() {
        let a: FlowRecord = serde_json::from_str(r#"{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","dst_port":80,"protocol":"TCP","comm":"ffmpeg","count":2}"#).unwrap();
        let b: FlowRecord = serde_json::from_str(r#"{"src_ip":"::ffff:10.0.0.1","dst_ip":"10.0.0.2","dst_port":80,"protocol":"TCP","comm":"envoy","count":3,"dns_name":"Origin.Example."}"#).unwrap();
        let m = merge_flows([(1, &a), (2, &b)]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].count, 5);
        assert_eq!(m[0].records, 2);
        assert_eq!(m[0].comms.iter().collect::<Vec<_>>(), ["envoy", "ffmpeg"]);
        assert_eq!(
            m[0].dns_names.iter().collect::<Vec<_>>(),
            ["origin.example"]
        );
    }

    /// The check reports each observed flow's first failed check, in flow order: one
    /// denied with the suggestion applied, one allowed only by an installed policy.
    #[test]
    fn check_reports_each_failed_flow_once_in_flow_order() {
        let pod = |name: &str, ip: &str| {
            format!("- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {name}\n    namespace: media\n    labels:\n      app: {name}\n  spec:\n    containers:\n    - name: main\n      image: ffmpeg\n  status:\n    phase: Running\n    podIP: {ip}\n")
        };
        let allow_egress = |name: &str, to: &str| {
            format!("- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata:\n    name: {name}\n    namespace: media\n  spec:\n    podSelector:\n      matchLabels:\n        app: a\n    policyTypes: [Egress]\n    egress:\n    - to:\n{to}")
        };
        let snap_yaml = format!(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: media\n{}{}{}",
            pod("a", "10.244.0.1"),
            pod("b", "10.244.0.2"),
            allow_egress("installed", "      - ipBlock:\n          cidr: 203.0.113.0/24\n"),
        );
        let snapshot =
            crate::cluster::parse_snapshot(Path::new("t.yaml"), snap_yaml.as_bytes()).unwrap();
        let engine = Engine::build(&snapshot).unwrap();
        let generated: Vec<NetworkPolicy> = serde_yaml::from_str::<serde_yaml::Value>(&format!(
            "items:\n{}",
            allow_egress("suggested", "      - podSelector:\n          matchLabels:\n            app: b\n      ports:\n      - port: 80\n")
        ))
        .unwrap()["items"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| serde_yaml::from_value(v.clone()).unwrap())
            .collect();
        let rec = |dst: &str, port: u16| -> FlowRecord {
            serde_json::from_str(&format!(r#"{{"src_ip":"10.244.0.1","dst_ip":"{dst}","dst_port":{port},"protocol":"TCP","comm":"ffmpeg","count":1}}"#)).unwrap()
        };
        let records = [
            rec("203.0.113.9", 443),
            rec("10.244.0.2", 81),
            rec("10.244.0.2", 80),
        ];
        let mut flows = merge_flows(records.iter().enumerate().map(|(i, r)| (i + 1, r)));
        flows.sort_by_key(|f| std::cmp::Reverse(f.dst_ip));
        assert_eq!(flows[0].dst_ip.to_string(), "203.0.113.9");
        let ctx = Ctx::new(&snapshot, &engine);
        let before: Vec<FlowResult> = flows.iter().map(|f| f.evaluate(&engine)).collect();
        let Party::Pod(a) = engine.classify("10.244.0.1".parse().unwrap()) else {
            panic!("10.244.0.1 is pod a")
        };
        let audited = BTreeSet::from([ctx.group_of[a]]);
        let v = verify(
            &ctx,
            &flows,
            &before,
            &audited,
            &[],
            generated,
            Mode::Allowlist,
        )
        .unwrap();
        assert_eq!(v.observed_checked, 3);
        assert_eq!(v.failures.len(), 2, "{:?}", v.failures);
        assert!(
            v.failures[0].starts_with("observed flow not allowed by the suggestion alone")
                && v.failures[0].contains("203.0.113.9"),
            "{:?}",
            v.failures
        );
        assert!(
            v.failures[1].starts_with("observed flow denied (egress) with the suggestion applied")
                && v.failures[1].contains(":81"),
            "{:?}",
            v.failures
        );
    }
}
