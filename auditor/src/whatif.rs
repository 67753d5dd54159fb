//! What-if: which observed flows a proposed set of NetworkPolicies would break or unblock.
//!
//! `auditor diff --policies FILE` (and `auditor report --policies FILE`) reads proposed
//! NetworkPolicies and applies them to the installed ones as `kubectl apply` would: a
//! proposed policy with the namespace/name of an installed one replaces it, the others are
//! added. With `--replace` the proposal is the whole set instead: every installed
//! NetworkPolicy is taken out. Each observed flow is then evaluated by the policy engine
//! built for that set over the same snapshot ([`Engine::build_with`]) and compared with
//! today's verdict:
//! - **would break**: allowed today, denied by the proposal;
//! - **would unblock**: denied today, allowed by the proposal.
//!
//! Proposal files are read through the snapshot's document loop
//! ([`crate::cluster::visit_objects`]): `-` is stdin, multi-document YAML, JSON or a
//! `kind: List`. They may hold NetworkPolicies only, each with `metadata.namespace` and
//! `metadata.name` (an offline check has no current context to default the namespace
//! from), each namespace/name once across all files, each valid for the policy engine.
//! Errors name the file, the object (kind namespace/name, or the document) and the field.
//!
//! Pure apart from [`read_proposal`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;

use crate::cluster::{ClusterError, Header, ObjectId, Snapshot};
use crate::diff::{destination_text, party_text, why};
use crate::flowlog::Protocol;
use crate::policy::{Engine, FlowResult, PolicyError};

/// The what-if flags of `diff` and `report`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WhatIfArgs {
    /// Proposed NetworkPolicies (repeatable; `-` for stdin, not when the snapshot or the
    /// flow log is stdin): applied to the installed ones as `kubectl apply` would (same
    /// namespace/name replaces, others are added), then every observed flow is evaluated
    /// again, and the flows the proposal would break or unblock are listed.
    ///
    /// Example: --policies proposed/ffmpeg-egress.yaml
    #[arg(long = "policies", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// With --policies: the proposal replaces every installed NetworkPolicy instead of
    /// being applied on top of them.
    ///
    /// Example: --policies suggested/allowlist.yaml --replace
    #[arg(long, requires = "policies")]
    pub replace: bool,
}

/// `--fail-on`: which what-if outcome makes `diff` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailOn {
    /// Exit 4 when a flow would break, else 0.
    #[default]
    Break,
    /// Exit 4 when a flow would break, 5 when none would but one would be unblocked, else 0.
    Change,
    /// Exit 0 whatever the proposal changes (errors still exit 2).
    None,
}

/// Exit code of `diff --policies` when an observed flow would break.
pub const EXIT_BREAK: i32 = 4;
/// Exit code of `diff --policies --fail-on change` when nothing breaks but a flow would be
/// unblocked.
pub const EXIT_UNBLOCK: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    #[error("--policies {path}: cannot read the proposed policies")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ClusterError),
    #[error("--policies {path}: contains no NetworkPolicy (expected NetworkPolicy manifests, as `kubectl apply -f` takes them: one a document, or a kind: List of them)")]
    Empty { path: PathBuf },
    #[error("--policies {path}: {at}: {kind} {object}: field kind: a proposal holds NetworkPolicies only (expected kind NetworkPolicy, apiVersion networking.k8s.io/v1)")]
    NotAPolicy {
        path: PathBuf,
        at: ObjectId,
        kind: String,
        object: String,
    },
    #[error("--policies {path}: {at}: NetworkPolicy {object}: field metadata.{field}: missing (expected {})", expected_meta(field))]
    MissingMeta {
        path: PathBuf,
        at: ObjectId,
        object: String,
        field: &'static str,
    },
    #[error("--policies {path}: {at}: NetworkPolicy {object}: proposed twice (first in {first} {first_at}); expected each namespace/name once across the proposal files")]
    Duplicate {
        path: PathBuf,
        at: ObjectId,
        object: String,
        first: PathBuf,
        first_at: ObjectId,
    },
    #[error("--policies {path}: {error}")]
    Policy { path: PathBuf, error: PolicyError },
    #[error("--policies -: standard input is already the {0}; only one input can be read from it: write the proposal to a file")]
    Stdin(&'static str),
    #[error("--policies - is given twice: standard input can be read once")]
    StdinTwice,
}

fn expected_meta(field: &str) -> &'static str {
    if field == "namespace" {
        "the namespace the policy goes to: offline there is no current context for kubectl's default, so a proposed policy names its namespace"
    } else {
        "the policy's name: it decides whether the policy replaces an installed one"
    }
}

/// One proposed policy and where it came from.
#[derive(Debug, Clone)]
pub struct Proposed {
    pub policy: NetworkPolicy,
    /// Index into [`Proposal::files`].
    pub file: usize,
    pub at: ObjectId,
}

/// The proposed policies, validated.
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    pub files: Vec<PathBuf>,
    pub policies: Vec<Proposed>,
    /// `--replace`: the proposal is the whole set.
    pub replace: bool,
}

/// `namespace/name` of a policy.
fn key_of(np: &NetworkPolicy) -> (String, String) {
    (
        np.metadata.namespace.clone().unwrap_or_default(),
        np.metadata.name.clone().unwrap_or_default(),
    )
}

/// Checks that the proposal files and the other inputs do not share stdin.
pub fn check_stdin(
    args: &WhatIfArgs,
    cluster: Option<&Path>,
    flows: &Path,
) -> Result<(), WhatIfError> {
    let stdin = |p: &Path| p.as_os_str() == "-";
    let n = args.policies.iter().filter(|p| stdin(p)).count();
    if n == 0 {
        return Ok(());
    }
    if n > 1 {
        return Err(WhatIfError::StdinTwice);
    }
    if cluster.is_some_and(stdin) {
        return Err(WhatIfError::Stdin("cluster snapshot (--cluster -)"));
    }
    if stdin(flows) {
        return Err(WhatIfError::Stdin("flow log (--flows -)"));
    }
    Ok(())
}

/// Reads and validates the proposal files (`None` without `--policies`).
pub fn read_proposal(args: &WhatIfArgs) -> Result<Option<Proposal>, WhatIfError> {
    if args.policies.is_empty() {
        return Ok(None);
    }
    let mut files = Vec::new();
    for path in &args.policies {
        let data = crate::flowlog::read_input(path).map_err(|source| WhatIfError::Io {
            path: path.clone(),
            source,
        })?;
        files.push((path.clone(), data));
    }
    parse_proposal(&files, args.replace).map(Some)
}

/// Parses proposal files already read (`(path, bytes)` each); the pure core of
/// [`read_proposal`].
pub fn parse_proposal(
    files: &[(PathBuf, Vec<u8>)],
    replace: bool,
) -> Result<Proposal, WhatIfError> {
    let mut proposal = Proposal {
        files: files.iter().map(|(p, _)| p.clone()).collect(),
        policies: Vec::new(),
        replace,
    };
    let mut seen: BTreeMap<(String, String), (usize, ObjectId)> = BTreeMap::new();
    for (file, (path, data)) in files.iter().enumerate() {
        let mut found = 0usize;
        crate::cluster::visit_objects(path, data, |at, value| -> Result<(), WhatIfError> {
            found += 1;
            let Some(header) = Header::of(&value) else {
                return Err(at.error(path, "the object has no kind".into()).into());
            };
            if header.kind == "NetworkPolicy" && header.api_version != "networking.k8s.io/v1" {
                return Err(ClusterError::Field {
                    path: path.clone(),
                    kind: header.kind,
                    object: header.object,
                    field: "apiVersion".into(),
                    message: format!(
                        "{:?} is not supported (expected networking.k8s.io/v1)",
                        header.api_version
                    ),
                }
                .into());
            }
            if header.kind != "NetworkPolicy" {
                return Err(WhatIfError::NotAPolicy {
                    path: path.clone(),
                    at,
                    kind: header.kind,
                    object: header.object,
                });
            }
            for (field, v) in [("namespace", &header.namespace), ("name", &header.name)] {
                if v.as_deref().is_none_or(str::is_empty) {
                    return Err(WhatIfError::MissingMeta {
                        path: path.clone(),
                        at,
                        object: header.object.clone(),
                        field,
                    });
                }
            }
            let policy: NetworkPolicy = crate::cluster::parse_typed(path, &header, value)?;
            Engine::build_with(&Snapshot::default(), std::iter::once(&policy)).map_err(
                |error| WhatIfError::Policy {
                    path: path.clone(),
                    error,
                },
            )?;
            let key = key_of(&policy);
            if let Some(&(first, first_at)) = seen.get(&key) {
                return Err(WhatIfError::Duplicate {
                    path: path.clone(),
                    at,
                    object: header.object,
                    first: files[first].0.clone(),
                    first_at,
                });
            }
            seen.insert(key, (file, at));
            proposal.policies.push(Proposed { policy, file, at });
            Ok(())
        })?;
        if found == 0 {
            return Err(WhatIfError::Empty { path: path.clone() });
        }
    }
    Ok(proposal)
}

impl Proposal {
    /// The policy set the proposal makes of the installed one, as `kubectl apply` (or,
    /// with `--replace`, as deleting every installed one first) would; and how many
    /// installed policies it replaces.
    pub fn apply<'a>(&'a self, installed: &'a [NetworkPolicy]) -> (Vec<&'a NetworkPolicy>, usize) {
        let proposed: BTreeMap<(String, String), &NetworkPolicy> = self
            .policies
            .iter()
            .map(|p| (key_of(&p.policy), &p.policy))
            .collect();
        if self.replace {
            return (self.policies.iter().map(|p| &p.policy).collect(), 0);
        }
        let mut replaced = 0;
        let mut set: Vec<&NetworkPolicy> = installed
            .iter()
            .filter(|np| {
                let hit = proposed.contains_key(&key_of(np));
                replaced += usize::from(hit);
                !hit
            })
            .collect();
        set.extend(self.policies.iter().map(|p| &p.policy));
        (set, replaced)
    }

    /// The engine for the proposed set over `snapshot`.
    pub fn engine(&self, snapshot: &Snapshot) -> Result<(Engine, usize), WhatIfError> {
        let (set, replaced) = self.apply(&snapshot.network_policies);
        let engine = Engine::build_with(snapshot, set).map_err(|error| WhatIfError::Policy {
            path: self.files_text().into(),
            error,
        })?;
        Ok((engine, replaced))
    }

    fn files_text(&self) -> String {
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the proposal does to one flow's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Allowed today, denied by the proposal.
    Break,
    /// Denied today, allowed by the proposal.
    Unblock,
}

impl Change {
    /// The change from today's verdict to the proposed one, if any.
    pub fn of(today: bool, proposed: bool) -> Option<Self> {
        match (today, proposed) {
            (true, false) => Some(Change::Break),
            (false, true) => Some(Change::Unblock),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Break => "break",
            Change::Unblock => "unblock",
        }
    }
}

/// A flow whose verdict the proposal changes.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedFlow {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
    pub source: String,
    pub destination: String,
    pub records: u64,
    /// The flow log line it first appeared on.
    pub first_line: usize,
    pub today: &'static str,
    pub proposed: &'static str,
    pub why_today: String,
    pub why_proposed: String,
}

/// How many flows were checked and changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub checked: usize,
    pub broken: usize,
    pub unblocked: usize,
    pub unchanged: usize,
}

/// The policies of the two sets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyCounts {
    pub installed: usize,
    pub proposed: usize,
    /// Installed policies a proposed one replaces (same namespace/name); with `--replace`,
    /// every installed one is taken out instead and this is 0.
    pub replaced: usize,
    /// The set the flows were evaluated against.
    pub in_effect: usize,
}

/// The what-if outcome: the `what_if` object of `diff -o json` and `report.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhatIf {
    pub files: Vec<String>,
    /// `apply` (on top of the installed policies) or `replace`.
    pub mode: &'static str,
    pub policies: PolicyCounts,
    pub counts: Counts,
    /// Allowed today, denied by the proposal, in flow order.
    pub broken: Vec<ChangedFlow>,
    /// Denied today, allowed by the proposal, in flow order.
    pub unblocked: Vec<ChangedFlow>,
}

/// One flow to check: its key and where it was seen.
#[derive(Debug, Clone, Copy)]
pub struct FlowId {
    /// The pods its ends are, as today's evaluation resolved them.
    pub who: crate::identity::Resolved,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
    pub records: u64,
    pub first_line: usize,
}

/// Checks flows against today's engine and the proposed one.
pub struct Checker<'a> {
    pub today: &'a Engine,
    pub proposed: &'a Engine,
    pub what_if: WhatIf,
}

impl<'a> Checker<'a> {
    pub fn new(
        proposal: &Proposal,
        installed: usize,
        replaced: usize,
        today: &'a Engine,
        proposed: &'a Engine,
    ) -> Self {
        Self {
            today,
            proposed,
            what_if: WhatIf {
                files: proposal
                    .files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
                mode: if proposal.replace { "replace" } else { "apply" },
                policies: PolicyCounts {
                    installed,
                    proposed: proposal.policies.len(),
                    replaced,
                    in_effect: proposed.policies().len(),
                },
                ..WhatIf::default()
            },
        }
    }

    /// Evaluates `flow` under the proposal, records it if its verdict changes, and returns
    /// the proposed result and the change.
    pub fn check(&mut self, flow: FlowId, today: &FlowResult) -> (FlowResult, Option<Change>) {
        let proposed = flow.who.evaluate(
            self.proposed,
            flow.src_ip,
            flow.dst_ip,
            flow.dst_port,
            flow.protocol,
        );
        let change = Change::of(today.allowed, proposed.allowed);
        let c = &mut self.what_if.counts;
        c.checked += 1;
        match change {
            None => c.unchanged += 1,
            Some(Change::Break) => c.broken += 1,
            Some(Change::Unblock) => c.unblocked += 1,
        }
        if let Some(change) = change {
            let row = ChangedFlow {
                src_ip: flow.src_ip,
                dst_ip: flow.dst_ip,
                dst_port: flow.dst_port,
                protocol: flow.protocol,
                source: party_text(self.today, &today.targets[0].src, flow.src_ip),
                destination: destination_text(self.today, today),
                records: flow.records,
                first_line: flow.first_line,
                today: verdict_str(today.allowed),
                proposed: verdict_str(proposed.allowed),
                why_today: why(self.today, today, flow.protocol),
                why_proposed: why(self.proposed, &proposed, flow.protocol),
            };
            match change {
                Change::Break => self.what_if.broken.push(row),
                Change::Unblock => self.what_if.unblocked.push(row),
            }
        }
        (proposed, change)
    }

    pub fn finish(self) -> WhatIf {
        self.what_if
    }
}

pub fn verdict_str(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

impl WhatIf {
    /// The exit code of `diff --policies` under `--fail-on`.
    pub fn exit_code(&self, fail_on: FailOn) -> i32 {
        match fail_on {
            FailOn::None => 0,
            _ if self.counts.broken > 0 => EXIT_BREAK,
            FailOn::Change if self.counts.unblocked > 0 => EXIT_UNBLOCK,
            _ => 0,
        }
    }

    /// One sentence: what was proposed and what it changes.
    pub fn sentence(&self) -> String {
        let how = if self.mode == "replace" {
            format!(
                "replacing all {} installed NetworkPolicies",
                self.policies.installed
            )
        } else if self.policies.replaced > 0 {
            format!(
                "applied to the {} installed NetworkPolicies ({} replaced)",
                self.policies.installed, self.policies.replaced
            )
        } else {
            format!(
                "added to the {} installed NetworkPolicies",
                self.policies.installed
            )
        };
        format!(
            "{} proposed NetworkPolic{} from {}, {how}: of {} observed flows, {} would break, {} would be unblocked",
            self.policies.proposed,
            if self.policies.proposed == 1 { "y" } else { "ies" },
            self.files.join(", "),
            self.counts.checked,
            self.counts.broken,
            self.counts.unblocked
        )
    }

    /// The two lists with their titles (table / markdown wording).
    fn sections(&self) -> [(&'static str, &'static str, &[ChangedFlow]); 2] {
        [
            (
                "Would break",
                "allowed today, denied by the proposal",
                &self.broken,
            ),
            (
                "Would unblock",
                "denied today, allowed by the proposal",
                &self.unblocked,
            ),
        ]
    }

    /// The what-if section of `diff -o table` (`markdown` false) or `-o markdown`.
    pub fn write_text<W: Write>(&self, markdown: bool, w: &mut W) -> std::io::Result<()> {
        const HEADER: [&str; 8] = [
            "LINE",
            "RECORDS",
            "SOURCE",
            "DESTINATION",
            "PORT",
            "TODAY",
            "PROPOSED",
            "WHY (PROPOSED)",
        ];
        if markdown {
            writeln!(w, "\n## What if\n\n{}.", self.sentence())?;
        } else {
            writeln!(w, "\nwhat if: {}", self.sentence())?;
        }
        for (title, meaning, list) in self.sections() {
            let rows: Vec<[String; 8]> = list
                .iter()
                .map(|f| {
                    [
                        f.first_line.to_string(),
                        f.records.to_string(),
                        f.source.clone(),
                        f.destination.clone(),
                        format!("{}/{}", f.dst_port, f.protocol),
                        f.today.to_owned(),
                        f.proposed.to_uppercase(),
                        f.why_proposed.clone(),
                    ]
                })
                .collect();
            if markdown {
                writeln!(w, "\n### {title} ({meaning})\n")?;
                if rows.is_empty() {
                    writeln!(w, "None.")?;
                } else {
                    crate::diff::write_markdown_table(w, &HEADER, &rows)?;
                }
            } else if rows.is_empty() {
                writeln!(w, "\n{} ({meaning}): none", title.to_lowercase())?;
            } else {
                writeln!(w, "\n{} ({meaning}):", title.to_lowercase())?;
                crate::diff::write_aligned(w, &HEADER, &rows)?;
            }
        }
        Ok(())
    }

    /// `"what_if":{...}`: the member each record of `diff -o json`/`-o jsonl` carries with
    /// `--policies`: the proposed verdict, the change (`break`, `unblock` or `none`) and why.
    pub fn record_member(
        proposed_engine: &Engine,
        proposed: &FlowResult,
        change: Option<Change>,
        protocol: Protocol,
    ) -> String {
        let mut o = String::with_capacity(256);
        let _ = write!(
            o,
            "\"what_if\":{{\"verdict\":\"{}\",\"change\":\"{}\",\"why\":{}}}",
            verdict_str(proposed.allowed),
            change.map_or("none", Change::as_str),
            serde_json::to_string(&why(proposed_engine, proposed, protocol))
                .unwrap_or_else(|_| "\"\"".to_owned())
        );
        o
    }

    /// The report's Markdown section.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "\n## What the proposed policies would change\n\n{}.\n",
            self.sentence()
        );
        for (title, meaning, list) in self.sections() {
            let _ = writeln!(out, "\n### {title} ({meaning})\n");
            if list.is_empty() {
                out.push_str("None.\n");
                continue;
            }
            out.push_str("| source | destination | port | records | today | proposed | why today | why proposed |\n|---|---|---|---|---|---|---|---|\n");
            for f in list {
                let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
                let _ = writeln!(
                    out,
                    "| {} | {} | {}/{} | {} | {} | {} | {} | {} |",
                    cell(&f.source),
                    cell(&f.destination),
                    f.dst_port,
                    f.protocol,
                    f.records,
                    f.today,
                    f.proposed,
                    cell(&f.why_today),
                    cell(&f.why_proposed)
                );
            }
        }
        out
    }

    /// The report's HTML section; `esc` escapes text.
    pub fn html(&self, esc: impl Fn(&str) -> String) -> String {
        let mut out = format!(
            "<h2 id=\"what-if\">What the proposed policies would change</h2>\n<p class=\"{}\">{}.</p>\n",
            if self.counts.broken > 0 { "bad" } else { "ok" },
            esc(&self.sentence())
        );
        for (title, meaning, list) in self.sections() {
            let _ = writeln!(
                out,
                "<h3>{} <small>({})</small></h3>",
                esc(title),
                esc(meaning)
            );
            if list.is_empty() {
                out.push_str("<p>None.</p>\n");
                continue;
            }
            out.push_str("<table class=\"what-if\"><tr><th>source</th><th>destination</th><th>port</th><th>records</th><th>today</th><th>proposed</th><th>why today</th><th>why proposed</th></tr>\n");
            for f in list {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td class=\"v-{}\">{}</td><td class=\"v-{}\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&f.source),
                    esc(&f.destination),
                    f.dst_port,
                    f.protocol,
                    f.records,
                    f.today,
                    f.today,
                    f.proposed,
                    f.proposed,
                    esc(&f.why_today),
                    esc(&f.why_proposed)
                );
            }
            out.push_str("</table>\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(ns: &str, name: &str, spec: &str) -> String {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn proposal(files: &[(&str, &str)], replace: bool) -> Result<Proposal, WhatIfError> {
        let files: Vec<(PathBuf, Vec<u8>)> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec()))
            .collect();
        parse_proposal(&files, replace)
    }

    fn installed(text: &str) -> Vec<NetworkPolicy> {
        crate::cluster::parse_snapshot(Path::new("snap.yaml"), text.as_bytes())
            .unwrap()
            .network_policies
    }

    fn names(set: &[&NetworkPolicy]) -> Vec<String> {
        set.iter()
            .map(|p| {
                let (ns, n) = key_of(p);
                format!(
                    "{ns}/{n}:{}",
                    p.spec
                        .as_ref()
                        .map_or(0, |s| s.egress.as_ref().map_or(0, Vec::len))
                )
            })
            .collect()
    }

    #[test]
    fn apply_replaces_same_name_and_adds_the_rest() {
        let have = installed(&format!(
            "{}---\n{}",
            np("media", "a", "{podSelector: {}}"),
            np("media", "b", "{podSelector: {}}")
        ));
        let p = proposal(
            &[(
                "p.yaml",
                &format!(
                    "{}---\n{}",
                    np("media", "b", "{podSelector: {}, egress: [{}]}"),
                    np("cdn", "b", "{podSelector: {}}")
                ),
            )],
            false,
        )
        .unwrap();
        let (set, replaced) = p.apply(&have);
        assert_eq!(replaced, 1);
        assert_eq!(names(&set), ["media/a:0", "media/b:1", "cdn/b:0"]);
        let p = Proposal { replace: true, ..p };
        let (set, replaced) = p.apply(&have);
        assert_eq!(replaced, 0);
        assert_eq!(names(&set), ["media/b:1", "cdn/b:0"]);
    }

    #[test]
    fn change_and_exit_codes() {
        assert_eq!(Change::of(true, false), Some(Change::Break));
        assert_eq!(Change::of(false, true), Some(Change::Unblock));
        assert_eq!(Change::of(true, true), None);
        assert_eq!(Change::of(false, false), None);
        let with = |broken, unblocked| WhatIf {
            counts: Counts {
                broken,
                unblocked,
                ..Counts::default()
            },
            ..WhatIf::default()
        };
        let table = [
            ((0, 0), [0, 0, 0]),
            ((1, 0), [4, 4, 0]),
            ((0, 1), [0, 5, 0]),
            ((2, 3), [4, 4, 0]),
        ];
        for ((b, u), want) in table {
            let w = with(b, u);
            let got = [FailOn::Break, FailOn::Change, FailOn::None].map(|f| w.exit_code(f));
            assert_eq!(got, want, "broken {b}, unblocked {u}");
        }
    }

    #[test]
    fn refused_inputs() {
        let ok = np("media", "a", "{podSelector: {}}");
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (vec![("e.yaml", String::new())], "--policies e.yaml: contains no NetworkPolicy"),
            (
                vec![("l.yaml", "apiVersion: v1\nkind: List\nitems:\n".into())],
                "--policies l.yaml: contains no NetworkPolicy",
            ),
            (
                vec![("s.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: media}\n".into())],
                "--policies s.yaml: document 1: Service media/s: field kind: a proposal holds NetworkPolicies only",
            ),
            (
                vec![("k.yaml", "metadata: {name: x}\n".into())],
                "k.yaml: document 1: the object has no kind",
            ),
            (
                vec![("n.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: ''}\n".into())],
                "--policies n.yaml: document 1: NetworkPolicy /a: field metadata.namespace: missing",
            ),
            (
                vec![("a.yaml", ok.clone()), ("b.yaml", format!("{}---\n{ok}", np("media", "z", "{podSelector: {}}")))],
                "--policies b.yaml: document 2: NetworkPolicy media/a: proposed twice (first in a.yaml document 1)",
            ),
            (
                vec![("x.yaml", np("media", "a", "{podSelector: {matchLabels: {'bad key!': x}}}"))],
                "--policies x.yaml: NetworkPolicy media/a: field spec.podSelector",
            ),
        ];
        for (files, want) in cases {
            let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
            let err = proposal(&files, false).unwrap_err().to_string();
            assert!(err.contains(want), "{files:?}\n got: {err}\nwant: {want}");
        }
        let p = proposal(&[("a.yaml", &ok)], false).unwrap();
        assert_eq!(p.policies.len(), 1);
        assert_eq!(
            p.policies[0].at,
            ObjectId {
                document: 1,
                item: None
            }
        );
    }

    #[test]
    fn stdin_is_read_once() {
        let args = |p: &[&str]| WhatIfArgs {
            policies: p.iter().map(PathBuf::from).collect(),
            replace: false,
        };
        let flows = Path::new("flows.jsonl");
        assert!(check_stdin(&args(&["-"]), Some(Path::new("c.yaml")), flows).is_ok());
        assert!(check_stdin(&args(&["a.yaml"]), Some(Path::new("-")), Path::new("-")).is_ok());
        let err = |a: &[&str], c: &str, f: &str| {
            check_stdin(&args(a), Some(Path::new(c)), Path::new(f))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["-"], "-", "f").contains("already the cluster snapshot"));
        assert!(err(&["-"], "c", "-").contains("already the flow log"));
        assert!(err(&["-", "-"], "c", "f").contains("given twice"));
    }

    #[test]
    fn checker_lists_breaks_and_unblocks_with_both_verdicts() {
        let snap_text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: media}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: media, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: media, labels: {app: b}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.2}\n---\n".to_owned()
            + &np("media", "deny-b", "{podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}");
        let snap =
            crate::cluster::parse_snapshot(Path::new("s.yaml"), snap_text.as_bytes()).unwrap();
        let today = Engine::build(&snap).unwrap();
        // Lets a -> b in, isolates a's egress except to b.
        let p = proposal(
            &[(
                "p.yaml",
                &format!(
                    "{}---\n{}",
                    np("media", "deny-b", "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}"),
                    np("media", "a-out", "{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: b}}}]}]}")
                ),
            )],
            false,
        )
        .unwrap();
        let (proposed, replaced) = p.engine(&snap).unwrap();
        assert_eq!(replaced, 1);
        let mut c = Checker::new(&p, 1, replaced, &today, &proposed);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let flow = |dst: &str, line| FlowId {
            who: Default::default(),
            src_ip: ip("10.0.0.1"),
            dst_ip: ip(dst),
            dst_port: 80,
            protocol: Protocol::Tcp,
            records: 2,
            first_line: line,
        };
        for (f, want) in [
            (flow("10.0.0.2", 1), Some(Change::Unblock)),
            (flow("192.0.2.7", 2), Some(Change::Break)),
        ] {
            let r = today.evaluate(f.src_ip, f.dst_ip, f.dst_port, f.protocol);
            let (_, change) = c.check(f, &r);
            assert_eq!(change, want);
        }
        let w = c.finish();
        assert_eq!(
            (w.counts.checked, w.counts.broken, w.counts.unblocked),
            (2, 1, 1)
        );
        let b = &w.broken[0];
        assert_eq!((b.today, b.proposed, b.first_line), ("allow", "deny", 2));
        assert_eq!(b.destination, "192.0.2.7 (external)");
        assert!(
            b.why_proposed
                .contains("egress DENIED: isolated by media/a-out"),
            "{}",
            b.why_proposed
        );
        let u = &w.unblocked[0];
        assert_eq!(
            (u.source.as_str(), u.destination.as_str()),
            ("media/a", "media/b")
        );
        assert!(
            u.why_today
                .contains("ingress DENIED: isolated by media/deny-b"),
            "{}",
            u.why_today
        );
        assert!(
            u.why_proposed
                .contains("ingress allowed by media/deny-b ingress[0]"),
            "{}",
            u.why_proposed
        );
        assert!(w.sentence().starts_with("2 proposed NetworkPolicies from p.yaml, applied to the 1 installed NetworkPolicies (1 replaced): of 2 observed flows, 1 would break, 1 would be unblocked"), "{}", w.sentence());
        let md = w.markdown();
        assert!(
            md.contains("### Would break (allowed today, denied by the proposal)\n\n| source |"),
            "{md}"
        );
        let html = w.html(|s| s.replace('<', "&lt;"));
        assert!(
            html.contains("<h2 id=\"what-if\">") && html.contains("<td class=\"v-deny\">deny</td>"),
            "{html}"
        );
    }
}
