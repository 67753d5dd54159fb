//! Round-trip properties of `auditor suggest` on generated clusters and flows.
//!
//! - allowlist: with the suggestion applied, the policy engine allows every observed flow
//!   of the audited workloads and denies unobserved flows from and to each of them (an
//!   address nobody talked to, an observed peer on a port nobody used);
//! - fix: with the additions applied, every observed flow denied before is allowed and no
//!   other observed flow changes its verdict.
//!
//! The checks here are the test's own (they use only the engine and the YAML), on top of
//! the check `suggest` runs itself.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use auditor::cluster::{parse_snapshot, Snapshot};
use auditor::flowlog::{FlowRecord, Protocol};
use auditor::policy::{Engine, Party};
use auditor::suggest::{merge_flows, suggest, Mode, Options};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAMESPACES: [&str; 3] = ["media", "cdn", "ops"];
const NODES: [(&str, &str); 2] = [("node-a", "192.168.0.11"), ("node-b", "192.168.0.12")];
const EXTERNALS: [&str; 5] = [
    "203.0.113.80",
    "203.0.113.81",
    "203.0.113.82",
    "198.51.100.7",
    "198.51.100.9",
];

#[derive(Debug, Clone)]
struct WorkloadM {
    ns: usize,
    pods: usize,
    kind: usize, // 0 Deployment, 1 StatefulSet, 2 CronJob's Job
    service: bool,
    probe: bool,
}

#[derive(Debug, Clone)]
struct FlowM {
    kind: usize,
    a: usize,
    b: usize,
    port: usize,
    udp: bool,
    comm: bool,
}

#[derive(Debug, Clone)]
struct ClusterM {
    workloads: Vec<WorkloadM>,
    /// Per namespace: 0 nothing, 1 default-deny ingress, 2 egress, 3 both.
    deny: Vec<usize>,
    /// Allow rules: (from workload, to workload, port index).
    allows: Vec<(usize, usize, usize)>,
    flows: Vec<FlowM>,
}

const PORTS: [u16; 6] = [8080, 1935, 5000, 5001, 5002, 443];

fn pod_ip(w: usize, i: usize) -> String {
    format!("10.0.{}.{}", w + 1, i + 1)
}

fn svc_ip(w: usize) -> String {
    format!("10.96.1.{}", w + 1)
}

fn wname(w: usize) -> String {
    format!("w{w}")
}

fn build(m: &ClusterM) -> (Snapshot, Vec<FlowRecord>) {
    let mut items: Vec<Value> = NAMESPACES
        .iter()
        .chain(["kube-system"].iter())
        .map(|n| json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":n,"labels":{"kubernetes.io/metadata.name":n}}}))
        .collect();
    for (name, ip) in NODES {
        items.push(json!({"apiVersion":"v1","kind":"Node","metadata":{"name":name},"status":{"addresses":[{"type":"InternalIP","address":ip}]}}));
    }
    // Cluster DNS.
    items.push(json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"coredns-abc-1","namespace":"kube-system","labels":{"k8s-app":"kube-dns","pod-template-hash":"abc"},
        "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"coredns-abc","uid":"u","controller":true}]},
        "spec":{"nodeName":"node-a","containers":[{"name":"coredns","image":"coredns","ports":[{"name":"dns","containerPort":53,"protocol":"UDP"},{"name":"dns-tcp","containerPort":53,"protocol":"TCP"}]}]},
        "status":{"phase":"Running","podIP":"10.0.0.53","podIPs":[{"ip":"10.0.0.53"}],"hostIP":"192.168.0.11"}}));
    items.push(json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"kube-dns","namespace":"kube-system"},
        "spec":{"clusterIP":"10.96.0.10","selector":{"k8s-app":"kube-dns"},"ports":[{"name":"dns","port":53,"protocol":"UDP","targetPort":53},{"name":"dns-tcp","port":53,"protocol":"TCP","targetPort":53}]}}));
    for (w, wl) in m.workloads.iter().enumerate() {
        let ns = NAMESPACES[wl.ns];
        for i in 0..wl.pods {
            let (owner_kind, owner, mut labels) = match wl.kind {
                0 => (
                    "ReplicaSet",
                    format!("{}-5d4f", wname(w)),
                    json!({"app": wname(w), "pod-template-hash": format!("5d4f{i}")}),
                ),
                1 => (
                    "StatefulSet",
                    wname(w),
                    json!({"app": wname(w), "controller-revision-hash": format!("{}-7c", wname(w)), "statefulset.kubernetes.io/pod-name": format!("{}-{i}", wname(w))}),
                ),
                _ => (
                    "Job",
                    format!("{}-2912345{i}", wname(w)),
                    json!({"app": wname(w), "job-name": format!("{}-2912345{i}", wname(w)), "batch.kubernetes.io/job-name": format!("{}-2912345{i}", wname(w)), "controller-uid": format!("uid-{i}")}),
                ),
            };
            labels["team"] = json!("media");
            let mut container = json!({"name":"main","image":"ffmpeg","ports":[
                {"name":"http","containerPort":8080,"protocol":"TCP"},
                {"name":"rtmp","containerPort":1935,"protocol":"TCP"}]});
            if wl.probe {
                container["readinessProbe"] = json!({"httpGet":{"path":"/healthz","port":"http"}});
                container["livenessProbe"] = json!({"tcpSocket":{"port":9090}});
            }
            let (node, host) = NODES[(w + i) % 2];
            items.push(json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":format!("{}-{i}", wname(w)),"namespace":ns,"labels":labels,
                "ownerReferences":[{"apiVersion":"apps/v1","kind":owner_kind,"name":owner,"uid":"u","controller":true}]},
                "spec":{"nodeName":node,"containers":[container]},
                "status":{"phase":"Running","podIP":pod_ip(w, i),"podIPs":[{"ip":pod_ip(w, i)}],"hostIP":host}}));
        }
        if wl.service {
            items.push(json!({"apiVersion":"v1","kind":"Service","metadata":{"name":wname(w),"namespace":ns},
                "spec":{"clusterIP":svc_ip(w),"selector":{"app":wname(w)},"ports":[{"name":"web","port":80,"protocol":"TCP","targetPort":"http"}]}}));
        }
    }
    for (n, &d) in m.deny.iter().enumerate() {
        let types: Vec<&str> = match d {
            1 => vec!["Ingress"],
            2 => vec!["Egress"],
            3 => vec!["Ingress", "Egress"],
            _ => continue,
        };
        items.push(json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"default-deny","namespace":NAMESPACES[n]},
            "spec":{"podSelector":{},"policyTypes":types}}));
    }
    for (i, &(a, b, p)) in m.allows.iter().enumerate() {
        let (a, b) = (a % m.workloads.len(), b % m.workloads.len());
        let nsb = NAMESPACES[m.workloads[b].ns];
        items.push(json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":format!("allow-{i}"),"namespace":NAMESPACES[m.workloads[a].ns]},
            "spec":{"podSelector":{"matchLabels":{"app":wname(a)}},"policyTypes":["Egress"],
                "egress":[{"to":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":nsb}},"podSelector":{"matchLabels":{"app":wname(b)}}}],"ports":[{"port":PORTS[p % PORTS.len()]}]}]}}));
    }
    let text =
        serde_json::to_string(&json!({"apiVersion":"v1","kind":"List","items":items})).unwrap();
    let snap = parse_snapshot(Path::new("generated.yaml"), text.as_bytes())
        .expect("generated snapshot parses");

    let mut flows = Vec::new();
    let nw = m.workloads.len();
    for f in &m.flows {
        let (a, b) = (f.a % nw, f.b % nw);
        let src = pod_ip(a, f.a % m.workloads[a].pods);
        let proto = if f.udp { "UDP" } else { "TCP" };
        let comm = if f.comm { "ffmpeg" } else { "envoy" };
        let port = PORTS[f.port % PORTS.len()];
        let v = match f.kind % 6 {
            // pod -> pod
            0 => {
                json!({"src_ip":src,"dst_ip":pod_ip(b, f.b % m.workloads[b].pods),"dst_port":port,"protocol":proto,"direction":"egress","comm":comm,"count":1})
            }
            // pod -> Service (when it has one) or pod
            1 if m.workloads[b].service => {
                json!({"src_ip":src,"dst_ip":svc_ip(b),"dst_port":80,"protocol":"TCP","direction":"egress","comm":comm,"count":1})
            }
            1 => {
                json!({"src_ip":src,"dst_ip":pod_ip(b, 0),"dst_port":8080,"protocol":"TCP","direction":"egress","comm":comm,"count":1})
            }
            // DNS through the Service
            2 => {
                json!({"src_ip":src,"dst_ip":"10.96.0.10","dst_port":53,"protocol":"UDP","direction":"egress","comm":comm,"count":2})
            }
            // external, with a name
            3 => {
                let ext = EXTERNALS[f.b % EXTERNALS.len()];
                json!({"src_ip":src,"dst_ip":ext,"dst_port":port,"protocol":proto,"direction":"egress","comm":comm,"dns_name":format!("e{}.example.net", f.b % 3),"count":1})
            }
            // inbound from outside
            4 => {
                json!({"src_ip":EXTERNALS[f.b % EXTERNALS.len()],"dst_ip":src,"dst_port":port,"protocol":proto,"direction":"ingress","comm":comm,"state":"accepted","count":1})
            }
            // kubelet probe from the other node
            _ => {
                json!({"src_ip":NODES[(a + 1) % 2].1,"dst_ip":src,"dst_port":8080,"protocol":"TCP","direction":"ingress","comm":comm,"state":"accepted","count":1})
            }
        };
        flows.push(serde_json::from_value(v).unwrap());
    }
    (snap, flows)
}

fn cluster() -> impl Strategy<Value = ClusterM> {
    let workload = (
        0..3usize,
        1..3usize,
        0..3usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ns, pods, kind, service, probe)| WorkloadM {
            ns,
            pods,
            kind,
            service,
            probe,
        });
    let flow = (
        0..6usize,
        0..8usize,
        0..8usize,
        0..6usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(kind, a, b, port, udp, comm)| FlowM {
            kind,
            a,
            b,
            port,
            udp,
            comm,
        });
    (
        prop::collection::vec(workload, 2..5),
        prop::collection::vec(0..4usize, 3),
        prop::collection::vec((0..8usize, 0..8usize, 0..6usize), 0..4),
        prop::collection::vec(flow, 1..14),
    )
        .prop_map(|(workloads, deny, allows, mut flows)| {
            // At least one audited process.
            flows[0].comm = true;
            ClusterM {
                workloads,
                deny,
                allows,
                flows,
            }
        })
}

fn with_suggestion(snap: &Snapshot, yaml: &str, keep_installed: bool) -> Engine {
    let parsed =
        parse_snapshot(Path::new("suggestion.yaml"), yaml.as_bytes()).expect("suggestion parses");
    let mut s = snap.clone();
    if !keep_installed {
        s.network_policies.clear();
    }
    s.network_policies.extend(parsed.network_policies);
    Engine::build(&s).expect("engine accepts the suggestion")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn allowlist_allows_observed_and_denies_unobserved(m in cluster()) {
        let (snap, records) = build(&m);
        let engine = Engine::build(&snap).unwrap();
        let flows = merge_flows(records.iter().enumerate().map(|(i, r)| (i + 1, r)));
        let sug = suggest(&snap, &engine, &flows, &Options::default()).unwrap();
        prop_assert!(sug.verification.failures.is_empty(), "{:?}\n{}", sug.verification.failures, sug.yaml);
        let audited: BTreeSet<&str> = sug.audited.iter().map(String::as_str).collect();
        prop_assert!(!audited.is_empty());
        let full = with_suggestion(&snap, &sug.yaml, true);
        let alone = with_suggestion(&snap, &sug.yaml, false);
        let is_audited = |e: &Engine, ip: IpAddr| match e.classify(ip) {
            Party::Pod(p) => {
                let w = &e.pods()[p].workload;
                audited.iter().any(|a| a == w || (a.contains("/CronJob/") && w.contains("/Job/") && w.starts_with(&a.replace("/CronJob/", "/Job/"))))
            }
            _ => false,
        };
        for f in &flows {
            let r = full.evaluate(f.src_ip, f.dst_ip, f.dst_port, f.protocol);
            let touches = is_audited(&full, f.src_ip) || r.targets.iter().any(|t| is_audited(&full, t.dst_ip));
            if touches {
                prop_assert!(r.allowed, "observed flow denied: {f:?}\n{}", sug.yaml);
            }
        }
        // Unobserved: from and to each audited pod.
        let nobody: IpAddr = "198.18.0.1".parse().unwrap();
        for (i, p) in alone.pods().iter().enumerate() {
            if !is_audited(&alone, p.ips[0]) {
                continue;
            }
            let ip = p.ips[0];
            for (port, proto) in [(9, Protocol::Tcp), (443, Protocol::Tcp), (5000, Protocol::Udp), (8080, Protocol::Tcp)] {
                let out = alone.evaluate(ip, nobody, port, proto);
                prop_assert!(!out.targets[0].egress.allowed, "pod {} may send to {nobody}:{port}/{proto}\n{}", alone.pod_name(i), sug.yaml);
                let inb = alone.evaluate(nobody, ip, port, proto);
                prop_assert!(!inb.targets[0].ingress.allowed, "pod {} accepts {nobody}:{port}/{proto}\n{}", alone.pod_name(i), sug.yaml);
            }
            // Observed peers on a port nobody used (9/TCP is in no generated flow).
            for f in flows.iter().filter(|f| f.src_ip == ip) {
                if let Party::Pod(_) = alone.classify(f.dst_ip) {
                    let r = alone.evaluate(ip, f.dst_ip, 9, Protocol::Tcp);
                    prop_assert!(!r.targets[0].egress.allowed || r.targets[0].egress.exception.is_some(), "{} may reach {}:9\n{}", alone.pod_name(i), f.dst_ip, sug.yaml);
                }
            }
        }
    }

    #[test]
    fn fix_changes_only_denied_observed_flows(m in cluster()) {
        let (snap, records) = build(&m);
        let engine = Engine::build(&snap).unwrap();
        let flows = merge_flows(records.iter().enumerate().map(|(i, r)| (i + 1, r)));
        let opts = Options { mode: Mode::Fix, ..Options::default() };
        let sug = suggest(&snap, &engine, &flows, &opts).unwrap();
        prop_assert!(sug.verification.failures.is_empty(), "{:?}\n{}", sug.verification.failures, sug.yaml);
        let after = with_suggestion(&snap, &sug.yaml, true);
        for f in &flows {
            let b = engine.evaluate(f.src_ip, f.dst_ip, f.dst_port, f.protocol);
            let a = after.evaluate(f.src_ip, f.dst_ip, f.dst_port, f.protocol);
            prop_assert!(a.allowed, "still denied: {f:?}\n{}", sug.yaml);
            if b.allowed {
                prop_assert_eq!(&a.targets.iter().map(|t| (t.egress.isolated, t.ingress.isolated)).collect::<Vec<_>>(),
                    &b.targets.iter().map(|t| (t.egress.isolated, t.ingress.isolated)).collect::<Vec<_>>());
            }
        }
        // No pod changed isolation: unobserved flows keep their verdicts as far as isolation goes.
        for (x, y) in engine.pods().iter().zip(after.pods()) {
            prop_assert_eq!(x.ingress_policies.is_empty(), y.ingress_policies.is_empty());
            prop_assert_eq!(x.egress_policies.is_empty(), y.egress_policies.is_empty());
        }
        if flows.iter().all(|f| engine.evaluate(f.src_ip, f.dst_ip, f.dst_port, f.protocol).allowed) {
            prop_assert_eq!(sug.policies, 0, "nothing to fix, nothing added\n{}", sug.yaml);
        }
    }
}
