//! Who sent a flow, end to end on files (issue 15, "Identity by IP only"): `diff`,
//! `suggest` and `report` resolve a flow's pods by the cgroup's pod UID first, then by
//! the identity the recorder wrote, then by address; finished pods own no address;
//! a Service's external and LoadBalancer IPs lead to its backends like its ClusterIP.
//!
//! The snapshot is what `kubectl get pods,svc,netpol -A -o yaml` prints (a `List`), with
//! a completed Job pod whose address a running pod holds now, a Pending pod without an
//! address, and a LoadBalancer Service with an external IP.

use std::path::{Path, PathBuf};

use auditor::diff::{DiffArgs, Format};
use auditor::suggest::{Flavor, Mode, SuggestArgs};
use serde_json::Value;

const UID_TRANSCODER: &str = "3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90";
const UID_PACKAGER: &str = "7a1e9c3b-5d2f-4e8a-b6c4-1f3d5a7e9b20";
/// transcoder-7b8c9d0e1-old99: deleted after the recording; its address is the packager's now.
const UID_OLD: &str = "c4d2e6f8-0a1b-4c3d-8e5f-6a7b8c9d0e1f";

const SNAPSHOT: &str = r#"apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Pod
  metadata:
    creationTimestamp: "2026-12-03T09:12:44Z"
    generateName: transcoder-5f6d7c8b9-
    labels:
      app: transcoder
      pod-template-hash: 5f6d7c8b9
    name: transcoder-5f6d7c8b9-new12
    namespace: media
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: transcoder-5f6d7c8b9
      uid: 0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b
    resourceVersion: "48213"
    uid: 3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90
  spec:
    containers:
    - image: linuxserver/ffmpeg:7.1
      name: ffmpeg
    nodeName: node-a
  status:
    hostIP: 192.168.10.11
    hostIPs:
    - ip: 192.168.10.11
    phase: Running
    podIP: 10.244.1.17
    podIPs:
    - ip: 10.244.1.17
- apiVersion: v1
  kind: Pod
  metadata:
    generateName: packager-6c7d8e9f0-
    labels:
      app: packager
      pod-template-hash: 6c7d8e9f0
    name: packager-6c7d8e9f0-pk001
    namespace: media
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: packager-6c7d8e9f0
      uid: 5b4a3f2e-1d0c-4b9a-8f7e-6d5c4b3a2f1e
    uid: 7a1e9c3b-5d2f-4e8a-b6c4-1f3d5a7e9b20
  spec:
    containers:
    - image: linuxserver/ffmpeg:7.1
      name: ffmpeg
    nodeName: node-a
  status:
    hostIP: 192.168.10.11
    phase: Running
    podIP: 10.244.1.20
    podIPs:
    - ip: 10.244.1.20
- apiVersion: v1
  kind: Pod
  metadata:
    generateName: thumbnails-29123456-
    labels:
      app: thumbnails
      batch.kubernetes.io/controller-uid: 9c8b7a6f-5e4d-4c3b-2a1f-0e9d8c7b6a5f
      batch.kubernetes.io/job-name: thumbnails-29123456
      controller-uid: 9c8b7a6f-5e4d-4c3b-2a1f-0e9d8c7b6a5f
      job-name: thumbnails-29123456
    name: thumbnails-29123456-q8x7z
    namespace: media
    ownerReferences:
    - apiVersion: batch/v1
      blockOwnerDeletion: true
      controller: true
      kind: Job
      name: thumbnails-29123456
      uid: 9c8b7a6f-5e4d-4c3b-2a1f-0e9d8c7b6a5f
    uid: 2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e
  spec:
    containers:
    - image: linuxserver/ffmpeg:7.1
      name: ffmpeg
    nodeName: node-a
    restartPolicy: Never
  status:
    hostIP: 192.168.10.11
    phase: Succeeded
    podIP: 10.244.1.20
    podIPs:
    - ip: 10.244.1.20
- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app: ingest
      apps.kubernetes.io/pod-index: "0"
      controller-revision-hash: ingest-8d9e0f1a2
      statefulset.kubernetes.io/pod-name: ingest-0
    name: ingest-0
    namespace: media
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: StatefulSet
      name: ingest
      uid: 1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d
    uid: 6e5d4c3b-2a1f-4e0d-9c8b-7a6f5e4d3c2b
  spec:
    containers:
    - image: haivision/srt:1.5
      name: ingest
      ports:
      - containerPort: 5000
        name: mpegts
        protocol: UDP
    nodeName: node-b
  status:
    hostIP: 192.168.10.12
    phase: Running
    podIP: 10.244.2.8
    podIPs:
    - ip: 10.244.2.8
- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app: ingest
      apps.kubernetes.io/pod-index: "1"
      controller-revision-hash: ingest-8d9e0f1a2
      statefulset.kubernetes.io/pod-name: ingest-1
    name: ingest-1
    namespace: media
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: StatefulSet
      name: ingest
      uid: 1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d
    uid: 8f7e6d5c-4b3a-4f2e-1d0c-9b8a7f6e5d4c
  spec:
    containers:
    - image: haivision/srt:1.5
      name: ingest
      ports:
      - containerPort: 5000
        name: mpegts
        protocol: UDP
  status:
    conditions:
    - lastTransitionTime: "2026-12-03T09:40:02Z"
      message: '0/2 nodes are available: 2 Insufficient cpu.'
      reason: Unschedulable
      status: "False"
      type: PodScheduled
    phase: Pending
- apiVersion: v1
  kind: Service
  metadata:
    name: ingest
    namespace: media
  spec:
    clusterIP: 10.96.40.10
    clusterIPs:
    - 10.96.40.10
    externalIPs:
    - 192.0.2.50
    externalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ports:
    - name: mpegts
      nodePort: 31500
      port: 5000
      protocol: UDP
      targetPort: mpegts
    selector:
      app: ingest
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 203.0.113.10
        ipMode: VIP
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: default-deny
    namespace: media
  spec:
    podSelector: {}
    policyTypes:
    - Ingress
    - Egress
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: transcoder-to-ingest
    namespace: media
  spec:
    egress:
    - ports:
      - port: 5000
        protocol: UDP
      to:
      - podSelector:
          matchLabels:
            app: ingest
    podSelector:
      matchLabels:
        app: transcoder
    policyTypes:
    - Egress
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: ingest-from-transcoder
    namespace: media
  spec:
    ingress:
    - from:
      - podSelector:
          matchLabels:
            app: transcoder
      ports:
      - port: 5000
        protocol: UDP
    podSelector:
      matchLabels:
        app: ingest
    policyTypes:
    - Ingress
"#;

/// The cgroup path kubelet + containerd give a BestEffort pod's container.
fn cgroup(uid: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
        uid.replace('-', "_"),
        "4f1c9e2b".repeat(8)
    )
}

/// A UDP record as `auditor record` writes it without `--cluster`.
fn udp(src: &str, dst: &str, cg: Option<&str>, extra: &str) -> String {
    let cg = cg
        .map(|c| format!(r#","cgroup_id":48121,"cgroup":"{c}""#))
        .unwrap_or_default();
    format!(
        r#"{{"src_ip":"{src}","src_port":41000,"dst_ip":"{dst}","dst_port":5000,"protocol":"UDP","direction":"egress","state":"sent","pid":3121,"comm":"ffmpeg","exe":"/usr/bin/ffmpeg"{cg},"first_seen":"2026-12-03T09:20:00.000Z","last_seen":"2026-12-03T09:20:05.000Z","count":180{extra}}}"#
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("auditor-identity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_inputs(dir: &Path, flows: &[String]) -> (PathBuf, PathBuf) {
    let cluster = dir.join("cluster.yaml");
    std::fs::write(&cluster, SNAPSHOT).unwrap();
    let log = dir.join("flows.jsonl");
    std::fs::write(&log, flows.join("\n") + "\n").unwrap();
    (cluster, log)
}

/// `auditor diff -o json` on the snapshot: exit code and the parsed output.
fn diff_json(name: &str, flows: &[String]) -> (i32, Value) {
    let dir = temp_dir(name);
    let (cluster, log) = write_inputs(&dir, flows);
    let out = dir.join("diff.json");
    let args = DiffArgs {
        source: auditor::cluster::ClusterSource::file(cluster),
        flows: log,
        format: Format::Json,
        output: Some(out.clone()),
        ..Default::default()
    };
    let code = auditor::diff::run(&args).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (code, v)
}

fn notes(v: &Value) -> Vec<String> {
    v["summary"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn unbound_udp_source_is_the_pod_of_its_cgroup() {
    // ffmpeg's udp:// output from the packager, recorded without --cluster: src 0.0.0.0,
    // and the kernel dropped 37 datagrams (default-deny isolates the packager's egress).
    let flows = [udp(
        "0.0.0.0",
        "198.51.100.20",
        Some(&cgroup(UID_PACKAGER)),
        r#","drop_reason":"NETFILTER_DROP","drops":37"#,
    )];
    let (code, v) = diff_json("unbound", &flows);
    assert_eq!(code, 1, "denied: {v:#}");
    let f = &v["flows"][0];
    assert_eq!(f["verdict"], "deny", "{f:#}");
    assert_eq!(f["egress"]["applies"], true, "{f:#}");
    assert_eq!(f["egress"]["allowed"], false, "{f:#}");
    assert_eq!(f["egress"]["isolated_by"][0], "media/default-deny", "{f:#}");
    let denied = &v["summary"]["denied_flows"][0];
    assert_eq!(
        denied["source"], "media/packager-6c7d8e9f0-pk001",
        "{denied:#}"
    );
    // The kernel's drops now agree with the verdict: no "blocked although allowed".
    assert_eq!(
        v["summary"]["blocked_although_allowed"],
        Value::Array(vec![])
    );
    // Nothing disagreed: the address said nothing.
    assert!(
        !notes(&v).iter().any(|n| n.starts_with("identity:")),
        "{:?}",
        notes(&v)
    );
}

#[test]
fn a_replaced_pods_flow_keeps_its_pod_and_says_who_has_its_address_now() {
    // Recorded (with the cluster known) from transcoder-7b8c9d0e1-old99, since replaced by
    // transcoder-5f6d7c8b9-new12; its address 10.244.1.20 is the packager's now.
    let recorded = r#","src":{"namespace":"media","pod":"transcoder-7b8c9d0e1-old99","workload":"Deployment/transcoder","labels":{"app":"transcoder","pod-template-hash":"7b8c9d0e1"}},"dst":{"namespace":"media","pod":"ingest-0","workload":"StatefulSet/ingest","labels":{"app":"ingest"}}"#;
    let flows = [udp(
        "10.244.1.20",
        "10.244.2.8",
        Some(&cgroup(UID_OLD)),
        recorded,
    )];
    let (code, v) = diff_json("replaced", &flows);
    let f = &v["flows"][0];
    // The transcoder's policies allow it; the packager's would not.
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(f["verdict"], "allow", "{f:#}");
    assert_eq!(
        f["egress"]["allowed_by"][0]["policy"], "media/transcoder-to-ingest",
        "{f:#}"
    );
    assert_eq!(
        f["ingress"]["allowed_by"][0]["policy"], "media/ingest-from-transcoder",
        "{f:#}"
    );
    let notes = notes(&v);
    assert!(
        notes.iter().any(|n| n.starts_with("pod media/transcoder-7b8c9d0e1-old99 (Deployment/transcoder) is not in the snapshot but the flow log names it")),
        "{notes:?}"
    );
    let warning = notes
        .iter()
        .find(|n| n.starts_with("identity: "))
        .unwrap_or_else(|| panic!("no identity warning: {notes:?}"));
    assert_eq!(
        warning,
        "identity: flow at line 1 (10.244.1.20 -> 10.244.2.8:5000/UDP): the source address 10.244.1.20 belongs to media/packager-6c7d8e9f0-pk001 in the snapshot, not to the source pod media/transcoder-7b8c9d0e1-old99; kept media/transcoder-7b8c9d0e1-old99 (by its cgroup's pod UID)"
    );
}

#[test]
fn the_cgroup_beats_the_recorded_name_and_the_address() {
    // The recorder named the packager (it went by the address), the cgroup is the
    // transcoder's: the cgroup wins and both disagreements are said.
    let recorded = r#","src":{"namespace":"media","pod":"packager-6c7d8e9f0-pk001","workload":"Deployment/packager"}"#;
    let flows = [udp(
        "10.244.1.20",
        "10.244.2.8",
        Some(&cgroup(UID_TRANSCODER)),
        recorded,
    )];
    let (code, v) = diff_json("cgroup-first", &flows);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["summary"]["workloads"][0]["workload"], "media/Deployment/transcoder",
        "{v:#}"
    );
    let warnings: Vec<String> = notes(&v)
        .into_iter()
        .filter(|n| n.starts_with("identity: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("the recorder named the source media/packager-6c7d8e9f0-pk001, but its cgroup's pod UID is media/transcoder-5f6d7c8b9-new12's"), "{warnings:?}");
    assert!(warnings[1].contains("the source address 10.244.1.20 belongs to media/packager-6c7d8e9f0-pk001 in the snapshot"), "{warnings:?}");
}

#[test]
fn load_balancer_and_external_ips_lead_to_the_backends() {
    let flows = [
        udp("10.244.1.17", "203.0.113.10", None, ""),
        udp("10.244.1.17", "192.0.2.50", None, ""),
        udp("10.244.1.17", "10.96.40.10", None, ""),
    ];
    let (code, v) = diff_json("lb", &flows);
    assert_eq!(
        code, 0,
        "all three reach ingest-0 as the ClusterIP does: {v:#}"
    );
    for (i, dst) in ["203.0.113.10", "192.0.2.50", "10.96.40.10"]
        .iter()
        .enumerate()
    {
        let f = &v["flows"][i];
        assert_eq!(f["dst_ip"], *dst);
        assert_eq!(f["service"]["name"], "media/ingest", "{f:#}");
        assert_eq!(f["service"]["backends"][0]["ip"], "10.244.2.8", "{f:#}");
        assert_eq!(f["service"]["backends"][0]["port"], 5000, "{f:#}");
        assert_eq!(f["ingress"]["endpoint"]["name"], "ingest-0", "{f:#}");
        assert_eq!(f["verdict"], "allow", "{f:#}");
    }
}

#[test]
fn a_completed_job_sharing_an_address_owns_nothing_and_suggest_round_trips() {
    let dir = temp_dir("job");
    // The CronJob's current Job (thumbnails-29123460-r2d4k) sends to the ingest; its
    // previous Job's pod (Succeeded) still carries 10.244.1.20, the packager's address now.
    // The check samples unobserved flows from the CronJob's first pod with an address: that
    // must not be the packager's (which no suggestion isolates, so they pass: exit 2).
    // The transcoder sends to the ingest unbound, from its cgroup.
    let flows = [
        udp("10.244.1.31", "10.96.40.10", None, ""),
        udp("0.0.0.0", "10.244.2.8", Some(&cgroup(UID_TRANSCODER)), ""),
        r#"{"src_ip":"10.244.1.20","src_port":51234,"dst_ip":"198.51.100.20","dst_port":443,"protocol":"TCP","direction":"egress","state":"established","pid":3301,"comm":"python3","count":4,"established":4}"#.to_owned(),
    ];
    let (cluster, log) = write_inputs(&dir, &flows);
    let running_job = r#"- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app: thumbnails
      batch.kubernetes.io/controller-uid: 0d9c8b7a-6f5e-4d4c-3b2a-1f0e9d8c7b6a
      batch.kubernetes.io/job-name: thumbnails-29123460
      controller-uid: 0d9c8b7a-6f5e-4d4c-3b2a-1f0e9d8c7b6a
      job-name: thumbnails-29123460
    name: thumbnails-29123460-r2d4k
    namespace: media
    ownerReferences:
    - apiVersion: batch/v1
      blockOwnerDeletion: true
      controller: true
      kind: Job
      name: thumbnails-29123460
      uid: 0d9c8b7a-6f5e-4d4c-3b2a-1f0e9d8c7b6a
    uid: 4c5d6e7f-8a9b-4c0d-9e1f-2a3b4c5d6e7f
  spec:
    containers:
    - image: linuxserver/ffmpeg:7.1
      name: ffmpeg
    nodeName: node-a
    restartPolicy: Never
  status:
    hostIP: 192.168.10.11
    phase: Running
    podIP: 10.244.1.31
    podIPs:
    - ip: 10.244.1.31
"#;
    let snapshot = SNAPSHOT.replacen("items:\n", &format!("items:\n{running_job}"), 1);
    std::fs::write(&cluster, &snapshot).unwrap();
    let out = dir.join("out");
    let args = SuggestArgs {
        source: auditor::cluster::ClusterSource::file(cluster.clone()),
        flows: log.clone(),
        mode: Mode::Allowlist,
        select: None,
        comm: vec!["ffmpeg".into()],
        flavor: Flavor::Kubernetes,
        max_prefix: 32,
        max_prefix_v6: 128,
        skip_invalid: false,
        output: out.clone(),
        filter: Default::default(),
        min_observation: auditor::coverage::DEFAULT_MIN_OBSERVATION,
    };
    let code = auditor::suggest::run(&args).map_err(|e| e.to_string());
    assert_eq!(code, Ok(0), "the round trip holds, no gap");
    let yaml = std::fs::read_to_string(out.join("allowlist.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    // The CronJob's and the transcoder's allowlists (the transcoder found by its cgroup);
    // nothing for the packager (no ffmpeg ran there).
    assert!(
        names.iter().any(|n| n.contains("thumbnails")),
        "{names:?}\n{yaml}"
    );
    assert!(
        names.iter().any(|n| n.contains("transcoder")),
        "{names:?}\n{yaml}"
    );
    assert!(
        !names.iter().any(|n| n.contains("packager")),
        "{names:?}\n{yaml}"
    );
    assert!(!yaml.contains("0.0.0.0/32"), "{yaml}");

    // diff attributes the address to the running packager and says nothing of the Job.
    let (_, v) = diff_json("job-diff", &flows[2..]);
    let f = &v["flows"][0];
    assert_eq!(
        f["egress"]["endpoint"]["name"], "packager-6c7d8e9f0-pk001",
        "{f:#}"
    );
    assert!(
        !notes(&v).iter().any(|n| n.contains("thumbnails")),
        "{:?}",
        notes(&v)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_carries_the_identity_warnings() {
    let dir = temp_dir("report");
    let recorded = r#","src":{"namespace":"media","pod":"transcoder-7b8c9d0e1-old99","workload":"Deployment/transcoder","labels":{"app":"transcoder","pod-template-hash":"7b8c9d0e1"}}"#;
    let flows = [udp(
        "10.244.1.20",
        "10.244.2.8",
        Some(&cgroup(UID_OLD)),
        recorded,
    )];
    let (cluster, log) = write_inputs(&dir, &flows);
    let out = dir.join("report");
    let args = auditor::report::ReportArgs {
        source: auditor::cluster::ClusterSource::file(cluster),
        flows: log,
        output: out.clone(),
        select: None,
        comm: vec!["ffmpeg".into()],
        max_prefix: 32,
        skip_invalid: false,
        filter: Default::default(),
        drills: Vec::new(),
        what_if: Default::default(),
        min_observation: auditor::coverage::DEFAULT_MIN_OBSERVATION,
    };
    auditor::report::run(&args).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("the source address 10.244.1.20 belongs to media/packager-6c7d8e9f0-pk001 in the snapshot, not to the source pod media/transcoder-7b8c9d0e1-old99"),
        "{md}"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let text = json.to_string();
    assert!(
        text.contains("kept media/transcoder-7b8c9d0e1-old99"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
