//! `auditor report`: what the media pipelines did on the network, in one place.
//!
//! Writes into a directory: `report.md`, `report.html` (self-contained: inline CSS and an
//! inline SVG picture of the flows, no external assets), `report.json`, and the suggested
//! policies `allowlist.yaml` and `fix.yaml` (see [`crate::suggest`]). Contents: a summary,
//! per workload the observed flows with the processes that made them, the blocked flows
//! with the verdict that blocks them, installed rules no observed flow used, and the
//! suggested YAML with the result of its round trip through the policy engine.
//!
//! Pure apart from [`run`]: [`Report::build`] computes, the `render_*` functions format.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::cluster::{ClusterError, ClusterSource, Snapshot};
use crate::filter::{Filter, FilterArgs, FilterError};
use crate::flowlog::{read_flow_log, Direction, FlowLogError};
use crate::observed::Finding;
use crate::policy::{Engine, FlowResult, Party, PolicyError, RuleRef, Side};
use crate::suggest::labels::{group_of, parse_selector, SelectorParseError};
use crate::suggest::{
    add_missing_pods, merge_flows, party_text, resolve_identities, suggest, Audit, Mode, Observed,
    Options, RuleSummary, SuggestError, Suggestion,
};

/// Write the report: Markdown, self-contained HTML with a picture of the flows, JSON, and
/// the suggested policies (allowlist and fix), into a directory.
///
/// Example: auditor report --cluster cluster.yaml --flows flows.jsonl --output report/
///
/// Example: auditor report --kubeconfig ~/.kube/staging.yaml --flows flows.jsonl --output report/
///
/// Example: auditor report --cluster cluster.yaml --flows flows.jsonl -n media --output report/
///
/// Example: auditor report --cluster cluster.yaml --flows flows.jsonl --drill cdn-drill.json --output report/
///
/// Example: auditor report --cluster cluster.yaml --flows flows.jsonl --policies proposed.yaml --output report/
///
/// `-n`, `-l` and `--verdict` keep the flows shown as `auditor diff` does (unused rules:
/// those of `-n`'s namespace no flow used); `-n` and `-l` also choose whose policies are
/// suggested, as `auditor suggest` does (`--verdict` does not change the suggestions).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    // The cluster: a snapshot file (`--cluster`) or the live API server.
    #[command(flatten)]
    pub source: ClusterSource,
    /// Flow log (JSON lines; the recorder's flow log works as is).
    ///
    /// Example: --flows flows.jsonl
    #[arg(long, value_name = "FLOWS")]
    pub flows: PathBuf,
    /// Directory to write report.md, report.html, report.json, allowlist.yaml and fix.yaml
    /// into. No short form: kubectl users read `-o` as an output format
    /// (`auditor diff -o json`), and the report writes every format at once.
    ///
    /// Example: --output report/
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Audit the pods this label selector matches instead of those where `--comm` ran.
    ///
    /// Example: --select app=ffmpeg
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,
    /// Process names (comm) whose pods are audited (repeatable).
    ///
    /// Example: --comm ffmpeg --comm ffprobe
    #[arg(long, value_name = "COMM", default_values_t = ["ffmpeg".to_owned(), "ffprobe".to_owned()])]
    pub comm: Vec<String>,
    /// Widest IPv4 prefix external addresses may be aggregated into in the suggestion.
    ///
    /// Example: --max-prefix 24
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub max_prefix: u8,
    /// Count and skip invalid flow lines instead of failing on the first one.
    ///
    /// Example: --skip-invalid
    #[arg(long)]
    pub skip_invalid: bool,
    // -n/-A, -l, --verdict: the flows shown, and (-n, -l) whose policies are suggested.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// A failover drill's result, as `auditor drill -o json --output FILE` wrote it
    /// (repeatable): shown per drill with its outcome and evidence.
    ///
    /// Example: --drill cdn-drill.json
    #[arg(long = "drill", value_name = "FILE")]
    pub drills: Vec<PathBuf>,
    // --policies, --replace: a section on what the proposed policies would change.
    #[command(flatten)]
    pub what_if: crate::whatif::WhatIfArgs,
    /// An audited workload watched for less than this is on thin evidence (a warning in
    /// the section "Observation coverage"; so are CronJobs/Jobs seen in fewer than 2 runs
    /// and workloads whose peers or ports were still growing in the last 10% of it).
    ///
    /// Example: --min-observation 30m
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub min_observation: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
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
    #[error(transparent)]
    Drill(#[from] crate::drill::summary::ReadError),
    #[error(transparent)]
    WhatIf(Box<crate::whatif::WhatIfError>),
    #[error("building the suggestion for the report")]
    Suggest(#[source] SuggestError),
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::whatif::WhatIfError> for ReportError {
    fn from(e: crate::whatif::WhatIfError) -> Self {
        Self::WhatIf(Box::new(e))
    }
}

/// One observed flow in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub source: String,
    pub destination: String,
    /// `Service ns/name:port/proto` when the destination was a ClusterIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub port: u16,
    pub protocol: String,
    pub processes: Vec<String>,
    pub dns_names: Vec<String>,
    pub records: u64,
    pub count: u64,
    pub drops: u64,
    /// What the kernel saw: "36 dropped (NETFILTER_DROP), 2 timed out", "-" for nothing.
    pub observed: String,
    pub verdict: &'static str,
    /// Why it is denied (empty when allowed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// Where the kernel's facts and the verdict disagree, and the likely cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub likely_cause: String,
    /// Source and destination nodes of the picture.
    #[serde(skip)]
    src_node: String,
    #[serde(skip)]
    dst_node: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSection {
    pub workload: String,
    pub audited: bool,
    pub flows: Vec<FlowRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnusedRule {
    pub policy: String,
    pub direction: &'static str,
    pub rule: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuggestionSection {
    pub mode: &'static str,
    pub file: String,
    pub policies: usize,
    pub verified: bool,
    pub verification: String,
    pub failures: Vec<String>,
    pub gaps: Vec<String>,
    pub warnings: Vec<String>,
    pub rules: Vec<RuleSummary>,
    pub yaml: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub records: u64,
    pub distinct_flows: usize,
    pub allowed_flows: usize,
    pub denied_flows: usize,
    pub audited_workloads: Vec<String>,
    pub unused_rules: usize,
    pub skipped_lines: usize,
    /// Flows every policy allows that the kernel dropped or whose connections timed out.
    pub blocked_although_allowed: usize,
    /// Flows the policies deny that went through.
    pub denied_but_passed: usize,
    /// Audited workloads whose allowlist rests on thin evidence (see `coverage`).
    pub thin_evidence: usize,
    /// With `--policies`: shown flows the proposal would break, and unblock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_break: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_unblock: Option<usize>,
}

/// The report's content.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub workloads: Vec<WorkloadSection>,
    pub blocked: Vec<FlowRow>,
    /// The flows of the two findings (see [`crate::observed`]), in flow order.
    pub blocked_although_allowed: Vec<FlowRow>,
    pub denied_but_passed: Vec<FlowRow>,
    pub unused_rules: Vec<UnusedRule>,
    pub suggestions: Vec<SuggestionSection>,
    /// How much evidence each audited workload's allowlist rests on.
    pub coverage: crate::coverage::Coverage,
    pub notes: Vec<String>,
    /// Failover drills given with `--drill`, as they were written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<crate::drill::DrillReport>,
    /// `--policies`: what the proposed policies would change (see [`crate::whatif`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what_if: Option<crate::whatif::WhatIf>,
}

/// Runs `auditor report`; returns the exit code (1 when a suggestion failed its check).
pub fn run(args: &ReportArgs) -> Result<i32, ReportError> {
    args.source.check(&args.flows)?;
    crate::whatif::check_stdin(&args.what_if, args.source.file_path(), &args.flows)?;
    // Drill and proposal files first: a wrong one fails before the cluster is read.
    let drills = args
        .drills
        .iter()
        .map(|p| crate::drill::summary::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let proposal = crate::whatif::read_proposal(&args.what_if)?;
    let loaded = args.source.read()?;
    let (mut snapshot, origin) = (loaded.snapshot, loaded.origin);
    let engine = Engine::build(&snapshot).map_err(|error| ReportError::Policy {
        path: origin.clone(),
        error,
    })?;
    crate::cluster::require_pods(&origin, &snapshot)?;
    let log = read_flow_log(&args.flows, args.skip_invalid)?;
    let mut flows = merge_flows(log.records.iter().map(|(n, r)| (*n, r)));
    let mut identity_warnings = add_missing_pods(&mut snapshot, &flows);
    let engine = if identity_warnings.is_empty() {
        engine
    } else {
        Engine::build(&snapshot).map_err(|error| ReportError::Policy {
            path: origin.clone(),
            error,
        })?
    };
    identity_warnings.extend(resolve_identities(&engine, &mut flows));
    let audit = match &args.select {
        Some(s) => Audit::Selector(parse_selector(s)?),
        None => Audit::Comms(args.comm.clone()),
    };
    let opts = Options {
        audit,
        max_prefix_v4: args.max_prefix,
        pods: Filter::compile(&args.filter, &engine, &origin)?,
        min_observation: args.min_observation,
        ..Options::default()
    };
    let mut notes = snapshot.notes.clone();
    notes.extend(engine.notes.iter().cloned());
    notes.extend(identity_warnings);
    let mut report = Report::build(&snapshot, &engine, &flows, &opts, log.skipped.len(), notes)?;
    report.drills = drills;
    if let Some(p) = &proposal {
        let (proposed, replaced) = p.engine(&snapshot)?;
        report.check_proposal(
            p,
            &engine,
            &proposed,
            replaced,
            snapshot.network_policies.len(),
            &flows,
            &opts,
        );
    }
    let write = |name: &str, text: &str| {
        let path = args.output.join(name);
        std::fs::write(&path, text).map_err(|source| ReportError::Output { path, source })
    };
    std::fs::create_dir_all(&args.output).map_err(|source| ReportError::Output {
        path: args.output.clone(),
        source,
    })?;
    for s in &report.suggestions {
        write(&s.file, &s.yaml)?;
    }
    write("report.md", &render_markdown(&report))?;
    write("report.html", &render_html(&report))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| ReportError::Output {
        path: args.output.join("report.json"),
        source: std::io::Error::other(e),
    })?;
    write("report.json", &(json + "\n"))?;
    let failed = report.suggestions.iter().filter(|s| !s.verified).count();
    eprintln!(
        "auditor report: {} flows ({} denied), {} audited workload(s), {} unused rule(s); wrote report.md, report.html, report.json, allowlist.yaml, fix.yaml to {}",
        report.summary.distinct_flows,
        report.summary.denied_flows,
        report.summary.audited_workloads.len(),
        report.summary.unused_rules,
        args.output.display()
    );
    if let Some(w) = &report.what_if {
        eprintln!("auditor report: what if: {}", w.sentence());
    }
    if !report.drills.is_empty() {
        eprintln!(
            "auditor report: failover drills: {}",
            crate::drill::summary::tally(&report.drills)
        );
    }
    if !report.coverage.workloads.is_empty() {
        eprintln!(
            "auditor report: observation coverage: {}",
            coverage_sentence(&report.coverage)
        );
        for w in report.coverage.warnings() {
            eprintln!("auditor report: warning: {w}");
        }
    }
    for s in &report.suggestions {
        eprintln!("auditor report: {} suggestion: {}", s.mode, s.verification);
        for g in &s.gaps {
            eprintln!("auditor report: gap: {g}");
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

impl Report {
    pub fn build(
        snapshot: &Snapshot,
        engine: &Engine,
        flows: &[Observed],
        opts: &Options,
        skipped_lines: usize,
        notes: Vec<String>,
    ) -> Result<Self, ReportError> {
        let results: Vec<FlowResult> = flows.iter().map(|f| f.evaluate(engine)).collect();
        let mut suggestions = Vec::new();
        let mut audited = Vec::new();
        let mut coverage = crate::coverage::Coverage::empty(opts.min_observation);
        for mode in [Mode::Allowlist, Mode::Fix] {
            let o = Options {
                mode,
                ..opts.clone()
            };
            let s = suggest(snapshot, engine, flows, &o).map_err(ReportError::Suggest)?;
            if mode == Mode::Allowlist {
                audited = s.audited.clone();
                coverage = s.coverage.clone();
            }
            suggestions.push(section(&s));
        }
        let audited_set: BTreeSet<&str> = audited.iter().map(String::as_str).collect();
        let mut by_workload: BTreeMap<String, Vec<FlowRow>> = BTreeMap::new();
        let mut blocked = Vec::new();
        let (mut unexplained, mut passed) = (Vec::new(), Vec::new());
        let mut used: BTreeSet<RuleRef> = BTreeSet::new();
        let mut shown: Vec<(&Observed, &FlowResult)> = Vec::with_capacity(flows.len());
        for (f, r) in flows.iter().zip(&results) {
            for t in &r.targets {
                used.extend(t.egress.allowed_by.iter().copied());
                used.extend(t.ingress.allowed_by.iter().copied());
            }
            if !opts.pods.keeps(engine, r) {
                continue; // -n, -l, --verdict: counted as used, not shown
            }
            shown.push((f, r));
            let row = flow_row(engine, f, r);
            let t = &r.targets[0];
            let mut owners = BTreeSet::new();
            if let Party::Pod(p) = t.src {
                owners.insert(group_of(&engine.pods()[p].workload));
            }
            for t in &r.targets {
                if let Party::Pod(p) = t.dst {
                    owners.insert(group_of(&engine.pods()[p].workload));
                }
            }
            if owners.is_empty() {
                owners.insert("(no pod)".to_owned());
            }
            for o in owners {
                by_workload.entry(o).or_default().push(row.clone());
            }
            match row.finding {
                Some(Finding::BlockedAlthoughAllowed) => unexplained.push(row.clone()),
                Some(Finding::DeniedButPassed) => passed.push(row.clone()),
                None => {}
            }
            if !r.allowed {
                blocked.push(row);
            }
        }
        let mut workloads: Vec<WorkloadSection> = by_workload
            .into_iter()
            .map(|(workload, flows)| WorkloadSection {
                audited: audited_set.contains(workload.as_str()),
                workload,
                flows,
            })
            .collect();
        // Audited first, then by name.
        workloads.sort_by(|a, b| (!a.audited, &a.workload).cmp(&(!b.audited, &b.workload)));
        let unused_rules: Vec<UnusedRule> = engine
            .all_rules()
            .filter(|r| !used.contains(r))
            .filter(|r| {
                opts.pods
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| &engine.policies()[r.policy].namespace == ns)
            })
            .map(|r| UnusedRule {
                policy: engine.policy_name(r.policy),
                direction: dir_str(r.direction),
                rule: r.rule,
            })
            .collect();
        let denied = shown.iter().filter(|(_, r)| !r.allowed).count();
        Ok(Self {
            summary: Summary {
                records: shown.iter().map(|(f, _)| f.records).sum(),
                distinct_flows: shown.len(),
                allowed_flows: shown.len() - denied,
                denied_flows: denied,
                audited_workloads: audited,
                unused_rules: unused_rules.len(),
                skipped_lines,
                blocked_although_allowed: unexplained.len(),
                denied_but_passed: passed.len(),
                thin_evidence: coverage.thin(),
                would_break: None,
                would_unblock: None,
            },
            blocked_although_allowed: unexplained,
            denied_but_passed: passed,
            workloads,
            blocked,
            unused_rules,
            suggestions,
            coverage,
            notes,
            drills: Vec::new(),
            what_if: None,
        })
    }

    /// Evaluates the flows the report shows (those `opts.pods` keeps) under the proposed
    /// policies and adds the what-if section and summary counts.
    #[allow(clippy::too_many_arguments)]
    pub fn check_proposal(
        &mut self,
        proposal: &crate::whatif::Proposal,
        engine: &Engine,
        proposed: &Engine,
        replaced: usize,
        installed: usize,
        flows: &[Observed],
        opts: &Options,
    ) {
        let mut checker =
            crate::whatif::Checker::new(proposal, installed, replaced, engine, proposed);
        for f in flows {
            let r = f.evaluate(engine);
            if !opts.pods.keeps(engine, &r) {
                continue;
            }
            let id = crate::whatif::FlowId {
                who: f.who,
                src_ip: f.src_ip,
                dst_ip: f.dst_ip,
                dst_port: f.dst_port,
                protocol: f.protocol,
                records: f.records,
                first_line: f.first_line,
            };
            checker.check(id, &r);
        }
        let w = checker.finish();
        self.summary.would_break = Some(w.counts.broken);
        self.summary.would_unblock = Some(w.counts.unblocked);
        self.what_if = Some(w);
    }
}

fn section(s: &Suggestion) -> SuggestionSection {
    let v = &s.verification;
    let verification = if v.failures.is_empty() {
        match s.mode {
            Mode::Allowlist => format!("checked with the policy engine: {} observed flows allowed, {} sampled unobserved flows denied", v.observed_checked, v.unobserved_checked),
            Mode::Fix => format!("checked with the policy engine: {} observed flows re-evaluated, every denied one now allowed, no other verdict or isolation changed", v.observed_checked),
        }
    } else {
        format!(
            "FAILED its check with the policy engine ({} problem(s))",
            v.failures.len()
        )
    };
    SuggestionSection {
        mode: s.mode.as_str(),
        file: format!("{}.yaml", s.mode.as_str()),
        policies: s.policies,
        verified: v.failures.is_empty(),
        verification,
        failures: v.failures.clone(),
        gaps: s.gaps.clone(),
        warnings: s.warnings.clone(),
        rules: s.rules.clone(),
        yaml: s.kubernetes_yaml.clone(),
    }
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The picture's node for one end of a flow: a workload, a node, or an external address.
fn picture_node(engine: &Engine, party: &Party, ip: IpAddr, names: &BTreeSet<String>) -> String {
    match party {
        Party::Pod(p) => {
            let g = group_of(&engine.pods()[*p].workload);
            let mut parts = g.splitn(3, '/');
            let (ns, kind, name) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            format!("{ns}/{name} ({kind})")
        }
        Party::Node(_) => "nodes (kubelet, host network)".to_owned(),
        Party::External => match names.iter().next() {
            Some(n) => format!("{n} ({ip})"),
            None => ip.to_string(),
        },
    }
}

fn side_why(engine: &Engine, side: &Side, what: &str) -> String {
    let pod = side.pod.map(|p| engine.pod_name(p)).unwrap_or_default();
    if let Some(r) = side.denied_by_admin() {
        return format!("{what}: {pod} is denied by {}", engine.admin_rule_text(&r));
    }
    let policies: Vec<String> = side
        .isolated_by
        .iter()
        .map(|&p| engine.policy_name(p))
        .collect();
    format!(
        "{what}: {pod} is isolated by {} and no rule allows this flow",
        policies.join(", ")
    )
}

fn flow_row(engine: &Engine, f: &Observed, r: &FlowResult) -> FlowRow {
    let t = r.deciding_target();
    let mut why = Vec::new();
    if !t.egress.allowed {
        why.push(side_why(engine, &t.egress, "denied on egress"));
    }
    if !t.ingress.allowed {
        why.push(side_why(engine, &t.ingress, "denied on ingress"));
    }
    let service = r.service.map(|i| {
        let s = &engine.services()[i];
        format!(
            "Service {}/{}:{}/{}",
            s.namespace, s.service, s.port, s.protocol
        )
    });
    FlowRow {
        source: party_text(engine, &t.src, f.src_ip),
        destination: party_text(engine, &t.dst, t.dst_ip),
        service,
        port: t.dst_port,
        protocol: f.protocol.as_str().to_owned(),
        processes: f.comms.iter().cloned().collect(),
        dns_names: f.dns_names.iter().cloned().collect(),
        records: f.records,
        count: f.count,
        drops: f.facts.drops,
        observed: f.facts.text(),
        verdict: if r.allowed { "allow" } else { "deny" },
        why: why.join("; "),
        finding: f.facts.finding(r.allowed),
        likely_cause: f
            .facts
            .finding(r.allowed)
            .map(|x| f.facts.likely_cause(x))
            .unwrap_or_default(),
        src_node: picture_node(engine, &t.src, f.src_ip, &BTreeSet::new()),
        dst_node: picture_node(engine, &t.dst, t.dst_ip, &f.dns_names),
    }
}

// ---------------------------------------------------------------------------------------
// Observation coverage.

/// `1 of 2 audited workloads on thin evidence (watched less than 24h, ...); the flow log covers 1h`.
fn coverage_sentence(c: &crate::coverage::Coverage) -> String {
    let thin = c.thin();
    let mut s = if thin == 0 {
        format!(
            "every audited workload watched at least {}, its needs no longer growing",
            c.min_observation.text
        )
    } else {
        format!(
            "{thin} of {} audited workload(s) on thin evidence: their allowlists may be incomplete",
            c.workloads.len()
        )
    };
    let _ = write!(s, "; the flows cover {}", c.recording.duration.text);
    s
}

/// The table's cells for one workload.
fn coverage_cells(w: &crate::coverage::WorkloadCoverage) -> [String; 10] {
    let last_new = match &w.last_new {
        Some(n) => format!(
            "{} {} before the end: {} {} {}",
            n.kind, n.before_end.text, n.direction, n.peer, n.port
        ),
        None if w.needs == 0 => "-".into(),
        None => "unknown".into(),
    };
    [
        w.workload.clone(),
        w.watched.duration.text.clone(),
        w.watched
            .first_seen
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        w.watched
            .last_seen
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        w.pods.to_string(),
        w.job_runs.map_or_else(|| "-".into(), |r| r.to_string()),
        if w.flows_without_times > 0 {
            format!("{} ({} without times)", w.flows, w.flows_without_times)
        } else {
            w.flows.to_string()
        },
        format!("{} / {}", w.peers, w.ports),
        last_new,
        if w.thin { "THIN".into() } else { "ok".into() },
    ]
}

const COVERAGE_HEADERS: [&str; 10] = [
    "workload",
    "watched",
    "first seen",
    "last seen",
    "pods",
    "Job runs",
    "flows",
    "peers / ports",
    "last new peer or port",
    "evidence",
];

fn coverage_md(out: &mut String, c: &crate::coverage::Coverage) {
    if c.workloads.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Observation coverage\n\nHow much evidence each audited workload's allowlist rests on: thin when watched less than {} (`--min-observation`), a CronJob or Job seen in fewer than 2 runs, or a new peer or port in the last 10% of its window.\n",
        c.min_observation.text
    );
    let _ = writeln!(out, "| {} |", COVERAGE_HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(COVERAGE_HEADERS.len()));
    for w in &c.workloads {
        let cells: Vec<String> = coverage_cells(w).iter().map(|x| md_cell(x)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let warnings: Vec<&str> = c.warnings().collect();
    if !warnings.is_empty() {
        out.push('\n');
        for w in warnings {
            let _ = writeln!(out, "- warning: {}", md_cell(w));
        }
    }
}

fn coverage_html(out: &mut String, c: &crate::coverage::Coverage) {
    if c.workloads.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "<h2 id=\"coverage\">Observation coverage</h2><p>How much evidence each audited workload's allowlist rests on: thin when watched less than {} (<code>--min-observation</code>), a CronJob or Job seen in fewer than 2 runs, or a new peer or port in the last 10% of its window.</p>",
        esc(&c.min_observation.text)
    );
    out.push_str("<table class=\"coverage\"><tr>");
    for h in COVERAGE_HEADERS {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>\n");
    for w in &c.workloads {
        let _ = write!(
            out,
            "<tr class=\"{}\" data-workload=\"{}\">",
            if w.thin { "thin" } else { "ok" },
            esc(&w.workload)
        );
        for (i, cell) in coverage_cells(w).iter().enumerate() {
            if i == 9 {
                let _ = write!(
                    out,
                    "<td class=\"{}\">{}</td>",
                    if w.thin { "bad" } else { "ok" },
                    esc(cell)
                );
            } else {
                let _ = write!(out, "<td>{}</td>", esc(cell));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    for w in c.warnings() {
        let _ = writeln!(out, "<p class=\"bad warning\">Warning: {}</p>", esc(w));
    }
}

// ---------------------------------------------------------------------------------------
// Markdown.

/// The finding sections that have flows, with their titles.
fn findings(r: &Report) -> Vec<(&'static str, &[FlowRow])> {
    [
        (
            "Blocked although every policy allows them",
            &r.blocked_although_allowed[..],
        ),
        ("Denied, yet they went through", &r.denied_but_passed[..]),
    ]
    .into_iter()
    .filter(|(_, rows)| !rows.is_empty())
    .collect()
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn flow_table_md(out: &mut String, rows: &[FlowRow], with_why: bool) {
    out.push_str(
        "| verdict | source | destination | port | processes | DNS name | records | observed |",
    );
    out.push_str(if with_why {
        " why |\n|---|---|---|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|---|---|---|\n"
    });
    for r in rows {
        let dst = match &r.service {
            Some(s) => format!("{} via {s}", r.destination),
            None => r.destination.clone(),
        };
        let _ = write!(
            out,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} |",
            r.verdict,
            md_cell(&r.source),
            md_cell(&dst),
            r.port,
            r.protocol,
            md_cell(&r.processes.join(", ")),
            md_cell(&r.dns_names.join(", ")),
            r.records,
            md_cell(&r.observed)
        );
        if with_why {
            let _ = write!(out, " {} |", md_cell(&r.why));
        }
        out.push('\n');
    }
}

pub fn render_markdown(r: &Report) -> String {
    let mut out = String::from("# auditor report\n\n## Summary\n\n");
    let s = &r.summary;
    let _ = writeln!(
        out,
        "- {} distinct flows from {} records: **{} allowed, {} denied**",
        s.distinct_flows, s.records, s.allowed_flows, s.denied_flows
    );
    let _ = writeln!(
        out,
        "- audited workloads: {}",
        if s.audited_workloads.is_empty() {
            "none found".to_owned()
        } else {
            s.audited_workloads.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "- installed rules no observed flow used: {}",
        s.unused_rules
    );
    for sug in &r.suggestions {
        let _ = writeln!(
            out,
            "- suggested {} (`{}`, {} policies): {}",
            sug.mode, sug.file, sug.policies, sug.verification
        );
    }
    if s.skipped_lines > 0 {
        let _ = writeln!(out, "- invalid flow lines skipped: {}", s.skipped_lines);
    }
    if s.blocked_although_allowed + s.denied_but_passed > 0 {
        let _ = writeln!(
            out,
            "- the kernel disagrees with the policies: **{} blocked although every policy allows them**, {} denied yet went through",
            s.blocked_although_allowed, s.denied_but_passed
        );
    }
    if let Some(w) = &r.what_if {
        let _ = writeln!(
            out,
            "- what if: **{} would break, {} would be unblocked** by the proposed policies ({})",
            w.counts.broken,
            w.counts.unblocked,
            w.files.join(", ")
        );
    }
    if !r.drills.is_empty() {
        let _ = writeln!(
            out,
            "- failover drills: {}",
            crate::drill::summary::tally(&r.drills)
        );
    }
    if !r.coverage.workloads.is_empty() {
        let _ = writeln!(
            out,
            "- observation coverage: {}",
            coverage_sentence(&r.coverage)
        );
    }
    out.push_str("\n## Blocked flows\n\n");
    if r.blocked.is_empty() {
        out.push_str("None.\n");
    } else {
        flow_table_md(&mut out, &r.blocked, true);
    }
    for (title, rows) in findings(r) {
        let _ = writeln!(out, "\n## {title}\n");
        for f in rows {
            let _ = writeln!(
                out,
                "- {} -> {} {}/{} ({}): {}. Likely: {}",
                md_cell(&f.source),
                md_cell(&f.destination),
                f.port,
                f.protocol,
                f.verdict,
                md_cell(&f.observed),
                md_cell(&f.likely_cause)
            );
        }
    }
    if let Some(w) = &r.what_if {
        out.push_str(&w.markdown());
    }
    out.push_str(&crate::drill::summary::markdown(&r.drills));
    coverage_md(&mut out, &r.coverage);
    out.push_str("\n## Flows per workload\n");
    for w in &r.workloads {
        let _ = writeln!(
            out,
            "\n### {}{}\n",
            w.workload,
            if w.audited { " (audited)" } else { "" }
        );
        flow_table_md(&mut out, &w.flows, false);
    }
    out.push_str("\n## Installed rules no observed flow used\n\n");
    if r.unused_rules.is_empty() {
        out.push_str("None.\n");
    }
    for u in &r.unused_rules {
        let _ = writeln!(out, "- `{}` {}[{}]", u.policy, u.direction, u.rule);
    }
    for sug in &r.suggestions {
        let _ = writeln!(
            out,
            "\n## Suggested {} (`{}`)\n\n{}\n",
            sug.mode, sug.file, sug.verification
        );
        for f in &sug.failures {
            let _ = writeln!(out, "- FAILED: {f}");
        }
        for g in &sug.gaps {
            let _ = writeln!(out, "- gap: {g}");
        }
        for w in &sug.warnings {
            let _ = writeln!(out, "- warning: {w}");
        }
        if !sug.rules.is_empty() {
            out.push_str("\n| policy | rule | peers | ports | processes | flows |\n|---|---|---|---|---|---|\n");
            for rule in &sug.rules {
                let _ = writeln!(
                    out,
                    "| {} | {}[{}] | {} | {} | {} | {} |",
                    rule.policy,
                    rule.direction,
                    rule.rule,
                    md_cell(&rule.peers),
                    md_cell(&rule.ports),
                    rule.processes.join(", "),
                    rule.flows
                );
            }
        }
        let _ = writeln!(out, "\n```yaml\n{}```", sug.yaml);
    }
    if !r.notes.is_empty() {
        out.push_str("\n## Notes\n\n");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// HTML and SVG.

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}h2{margin-top:32px;border-bottom:2px solid #dde1e7;padding-bottom:4px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border-radius:8px;padding:12px 18px;box-shadow:0 1px 2px #0002;min-width:140px}
.card b{display:block;font-size:26px}.card.deny b{color:#c62828}.card.allow b{color:#2e7d32}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;margin:8px 0}
th,td{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}
.v-allow{color:#2e7d32;font-weight:600}.v-deny{color:#c62828;font-weight:600}
tr.deny td{background:#fdecea}
pre{background:#1d2330;color:#e8eaf0;padding:12px;border-radius:6px;overflow:auto;font-size:12px}
.ok{color:#2e7d32}.bad{color:#c62828}.tag{font-size:11px;background:#e3f2fd;border-radius:4px;padding:1px 6px;margin-left:6px}
svg{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;max-width:100%;height:auto}
svg text{font-family:system-ui,sans-serif}";

fn flow_table_html(out: &mut String, rows: &[FlowRow], with_why: bool) {
    out.push_str("<table><tr><th>verdict</th><th>source</th><th>destination</th><th>port</th><th>processes</th><th>DNS name</th><th>records</th><th>observed</th>");
    if with_why {
        out.push_str("<th>why</th>");
    }
    out.push_str("</tr>\n");
    for r in rows {
        let dst = match &r.service {
            Some(s) => format!("{} <small>via {}</small>", esc(&r.destination), esc(s)),
            None => esc(&r.destination),
        };
        let _ = write!(
            out,
            "<tr class=\"{}\"><td class=\"v-{}\">{}</td><td>{}</td><td>{dst}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            r.verdict,
            r.verdict,
            r.verdict,
            esc(&r.source),
            r.port,
            r.protocol,
            esc(&r.processes.join(", ")),
            esc(&r.dns_names.join(", ")),
            r.records,
            esc(&r.observed)
        );
        if with_why {
            let _ = write!(out, "<td>{}</td>", esc(&r.why));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The picture: sources left, destinations right (parties that are both in the middle),
/// one edge per (source, destination, verdict), green allowed, red denied.
pub fn render_svg(r: &Report) -> String {
    let mut rows: Vec<&FlowRow> = r.workloads.iter().flat_map(|w| &w.flows).collect();
    rows.sort_by(|a, b| {
        (&a.src_node, &a.dst_node, a.port).cmp(&(&b.src_node, &b.dst_node, b.port))
    });
    rows.dedup_by(|a, b| {
        a.src_node == b.src_node
            && a.dst_node == b.dst_node
            && a.port == b.port
            && a.protocol == b.protocol
            && a.source == b.source
            && a.destination == b.destination
    });
    let srcs: BTreeSet<&str> = rows.iter().map(|f| f.src_node.as_str()).collect();
    let dsts: BTreeSet<&str> = rows.iter().map(|f| f.dst_node.as_str()).collect();
    let audited: BTreeSet<String> = r
        .summary
        .audited_workloads
        .iter()
        .map(|g| {
            let mut p = g.splitn(3, '/');
            let (ns, kind, name) = (
                p.next().unwrap_or(""),
                p.next().unwrap_or(""),
                p.next().unwrap_or(""),
            );
            format!("{ns}/{name} ({kind})")
        })
        .collect();
    // The middle column holds the audited workloads only; any other party that sends
    // (the nodes' kubelet probes, callers) is a source, the rest are destinations.
    let mut cols: [Vec<&str>; 3] = Default::default();
    for n in srcs.union(&dsts) {
        let c = if audited.contains(*n) {
            1
        } else if srcs.contains(n) {
            0
        } else {
            2
        };
        cols[c].push(n);
    }
    let (w, box_w, box_h, gap) = (1120.0_f64, 300.0_f64, 44.0_f64, 26.0_f64);
    let xs = [20.0, (w - box_w) / 2.0, w - box_w - 20.0];
    let max_rows = cols.iter().map(Vec::len).max().unwrap_or(0).max(1) as f64;
    let h = 70.0 + max_rows * (box_h + gap);
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (c, nodes) in cols.iter().enumerate() {
        let offset = 60.0 + (max_rows - nodes.len() as f64) * (box_h + gap) / 2.0;
        for (i, n) in nodes.iter().enumerate() {
            pos.insert(n, (xs[c], offset + i as f64 * (box_h + gap)));
        }
    }
    let mut edges: BTreeMap<(&str, &str, &str), BTreeSet<String>> = BTreeMap::new();
    for f in &rows {
        edges
            .entry((f.src_node.as_str(), f.dst_node.as_str(), f.verdict))
            .or_default()
            .insert(format!("{}/{}", f.port, f.protocol));
    }
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"flows\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"observed flows by verdict\">\n\
<defs><marker id=\"a-allow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#2e7d32\"/></marker>\
<marker id=\"a-deny\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#c62828\"/></marker></defs>\n\
<text x=\"{}\" y=\"30\" font-size=\"14\" font-weight=\"600\" fill=\"#555\">sources</text><text x=\"{}\" y=\"30\" font-size=\"14\" font-weight=\"600\" fill=\"#555\">audited workloads</text><text x=\"{}\" y=\"30\" font-size=\"14\" font-weight=\"600\" fill=\"#555\">destinations</text>\n\
<g font-size=\"12\"><rect x=\"{}\" y=\"14\" width=\"14\" height=\"4\" fill=\"#2e7d32\"/><text x=\"{}\" y=\"20\">allowed</text><rect x=\"{}\" y=\"14\" width=\"14\" height=\"4\" fill=\"#c62828\"/><text x=\"{}\" y=\"20\">denied</text></g>\n",
        xs[0],
        xs[1],
        xs[2],
        w - 170.0,
        w - 152.0,
        w - 90.0,
        w - 72.0
    );
    // Edges between the same two boxes (an allowed and a denied one) are drawn apart,
    // and a label that would cover another moves down until it is free.
    let mut pair_count: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (s, d, _) in edges.keys() {
        *pair_count.entry((*s, *d)).or_default() += 1;
    }
    let mut pair_seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut labels: Vec<(f64, f64, f64)> = Vec::new();
    for ((s, d, verdict), ports) in &edges {
        let (Some(&(sx, sy)), Some(&(dx, dy))) = (pos.get(s), pos.get(d)) else {
            continue;
        };
        let k = {
            let seen = pair_seen.entry((*s, *d)).or_default();
            *seen += 1;
            *seen - 1
        };
        let n = pair_count[&(*s, *d)];
        let shift = (k as f64 - (n as f64 - 1.0) / 2.0) * 12.0;
        let (sy, dy) = (sy + shift, dy + shift);
        let colour = if *verdict == "allow" {
            "#2e7d32"
        } else {
            "#c62828"
        };
        let (x1, y1, x2, y2) = if dx > sx {
            (sx + box_w, sy + box_h / 2.0, dx, dy + box_h / 2.0)
        } else if dx < sx {
            // Back to a source (an audited workload answering a caller's port, say).
            (sx, sy + box_h / 2.0, dx + box_w, dy + box_h / 2.0)
        } else {
            (
                sx + box_w,
                sy + box_h / 2.0,
                dx + box_w,
                dy + box_h / 2.0 + 6.0,
            )
        };
        let path = if dx != sx {
            let mx = (x1 + x2) / 2.0;
            format!("M{x1:.1},{y1:.1} C{mx:.1},{y1:.1} {mx:.1},{y2:.1} {x2:.1},{y2:.1}")
        } else {
            // Same column: loop out to the right.
            let bend = x1 + 60.0;
            format!("M{x1:.1},{y1:.1} C{bend:.1},{y1:.1} {bend:.1},{y2:.1} {x2:.1},{y2:.1}")
        };
        let label = ports.iter().cloned().collect::<Vec<_>>().join(", ");
        let (lx, mut ly) = if dx != sx {
            ((x1 + x2) / 2.0, (y1 + y2) / 2.0 - 4.0)
        } else {
            (x1 + 48.0, (y1 + y2) / 2.0)
        };
        let text = format!("{label}{}", if *verdict == "deny" { " DENIED" } else { "" });
        // About 6.2 px a character at 11 px, 13 px a line.
        let half = text.chars().count() as f64 * 3.1 + 3.0;
        for _ in 0..40 {
            let hit = labels
                .iter()
                .any(|&(x, y, hw)| (x - lx).abs() < hw + half && (y - ly).abs() < 13.0);
            if !hit {
                break;
            }
            ly += 13.0;
        }
        labels.push((lx, ly, half));
        let dash = if *verdict == "deny" {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            "<g class=\"edge {verdict}\" data-verdict=\"{verdict}\"><title>{} -&gt; {} {label}: {verdict}</title><path d=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.2\"{dash} marker-end=\"url(#a-{verdict})\"/><text x=\"{lx:.1}\" y=\"{ly:.1}\" font-size=\"11\" fill=\"{colour}\" text-anchor=\"middle\" paint-order=\"stroke\" stroke=\"#fff\" stroke-width=\"3\">{}</text></g>",
            esc(s),
            esc(d),
            esc(&text)
        );
    }
    for (n, (x, y)) in &pos {
        let is_audited = audited.contains(*n);
        let is_pod = n.ends_with(')') && n.contains('/') && !n.contains("nodes (");
        let (fill, stroke) = if is_audited {
            ("#e3f2fd", "#1565c0")
        } else if is_pod {
            ("#f3f4f6", "#6b7280")
        } else {
            ("#fff8e1", "#b7791f")
        };
        let text: String = if n.chars().count() > 44 {
            format!("{}…", n.chars().take(43).collect::<String>())
        } else {
            (*n).to_owned()
        };
        let _ = writeln!(
            svg,
            "<g class=\"node\" data-name=\"{}\"><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{box_w}\" height=\"{box_h}\" rx=\"8\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#1d2330\">{}</text></g>",
            esc(n),
            esc(n),
            if is_audited { 2.5 } else { 1.2 },
            x + box_w / 2.0,
            y + box_h / 2.0 + 4.5,
            esc(&text)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn render_html(r: &Report) -> String {
    let s = &r.summary;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>auditor report</title><style>{CSS}</style></head><body><main>\n<h1>auditor report</h1><div>Observed flows evaluated against the installed NetworkPolicies.</div>\n<div class=\"cards\"><div class=\"card\"><b>{}</b>distinct flows</div><div class=\"card allow\" id=\"allowed\"><b>{}</b>allowed</div><div class=\"card deny\" id=\"denied\"><b>{}</b>denied</div><div class=\"card\"><b>{}</b>audited workloads</div><div class=\"card\"><b>{}</b>unused installed rules</div></div>\n",
        s.distinct_flows,
        s.allowed_flows,
        s.denied_flows,
        s.audited_workloads.len(),
        s.unused_rules
    );
    if let Some(w) = &r.what_if {
        let _ = writeln!(
            out,
            "<p id=\"what-if-summary\" class=\"{}\">What if: <b>{} would break, {} would be unblocked</b> by the proposed policies ({}). <a href=\"#what-if\">Details</a>.</p>",
            if w.counts.broken > 0 { "bad" } else { "ok" },
            w.counts.broken,
            w.counts.unblocked,
            esc(&w.files.join(", "))
        );
    }
    out.push_str("<h2>Flows</h2>\n");
    out.push_str(&render_svg(r));
    out.push_str("<h2>Blocked flows</h2>\n");
    if r.blocked.is_empty() {
        out.push_str("<p class=\"ok\">None.</p>\n");
    } else {
        flow_table_html(&mut out, &r.blocked, true);
    }
    for (title, rows) in findings(r) {
        let _ = write!(out, "<h2 class=\"finding\">{}</h2><ul>", esc(title));
        for f in rows {
            let _ = write!(
                out,
                "<li class=\"bad\">{} &rarr; {} {}/{} ({}): <b>{}</b>. Likely: {}</li>",
                esc(&f.source),
                esc(&f.destination),
                f.port,
                f.protocol,
                f.verdict,
                esc(&f.observed),
                esc(&f.likely_cause)
            );
        }
        out.push_str("</ul>\n");
    }
    if let Some(w) = &r.what_if {
        out.push_str(&w.html(esc));
    }
    out.push_str(&crate::drill::summary::html(&r.drills, esc));
    coverage_html(&mut out, &r.coverage);
    out.push_str("<h2>Flows per workload</h2>\n");
    for w in &r.workloads {
        let _ = writeln!(
            out,
            "<h3 class=\"workload\">{}{}</h3>",
            esc(&w.workload),
            if w.audited {
                "<span class=\"tag\">audited</span>"
            } else {
                ""
            }
        );
        flow_table_html(&mut out, &w.flows, false);
    }
    out.push_str("<h2>Installed rules no observed flow used</h2>\n");
    if r.unused_rules.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<ul>");
        for u in &r.unused_rules {
            let _ = write!(
                out,
                "<li><code>{}</code> {}[{}]</li>",
                esc(&u.policy),
                u.direction,
                u.rule
            );
        }
        out.push_str("</ul>\n");
    }
    for sug in &r.suggestions {
        let _ = writeln!(
            out,
            "<h2>Suggested {} <small>({})</small></h2><p class=\"{}\">{}</p>",
            sug.mode,
            esc(&sug.file),
            if sug.verified { "ok" } else { "bad" },
            esc(&sug.verification)
        );
        for f in &sug.failures {
            let _ = writeln!(out, "<p class=\"bad\">FAILED: {}</p>", esc(f));
        }
        for g in &sug.gaps {
            let _ = writeln!(out, "<p class=\"bad\">Gap: {}</p>", esc(g));
        }
        for w in &sug.warnings {
            let _ = writeln!(out, "<p>Warning: {}</p>", esc(w));
        }
        if !sug.rules.is_empty() {
            out.push_str("<table><tr><th>policy</th><th>rule</th><th>peers</th><th>ports</th><th>processes</th><th>flows</th></tr>\n");
            for rule in &sug.rules {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}[{}]</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&rule.policy),
                    rule.direction,
                    rule.rule,
                    esc(&rule.peers),
                    esc(&rule.ports),
                    esc(&rule.processes.join(", ")),
                    rule.flows
                );
            }
            out.push_str("</table>\n");
        }
        let _ = writeln!(out, "<pre>{}</pre>", esc(&sug.yaml));
    }
    if !r.notes.is_empty() {
        out.push_str("<h2>Notes</h2><ul>");
        for n in &r.notes {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</main></body></html>\n");
    out
}
