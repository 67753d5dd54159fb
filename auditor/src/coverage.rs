//! Observation coverage per audited workload: how much evidence an allowlist rests on.
//!
//! An allowlist allows exactly what was observed, so it is only as complete as the
//! recording: a workload watched for twelve minutes, a CronJob seen in one run, or a
//! workload whose set of peers and ports was still growing when the recording stopped
//! will need more than was seen. For each audited workload (the grouping of
//! [`crate::suggest`]: `namespace/Kind/name`, a CronJob's Jobs under the CronJob) this
//! computes from the merged flows and their verdicts' targets:
//! - the observation window: the earliest `first_seen` to the latest `last_seen` of the
//!   flows from or to its pods ("unknown" when none of them carries times: older logs);
//! - the distinct pods seen, and for a CronJob or Job the distinct Jobs (runs);
//! - flows, records, distinct peers and ports, and distinct needs: (direction, peer,
//!   port/protocol), a peer being a workload, a node or an external address;
//! - when the last new need appeared (the latest of each need's earliest `first_seen`),
//!   and how long before the end of the window, i.e. whether the needs stopped growing.
//!
//! Thin evidence (a warning in suggest's summary and YAML and in the report): watched
//! shorter than `--min-observation` (24h by default) or for an unknown time, fewer than
//! two Job runs of a CronJob or Job, or a new need in the last 10% of the window.
//!
//! Pure: [`compute`] takes the flows and their evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::flowlog::{Direction, Protocol};
use crate::policy::{Engine, FlowResult, Party};
use crate::suggest::labels::{group_of, split_group};
use crate::suggest::Observed;

/// `--min-observation`'s default.
pub const DEFAULT_MIN_OBSERVATION: Duration = Duration::from_secs(24 * 3600);
/// Fewer Job runs than this is thin evidence for a CronJob or Job.
pub const MIN_JOB_RUNS: usize = 2;
/// A new need in this last part of the window: the needs are still growing.
pub const GROWING_FRACTION: f64 = 0.1;

/// What counts as thin evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub min_observation: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_observation: DEFAULT_MIN_OBSERVATION,
        }
    }
}

/// A duration in a human form (`12m 3s`) and a machine form (seconds, millisecond
/// precision); `seconds` is `null` and `text` "unknown" when it cannot be told.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub seconds: Option<f64>,
    pub text: String,
}

impl Span {
    pub fn of(d: Duration) -> Self {
        Self {
            seconds: Some(d.as_millis() as f64 / 1000.0),
            text: human(d),
        }
    }
    pub fn unknown() -> Self {
        Self {
            seconds: None,
            text: "unknown".into(),
        }
    }
}

/// A short human form: the two largest units, seconds at the finest (`0s`, `40s`,
/// `12m 3s`, `2h 5m`, `3d 4h`), milliseconds only below a second.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let secs = d.as_secs();
    // Days only from two days on: `24h` reads as the flag was written.
    let units: &[(u64, &str)] = if secs >= 2 * 86_400 {
        &[(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")]
    } else {
        &[(3600, "h"), (60, "m"), (1, "s")]
    };
    let mut parts = Vec::new();
    let mut rest = secs;
    for &(size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 || !parts.is_empty() {
            parts.push((n, unit));
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An RFC 3339 time as written in the flow log (`None`: absent or not a time).
fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s?.trim()).ok()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// An observation window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// RFC 3339 UTC, milliseconds; absent when no flow carries times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub duration: Span,
}

#[derive(Debug, Clone, Copy, Default)]
struct Times {
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

impl Times {
    fn add(&mut self, first: Option<SystemTime>, last: Option<SystemTime>) {
        if let Some(f) = first.or(last) {
            self.first = Some(self.first.map_or(f, |x| x.min(f)));
        }
        if let Some(l) = last.or(first) {
            self.last = Some(self.last.map_or(l, |x| x.max(l)));
        }
    }
    fn span(&self) -> Option<Duration> {
        Some(
            self.last?
                .duration_since(self.first?)
                .unwrap_or(Duration::ZERO),
        )
    }
    fn window(&self) -> Window {
        Window {
            first_seen: self.first.map(rfc3339),
            last_seen: self.last.map(rfc3339),
            duration: self.span().map(Span::of).unwrap_or_else(Span::unknown),
        }
    }
}

/// The need that appeared last.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewNeed {
    /// `peer` (never seen before in either direction), or `port` (a known peer, a new
    /// port or direction).
    pub kind: &'static str,
    /// `egress` or `ingress`.
    pub direction: &'static str,
    /// A workload (`namespace/Kind/name`), `node NAME`, or an external address with the
    /// DNS names it was reached by.
    pub peer: String,
    /// `8080/TCP`.
    pub port: String,
    /// When it was first seen (RFC 3339 UTC, milliseconds).
    pub at: String,
    /// How long before the end of the window.
    pub before_end: Span,
}

/// The coverage of one audited workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadCoverage {
    /// `namespace/Kind/name`.
    pub workload: String,
    /// From the earliest `first_seen` to the latest `last_seen` of its flows.
    pub watched: Window,
    /// Distinct pods of it seen in flows.
    pub pods: usize,
    /// For a CronJob or Job: distinct Jobs seen (runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_runs: Option<usize>,
    /// Distinct flows from or to its pods, and the records they were merged from.
    pub flows: usize,
    pub records: u64,
    /// Flows without `first_seen`/`last_seen` (older flow logs).
    pub flows_without_times: usize,
    /// Distinct peers (workloads, nodes, external addresses), ports (port/protocol), and
    /// needs (direction, peer, port).
    pub peers: usize,
    pub ports: usize,
    pub needs: usize,
    /// The need that appeared last, when times tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_new: Option<NewNeed>,
    /// Whether the allowlist rests on thin evidence (`reasons` say why).
    pub thin: bool,
    pub reasons: Vec<String>,
    /// The warning for a user, when thin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Coverage of every audited workload, in name order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    /// The threshold used (`--min-observation`).
    pub min_observation: Span,
    /// The window of all the flows considered.
    pub recording: Window,
    pub workloads: Vec<WorkloadCoverage>,
}

impl Coverage {
    /// No audited workload.
    pub fn empty(min_observation: Duration) -> Self {
        Self {
            min_observation: Span::of(min_observation),
            recording: Times::default().window(),
            workloads: Vec::new(),
        }
    }

    /// The warnings of the workloads on thin evidence, in workload order.
    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.workloads.iter().filter_map(|w| w.warning.as_deref())
    }

    /// How many workloads rest on thin evidence.
    pub fn thin(&self) -> usize {
        self.workloads.iter().filter(|w| w.thin).count()
    }
}

impl WorkloadCoverage {
    /// One line: `watched 12m (10:00:00Z to 10:12:00Z), 1 pod, 1 Job run, 5 flows, 3 peers,
    /// 4 ports; last new peer 40s before the end`.
    pub fn line(&self) -> String {
        let mut s = format!("watched {}", self.watched.duration.text);
        if let (Some(a), Some(b)) = (&self.watched.first_seen, &self.watched.last_seen) {
            s.push_str(&format!(" ({a} to {b})"));
        }
        s.push_str(&format!(", {}", plural(self.pods, "pod")));
        if let Some(r) = self.job_runs {
            s.push_str(&format!(", {}", plural(r, "Job run")));
        }
        s.push_str(&format!(", {}", plural(self.flows, "flow")));
        if self.flows_without_times > 0 {
            s.push_str(&format!(" ({} without times)", self.flows_without_times));
        }
        s.push_str(&format!(
            ", {}, {}",
            plural(self.peers, "peer"),
            plural(self.ports, "port")
        ));
        match &self.last_new {
            Some(n) => s.push_str(&format!(
                "; last new {} {} before the end ({} {} {})",
                n.kind, n.before_end.text, n.direction, n.peer, n.port
            )),
            None if self.needs > 0 => s.push_str("; last new peer or port: unknown"),
            None => {}
        }
        s
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// (direction, peer, (port, protocol)).
type NeedKey = (Direction, String, (u16, Protocol));

#[derive(Default)]
struct Acc {
    times: Times,
    pods: BTreeSet<usize>,
    jobs: BTreeSet<String>,
    flows: usize,
    records: u64,
    untimed: usize,
    /// (direction, peer, port) -> earliest first_seen (None: only untimed flows).
    needs: BTreeMap<NeedKey, Option<SystemTime>>,
    /// DNS names of external peers (egress), for the text.
    names: BTreeMap<String, BTreeSet<String>>,
}

fn peer_text(engine: &Engine, party: &Party, ip: std::net::IpAddr) -> String {
    match party {
        Party::Pod(p) => group_of(&engine.pods()[*p].workload),
        Party::Node(Some(n)) => format!("node {n}"),
        Party::Node(None) => format!("node {ip}"),
        Party::External => ip.to_string(),
    }
}

/// Coverage of the `audited` workloads (group names) from `flows` and their evaluation
/// `results` (same order, same length).
pub fn compute(
    engine: &Engine,
    flows: &[Observed],
    results: &[FlowResult],
    audited: &[&str],
    thresholds: &Thresholds,
) -> Coverage {
    let mut accs: BTreeMap<&str, Acc> = audited.iter().map(|&g| (g, Acc::default())).collect();
    let mut recording = Times::default();
    let pods = engine.pods();
    let member = |party: &Party| -> Option<(usize, String)> {
        match party {
            Party::Pod(p) if !pods[*p].host_network => Some((*p, group_of(&pods[*p].workload))),
            _ => None,
        }
    };
    for (f, r) in flows.iter().zip(results) {
        let first = parse_time(f.first_seen.as_deref());
        let last = parse_time(f.last_seen.as_deref());
        let timed = first.is_some() || last.is_some();
        recording.add(first, last);
        let at = first.or(last);
        // Each workload this flow touches, once.
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        for t in &r.targets {
            let src = member(&t.src);
            let dst = member(&t.dst);
            if src.is_some() && src.as_ref().map(|x| x.0) == dst.as_ref().map(|x| x.0) {
                continue; // within one pod
            }
            let port = (t.dst_port, f.protocol);
            let sides = [
                (src, Direction::Egress, peer_text(engine, &t.dst, t.dst_ip)),
                (dst, Direction::Ingress, peer_text(engine, &t.src, f.src_ip)),
            ];
            for (end, direction, peer) in sides {
                let Some((pod, group)) = end else { continue };
                let Some((&name, _)) = accs.get_key_value(group.as_str()) else {
                    continue; // not audited
                };
                touched.insert(name);
                let Some(acc) = accs.get_mut(name) else {
                    continue;
                };
                acc.pods.insert(pod);
                let w = &pods[pod].workload;
                if split_group(w).1 == "Job" {
                    acc.jobs.insert(w.clone());
                }
                if direction == Direction::Egress
                    && t.dst == Party::External
                    && !f.dns_names.is_empty()
                {
                    acc.names
                        .entry(peer.clone())
                        .or_default()
                        .extend(f.dns_names.iter().cloned());
                }
                let e = acc.needs.entry((direction, peer, port)).or_insert(at);
                if let Some(a) = at {
                    *e = Some(e.map_or(a, |x| x.min(a)));
                }
            }
        }
        for name in touched {
            if let Some(acc) = accs.get_mut(name) {
                acc.flows += 1;
                acc.records += f.records;
                if timed {
                    acc.times.add(first, last);
                } else {
                    acc.untimed += 1;
                }
            }
        }
    }
    let workloads = accs
        .into_iter()
        .map(|(name, acc)| finish(name, acc, thresholds))
        .collect();
    Coverage {
        min_observation: Span::of(thresholds.min_observation),
        recording: recording.window(),
        workloads,
    }
}

fn finish(name: &str, acc: Acc, th: &Thresholds) -> WorkloadCoverage {
    let kind = split_group(name).1;
    let job_runs = matches!(kind, "CronJob" | "Job").then_some(acc.jobs.len());
    let peers: BTreeSet<&str> = acc.needs.keys().map(|k| k.1.as_str()).collect();
    let ports: BTreeSet<(u16, Protocol)> = acc.needs.keys().map(|k| k.2).collect();
    let span = acc.times.span();
    // The last new need: the latest earliest-time; ties by key order (the first).
    let mut timed: Vec<(SystemTime, &NeedKey)> = acc
        .needs
        .iter()
        .filter_map(|(k, t)| t.map(|t| (t, k)))
        .collect();
    timed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    // A need seen only in flows without times could be the last: then it is unknown.
    let all_timed = acc.needs.values().all(Option::is_some);
    let last_new = timed.last().filter(|_| all_timed).map(|&(at, key)| {
        let seen_before = timed.iter().any(|(t, k)| *t < at && k.1 == key.1);
        let end = acc.times.last.unwrap_or(at);
        NewNeed {
            kind: if seen_before { "port" } else { "peer" },
            direction: match key.0 {
                Direction::Egress => "egress",
                Direction::Ingress => "ingress",
            },
            peer: match acc.names.get(&key.1) {
                Some(names) => format!(
                    "{} ({})",
                    key.1,
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                None => key.1.clone(),
            },
            port: format!("{}/{}", key.2 .0, key.2 .1),
            at: rfc3339(at),
            before_end: Span::of(end.duration_since(at).unwrap_or(Duration::ZERO)),
        }
    });
    let mut reasons = Vec::new();
    if acc.flows == 0 {
        reasons.push(
            "no flow from or to its pods was observed, so its allowlist allows nothing".to_owned(),
        );
    } else {
        match span {
            None => reasons.push(
                "its flow records carry no first_seen/last_seen (an older flow log?)".to_owned(),
            ),
            Some(d) if d < th.min_observation => reasons.push(format!(
                "shorter than --min-observation {}",
                human(th.min_observation)
            )),
            Some(_) => {}
        }
        if let Some(runs) = job_runs.filter(|&r| r < MIN_JOB_RUNS) {
            reasons.push(format!(
                "{} of the {kind} seen (another run may need more)",
                plural(runs, "Job run")
            ));
        }
        if let (Some(d), Some(n)) = (span, &last_new) {
            let before = n.before_end.seconds.unwrap_or(0.0);
            if d > Duration::ZERO && before <= d.as_secs_f64() * GROWING_FRACTION {
                reasons.push(format!(
                    "a new {} appeared {} before the end ({} {} {}), so its needs were still growing",
                    n.kind, n.before_end.text, n.direction, n.peer, n.port
                ));
            }
        }
    }
    let thin = !reasons.is_empty();
    let mut observed = plural(acc.pods.len(), "pod");
    if let Some(r) = job_runs {
        observed.push_str(&format!(", {}", plural(r, "Job run")));
    }
    let warning = thin.then(|| {
        format!(
            "{name}: watched {} ({observed}); {}: the allowlist may be incomplete — record longer",
            span.map(human)
                .unwrap_or_else(|| "for an unknown time".into()),
            reasons.join("; ")
        )
    });
    WorkloadCoverage {
        workload: name.to_owned(),
        watched: acc.times.window(),
        pods: acc.pods.len(),
        job_runs,
        flows: acc.flows,
        records: acc.records,
        flows_without_times: acc.untimed,
        peers: peers.len(),
        ports: ports.len(),
        needs: acc.needs.len(),
        last_new,
        thin,
        reasons,
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowlog::FlowRecord;
    use crate::suggest::merge_flows;
    use std::path::Path;

    /// A Deployment with two pods, a CronJob's two Jobs (one pod each), a bare Job, an
    /// origin StatefulSet.
    const SNAPSHOT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-5d9f-a, namespace: m, labels: {app: web, pod-template-hash: 5d9f}, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d9f, uid: r1, controller: true}]}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-5d9f-b, namespace: m, labels: {app: web, pod-template-hash: 5d9f}, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d9f, uid: r1, controller: true}]}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: nightly-29000000-x, namespace: m, labels: {app: nightly}, ownerReferences: [{apiVersion: batch/v1, kind: Job, name: nightly-29000000, uid: j1, controller: true}]}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: nightly-29001440-y, namespace: m, labels: {app: nightly}, ownerReferences: [{apiVersion: batch/v1, kind: Job, name: nightly-29001440, uid: j2, controller: true}]}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: origin-0, namespace: m, labels: {app: origin}, ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: origin, uid: s1, controller: true}]}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.9}
"#;

    fn rec(src: &str, dst: &str, port: u16, times: Option<(&str, &str)>) -> FlowRecord {
        let mut r: FlowRecord = serde_json::from_str(&format!(
            r#"{{"src_ip":"{src}","dst_ip":"{dst}","dst_port":{port},"protocol":"TCP","direction":"egress","comm":"ffmpeg","count":1}}"#
        ))
        .unwrap();
        if let Some((a, b)) = times {
            r.first_seen = Some(a.into());
            r.last_seen = Some(b.into());
        }
        r
    }

    fn run(records: &[FlowRecord], audited: &[&str], min: Duration) -> Coverage {
        let snapshot =
            crate::cluster::parse_snapshot(Path::new("t.yaml"), SNAPSHOT.as_bytes()).unwrap();
        let engine = Engine::build(&snapshot).unwrap();
        let flows = merge_flows(records.iter().enumerate().map(|(i, r)| (i + 1, r)));
        let results: Vec<FlowResult> = flows
            .iter()
            .map(|f| engine.evaluate(f.src_ip, f.dst_ip, f.dst_port, f.protocol))
            .collect();
        compute(
            &engine,
            &flows,
            &results,
            audited,
            &Thresholds {
                min_observation: min,
            },
        )
    }

    #[test]
    fn human_durations() {
        let d = |s| human(Duration::from_secs(s));
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(d(40), "40s");
        assert_eq!(d(720), "12m");
        assert_eq!(d(723), "12m 3s");
        assert_eq!(d(3600 + 5 * 60 + 9), "1h 5m");
        assert_eq!(d(24 * 3600), "24h");
        assert_eq!(d(3 * 86_400 + 4 * 3600 + 1), "3d 4h");
        assert_eq!(Span::of(Duration::from_millis(40_500)).seconds, Some(40.5));
    }

    #[test]
    fn window_pods_needs_and_a_late_new_peer() {
        // web: two pods, 10:00 to 10:12; the origin from the start, an external peer
        // 40 s before the end (within the last 10%).
        let recs = [
            rec(
                "10.0.0.1",
                "10.0.0.9",
                8080,
                Some(("2026-11-28T10:00:00Z", "2026-11-28T10:11:00Z")),
            ),
            rec(
                "10.0.0.2",
                "10.0.0.9",
                8080,
                Some(("2026-11-28T10:01:00.500Z", "2026-11-28T10:12:00Z")),
            ),
            rec(
                "10.0.0.2",
                "10.0.0.9",
                9090,
                Some(("2026-11-28T10:05:00Z", "2026-11-28T10:06:00Z")),
            ),
            rec(
                "10.0.0.1",
                "203.0.113.7",
                443,
                Some(("2026-11-28T10:11:20Z", "2026-11-28T10:11:30Z")),
            ),
        ];
        let c = run(&recs, &["m/Deployment/web"], DEFAULT_MIN_OBSERVATION);
        let w = &c.workloads[0];
        assert_eq!(w.workload, "m/Deployment/web");
        assert_eq!(w.watched.duration, Span::of(Duration::from_secs(720)));
        assert_eq!(
            w.watched.first_seen.as_deref(),
            Some("2026-11-28T10:00:00.000Z")
        );
        assert_eq!(
            w.watched.last_seen.as_deref(),
            Some("2026-11-28T10:12:00.000Z")
        );
        assert_eq!((w.pods, w.job_runs, w.flows, w.records), (2, None, 4, 4));
        assert_eq!((w.peers, w.ports, w.needs), (2, 3, 3));
        let n = w.last_new.as_ref().unwrap();
        assert_eq!(
            (n.kind, n.direction, n.peer.as_str(), n.port.as_str()),
            ("peer", "egress", "203.0.113.7", "443/TCP")
        );
        assert_eq!(n.before_end.text, "40s");
        assert!(w.thin);
        assert_eq!(
            w.warning.as_deref(),
            Some("m/Deployment/web: watched 12m (2 pods); shorter than --min-observation 24h; a new peer appeared 40s before the end (egress 203.0.113.7 443/TCP), so its needs were still growing: the allowlist may be incomplete — record longer")
        );
        // The origin is a peer of web, not audited: no coverage of its own.
        assert_eq!(c.workloads.len(), 1);
        assert_eq!(c.recording.duration.text, "12m");
    }

    #[test]
    fn a_new_port_of_a_known_peer_and_enough_evidence() {
        let recs = [
            rec(
                "10.0.0.1",
                "10.0.0.9",
                8080,
                Some(("2026-11-28T10:00:00Z", "2026-11-28T12:00:00Z")),
            ),
            rec(
                "10.0.0.1",
                "10.0.0.9",
                9090,
                Some(("2026-11-28T10:30:00Z", "2026-11-28T10:31:00Z")),
            ),
        ];
        let c = run(&recs, &["m/Deployment/web"], Duration::from_secs(3600));
        let w = &c.workloads[0];
        let n = w.last_new.as_ref().unwrap();
        assert_eq!((n.kind, n.port.as_str()), ("port", "9090/TCP"));
        assert_eq!(n.before_end.text, "1h 30m");
        assert!(!w.thin, "{:?}", w.reasons);
        assert_eq!(w.warning, None);
        assert_eq!(
            w.line(),
            "watched 2h (2026-11-28T10:00:00.000Z to 2026-11-28T12:00:00.000Z), 1 pod, 2 flows, 1 peer, 2 ports; last new port 1h 30m before the end (egress m/StatefulSet/origin 9090/TCP)"
        );
    }

    #[test]
    fn cron_job_runs_are_jobs() {
        let one = [rec(
            "10.0.0.3",
            "10.0.0.9",
            8080,
            Some(("2026-11-28T00:00:00Z", "2026-11-29T02:00:00Z")),
        )];
        let c = run(&one, &["m/CronJob/nightly"], DEFAULT_MIN_OBSERVATION);
        let w = &c.workloads[0];
        assert_eq!((w.pods, w.job_runs), (1, Some(1)));
        assert_eq!(
            w.reasons,
            ["1 Job run of the CronJob seen (another run may need more)"]
        );
        let two = [
            one[0].clone(),
            rec(
                "10.0.0.4",
                "10.0.0.9",
                8080,
                Some(("2026-11-29T00:00:00Z", "2026-11-29T00:10:00Z")),
            ),
        ];
        let c = run(&two, &["m/CronJob/nightly"], DEFAULT_MIN_OBSERVATION);
        let w = &c.workloads[0];
        assert_eq!((w.pods, w.job_runs, w.needs), (2, Some(2), 1));
        assert!(!w.thin, "{:?}", w.reasons);
    }

    #[test]
    fn records_without_times_say_unknown() {
        let recs = [rec("10.0.0.1", "10.0.0.9", 8080, None)];
        let c = run(&recs, &["m/Deployment/web"], DEFAULT_MIN_OBSERVATION);
        let w = &c.workloads[0];
        assert_eq!(w.watched.duration, Span::unknown());
        assert_eq!(
            (w.watched.first_seen.as_ref(), w.last_new.as_ref()),
            (None, None)
        );
        assert_eq!(w.flows_without_times, 1);
        assert_eq!(
            w.warning.as_deref(),
            Some("m/Deployment/web: watched for an unknown time (1 pod); its flow records carry no first_seen/last_seen (an older flow log?): the allowlist may be incomplete — record longer")
        );
        assert!(
            w.line()
                .contains("watched unknown, 1 pod, 1 flow (1 without times)"),
            "{}",
            w.line()
        );
        assert!(
            w.line().ends_with("; last new peer or port: unknown"),
            "{}",
            w.line()
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["workloads"][0]["watched"]["duration"]["seconds"],
            serde_json::Value::Null
        );
        assert_eq!(
            json["workloads"][0]["watched"]["duration"]["text"],
            "unknown"
        );
        // Mixed: a need seen only without times could be the last one.
        let mixed = [
            recs[0].clone(),
            rec(
                "10.0.0.1",
                "10.0.0.9",
                9090,
                Some(("2026-11-28T10:00:00Z", "2026-11-29T11:00:00Z")),
            ),
        ];
        let c = run(&mixed, &["m/Deployment/web"], DEFAULT_MIN_OBSERVATION);
        let w = &c.workloads[0];
        assert_eq!(w.watched.duration.text, "25h");
        assert_eq!(w.last_new, None);
        assert!(!w.thin, "{:?}", w.reasons);
    }

    #[test]
    fn an_audited_workload_without_flows_and_a_bad_time() {
        let mut r = rec("10.0.0.9", "203.0.113.7", 443, None);
        r.first_seen = Some("yesterday".into());
        let c = run(&[r], &["m/Deployment/web"], DEFAULT_MIN_OBSERVATION);
        let w = &c.workloads[0];
        assert_eq!((w.flows, w.pods), (0, 0));
        assert_eq!(
            w.reasons,
            ["no flow from or to its pods was observed, so its allowlist allows nothing"]
        );
        assert_eq!(c.recording.duration, Span::unknown());
    }
}
