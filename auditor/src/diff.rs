//! `auditor diff`: evaluate observed flows against the installed NetworkPolicies.
//!
//! Reads a cluster snapshot and a flow log, evaluates every distinct flow once with the
//! [policy engine](crate::policy), and writes, in input order, each flow with its verdict
//! and the policies and rules that decided it, plus a summary: counts per workload,
//! denied flows, and installed rules that allowed no observed flow.
//!
//! Exit code: 0 when every flow is allowed, 1 when at least one is denied (like `diff`);
//! errors are reported by the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::{read_snapshot, ClusterError};
use crate::flowlog::{read_flow_log, Direction, FlowLogError, FlowRecord, Protocol};
use crate::policy::{Engine, Exception, FlowResult, Party, PolicyError, RuleRef, Side, Target};

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
}

/// Evaluate observed flows against the installed NetworkPolicies: for every flow, allow or
/// deny and the policy and rule that decided. Exits 1 when a flow is denied.
///
/// Example: auditor diff --cluster cluster.yaml --flows flows.jsonl --format table
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Cluster snapshot: a `kind: List` or multi-document YAML with Namespaces, Pods,
    /// Services, EndpointSlices and NetworkPolicies (`-` for stdin).
    ///
    /// Example: kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml > cluster.yaml
    #[arg(long, value_name = "SNAPSHOT")]
    pub cluster: PathBuf,
    /// Flow log: JSON lines with at least src_ip, dst_ip, dst_port and protocol; the
    /// recorder's flow log works as is (`-` for stdin).
    ///
    /// Example: --flows flows.jsonl
    #[arg(long, value_name = "FLOWS")]
    pub flows: PathBuf,
    /// Output format.
    ///
    /// Example: --format json
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Count and skip invalid flow lines instead of failing on the first one.
    ///
    /// Example: --skip-invalid
    #[arg(long)]
    pub skip_invalid: bool,
    /// Write the output to this file instead of stdout.
    ///
    /// Example: --output diff.json
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{path}: {error}")]
    Policy { path: PathBuf, error: PolicyError },
    #[error(transparent)]
    Flows(#[from] FlowLogError),
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `auditor diff`; returns the process exit code.
pub fn run(args: &DiffArgs) -> Result<i32, DiffError> {
    let snapshot = read_snapshot(&args.cluster)?;
    let engine = Engine::build(&snapshot).map_err(|error| DiffError::Policy {
        path: args.cluster.clone(),
        error,
    })?;
    let log = read_flow_log(&args.flows, args.skip_invalid)?;
    let mut notes = snapshot.notes.clone();
    notes.extend(engine.notes.iter().cloned());
    let report = Report::new(&engine, &log.records, log.skipped.clone(), notes);
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
        .write(args.format, &log.records, &mut w)
        .map_err(write_err)?;
    w.flush().map_err(write_err)?;
    Ok(if report.denied_records > 0 { 1 } else { 0 })
}

/// Distinct flow: what the verdict depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
    protocol: Protocol,
}

impl FlowKey {
    fn of(r: &FlowRecord) -> Self {
        Self {
            src_ip: r.src_ip.to_canonical(),
            dst_ip: r.dst_ip.to_canonical(),
            dst_port: r.dst_port,
            protocol: r.protocol,
        }
    }
}

/// One distinct flow and its verdict.
#[derive(Debug, Clone)]
pub struct Distinct {
    key: FlowKey,
    pub result: FlowResult,
    pub first_line: usize,
    pub records: u64,
}

/// The evaluated flow log.
pub struct Report<'a> {
    engine: &'a Engine,
    /// Distinct flows in order of first appearance.
    pub distinct: Vec<Distinct>,
    /// For each input record, its index in `distinct`.
    pub per_record: Vec<u32>,
    pub denied_records: u64,
    pub skipped: Vec<(usize, String)>,
    pub notes: Vec<String>,
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
    denied_flows: Vec<Value>,
    unused_rules: Vec<Value>,
    notes: Vec<String>,
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
    /// Evaluates every distinct flow of `records` once.
    pub fn new(
        engine: &'a Engine,
        records: &[(usize, FlowRecord)],
        skipped: Vec<(usize, String)>,
        notes: Vec<String>,
    ) -> Self {
        let mut index: HashMap<FlowKey, u32> = HashMap::new();
        let mut distinct: Vec<Distinct> = Vec::new();
        let mut per_record = Vec::with_capacity(records.len());
        let mut denied_records = 0;
        for (line, r) in records {
            let key = FlowKey::of(r);
            let i = *index.entry(key).or_insert_with(|| {
                distinct.push(Distinct {
                    key,
                    result: engine.evaluate(key.src_ip, key.dst_ip, key.dst_port, key.protocol),
                    first_line: *line,
                    records: 0,
                });
                u32::try_from(distinct.len() - 1).unwrap_or(u32::MAX)
            });
            let d = &mut distinct[i as usize];
            d.records += 1;
            if !d.result.allowed {
                denied_records += 1;
            }
            per_record.push(i);
        }
        Self {
            engine,
            distinct,
            per_record,
            denied_records,
            skipped,
            notes,
        }
    }

    /// Rules in effect that allowed no observed flow, in policy order.
    pub fn unused_rules(&self) -> Vec<RuleRef> {
        let used: BTreeSet<RuleRef> = self
            .distinct
            .iter()
            .flat_map(|d| d.result.targets.iter())
            .flat_map(|t| {
                t.egress
                    .allowed_by
                    .iter()
                    .chain(t.ingress.allowed_by.iter())
            })
            .copied()
            .collect();
        self.engine
            .all_rules()
            .filter(|r| !used.contains(r))
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

    fn summary(&self, records: usize) -> Summary {
        let e = self.engine;
        let denied_flows = self
            .distinct
            .iter()
            .filter(|d| !d.result.allowed)
            .map(|d| {
                json!({
                    "src_ip": d.key.src_ip,
                    "dst_ip": d.key.dst_ip,
                    "dst_port": d.key.dst_port,
                    "protocol": d.key.protocol,
                    "source": self.party_text(&d.result.targets[0].src, d.key.src_ip),
                    "destination": self.destination_text(d),
                    "records": d.records,
                    "first_line": d.first_line,
                    "why": self.why(&d.result, d.key.protocol),
                })
            })
            .collect();
        let unused_rules = self
            .unused_rules()
            .into_iter()
            .map(|r| json!({"policy": e.policy_name(r.policy), "direction": direction_str(r.direction), "rule": r.rule}))
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
            unused_rules,
            notes: self.notes.clone(),
        }
    }

    /// Writes the report. `records` must be those the report was built from.
    pub fn write<W: Write>(
        &self,
        format: Format,
        records: &[(usize, FlowRecord)],
        w: &mut W,
    ) -> std::io::Result<()> {
        match format {
            Format::Json => self.write_json(records, w),
            Format::Table => self.write_text(records.len(), false, w),
            Format::Markdown => self.write_text(records.len(), true, w),
        }
    }

    fn write_json<W: Write>(
        &self,
        records: &[(usize, FlowRecord)],
        w: &mut W,
    ) -> std::io::Result<()> {
        // The verdict of a distinct flow is rendered once and appended to each of its records.
        let fragments: Vec<String> = self
            .distinct
            .iter()
            .map(|d| {
                let v = self.verdict_json(d);
                let s = v.to_string();
                // `{...}` -> `...`, to splice into the record's object.
                s[1..s.len() - 1].to_owned()
            })
            .collect();
        w.write_all(b"{\"flows\":[")?;
        let mut buf = Vec::with_capacity(1024);
        for (n, ((_, r), &i)) in records.iter().zip(&self.per_record).enumerate() {
            buf.clear();
            buf.extend_from_slice(if n == 0 { b"\n" } else { b",\n" });
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.pop(); // the record's closing brace
            buf.push(b',');
            buf.extend_from_slice(fragments[i as usize].as_bytes());
            buf.push(b'}');
            w.write_all(&buf)?;
        }
        w.write_all(b"\n],\n\"summary\":")?;
        serde_json::to_writer_pretty(&mut *w, &self.summary(records.len()))
            .map_err(std::io::Error::other)?;
        w.write_all(b"}\n")
    }

    fn verdict_json(&self, d: &Distinct) -> Value {
        let t = d.result.deciding_target();
        let mut v = json!({
            "verdict": if d.result.allowed { "allow" } else { "deny" },
            "egress": self.side_json(&t.egress, &t.src, d.key.src_ip),
            "ingress": self.side_json(&t.ingress, &t.dst, t.dst_ip),
        });
        if let Some(sid) = d.result.service {
            let s = &self.engine.services()[sid];
            let backends: Vec<Value> = if s.backends.is_empty() {
                Vec::new()
            } else {
                d.result
                    .targets
                    .iter()
                    .map(|t| {
                        json!({
                            "ip": t.dst_ip,
                            "port": t.dst_port,
                            "endpoint": self.party_json(&t.dst, t.dst_ip),
                            "verdict": if t.allowed { "allow" } else { "deny" },
                        })
                    })
                    .collect()
            };
            v["service"] = json!({
                "name": format!("{}/{}", s.namespace, s.service),
                "port": s.port,
                "port_name": s.port_name,
                "protocol": s.protocol,
                "backends": backends,
            });
        }
        v
    }

    fn party_json(&self, party: &Party, ip: IpAddr) -> Value {
        match party {
            Party::Pod(p) => {
                let pod = &self.engine.pods()[*p];
                json!({"kind": "pod", "namespace": pod.namespace, "name": pod.name, "workload": pod.workload, "ip": ip})
            }
            Party::Node(name) => json!({"kind": "node", "name": name, "ip": ip}),
            Party::External => json!({"kind": "external", "ip": ip}),
        }
    }

    fn side_json(&self, side: &Side, party: &Party, ip: IpAddr) -> Value {
        let e = self.engine;
        let mut v = json!({
            "endpoint": self.party_json(party, ip),
            "applies": side.pod.is_some(),
            "isolated": side.isolated,
            "allowed": side.allowed,
            "allowed_by": side.allowed_by.iter().map(|r| json!({"policy": e.policy_name(r.policy), "rule": r.rule})).collect::<Vec<_>>(),
            "isolated_by": side.isolated_by.iter().map(|&p| e.policy_name(p)).collect::<Vec<_>>(),
        });
        if let Some(x) = side.exception {
            v["exception"] = json!(x.as_str());
        }
        v
    }

    fn party_text(&self, party: &Party, ip: IpAddr) -> String {
        match party {
            Party::Pod(p) => self.engine.pod_name(*p),
            Party::Node(Some(n)) => format!("node {n} ({ip})"),
            Party::Node(None) => format!("node ({ip})"),
            Party::External => format!("{ip} (external)"),
        }
    }

    fn destination_text(&self, d: &Distinct) -> String {
        let t = d.result.deciding_target();
        match d.result.service {
            Some(sid) => {
                let s = &self.engine.services()[sid];
                let backend = if s.backends.is_empty() {
                    "no endpoints".to_owned()
                } else {
                    format!("{}:{}", self.party_text(&t.dst, t.dst_ip), t.dst_port)
                };
                format!("svc {}/{} -> {backend}", s.namespace, s.service)
            }
            None => self.party_text(&t.dst, t.dst_ip),
        }
    }

    fn side_text(
        &self,
        direction: Direction,
        side: &Side,
        t: &Target,
        protocol: Protocol,
    ) -> String {
        let e = self.engine;
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

    fn why(&self, r: &FlowResult, protocol: Protocol) -> String {
        let t = r.deciding_target();
        let mut s = format!(
            "{}; {}",
            self.side_text(Direction::Egress, &t.egress, t, protocol),
            self.side_text(Direction::Ingress, &t.ingress, t, protocol)
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

    fn write_text<W: Write>(
        &self,
        records: usize,
        markdown: bool,
        w: &mut W,
    ) -> std::io::Result<()> {
        let header = [
            "LINE",
            "RECORDS",
            "SOURCE",
            "DESTINATION",
            "PORT",
            "VERDICT",
            "WHY",
        ];
        let rows: Vec<[String; 7]> = self
            .distinct
            .iter()
            .map(|d| {
                [
                    d.first_line.to_string(),
                    d.records.to_string(),
                    self.party_text(&d.result.targets[0].src, d.key.src_ip),
                    self.destination_text(d),
                    format!("{}/{}", d.key.dst_port, d.key.protocol),
                    if d.result.allowed { "allow" } else { "DENY" }.to_owned(),
                    self.why(&d.result, d.key.protocol),
                ]
            })
            .collect();
        let summary = self.summary(records);
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
                writeln!(
                    w,
                    "- `{}` {}[{}]",
                    r["policy"].as_str().unwrap_or_default(),
                    r["direction"].as_str().unwrap_or_default(),
                    r["rule"]
                )?;
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
            write_aligned(w, &WORKLOAD_HEADER, &workload_rows(&summary.workloads))?;
            if summary.unused_rules.is_empty() {
                writeln!(w, "\nunused rules: none")?;
            } else {
                writeln!(w, "\nunused rules (allowed no observed flow):")?;
                for r in &summary.unused_rules {
                    writeln!(
                        w,
                        "  {} {}[{}]",
                        r["policy"].as_str().unwrap_or_default(),
                        r["direction"].as_str().unwrap_or_default(),
                        r["rule"]
                    )?;
                }
            }
            for n in &summary.notes {
                writeln!(w, "note: {n}")?;
            }
            for s in &summary.skipped {
                writeln!(w, "skipped line {}: {}", s.line, s.reason)?;
            }
        }
        Ok(())
    }
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

fn write_aligned<W: Write, const N: usize>(
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

fn write_markdown_table<W: Write, const N: usize>(
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
    records: &[(usize, FlowRecord)],
    format: Format,
    w: &mut W,
) -> std::io::Result<i32> {
    let report = Report::new(engine, records, Vec::new(), engine.notes.clone());
    report.write(format, records, w)?;
    Ok(if report.denied_records > 0 { 1 } else { 0 })
}
