//! `auditor diff`: evaluate observed flows against the installed NetworkPolicies.
//!
//! Reads a cluster snapshot and a flow log, evaluates every distinct flow once with the
//! [policy engine](crate::policy), and writes, in input order, each flow with its verdict
//! and the policies and rules that decided it, plus a summary: counts per workload,
//! denied flows, and installed rules that allowed no observed flow.
//!
//! Exit code: 0 when every flow is allowed, 1 when at least one is denied (like `diff`);
//! errors are reported by the caller (2). With `--policies` the exit code is the what-if's
//! ([`crate::whatif`]): 0 when nothing would break, 4 when a flow would break, 5 (only with
//! `--fail-on change`) when nothing would break but a flow would be unblocked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cluster::{ClusterError, ClusterSource, Snapshot};
use crate::filter::{Filter, FilterArgs, FilterError};
use crate::flowlog::{visit_flow_log, Direction, FlowLogError, Protocol};
use crate::observed::{Facts, Finding};
use crate::policy::{Engine, Exception, FlowResult, Party, PolicyError, RuleRef, Side, Target};
use crate::whatif::{Change, Checker, FailOn, FlowId, Proposal, WhatIf, WhatIfArgs, WhatIfError};

/// Output format of `auditor diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `{"flows":[...],"summary":{...}}`, flows in input order.
    Json,
    /// Aligned text for a terminal: one row per distinct flow, then the summary.
    #[default]
    Table,
    /// The table as Markdown, for reports and pull requests.
    Markdown,
    /// JSON lines: one object per flow record kept, the same object as in `json`'s
    /// `flows` (the input record with `verdict`, `egress`, `ingress`, `service`, and with
    /// `--policies` `what_if`), in input order, and nothing else: no summary line, so every
    /// line is a flow for `jq` or `grep`; the summary is in `json`, and the exit code still
    /// says whether a flow is denied (or, with `--policies`, would break). Nothing kept: no
    /// output.
    Jsonl,
}

/// Evaluate observed flows against the installed NetworkPolicies: for every flow, allow or
/// deny and the policy and rule that decided. Exits 1 when a flow is denied.
///
/// What-if: `--policies FILE` evaluates every flow shown again under proposed policies
/// (applied to the installed ones as `kubectl apply` would; with `--replace`, instead of
/// them) and lists the flows that would break (allowed today, denied by the proposal) and
/// those that would be unblocked (denied today, allowed). Table and markdown end with that
/// section, `-o json` has a `what_if` object (files, counts, `broken` and `unblocked`), and
/// every record of `-o json`/`-o jsonl` carries a `what_if` member (`verdict`, `change`:
/// `break`, `unblock` or `none`, `why`).
///
/// Exit codes: 0 every flow allowed, 1 a flow denied, 2 an error. With --policies, the
/// what-if's instead: 0 nothing would break, 4 a flow would break, 5 nothing would break
/// but a flow would be unblocked (only with `--fail-on change`); `--fail-on none`: 0.
///
/// `-o` is the output format, as kubectl's (`-o json`); `--output FILE` (no short form)
/// is where it goes.
///
/// Example: auditor diff --cluster cluster.yaml --flows flows.jsonl -o table
///
/// Example: auditor diff --cluster cluster.yaml --flows flows.jsonl -o jsonl --verdict denied | jq .dst_ip
///
/// Example: auditor diff --cluster cluster.yaml --flows flows.jsonl -n media --verdict denied
///
/// Example: auditor diff --context staging --flows flows.jsonl    (the live cluster, as kubectl reads it)
///
/// Example: auditor diff --cluster cluster.yaml --flows flows.jsonl --policies proposed.yaml    (CI: exit 4 if it breaks a flow)
///
/// Example: auditor diff --cluster cluster.yaml --flows flows.jsonl --policies allowlist.yaml --replace --fail-on change -o json
#[derive(Debug, Default, clap::Args)]
pub struct DiffArgs {
    // The cluster: a snapshot file (`--cluster`) or the live API server.
    #[command(flatten)]
    pub source: ClusterSource,
    /// Flow log: JSON lines with at least src_ip, dst_ip, dst_port and protocol; the
    /// recorder's flow log works as is (`-` for stdin).
    ///
    /// Example: --flows flows.jsonl
    #[arg(long, value_name = "FLOWS")]
    pub flows: PathBuf,
    /// Output format, as kubectl's `-o` (also `--format`, `--output-format`).
    ///
    /// Example: -o json
    #[arg(
        short = 'o',
        long = "format",
        visible_alias = "output-format",
        value_enum,
        value_name = "FORMAT",
        default_value_t = Format::Table
    )]
    pub format: Format,
    /// Count and skip invalid flow lines instead of failing on the first one.
    ///
    /// Example: --skip-invalid
    #[arg(long)]
    pub skip_invalid: bool,
    /// Write the output to this file instead of stdout (no short form: `-o` is the format,
    /// as in kubectl).
    ///
    /// Example: --output diff.json
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    // -n/-A, -l, --verdict.
    #[command(flatten)]
    pub filter: FilterArgs,
    // --policies, --replace: the what-if.
    #[command(flatten)]
    pub what_if: WhatIfArgs,
    /// With --policies: which outcome of the what-if fails (the exit code is then the
    /// what-if's, not the denied flows'): `break` exits 4 when an observed flow allowed
    /// today would be denied, `change` also exits 5 when nothing breaks but a denied flow
    /// would be allowed, `none` exits 0.
    ///
    /// Example: --policies proposed.yaml --fail-on change
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = FailOn::Break, requires = "policies")]
    pub fail_on: FailOn,
}

pub use crate::filter::VerdictFilter;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{path}: {error}")]
    Policy { path: PathBuf, error: PolicyError },
    #[error(transparent)]
    Flows(#[from] FlowLogError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    WhatIf(Box<WhatIfError>),
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<WhatIfError> for DiffError {
    fn from(e: WhatIfError) -> Self {
        Self::WhatIf(Box::new(e))
    }
}

/// Runs `auditor diff`; returns the process exit code.
///
/// The snapshot (YAML parsing dominates) and the flow log are read on two threads.
pub fn run(args: &DiffArgs) -> Result<i32, DiffError> {
    args.source.check(&args.flows)?;
    crate::whatif::check_stdin(&args.what_if, args.source.file_path(), &args.flows)?;
    run_from(args, || args.source.read())
}

/// [`run`] with the cluster from `read_cluster` (tests pass one read from a faked API
/// server); it runs beside the flow log's reading, on a thread of its own.
pub fn run_from(
    args: &DiffArgs,
    read_cluster: impl FnOnce() -> Result<crate::cluster::Loaded, ClusterError> + Send,
) -> Result<i32, DiffError> {
    // The proposal first: a wrong file fails before the cluster is read.
    let proposal = crate::whatif::read_proposal(&args.what_if)?;
    let (built, input) = std::thread::scope(|scope| {
        let cluster = scope.spawn(|| -> Result<(Snapshot, Engine, PathBuf), DiffError> {
            let loaded = read_cluster()?;
            let (snapshot, origin) = (loaded.snapshot, loaded.origin);
            let engine = Engine::build(&snapshot).map_err(|error| DiffError::Policy {
                path: origin.clone(),
                error,
            })?;
            crate::cluster::require_pods(&origin, &snapshot)?;
            Ok((snapshot, engine, origin))
        });
        let input = FlowInput::read(&args.flows, args.skip_invalid);
        let built = cluster
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (built, input)
    });
    let (mut snapshot, mut engine, origin) = built?;
    let input = input?;
    // Pods the flow log names that the snapshot lacks: added as recorded, engine rebuilt.
    let added = crate::identity::add_missing_pods(
        &mut snapshot,
        input.hints.iter().flatten().map(|h| &**h),
    );
    if !added.is_empty() {
        engine = Engine::build(&snapshot).map_err(|error| DiffError::Policy {
            path: origin.clone(),
            error,
        })?;
    }
    // The proposed set over the same snapshot (the pods added above included), so pod
    // ids and the resolved identities hold for both engines.
    let proposed = match &proposal {
        Some(p) => {
            let (e, replaced) = p.engine(&snapshot)?;
            Some((e, replaced, snapshot.network_policies.len()))
        }
        None => None,
    };
    let mut notes = std::mem::take(&mut snapshot.notes);
    drop(snapshot);
    notes.extend(engine.notes.iter().cloned());
    notes.extend(added);
    let mut report = Report::new(&engine, &input, notes);
    let filter = Filter::compile(&args.filter, &engine, &origin)?;
    if !filter.is_empty() {
        report.retain(filter.namespace.as_deref(), |d| {
            filter.keeps(&engine, &d.result)
        });
    }
    if let (Some(p), Some((proposed, replaced, installed))) = (&proposal, &proposed) {
        report.check_proposal(p, proposed, *replaced, *installed);
    }
    let out_name = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("<stdout>"));
    let write_err = |source| DiffError::Output {
        path: out_name.clone(),
        source,
    };
    let sink: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::fs::File::create(p).map_err(write_err)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = std::io::BufWriter::with_capacity(1 << 20, sink);
    report
        .write(args.format, &input, &mut w)
        .map_err(write_err)?;
    w.flush().map_err(write_err)?;
    Ok(match &report.what_if {
        Some(x) => x.what_if.exit_code(args.fail_on),
        None => report.exit_code(),
    })
}

/// A flow log read for diffing: its bytes, and for each record its distinct flow and
/// where its line is, so that the output can carry each input line as it was without
/// keeping a million parsed records around.
pub struct FlowInput {
    data: Vec<u8>,
    records: Vec<InputRecord>,
    distinct: Vec<DistinctInput>,
    hints: Vec<Option<std::sync::Arc<crate::identity::Hint>>>,
    /// Lines skipped with `--skip-invalid`: line number and reason.
    pub skipped: Vec<(usize, String)>,
}

struct InputRecord {
    distinct: u32,
    start: usize,
    end: usize,
}

struct DistinctInput {
    key: FlowKey,
    first_line: usize,
    records: u64,
    facts: Facts,
}

impl FlowInput {
    /// Reads a flow log (`-` is stdin) with the validation of [`crate::flowlog`].
    pub fn read(path: &Path, skip_invalid: bool) -> Result<Self, FlowLogError> {
        let io = |source| FlowLogError::Io {
            path: path.to_owned(),
            source,
        };
        let data = crate::flowlog::read_input(path).map_err(io)?;
        Self::parse(path, data, skip_invalid)
    }

    /// Parses flow-log bytes; `path` only names the source in errors.
    pub fn parse(path: &Path, data: Vec<u8>, skip_invalid: bool) -> Result<Self, FlowLogError> {
        let mut index: HashMap<FlowKey, u32> = HashMap::new();
        let mut distinct: Vec<DistinctInput> = Vec::new();
        let mut records = Vec::new();
        let mut interned = crate::identity::Hints::default();
        let mut hints = vec![None];
        // Interned: one Arc per distinct hint, so its address is its identity.
        let mut hint_ids: HashMap<*const crate::identity::Hint, u32> = HashMap::new();
        let skipped = visit_flow_log(path, &data, skip_invalid, |line, span, r| {
            let hint = match interned.intern(&r) {
                None => 0,
                Some(h) => *hint_ids
                    .entry(std::sync::Arc::as_ptr(&h))
                    .or_insert_with(|| {
                        hints.push(Some(h));
                        u32::try_from(hints.len() - 1).unwrap_or(u32::MAX)
                    }),
            };
            let key = FlowKey::of(&r, hint);
            let i = *index.entry(key).or_insert_with(|| {
                distinct.push(DistinctInput {
                    key,
                    first_line: line,
                    records: 0,
                    facts: Facts::default(),
                });
                u32::try_from(distinct.len() - 1).unwrap_or(u32::MAX)
            });
            if let Some(d) = distinct.get_mut(i as usize) {
                d.records += 1;
                d.facts.add(&r);
            }
            records.push(InputRecord {
                distinct: i,
                start: span.start,
                end: span.end,
            });
        })?;
        Ok(Self {
            data,
            records,
            distinct,
            hints,
            skipped,
        })
    }

    /// Number of records read.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Distinct flow: what the verdict depends on (the addresses, and what the record says
/// about its pods: [`crate::identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
    protocol: Protocol,
    /// Index into [`FlowInput::hints`]; 0: none.
    hint: u32,
}

impl FlowKey {
    fn of(r: &crate::flowlog::FlowRecord, hint: u32) -> Self {
        Self {
            src_ip: r.src_ip.to_canonical(),
            dst_ip: r.dst_ip.to_canonical(),
            dst_port: r.dst_port,
            protocol: r.protocol,
            hint,
        }
    }
}

/// One distinct flow and its verdict.
#[derive(Debug, Clone)]
pub struct Distinct {
    key: FlowKey,
    /// The pods its ends are (see [`crate::identity::resolve`]).
    who: crate::identity::Resolved,
    pub result: FlowResult,
    pub first_line: usize,
    pub records: u64,
    /// What the kernel saw of it, over its records.
    pub facts: Facts,
}

impl Distinct {
    /// Where the kernel's facts and the verdict disagree.
    pub fn finding(&self) -> Option<Finding> {
        self.facts.finding(self.result.allowed)
    }
}

/// The evaluated flow log.
pub struct Report<'a> {
    engine: &'a Engine,
    /// Distinct flows in order of first appearance.
    pub distinct: Vec<Distinct>,
    pub records: usize,
    pub denied_records: u64,
    pub skipped: Vec<(usize, String)>,
    pub notes: Vec<String>,
    /// Set by [`Report::retain`]: the kept index of each distinct flow of the input
    /// (`u32::MAX`: filtered out), the rules every flow used, and the namespace filter.
    filtered: Option<Filtered>,
    /// Set by [`Report::check_proposal`] (`--policies`).
    pub what_if: Option<WhatIfOutput>,
}

/// The what-if of a diff: the outcome and, per distinct flow, its records' `what_if`
/// member.
pub struct WhatIfOutput {
    pub what_if: WhatIf,
    members: Vec<String>,
}

struct Filtered {
    index: Vec<u32>,
    used: BTreeSet<RuleRef>,
    namespace: Option<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    records: usize,
    distinct_flows: usize,
    allowed_records: u64,
    denied_records: u64,
    skipped_lines: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<SkippedLine>,
    workloads: Vec<WorkloadCount>,
    denied_flows: Vec<DeniedFlow>,
    /// Every policy in the snapshot allows them, yet the kernel dropped them or their
    /// connections timed out.
    blocked_although_allowed: Vec<FindingFlow>,
    /// The snapshot's policies deny them, yet they went through.
    denied_but_passed: Vec<FindingFlow>,
    unused_rules: Vec<UnusedRule>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FindingFlow {
    #[serde(flatten)]
    flow: FlowRef,
    observed: String,
    likely_cause: String,
}

/// A distinct flow as the summary lists it.
#[derive(Debug, Serialize)]
struct FlowRef {
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
    protocol: Protocol,
    source: String,
    destination: String,
    records: u64,
    first_line: usize,
}

#[derive(Debug, Serialize)]
struct DeniedFlow {
    #[serde(flatten)]
    flow: FlowRef,
    why: String,
}

#[derive(Debug, Serialize)]
struct UnusedRule {
    policy: String,
    direction: &'static str,
    rule: usize,
}

#[derive(Debug, Serialize)]
struct SkippedLine {
    line: usize,
    reason: String,
}

#[derive(Debug, Default, Clone, Serialize)]
struct WorkloadCount {
    workload: String,
    egress_records: u64,
    egress_denied: u64,
    ingress_records: u64,
    ingress_denied: u64,
}

impl<'a> Report<'a> {
    /// Evaluates every distinct flow of `input` once, on two threads.
    pub fn new(engine: &'a Engine, input: &FlowInput, mut notes: Vec<String>) -> Self {
        let eval = |d: &DistinctInput| {
            let k = d.key;
            let (who, warnings) = crate::identity::resolve(
                engine,
                &crate::identity::FlowName {
                    line: d.first_line,
                    src_ip: k.src_ip,
                    dst_ip: k.dst_ip,
                    dst_port: k.dst_port,
                    protocol: k.protocol,
                    hint: input.hints.get(k.hint as usize).and_then(|h| h.as_deref()),
                },
            );
            let d = Distinct {
                key: k,
                who,
                result: who.evaluate(engine, k.src_ip, k.dst_ip, k.dst_port, k.protocol),
                first_line: d.first_line,
                records: d.records,
                facts: d.facts.clone(),
            };
            (d, warnings)
        };
        let half = input.distinct.len() / 2;
        let (first, second) = input.distinct.split_at(half);
        let evaluated: Vec<(Distinct, Vec<String>)> = std::thread::scope(|scope| {
            let a = scope.spawn(|| first.iter().map(eval).collect::<Vec<_>>());
            let b: Vec<_> = second.iter().map(eval).collect();
            let mut a = a
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            a.extend(b);
            a
        });
        let mut distinct = Vec::with_capacity(evaluated.len());
        for (d, warnings) in evaluated {
            notes.extend(warnings.into_iter().map(|w| format!("identity: {w}")));
            distinct.push(d);
        }
        let denied_records = distinct
            .iter()
            .filter(|d| !d.result.allowed)
            .map(|d| d.records)
            .sum();
        Self {
            engine,
            distinct,
            records: input.len(),
            denied_records,
            skipped: input.skipped.clone(),
            notes,
            filtered: None,
            what_if: None,
        }
    }

    /// Keeps only the distinct flows `keep` accepts (the `-n`, `-l`, `--verdict` filters):
    /// counts, summary and output then cover those alone. Unused rules stay those no flow
    /// of the whole log used, restricted to `namespace`'s policies when it is given.
    pub fn retain(&mut self, namespace: Option<&str>, keep: impl Fn(&Distinct) -> bool) {
        let used = self.used_rules();
        let mut index = Vec::with_capacity(self.distinct.len());
        let mut kept = Vec::new();
        for d in std::mem::take(&mut self.distinct) {
            if keep(&d) {
                index.push(u32::try_from(kept.len()).unwrap_or(u32::MAX));
                kept.push(d);
            } else {
                index.push(u32::MAX);
            }
        }
        self.distinct = kept;
        self.records = self.distinct.iter().map(|d| d.records as usize).sum();
        self.denied_records = self
            .distinct
            .iter()
            .filter(|d| !d.result.allowed)
            .map(|d| d.records)
            .sum();
        self.filtered = Some(Filtered {
            index,
            used,
            namespace: namespace.map(str::to_owned),
        });
    }

    fn used_rules(&self) -> BTreeSet<RuleRef> {
        self.distinct
            .iter()
            .flat_map(|d| d.result.targets.iter())
            .flat_map(|t| {
                t.egress
                    .allowed_by
                    .iter()
                    .chain(t.ingress.allowed_by.iter())
            })
            .copied()
            .collect()
    }

    /// Evaluates every distinct flow kept under the proposed policies (`proposed`, built
    /// from the same snapshot by [`Proposal::engine`]) and keeps what changes.
    pub fn check_proposal(
        &mut self,
        proposal: &Proposal,
        proposed: &Engine,
        replaced: usize,
        installed: usize,
    ) {
        let mut checker = Checker::new(proposal, installed, replaced, self.engine, proposed);
        let mut members = Vec::with_capacity(self.distinct.len());
        for d in &self.distinct {
            let flow = FlowId {
                who: d.who,
                src_ip: d.key.src_ip,
                dst_ip: d.key.dst_ip,
                dst_port: d.key.dst_port,
                protocol: d.key.protocol,
                records: d.records,
                first_line: d.first_line,
            };
            let (result, change): (FlowResult, Option<Change>) = checker.check(flow, &d.result);
            members.push(WhatIf::record_member(
                proposed,
                &result,
                change,
                d.key.protocol,
            ));
        }
        self.what_if = Some(WhatIfOutput {
            what_if: checker.finish(),
            members,
        });
    }

    /// 0 when every record is allowed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.denied_records > 0 {
            1
        } else {
            0
        }
    }

    /// Rules in effect that allowed no observed flow, in policy order.
    pub fn unused_rules(&self) -> Vec<RuleRef> {
        let computed;
        let (used, namespace) = match &self.filtered {
            Some(f) => (&f.used, f.namespace.as_deref()),
            None => {
                computed = self.used_rules();
                (&computed, None)
            }
        };
        self.engine
            .all_rules()
            .filter(|r| !used.contains(r))
            .filter(|r| namespace.is_none_or(|ns| self.engine.policies()[r.policy].namespace == ns))
            .collect()
    }

    fn workloads(&self) -> Vec<WorkloadCount> {
        let mut map: BTreeMap<&str, WorkloadCount> = BTreeMap::new();
        for d in &self.distinct {
            let mut seen_dst = BTreeSet::new();
            for t in &d.result.targets {
                if let Party::Pod(p) = t.src {
                    if seen_dst.is_empty() {
                        let w = map.entry(&self.engine.pods()[p].workload).or_default();
                        w.egress_records += d.records;
                        if !d.result.allowed {
                            w.egress_denied += d.records;
                        }
                    }
                }
                if let Party::Pod(p) = t.dst {
                    let name = self.engine.pods()[p].workload.as_str();
                    if seen_dst.insert(name) {
                        let w = map.entry(name).or_default();
                        w.ingress_records += d.records;
                        if !t.ingress.allowed {
                            w.ingress_denied += d.records;
                        }
                    }
                } else {
                    seen_dst.insert("");
                }
            }
        }
        map.into_iter()
            .map(|(name, mut w)| {
                w.workload = name.to_owned();
                w
            })
            .collect()
    }

    fn flow_ref(&self, d: &Distinct) -> FlowRef {
        FlowRef {
            src_ip: d.key.src_ip,
            dst_ip: d.key.dst_ip,
            dst_port: d.key.dst_port,
            protocol: d.key.protocol,
            source: party_text(self.engine, &d.result.targets[0].src, d.key.src_ip),
            destination: destination_text(self.engine, &d.result),
            records: d.records,
            first_line: d.first_line,
        }
    }

    fn summary(&self) -> Summary {
        let records = self.records;
        let e = self.engine;
        let denied_flows = self
            .distinct
            .iter()
            .filter(|d| !d.result.allowed)
            .map(|d| DeniedFlow {
                flow: self.flow_ref(d),
                why: why(self.engine, &d.result, d.key.protocol),
            })
            .collect();
        let findings = |want: Finding| -> Vec<FindingFlow> {
            self.distinct
                .iter()
                .filter(|d| d.finding() == Some(want))
                .map(|d| FindingFlow {
                    flow: self.flow_ref(d),
                    observed: d.facts.text(),
                    likely_cause: d.facts.likely_cause(want),
                })
                .collect()
        };
        let unused_rules = self
            .unused_rules()
            .into_iter()
            .map(|r| UnusedRule {
                policy: e.policy_name(r.policy),
                direction: direction_str(r.direction),
                rule: r.rule,
            })
            .collect();
        Summary {
            records,
            distinct_flows: self.distinct.len(),
            allowed_records: records as u64 - self.denied_records,
            denied_records: self.denied_records,
            skipped_lines: self.skipped.len(),
            skipped: self
                .skipped
                .iter()
                .map(|(line, reason)| SkippedLine {
                    line: *line,
                    reason: reason.clone(),
                })
                .collect(),
            workloads: self.workloads(),
            denied_flows,
            blocked_although_allowed: findings(Finding::BlockedAlthoughAllowed),
            denied_but_passed: findings(Finding::DeniedButPassed),
            unused_rules,
            notes: self.notes.clone(),
        }
    }

    /// Writes the report. `input` must be the one the report was built from.
    pub fn write<W: Write>(
        &self,
        format: Format,
        input: &FlowInput,
        w: &mut W,
    ) -> std::io::Result<()> {
        match format {
            Format::Json => self.write_json(input, w),
            Format::Jsonl => self.write_jsonl(input, w),
            Format::Table => self.write_text(false, w),
            Format::Markdown => self.write_text(true, w),
        }
    }

    /// The verdict members of each distinct flow, rendered once, on two threads.
    fn verdict_fragments(&self) -> Vec<String> {
        let names = JsonNames::new(self.engine);
        let half = self.distinct.len() / 2;
        let (first, second) = self.distinct.split_at(half);
        let render = |ds: &[Distinct], offset: usize| -> Vec<String> {
            ds.iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut f = self.verdict_fragment(&names, d);
                    if let Some(m) = self
                        .what_if
                        .as_ref()
                        .and_then(|x| x.members.get(offset + i))
                    {
                        f.push(',');
                        f.push_str(m);
                    }
                    f
                })
                .collect()
        };
        std::thread::scope(|scope| {
            let a = scope.spawn(|| render(first, 0));
            let b = render(second, half);
            let mut a = a
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            a.extend(b);
            a
        })
    }

    /// Each kept record of `input`, in input order, as its JSON object: the record's line
    /// with the verdict members of its distinct flow spliced in before the closing brace
    /// (`{...input...}` -> `{...input...,"verdict":...}`).
    fn write_records<W: Write>(
        &self,
        input: &FlowInput,
        w: &mut W,
        separator: &[u8],
    ) -> std::io::Result<usize> {
        let fragments = self.verdict_fragments();
        let mut n = 0usize;
        for r in &input.records {
            let distinct = match &self.filtered {
                None => r.distinct,
                Some(f) => match f.index.get(r.distinct as usize) {
                    Some(&i) if i != u32::MAX => i,
                    _ => continue,
                },
            };
            if n > 0 {
                w.write_all(separator)?;
            }
            n += 1;
            // A record's trimmed line is a JSON object: drop its closing brace.
            let line = input
                .data
                .get(r.start..r.end.saturating_sub(1))
                .unwrap_or_default();
            w.write_all(line)?;
            w.write_all(b",")?;
            w.write_all(
                fragments
                    .get(distinct as usize)
                    .map(String::as_bytes)
                    .unwrap_or_default(),
            )?;
            w.write_all(b"}")?;
        }
        Ok(n)
    }

    fn write_json<W: Write>(&self, input: &FlowInput, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"{\"flows\":[\n")?;
        let n = self.write_records(input, w, b",\n")?;
        w.write_all(if n == 0 { b"],\n" } else { b"\n],\n" })?;
        w.write_all(b"\"summary\":")?;
        serde_json::to_writer_pretty(&mut *w, &self.summary()).map_err(std::io::Error::other)?;
        if let Some(x) = &self.what_if {
            w.write_all(b",\n\"what_if\":")?;
            serde_json::to_writer_pretty(&mut *w, &x.what_if).map_err(std::io::Error::other)?;
        }
        w.write_all(b"}\n")
    }

    fn write_jsonl<W: Write>(&self, input: &FlowInput, w: &mut W) -> std::io::Result<()> {
        if self.write_records(input, w, b"\n")? > 0 {
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// `"verdict":...,"egress":{...},"ingress":{...}[,"service":{...}]`: the members a
    /// distinct flow adds to each of its records.
    fn verdict_fragment(&self, names: &JsonNames, d: &Distinct) -> String {
        let mut o = String::with_capacity(768);
        let t = d.result.deciding_target();
        o.push_str(if d.result.allowed {
            "\"verdict\":\"allow\""
        } else {
            "\"verdict\":\"deny\""
        });
        o.push_str(",\"egress\":");
        self.side_fragment(names, &mut o, &t.egress, &t.src, d.key.src_ip);
        o.push_str(",\"ingress\":");
        self.side_fragment(names, &mut o, &t.ingress, &t.dst, t.dst_ip);
        if let Some(sid) = d.result.service {
            let s = &self.engine.services()[sid];
            let _ = write!(
                o,
                ",\"service\":{{\"name\":{},\"port\":{},\"port_name\":{},\"protocol\":\"{}\",\"backends\":[",
                json_str(&format!("{}/{}", s.namespace, s.service)),
                s.port,
                s.port_name.as_deref().map(json_str).unwrap_or_else(|| "null".to_owned()),
                s.protocol,
            );
            if !s.backends.is_empty() {
                for (n, t) in d.result.targets.iter().enumerate() {
                    if n > 0 {
                        o.push(',');
                    }
                    let _ = write!(
                        o,
                        "{{\"ip\":\"{}\",\"port\":{},\"endpoint\":",
                        t.dst_ip, t.dst_port
                    );
                    names.endpoint(&mut o, &t.dst, t.dst_ip);
                    o.push_str(if t.allowed {
                        ",\"verdict\":\"allow\"}"
                    } else {
                        ",\"verdict\":\"deny\"}"
                    });
                }
            }
            o.push_str("]}");
        }
        o.push_str(",\"observed\":");
        o.push_str(&serde_json::to_string(&d.facts).unwrap_or_else(|_| "null".to_owned()));
        if let Some(f) = d.finding() {
            let _ = write!(o, ",\"finding\":\"{}\"", f.as_str());
        }
        o
    }

    fn side_fragment(
        &self,
        names: &JsonNames,
        o: &mut String,
        side: &Side,
        party: &Party,
        ip: IpAddr,
    ) {
        o.push_str("{\"endpoint\":");
        names.endpoint(o, party, ip);
        let _ = write!(
            o,
            ",\"applies\":{},\"isolated\":{},\"allowed\":{},\"allowed_by\":[",
            side.pod.is_some(),
            side.isolated,
            side.allowed
        );
        for (n, r) in side.allowed_by.iter().enumerate() {
            if n > 0 {
                o.push(',');
            }
            let _ = write!(
                o,
                "{{\"policy\":{},\"rule\":{}}}",
                names.policies[r.policy], r.rule
            );
        }
        o.push_str("],\"isolated_by\":[");
        for (n, &p) in side.isolated_by.iter().enumerate() {
            if n > 0 {
                o.push(',');
            }
            o.push_str(&names.policies[p]);
        }
        o.push(']');
        if let Some(x) = side.exception {
            let _ = write!(o, ",\"exception\":\"{}\"", x.as_str());
        }
        o.push('}');
    }

    fn write_text<W: Write>(&self, markdown: bool, w: &mut W) -> std::io::Result<()> {
        let header = [
            "LINE",
            "RECORDS",
            "SOURCE",
            "DESTINATION",
            "PORT",
            "VERDICT",
            "OBSERVED",
            "WHY",
        ];
        let rows: Vec<[String; 8]> = self
            .distinct
            .iter()
            .map(|d| {
                [
                    d.first_line.to_string(),
                    d.records.to_string(),
                    party_text(self.engine, &d.result.targets[0].src, d.key.src_ip),
                    destination_text(self.engine, &d.result),
                    format!("{}/{}", d.key.dst_port, d.key.protocol),
                    match (d.result.allowed, d.finding()) {
                        (true, Some(_)) => "allow!",
                        (true, None) => "allow",
                        (false, Some(_)) => "DENY!",
                        (false, None) => "DENY",
                    }
                    .to_owned(),
                    d.facts.text(),
                    why(self.engine, &d.result, d.key.protocol),
                ]
            })
            .collect();
        let summary = self.summary();
        if markdown {
            writeln!(w, "# auditor diff\n")?;
            writeln!(
                w,
                "{} records, {} distinct flows, {} records denied, {} lines skipped.\n",
                summary.records,
                summary.distinct_flows,
                summary.denied_records,
                summary.skipped_lines
            )?;
            writeln!(w, "## Flows\n")?;
            write_markdown_table(w, &header, &rows)?;
            for (title, list) in [
                (
                    "Blocked although every policy allows them",
                    &summary.blocked_although_allowed,
                ),
                ("Denied, yet they went through", &summary.denied_but_passed),
            ] {
                if list.is_empty() {
                    continue;
                }
                writeln!(w, "\n## {title}\n")?;
                for f in list {
                    writeln!(
                        w,
                        "- line {}: {} -> {} {}/{}: {}. Likely: {}",
                        f.flow.first_line,
                        md_escape(&f.flow.source),
                        md_escape(&f.flow.destination),
                        f.flow.dst_port,
                        f.flow.protocol,
                        f.observed,
                        md_escape(&f.likely_cause)
                    )?;
                }
            }
            writeln!(w, "\n## Workloads\n")?;
            write_markdown_table(w, &WORKLOAD_HEADER, &workload_rows(&summary.workloads))?;
            writeln!(w, "\n## Unused rules\n")?;
            if summary.unused_rules.is_empty() {
                writeln!(
                    w,
                    "Every installed rule allowed at least one observed flow."
                )?;
            }
            for r in &summary.unused_rules {
                writeln!(w, "- `{}` {}[{}]", r.policy, r.direction, r.rule)?;
            }
            if !summary.notes.is_empty() || !summary.skipped.is_empty() {
                writeln!(w, "\n## Notes\n")?;
                for n in &summary.notes {
                    writeln!(w, "- {}", md_escape(n))?;
                }
                for s in &summary.skipped {
                    writeln!(
                        w,
                        "- flow log line {} skipped: {}",
                        s.line,
                        md_escape(&s.reason)
                    )?;
                }
            }
        } else {
            write_aligned(w, &header, &rows)?;
            writeln!(
                w,
                "\n{} records, {} distinct flows, {} records denied, {} lines skipped\n",
                summary.records,
                summary.distinct_flows,
                summary.denied_records,
                summary.skipped_lines
            )?;
            for (title, list) in [
                (
                    "blocked although every policy allows them (allow!)",
                    &summary.blocked_although_allowed,
                ),
                (
                    "denied, yet they went through (DENY!)",
                    &summary.denied_but_passed,
                ),
            ] {
                if list.is_empty() {
                    continue;
                }
                writeln!(w, "{title}:")?;
                for f in list {
                    writeln!(
                        w,
                        "  line {}: {} -> {} {}/{}: {}\n    likely: {}",
                        f.flow.first_line,
                        f.flow.source,
                        f.flow.destination,
                        f.flow.dst_port,
                        f.flow.protocol,
                        f.observed,
                        f.likely_cause
                    )?;
                }
                writeln!(w)?;
            }
            write_aligned(w, &WORKLOAD_HEADER, &workload_rows(&summary.workloads))?;
            if summary.unused_rules.is_empty() {
                writeln!(w, "\nunused rules: none")?;
            } else {
                writeln!(w, "\nunused rules (allowed no observed flow):")?;
                for r in &summary.unused_rules {
                    writeln!(w, "  {} {}[{}]", r.policy, r.direction, r.rule)?;
                }
            }
            for n in &summary.notes {
                writeln!(w, "note: {n}")?;
            }
            for s in &summary.skipped {
                writeln!(w, "skipped line {}: {}", s.line, s.reason)?;
            }
        }
        if let Some(x) = &self.what_if {
            x.what_if.write_text(markdown, w)?;
        }
        Ok(())
    }
}

/// How text output names one end of a flow: `ns/pod`, `node NAME (IP)`, `IP (external)`.
pub fn party_text(engine: &Engine, party: &Party, ip: IpAddr) -> String {
    match party {
        Party::Pod(p) => engine.pod_name(*p),
        Party::Node(Some(n)) => format!("node {n} ({ip})"),
        Party::Node(None) => format!("node ({ip})"),
        Party::External => format!("{ip} (external)"),
    }
}

/// The destination of a flow as text: the pod, node or address, or `svc ns/name -> backend`.
pub fn destination_text(engine: &Engine, r: &FlowResult) -> String {
    let t = r.deciding_target();
    match r.service {
        Some(sid) => {
            let s = &engine.services()[sid];
            let backend = if s.backends.is_empty() {
                "no endpoints".to_owned()
            } else {
                format!("{}:{}", party_text(engine, &t.dst, t.dst_ip), t.dst_port)
            };
            format!("svc {}/{} -> {backend}", s.namespace, s.service)
        }
        None => party_text(engine, &t.dst, t.dst_ip),
    }
}

/// One side (egress or ingress) of a verdict as text: n/a, not isolated, allowed by
/// which rules, or `DENIED: isolated by ..., no rule allows PORT/PROTO`.
pub fn side_text(
    engine: &Engine,
    direction: Direction,
    side: &Side,
    t: &Target,
    protocol: Protocol,
) -> String {
    let e = engine;
    let dir = direction_str(direction);
    if side.pod.is_none() {
        return format!("{dir} n/a");
    }
    if !side.isolated {
        return format!("{dir} not isolated");
    }
    if !side.allowed_by.is_empty() {
        let rules: Vec<String> = side
            .allowed_by
            .iter()
            .map(|r| format!("{} {dir}[{}]", e.policy_name(r.policy), r.rule))
            .collect();
        return format!("{dir} allowed by {}", rules.join(", "));
    }
    if let Some(x) = side.exception {
        return match x {
            Exception::SamePod => format!("{dir} allowed (a pod's traffic to itself)"),
            Exception::OwnNode => format!("{dir} allowed (traffic with the pod's own node)"),
        };
    }
    let policies: Vec<String> = side.isolated_by.iter().map(|&p| e.policy_name(p)).collect();
    format!(
        "{dir} DENIED: isolated by {}, no rule allows {}/{protocol}",
        policies.join(", "),
        t.dst_port
    )
}

/// Why a flow has its verdict: both sides of the deciding target, and how many backends
/// of a Service are denied.
pub fn why(engine: &Engine, r: &FlowResult, protocol: Protocol) -> String {
    let t = r.deciding_target();
    let mut s = format!(
        "{}; {}",
        side_text(engine, Direction::Egress, &t.egress, t, protocol),
        side_text(engine, Direction::Ingress, &t.ingress, t, protocol)
    );
    if r.targets.len() > 1 {
        let denied = r.targets.iter().filter(|t| !t.allowed).count();
        if denied > 0 {
            s.push_str(&format!(
                "; {denied} of {} backends denied",
                r.targets.len()
            ));
        }
    }
    s
}

/// JSON text of names, escaped once: every pod's endpoint object up to its IP, every policy's name.
struct JsonNames {
    pod_prefix: Vec<String>,
    policies: Vec<String>,
}

impl JsonNames {
    fn new(engine: &Engine) -> Self {
        let pod_prefix = engine
            .pods()
            .iter()
            .map(|p| {
                format!(
                    "{{\"kind\":\"pod\",\"namespace\":{},\"name\":{},\"workload\":{},\"ip\":\"",
                    json_str(&p.namespace),
                    json_str(&p.name),
                    json_str(&p.workload)
                )
            })
            .collect();
        let policies = (0..engine.policies().len())
            .map(|p| json_str(&engine.policy_name(p)))
            .collect();
        Self {
            pod_prefix,
            policies,
        }
    }

    fn endpoint(&self, o: &mut String, party: &Party, ip: IpAddr) {
        let _ = match party {
            Party::Pod(p) => write!(o, "{}{ip}\"}}", self.pod_prefix[*p]),
            Party::Node(Some(n)) => write!(
                o,
                "{{\"kind\":\"node\",\"name\":{},\"ip\":\"{ip}\"}}",
                json_str(n)
            ),
            Party::Node(None) => write!(o, "{{\"kind\":\"node\",\"name\":null,\"ip\":\"{ip}\"}}"),
            Party::External => write!(o, "{{\"kind\":\"external\",\"ip\":\"{ip}\"}}"),
        };
    }
}

/// A string as a JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

const WORKLOAD_HEADER: [&str; 5] = [
    "WORKLOAD",
    "EGRESS",
    "EGRESS DENIED",
    "INGRESS",
    "INGRESS DENIED",
];

fn workload_rows(ws: &[WorkloadCount]) -> Vec<[String; 5]> {
    ws.iter()
        .map(|w| {
            [
                w.workload.clone(),
                w.egress_records.to_string(),
                w.egress_denied.to_string(),
                w.ingress_records.to_string(),
                w.ingress_denied.to_string(),
            ]
        })
        .collect()
}

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

pub(crate) fn write_aligned<W: Write, const N: usize>(
    w: &mut W,
    header: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths: [usize; N] = header.map(|h| h.chars().count());
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut line = String::new();
    let mut emit = |cells: &mut dyn Iterator<Item = &str>, w: &mut W| -> std::io::Result<()> {
        line.clear();
        for (i, c) in cells.enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count() + 2));
            }
        }
        writeln!(w, "{}", line.trim_end())
    };
    emit(&mut header.iter().copied(), w)?;
    for r in rows {
        emit(&mut r.iter().map(String::as_str), w)?;
    }
    Ok(())
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

pub(crate) fn write_markdown_table<W: Write, const N: usize>(
    w: &mut W,
    header: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    writeln!(w, "| {} |", header.join(" | "))?;
    writeln!(w, "|{}", "---|".repeat(N))?;
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| md_escape(c)).collect();
        writeln!(w, "| {} |", cells.join(" | "))?;
    }
    Ok(())
}

/// Evaluates a flow log against a snapshot, both already read: the pure core of `run`,
/// for tests and benchmarks. Returns the exit code `run` would.
pub fn diff_to<W: Write>(
    engine: &Engine,
    input: &FlowInput,
    format: Format,
    w: &mut W,
) -> std::io::Result<i32> {
    let report = Report::new(engine, input, engine.notes.clone());
    report.write(format, input, w)?;
    Ok(report.exit_code())
}
