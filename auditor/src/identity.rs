//! Who a recorded flow's ends are (pure): one resolution for `diff`, `suggest` and
//! `report`.
//!
//! A record can name its pods three ways; the first that the snapshot knows wins:
//! 1. the pod UID in the record's cgroup path (the local end: the source of an egress
//!    flow, the destination of an ingress one), see [`crate::attribute`];
//! 2. the identity the recorder wrote (`src`/`dst`: by `uid`, else `namespace`/`pod`);
//! 3. the address: the pod that owns it in the snapshot (finished pods own none).
//!
//! An address can be stale (the pod is gone and its IP reused) or say nothing (an
//! unbound UDP socket sends from `0.0.0.0`), while the cgroup cannot lie about its pod.
//! Where two ways name different pods, the better one is kept and a warning names the
//! flow and both identities; a UID or recorded pod the snapshot lacks is said too.
//! A destination that is a Service address is resolved through the Service (its
//! backends), never by these hints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::attribute::parse_cgroup_path;
use crate::cluster::Snapshot;
use crate::flowlog::{Direction, Endpoint, FlowRecord, Protocol};
use crate::policy::{Engine, Party, PodId};

/// A pod as a record names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// `Kind/name` of its workload and its labels, as the recorder knew them.
    pub workload: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl PodRef {
    fn of(e: &Endpoint) -> Option<Self> {
        Some(Self {
            namespace: e.namespace.clone()?,
            name: e.pod.clone()?,
            uid: e.uid.clone(),
            workload: e.workload.clone(),
            labels: e.labels.clone(),
        })
    }
}

/// What a record says about its pods beyond its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hint {
    /// The pod UID of the record's cgroup path.
    pub cgroup_uid: Option<String>,
    /// The cgroup is the destination's (an ingress flow), else the source's.
    pub cgroup_is_dst: bool,
    /// The identities the recorder wrote.
    pub src: Option<PodRef>,
    pub dst: Option<PodRef>,
}

impl Hint {
    /// The hint of a record; `None` when it has none (no pod cgroup, no recorded pod).
    pub fn of(r: &FlowRecord) -> Option<Self> {
        let cgroup_uid = r
            .cgroup
            .as_deref()
            .and_then(|p| parse_cgroup_path(p).ok().flatten())
            .and_then(|o| o.pod().map(|p| p.uid.clone()));
        let h = Self {
            cgroup_uid,
            cgroup_is_dst: r.direction == Some(Direction::Ingress),
            src: r.src.as_ref().and_then(PodRef::of),
            dst: r.dst.as_ref().and_then(PodRef::of),
        };
        (h.cgroup_uid.is_some() || h.src.is_some() || h.dst.is_some()).then_some(h)
    }
}

/// Hints shared between the records that carry the same (one `Arc` per distinct hint).
///
/// A log holds few distinct (cgroup, identities) among many records: each record is looked
/// up by what it carries, borrowed, and a hint is built only for the first of its kind.
#[derive(Debug, Default)]
pub struct Hints {
    seen: HashMap<u64, Vec<Seen>>,
    known: HashMap<Arc<Hint>, ()>,
}

/// What a hint was built from, and the hint.
#[derive(Debug)]
struct Seen {
    cgroup: Option<String>,
    direction: Option<Direction>,
    src: Option<Endpoint>,
    dst: Option<Endpoint>,
    hint: Option<Arc<Hint>>,
}

impl Seen {
    fn is(&self, r: &FlowRecord) -> bool {
        self.cgroup.as_deref() == r.cgroup.as_deref()
            && self.direction == r.direction
            && self.src.as_ref() == r.src.as_ref()
            && self.dst.as_ref() == r.dst.as_ref()
    }
}

impl Hints {
    /// The record's hint, shared with earlier records that had the same.
    pub fn intern(&mut self, r: &FlowRecord) -> Option<Arc<Hint>> {
        use std::hash::{Hash, Hasher};
        if r.cgroup.is_none() && r.src.is_none() && r.dst.is_none() {
            return None;
        }
        // The names pick the bucket (labels and workload follow them); `Seen::is` compares all.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        fn names(e: &Option<Endpoint>) -> Option<(Option<&str>, Option<&str>, Option<&str>)> {
            e.as_ref()
                .map(|e| (e.namespace.as_deref(), e.pod.as_deref(), e.uid.as_deref()))
        }
        (&r.cgroup, r.direction, names(&r.src), names(&r.dst)).hash(&mut hasher);
        let bucket = self.seen.entry(hasher.finish()).or_default();
        if let Some(s) = bucket.iter().find(|s| s.is(r)) {
            return s.hint.clone();
        }
        let h = Hint::of(r).map(|h| match self.known.get_key_value(&h) {
            Some((k, _)) => k.clone(),
            None => {
                let h = Arc::new(h);
                self.known.insert(h.clone(), ());
                h
            }
        });
        bucket.push(Seen {
            cgroup: r.cgroup.clone(),
            direction: r.direction,
            src: r.src.clone(),
            dst: r.dst.clone(),
            hint: h.clone(),
        });
        h
    }
}

/// Annotation on the pods [`add_missing_pods`] adds to a snapshot.
pub const FROM_FLOW_LOG: &str = "auditor.dev/from-flow-log";

/// Adds to `snapshot` the pods the records name (by the identity the recorder wrote)
/// that it lacks, as the recorder described them: namespace, name, UID (the recorded one,
/// else the cgroup's of that end), labels and workload, running, without an address (so
/// their old address stays with its owner now). A flow of a pod that was replaced after
/// the recording keeps its pod and is evaluated with the labels it had, instead of
/// passing for whoever holds its address now. Returns a note per pod added, in name
/// order; the caller builds the engine again when there is one.
pub fn add_missing_pods<'a>(
    snapshot: &mut Snapshot,
    hints: impl IntoIterator<Item = &'a Hint>,
) -> Vec<String> {
    let mut known_uids: BTreeSet<&str> = BTreeSet::new();
    let mut known_names: BTreeSet<(&str, &str)> = BTreeSet::new();
    for p in &snapshot.pods {
        if let Some(u) = p.metadata.uid.as_deref() {
            known_uids.insert(u);
        }
        known_names.insert((
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name.as_deref().unwrap_or_default(),
        ));
    }
    let mut missing: BTreeMap<(String, String), PodRef> = BTreeMap::new();
    for h in hints {
        for (r, local) in [(&h.src, !h.cgroup_is_dst), (&h.dst, h.cgroup_is_dst)] {
            let Some(r) = r else { continue };
            let uid = r
                .uid
                .clone()
                .or_else(|| local.then(|| h.cgroup_uid.clone()).flatten());
            let local_uid_known = local
                && h.cgroup_uid
                    .as_deref()
                    .is_some_and(|u| known_uids.contains(u));
            if local_uid_known
                || uid.as_deref().is_some_and(|u| known_uids.contains(u))
                || known_names.contains(&(r.namespace.as_str(), r.name.as_str()))
            {
                continue;
            }
            missing
                .entry((r.namespace.clone(), r.name.clone()))
                .or_insert_with(|| PodRef { uid, ..r.clone() });
        }
    }
    let mut notes = Vec::new();
    for ((namespace, name), r) in missing {
        let owner = r
            .workload
            .as_deref()
            .and_then(|w| w.split_once('/'))
            .filter(|(kind, _)| *kind != "Pod" && !kind.starts_with("node"))
            .map(|(kind, wname)| OwnerReference {
                api_version: if kind == "Job" { "batch/v1" } else { "apps/v1" }.to_owned(),
                kind: kind.to_owned(),
                name: wname.to_owned(),
                uid: String::new(),
                controller: Some(true),
                block_owner_deletion: None,
            });
        notes.push(format!(
            "pod {namespace}/{name}{} is not in the snapshot but the flow log names it: its flows are evaluated as the recorder described it (labels {}, no address)",
            r.workload.as_deref().map(|w| format!(" ({w})")).unwrap_or_default(),
            if r.labels.is_empty() {
                "none".to_owned()
            } else {
                r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            }
        ));
        snapshot.pods.push(Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                uid: r.uid,
                labels: Some(r.labels),
                annotations: Some(BTreeMap::from([(
                    FROM_FLOW_LOG.to_owned(),
                    "true".to_owned(),
                )])),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                ..PodStatus::default()
            }),
        });
    }
    notes
}

/// The pods a flow's ends are, where they differ from the owners of its addresses
/// (`None`: the address tells); what [`Engine::evaluate_as`] takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resolved {
    pub src: Option<PodId>,
    pub dst: Option<PodId>,
}

impl Resolved {
    pub fn evaluate(
        &self,
        engine: &Engine,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        dst_port: u16,
        protocol: Protocol,
    ) -> crate::policy::FlowResult {
        engine.evaluate_as(self.src, src_ip, self.dst, dst_ip, dst_port, protocol)
    }
}

/// The flow a warning is about, as the user will look for it.
pub struct FlowName<'a> {
    pub line: usize,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
    pub hint: Option<&'a Hint>,
}

/// Resolves a flow's ends; the warnings name the flow and the identities that disagree.
pub fn resolve(engine: &Engine, f: &FlowName) -> (Resolved, Vec<String>) {
    let Some(h) = f.hint else {
        return (Resolved::default(), Vec::new());
    };
    let flow = format!(
        "flow at line {} ({} -> {}:{}/{})",
        f.line, f.src_ip, f.dst_ip, f.dst_port, f.protocol
    );
    let mut warnings = Vec::new();
    let (src_uid, dst_uid) = if h.cgroup_is_dst {
        (None, h.cgroup_uid.as_deref())
    } else {
        (h.cgroup_uid.as_deref(), None)
    };
    let src = end(
        engine,
        &flow,
        "source",
        f.src_ip,
        src_uid,
        h.src.as_ref(),
        &mut warnings,
    );
    let dst = if engine
        .service_at(f.dst_ip, f.dst_port, f.protocol)
        .is_some()
    {
        None
    } else {
        end(
            engine,
            &flow,
            "destination",
            f.dst_ip,
            dst_uid,
            h.dst.as_ref(),
            &mut warnings,
        )
    };
    (Resolved { src, dst }, warnings)
}

/// One end: the pod it is when that is not its address's owner.
fn end(
    engine: &Engine,
    flow: &str,
    side: &str,
    ip: IpAddr,
    cgroup_uid: Option<&str>,
    recorded: Option<&PodRef>,
    warnings: &mut Vec<String>,
) -> Option<PodId> {
    let name = |p: PodId| engine.pod_name(p);
    let by_ip = match engine.classify(ip) {
        Party::Pod(p) => Some(p),
        _ => None,
    };
    let by_cgroup = cgroup_uid.map(|u| (u, engine.pod_by_uid(u)));
    let by_record = recorded.map(|r| {
        let id = r
            .uid
            .as_deref()
            .and_then(|u| engine.pod_by_uid(u))
            .or_else(|| engine.pod_id(&r.namespace, &r.name));
        (r, id)
    });
    let chosen = by_cgroup
        .and_then(|(_, p)| p)
        .map(|p| (p, "by its cgroup's pod UID"))
        .or_else(|| {
            by_record
                .and_then(|(_, p)| p)
                .map(|p| (p, "as the recorder named it"))
        })
        .or_else(|| by_ip.map(|p| (p, "by its address")));
    let recorded_text = |r: &PodRef| match &r.uid {
        Some(u) => format!("{}/{} (UID {u})", r.namespace, r.name),
        None => format!("{}/{}", r.namespace, r.name),
    };
    let now = match chosen {
        Some((p, "by its address")) => format!("attributed to {} by its address", name(p)),
        Some((p, how)) => format!("kept {} ({how})", name(p)),
        None if ip.is_unspecified() => "its pod is unknown".to_owned(),
        None => format!("{ip} is no pod's in the snapshot"),
    };
    if let Some((u, None)) = by_cgroup {
        warnings.push(format!(
            "{flow}: the {side}'s cgroup names pod UID {u}, which the snapshot does not have (take the snapshot while the pods run); {now}"
        ));
    }
    if let Some((r, id)) = by_record {
        match id {
            None => warnings.push(format!(
                "{flow}: the recorder named the {side} {}, which the snapshot does not have; {now}",
                recorded_text(r)
            )),
            Some(id) if chosen.is_some_and(|(c, _)| c != id) => warnings.push(format!(
                "{flow}: the recorder named the {side} {}, but its cgroup's pod UID is {}'s; {now}",
                recorded_text(r),
                chosen.map(|(c, _)| name(c)).unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    let chosen = chosen.map(|(p, _)| p);
    if chosen.is_some_and(|c| engine.pods()[c].host_network) {
        // A hostNetwork pod's traffic is its node's: the address tells that.
        return None;
    }
    if let (Some(c), Some(q)) = (chosen, by_ip) {
        if c != q {
            warnings.push(format!(
                "{flow}: the {side} address {ip} belongs to {} in the snapshot, not to the {side} pod {}; {now}",
                name(q),
                name(c)
            ));
        }
    }
    chosen.filter(|&c| Some(c) != by_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::parse_snapshot;

    const UID_A: &str = "0b5e7a8c-1d2f-4e3a-9b4c-5d6e7f8a9b0c";
    const UID_B: &str = "1c6f8b9d-2e3a-4f4b-8c5d-6e7f8a9b0c1d";

    fn engine() -> Engine {
        let yaml = format!(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {{name: transcoder-new-xyz, namespace: media, uid: {UID_B}, labels: {{app: transcoder}}}}
  spec: {{containers: [{{name: ffmpeg, image: ffmpeg}}]}}
  status: {{phase: Running, podIP: 10.0.1.5, podIPs: [{{ip: 10.0.1.5}}]}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: packager-0, namespace: media, uid: {UID_A}, labels: {{app: packager}}}}
  spec: {{containers: [{{name: ffmpeg, image: ffmpeg}}]}}
  status: {{phase: Running, podIP: 10.0.1.6, podIPs: [{{ip: 10.0.1.6}}]}}
"#
        );
        let snap = parse_snapshot(std::path::Path::new("c.yaml"), yaml.as_bytes()).unwrap();
        Engine::build(&snap).unwrap()
    }

    fn cgroup(uid: &str) -> String {
        format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
            uid.replace('-', "_"),
            "a".repeat(64)
        )
    }

    fn record(src: &str, cg: Option<&str>, recorded: Option<(&str, &str)>) -> FlowRecord {
        let mut r: FlowRecord = serde_json::from_str(&format!(
            r#"{{"src_ip":"{src}","dst_ip":"198.51.100.7","dst_port":5000,"protocol":"UDP","direction":"egress"}}"#
        ))
        .unwrap();
        r.cgroup = cg.map(str::to_owned);
        r.src = recorded.map(|(ns, pod)| Endpoint {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ..Endpoint::default()
        });
        r
    }

    fn run(r: &FlowRecord) -> (Resolved, Vec<String>) {
        let e = engine();
        let h = Hint::of(r);
        resolve(
            &e,
            &FlowName {
                line: 3,
                src_ip: r.src_ip,
                dst_ip: r.dst_ip,
                dst_port: r.dst_port,
                protocol: r.protocol,
                hint: h.as_ref(),
            },
        )
    }

    #[test]
    fn unbound_source_is_the_cgroups_pod() {
        let r = record("0.0.0.0", Some(&cgroup(UID_A)), None);
        let (res, warnings) = run(&r);
        let e = engine();
        assert_eq!(
            res.src.map(|p| e.pod_name(p)).as_deref(),
            Some("media/packager-0")
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn cgroup_beats_a_reused_address_with_a_warning() {
        // packager-0's cgroup, sent from the address transcoder-new-xyz holds now.
        let r = record("10.0.1.5", Some(&cgroup(UID_A)), None);
        let (res, warnings) = run(&r);
        let e = engine();
        assert_eq!(
            res.src.map(|p| e.pod_name(p)).as_deref(),
            Some("media/packager-0")
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("flow at line 3 (10.0.1.5 -> 198.51.100.7:5000/UDP): the source address 10.0.1.5 belongs to media/transcoder-new-xyz in the snapshot, not to the source pod media/packager-0; kept media/packager-0 (by its cgroup's pod UID)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn gone_pod_is_said_and_the_address_owner_named() {
        let gone = "2d7a9cae-3f4b-4a5c-9d6e-7f8a9b0c1d2e";
        let r = record(
            "10.0.1.5",
            Some(&cgroup(gone)),
            Some(("media", "transcoder-old-abc")),
        );
        let (res, warnings) = run(&r);
        assert_eq!(res, Resolved::default(), "the address decides");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!(
                "cgroup names pod UID {gone}, which the snapshot does not have"
            )),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("the recorder named the source media/transcoder-old-abc, which the snapshot does not have; attributed to media/transcoder-new-xyz by its address"), "{warnings:?}");
    }

    #[test]
    fn recorded_name_beats_the_address() {
        let r = record("10.0.1.5", None, Some(("media", "packager-0")));
        let (res, warnings) = run(&r);
        let e = engine();
        assert_eq!(
            res.src.map(|p| e.pod_name(p)).as_deref(),
            Some("media/packager-0")
        );
        assert!(
            warnings[0].contains("kept media/packager-0 (as the recorder named it)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn missing_pods_are_added_as_recorded_once() {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: packager-0, namespace: media, uid: {UID_A}}}\nstatus: {{phase: Running, podIP: 10.0.1.6}}\n"
        );
        let mut snap = parse_snapshot(std::path::Path::new("c.yaml"), yaml.as_bytes()).unwrap();
        let gone = "2d7a9cae-3f4b-4a5c-9d6e-7f8a9b0c1d2e";
        let mut r = record(
            "10.0.1.6",
            Some(&cgroup(gone)),
            Some(("media", "old-7b8c9d0e1-abcde")),
        );
        if let Some(e) = r.src.as_mut() {
            e.workload = Some("Deployment/old".into());
            e.labels.insert("app".into(), "old".into());
        }
        let h = Hint::of(&r).unwrap();
        // Known pods (by cgroup UID here) are not added.
        let known = Hint::of(&record(
            "10.0.1.6",
            Some(&cgroup(UID_A)),
            Some(("media", "x")),
        ))
        .unwrap();
        let notes = add_missing_pods(&mut snap, [&h, &h, &known]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0], "pod media/old-7b8c9d0e1-abcde (Deployment/old) is not in the snapshot but the flow log names it: its flows are evaluated as the recorder described it (labels app=old, no address)");
        assert_eq!(snap.pods.len(), 2);
        let e = Engine::build(&snap).unwrap();
        let id = e.pod_by_uid(gone).expect("the cgroup's UID");
        let p = &e.pods()[id];
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("media", "old-7b8c9d0e1-abcde")
        );
        assert_eq!(p.workload, "media/Deployment/old");
        assert!(p.ips.is_empty());
        assert_eq!(
            e.classify("10.0.1.6".parse().unwrap()),
            Party::Pod(e.pod_id("media", "packager-0").unwrap())
        );
    }

    #[test]
    fn ingress_cgroup_is_the_destination_and_recorded_peers_are_kept() {
        // An accept in packager-0's cgroup on the address transcoder-new-xyz has now.
        let mut r: FlowRecord = serde_json::from_str(
            r#"{"src_ip":"198.51.100.9","dst_ip":"10.0.1.5","dst_port":9000,"protocol":"UDP","direction":"ingress"}"#,
        )
        .unwrap();
        r.cgroup = Some(cgroup(UID_A));
        let (res, warnings) = run(&r);
        let e = engine();
        assert_eq!(res.src, None);
        assert_eq!(
            res.dst.map(|p| e.pod_name(p)).as_deref(),
            Some("media/packager-0")
        );
        assert!(warnings[0].contains("the destination address 10.0.1.5 belongs to media/transcoder-new-xyz in the snapshot, not to the destination pod media/packager-0"), "{warnings:?}");
        // The peer of an egress flow, as the recorder named it, beats its address's owner.
        let mut r = record("198.51.100.1", None, None);
        r.dst_ip = "10.0.1.5".parse().unwrap();
        r.dst = Some(Endpoint {
            namespace: Some("media".into()),
            pod: Some("packager-0".into()),
            uid: Some(UID_A.into()),
            ..Endpoint::default()
        });
        let (res, warnings) = run(&r);
        assert_eq!(
            res.dst.map(|p| e.pod_name(p)).as_deref(),
            Some("media/packager-0")
        );
        assert!(
            warnings[0].contains("kept media/packager-0 (as the recorder named it)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_host_network_pods_flow_stays_node_traffic() {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: node-exporter-x1, namespace: monitoring, uid: {UID_A}}}\nspec: {{hostNetwork: true, nodeName: node-a}}\nstatus: {{phase: Running, podIP: 192.168.0.11, hostIP: 192.168.0.11}}\n"
        );
        let snap = parse_snapshot(std::path::Path::new("c.yaml"), yaml.as_bytes()).unwrap();
        let e = Engine::build(&snap).unwrap();
        let r = record("0.0.0.0", Some(&cgroup(UID_A)), None);
        let h = Hint::of(&r);
        let (res, warnings) = resolve(
            &e,
            &FlowName {
                line: 1,
                src_ip: r.src_ip,
                dst_ip: r.dst_ip,
                dst_port: r.dst_port,
                protocol: r.protocol,
                hint: h.as_ref(),
            },
        );
        assert_eq!((res, warnings), (Resolved::default(), Vec::new()));
    }

    #[test]
    fn no_hint_no_change() {
        let r = record("10.0.1.5", None, None);
        assert!(Hint::of(&r).is_none());
        assert_eq!(run(&r), (Resolved::default(), Vec::new()));
    }
}
