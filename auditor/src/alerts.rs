//! Drop alerts: what is blocked now, said the way an operator needs it, deduplicated
//! per stream and window (pure; the recorder writes them out).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::flowlog::{Direction, FlowRecord};

/// One alert. Serialized as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// `drop` (the kernel dropped packets) or `connect_timeout` (SYNs unanswered).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub direction: String,
    pub peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_workload: Option<String>,
    pub port: u16,
    pub protocol: String,
    /// Kernel drop reason, or "connect timed out after N SYN retransmits".
    pub reason: String,
    /// Drops or timed-out connects in this alert's window so far.
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The policy verdict, when the recorder knows the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Set when every NetworkPolicy of the cluster view allows the flow, yet the kernel
    /// dropped it or its connections timed out: the likely cause (see
    /// [`crate::observed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_although_allowed: Option<String>,
    /// Set on an overflow alert (`peer` `*`, `port` 0): this many alerts of streams past
    /// the deduplicator's limit ([`MAX_OPEN_STREAMS`] open at once) were added up here,
    /// per workload, process and reason, instead of one alert per peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded: Option<u64>,
}

/// Streams the deduplicator tracks at once; alerts of further streams within the window
/// are added up into one overflow alert per (kind, workload, process, protocol, reason).
/// Bounds the recorder's memory under an alert storm (a scan, a flood of new peers).
pub const MAX_OPEN_STREAMS: usize = 4096;

impl Alert {
    /// The alerts a flow record calls for (drops and connect timeouts), without dedup.
    pub fn from_record(r: &FlowRecord, verdict: Option<String>) -> Vec<Alert> {
        let allowed = verdict.as_deref().is_some_and(|v| !v.starts_with("denied"));
        let mut facts = crate::observed::Facts::default();
        facts.add(r);
        let blocked_although_allowed = facts
            .finding(allowed)
            .filter(|f| *f == crate::observed::Finding::BlockedAlthoughAllowed)
            .map(|f| facts.likely_cause(f));
        let (me, peer_ep, peer_ip) = match r.direction {
            Some(Direction::Ingress) => (r.dst.as_ref(), r.src.as_ref(), r.src_ip),
            _ => (r.src.as_ref(), r.dst.as_ref(), r.dst_ip),
        };
        let base = |kind: &'static str, reason: String, count: u64| Alert {
            kind,
            namespace: me.and_then(|e| e.namespace.clone()),
            workload: me.and_then(|e| e.workload.clone()),
            pod: me.and_then(|e| e.pod.clone()),
            process: r.comm.clone(),
            pid: r.pid,
            direction: r
                .direction
                .map(|d| {
                    if d == Direction::Ingress {
                        "ingress"
                    } else {
                        "egress"
                    }
                })
                .unwrap_or("unknown")
                .to_string(),
            peer: peer_ip.to_string(),
            peer_name: r.dns_name.clone(),
            peer_workload: peer_ep.and_then(|e| match (&e.namespace, &e.workload) {
                (Some(ns), Some(w)) => Some(format!("{ns}/{w}")),
                (None, Some(w)) => Some(w.clone()),
                _ => None,
            }),
            port: r.dst_port,
            protocol: r.protocol.to_string(),
            reason,
            count,
            first_seen: r.first_seen.clone(),
            last_seen: r.last_seen.clone(),
            verdict: verdict.clone(),
            blocked_although_allowed: blocked_although_allowed.clone(),
            folded: None,
        };
        let mut out = Vec::new();
        // A TCP SYN to a port nobody listens on is freed as NO_SOCKET and answered with a
        // reset: the process sees "connection refused" at once, nothing is silent.
        let loud = r.protocol == crate::flowlog::Protocol::Tcp
            && r.drop_reason.as_deref() == Some("NO_SOCKET");
        if r.drops > 0 && !loud {
            out.push(base(
                "drop",
                r.drop_reason.clone().unwrap_or_else(|| "unknown".into()),
                r.drops,
            ));
        }
        if r.timed_out > 0 {
            let n = r.syn_retransmits.max(1);
            out.push(base(
                "connect_timeout",
                format!("connect timed out after {n} SYN retransmits"),
                r.timed_out,
            ));
        }
        out
    }

    /// The alert in one line for people: who, what, to whom, why.
    pub fn sentence(&self) -> String {
        let who = match (&self.namespace, &self.workload, &self.pod) {
            (Some(ns), Some(w), _) => format!("{ns}/{w}"),
            (Some(ns), None, Some(p)) => format!("{ns}/{p}"),
            _ => "unknown workload".into(),
        };
        let process = self
            .process
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        let peer = match (&self.peer_name, &self.peer_workload, self.folded) {
            (_, _, Some(n)) => {
                format!("other peers ({n} alerts past the limit of open streams)")
            }
            (Some(n), _, None) => format!("{n} [{}]", self.peer),
            (None, Some(w), None) => format!("{w} [{}]", self.peer),
            _ => self.peer.clone(),
        };
        let arrow = if self.direction == "ingress" {
            "<-"
        } else {
            "->"
        };
        let verdict = self
            .verdict
            .as_deref()
            .map(|v| format!("; {v}"))
            .unwrap_or_default();
        let port = if self.folded.is_some() {
            "*".to_owned()
        } else {
            self.port.to_string()
        };
        let finding = self
            .blocked_although_allowed
            .as_deref()
            .map(|c| format!("; BLOCKED ALTHOUGH ALLOWED: {c}"))
            .unwrap_or_default();
        format!(
            "{}: {who}{process} {arrow} {peer} {port}/{}: {} x{}{verdict}{finding}",
            self.kind, self.protocol, self.reason, self.count
        )
    }

    /// This alert added up into its overflow stream (peer `*`, port 0, no pod or pid).
    fn into_overflow(self) -> Alert {
        Alert {
            pod: None,
            pid: None,
            peer: "*".to_owned(),
            peer_name: None,
            peer_workload: None,
            port: 0,
            folded: Some(1),
            ..self
        }
    }

    /// The stream an alert belongs to, for deduplication.
    fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            self.workload.as_deref().unwrap_or(""),
            self.process.as_deref().unwrap_or(""),
            self.peer,
            self.port,
            self.protocol,
            self.reason
        )
    }
}

struct Open {
    alert: Alert,
    opened: Duration,
    /// Count already announced.
    told: u64,
}

/// Deduplicates alerts per stream: the first of a stream goes out at once; more of the
/// same stream within `window` are added up and go out once when the window closes.
pub struct Deduper {
    window: Duration,
    open: BTreeMap<String, Open>,
    /// The open streams in the order they opened (`now` only moves forward), so closing
    /// the expired ones costs what expires, not what is open.
    by_age: VecDeque<(Duration, String)>,
    max_open: usize,
}

impl Deduper {
    pub fn new(window: Duration) -> Self {
        Self::with_limit(window, MAX_OPEN_STREAMS)
    }

    /// At most `max_open` streams tracked at once (overflow streams come on top).
    pub fn with_limit(window: Duration, max_open: usize) -> Self {
        Self {
            window,
            open: BTreeMap::new(),
            by_age: VecDeque::new(),
            max_open,
        }
    }

    /// Streams tracked now.
    pub fn open_streams(&self) -> usize {
        self.open.len()
    }

    /// Feeds alerts seen at time `now` (any monotonic clock); returns those to send now.
    pub fn push(&mut self, now: Duration, alerts: Vec<Alert>) -> Vec<Alert> {
        let mut out = Vec::new();
        for a in alerts {
            let mut k = a.key();
            let a = if self.open.len() >= self.max_open && !self.open.contains_key(&k) {
                let o = a.into_overflow();
                k = o.key();
                o
            } else {
                a
            };
            match self.open.get_mut(&k) {
                Some(o) => {
                    o.alert.count += a.count;
                    if let (Some(f), Some(n)) = (&mut o.alert.folded, a.folded) {
                        *f += n;
                    }
                    o.alert.last_seen = a.last_seen.or(o.alert.last_seen.take());
                    if a.verdict.is_some() {
                        o.alert.verdict = a.verdict;
                    }
                }
                None => {
                    out.push(a.clone());
                    self.by_age.push_back((now, k.clone()));
                    self.open.insert(
                        k,
                        Open {
                            told: a.count,
                            alert: a,
                            opened: now,
                        },
                    );
                }
            }
        }
        out.extend(self.tick(now));
        out
    }

    /// Closes windows that have run out; returns the updates they owe.
    pub fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let mut expired = Vec::new();
        while let Some((opened, _)) = self.by_age.front() {
            if now.saturating_sub(*opened) < self.window {
                break;
            }
            if let Some((opened, k)) = self.by_age.pop_front() {
                // The stream may have closed and opened again since: only its latest
                // opening counts.
                if self.open.get(&k).is_some_and(|o| o.opened == opened) {
                    expired.push(k);
                }
            }
        }
        // In key order, as before: deterministic output.
        expired.sort();
        let mut out = Vec::new();
        for k in expired {
            if let Some(o) = self.open.remove(&k) {
                if o.alert.count > o.told {
                    out.push(o.alert);
                }
            }
        }
        out
    }

    /// Everything still owed (at the end of a run).
    pub fn flush(&mut self) -> Vec<Alert> {
        self.by_age.clear();
        let open = std::mem::take(&mut self.open);
        open.into_values()
            .filter(|o| o.alert.count > o.told)
            .map(|o| o.alert)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowlog::{Endpoint, Protocol};

    fn record(drops: u64, timed_out: u64) -> FlowRecord {
        let mut r: FlowRecord = serde_json::from_str(r#"{"src_ip":"10.244.1.30","dst_ip":"10.96.2.40","dst_port":5001,"protocol":"UDP","direction":"egress","comm":"ffmpeg","pid":7}"#).unwrap();
        r.drops = drops;
        r.timed_out = timed_out;
        r.syn_retransmits = 2;
        r.drop_reason = Some("NETFILTER_DROP".into());
        r.src = Some(Endpoint {
            namespace: Some("transcode".into()),
            workload: Some("Deployment/transcoder".into()),
            ..Default::default()
        });
        r.dns_name = Some("ingest.ingest.svc.cluster.local".into());
        r.protocol = Protocol::Udp;
        r
    }

    #[test]
    fn drop_and_timeout_alerts_say_everything() {
        let a = Alert::from_record(&record(3, 1), Some("denied: x".into()));
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].kind, "drop");
        assert_eq!(a[0].reason, "NETFILTER_DROP");
        assert_eq!(a[0].count, 3);
        assert_eq!(a[0].workload.as_deref(), Some("Deployment/transcoder"));
        assert_eq!(
            a[0].peer_name.as_deref(),
            Some("ingest.ingest.svc.cluster.local")
        );
        assert_eq!(a[1].reason, "connect timed out after 2 SYN retransmits");
        assert!(Alert::from_record(&record(0, 0), None).is_empty());
    }

    #[test]
    fn a_drop_every_policy_allows_names_the_finding() {
        let a = Alert::from_record(
            &record(3, 0),
            Some("allowed by transcode/transcoder-egress egress[1]".into()),
        );
        let cause = a[0].blocked_although_allowed.as_deref().expect("finding");
        assert!(
            cause.starts_with("dropped by netfilter on this node"),
            "{cause}"
        );
        assert!(
            a[0].sentence().ends_with(&format!(
                "NETFILTER_DROP x3; allowed by transcode/transcoder-egress egress[1]; BLOCKED ALTHOUGH ALLOWED: {cause}"
            )),
            "{}",
            a[0].sentence()
        );
        // Denied, or no cluster view: nothing to add.
        for verdict in [Some("denied: x".to_owned()), None] {
            let a = Alert::from_record(&record(3, 0), verdict);
            assert_eq!(a[0].blocked_although_allowed, None);
            assert!(!a[0].sentence().contains("BLOCKED ALTHOUGH"));
        }
    }

    #[test]
    fn dedup_per_stream_and_window() {
        let mut d = Deduper::new(Duration::from_secs(60));
        let s = |n| Alert::from_record(&record(n, 0), None);
        assert_eq!(
            d.push(Duration::from_secs(0), s(1)).len(),
            1,
            "first goes out at once"
        );
        assert!(
            d.push(Duration::from_secs(10), s(4)).is_empty(),
            "same stream within the window: held"
        );
        let later = d.tick(Duration::from_secs(61));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].count, 5, "the window's total");
        assert_eq!(
            d.push(Duration::from_secs(62), s(1)).len(),
            1,
            "a new window opens"
        );
        assert!(d.flush().is_empty(), "nothing more owed");
    }

    #[test]
    fn dedup_is_bounded_and_folds_the_overflow_per_workload_and_reason() {
        let mut d = Deduper::with_limit(Duration::from_secs(60), 3);
        let to = |ip: &str, n| {
            let mut r = record(n, 0);
            r.dst_ip = ip.parse().unwrap();
            r.dns_name = None;
            Alert::from_record(&r, None)
        };
        let t = Duration::from_secs(1);
        for i in 1..=3 {
            assert_eq!(d.push(t, to(&format!("10.0.0.{i}"), 1)).len(), 1);
        }
        // The fourth peer and beyond: one overflow alert goes out, then they add up.
        let first = d.push(t, to("10.0.0.4", 2));
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].peer.as_str(), first[0].port), ("*", 0));
        assert_eq!(first[0].folded, Some(1));
        assert_eq!(
            first[0].sentence(),
            "drop: transcode/Deployment/transcoder (ffmpeg) -> other peers (1 alerts past the limit of open streams) */UDP: NETFILTER_DROP x2"
        );
        for i in 5..=100 {
            assert!(d.push(t, to(&format!("10.0.0.{i}"), 1)).is_empty());
        }
        // A known stream still adds up on its own.
        assert!(d.push(t, to("10.0.0.2", 5)).is_empty());
        assert_eq!(d.open_streams(), 4, "3 streams and one overflow stream");
        let later = d.tick(Duration::from_secs(62));
        let overflow = later.iter().find(|a| a.folded.is_some()).unwrap();
        assert_eq!(overflow.folded, Some(97));
        assert_eq!(overflow.count, 2 + 96);
        let two = later.iter().find(|a| a.peer == "10.0.0.2").unwrap();
        assert_eq!(two.count, 6);
        assert_eq!(d.open_streams(), 0);
        let json = serde_json::to_value(overflow).unwrap();
        assert_eq!(json["folded"], 97);
        assert!(serde_json::to_value(two).unwrap().get("folded").is_none());
    }
}
