//! Property test: a cluster view kept current object by object (the engine's `apply_*` /
//! `remove_*`, as the agent's watch does) answers exactly as `Cluster::new` on the final
//! snapshot: pod_of_cgroup, endpoint_of_ip, backends and verdicts (allowed and the text
//! naming pods and policies) for flows between every address of the pools.
//!
//! Objects come from small pools so that the awkward cases happen: two pods claiming one
//! IP (live and finished), two Services on one ClusterIP, a slice moving between
//! Services, a Service losing its last slice (selector fallback), policies replaced and
//! removed, invalid objects (rejected: the view keeps the previous version).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use auditor::cluster::Snapshot;
use auditor::enrich::Cluster;
use auditor::flowlog::Protocol;
use proptest::prelude::*;
use serde_json::{json, Value};

const NS: [&str; 2] = ["a", "b"];
const POD_IPS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
const NODE_IPS: [&str; 3] = ["192.168.0.1", "192.168.0.2", "192.168.0.3"];
const VIPS: [&str; 2] = ["10.96.0.1", "10.96.0.2"];
const APPS: [&str; 2] = ["web", "db"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Pod,
    Service,
    Slice,
    Policy,
    Node,
}

fn bit(v: u32, i: u32) -> bool {
    (v >> i) & 1 == 1
}

fn pick<T: Copy>(xs: &[T], v: u32) -> T {
    xs[v as usize % xs.len()]
}

/// (namespace, name) of object `idx` of a kind.
fn ident(kind: Kind, idx: u32) -> (Option<&'static str>, String) {
    match kind {
        Kind::Namespace => (None, NS[idx as usize % 2].to_owned()),
        Kind::Node => (None, format!("n{}", idx % 2)),
        Kind::Pod => (Some(NS[idx as usize % 2]), format!("p{}", idx % 6)),
        Kind::Service => (Some(NS[idx as usize % 2]), format!("s{}", idx % 3)),
        Kind::Slice => (Some(NS[idx as usize % 2]), format!("e{}", idx % 4)),
        Kind::Policy => (Some(NS[idx as usize % 2]), format!("np{}", idx % 3)),
    }
}

fn uid(ns: &str, name: &str, v: u32) -> String {
    let n = ns
        .bytes()
        .chain(name.bytes())
        .fold(7u64, |a, b| a.wrapping_mul(131).wrapping_add(b as u64));
    format!("{:08x}-0000-4000-8000-{:012x}", n & 0xffff_ffff, v % 4)
}

/// Object `idx` of `kind` in variant `v` (bits choose its attributes).
fn object(kind: Kind, idx: u32, v: u32) -> Value {
    let (ns, name) = ident(kind, idx);
    match kind {
        Kind::Namespace => {
            json!({"metadata": {"name": name, "labels": {"team": pick(&["x", "y"], v)}}})
        }
        Kind::Node => json!({"metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": pick(&NODE_IPS, v)}]}}),
        Kind::Pod => {
            let ip = pick(&POD_IPS, v);
            let host = bit(v, 5) && bit(v, 6);
            let mut spec = json!({
                "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": pick(&[80, 8080], v >> 3), "protocol": "TCP"},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]});
            if bit(v, 4) {
                spec["nodeName"] = json!(pick(&["n0", "n1"], v >> 7));
            }
            if host {
                spec["hostNetwork"] = json!(true);
            }
            let host_ip = pick(&NODE_IPS, v >> 8);
            json!({"metadata": {"name": name, "namespace": ns, "uid": uid(ns.unwrap_or(""), &name, v >> 9),
                                "labels": {"app": pick(&APPS, v >> 2)}},
                   "spec": spec,
                   "status": {"phase": if bit(v, 11) { "Succeeded" } else { "Running" },
                              "podIP": if host { host_ip } else { ip },
                              "hostIP": host_ip}})
        }
        Kind::Service => {
            let mut spec = json!({"clusterIP": pick(&VIPS, v),
                "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                           "targetPort": if bit(v, 1) { json!("http") } else { json!(8080) }}]});
            if bit(v, 2) {
                spec["selector"] = json!({"app": pick(&APPS, v >> 3)});
            }
            if bit(v, 4) && bit(v, 5) && bit(v, 6) {
                spec["clusterIP"] = json!("not-an-ip");
            }
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
        }
        Kind::Slice => {
            let mut labels = json!({});
            if !(bit(v, 0) && bit(v, 1)) {
                labels["kubernetes.io/service-name"] = json!(format!("s{}", v % 3));
            }
            let endpoints: Vec<Value> = (0..2)
                .map(|i| {
                    let c = v >> (3 + 3 * i);
                    json!({"addresses": [pick(&POD_IPS, c)],
                           "conditions": {"ready": bit(c, 2) || bit(c, 1), "serving": bit(c, 1)}})
                })
                .collect();
            let port = if bit(v, 9) && bit(v, 10) {
                json!({"name": "http", "port": 0, "protocol": "TCP"})
            } else {
                json!({"name": "http", "port": pick(&[80, 8080], v >> 11), "protocol": "TCP"})
            };
            json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
                   "addressType": "IPv4", "endpoints": endpoints, "ports": [port]})
        }
        Kind::Policy => {
            let from = match v % 4 {
                0 => json!([{"podSelector": {"matchLabels": {"app": pick(&APPS, v >> 2)}}}]),
                1 => {
                    json!([{"namespaceSelector": {"matchLabels": {"team": pick(&["x", "y"], v >> 2)}}}])
                }
                2 => {
                    json!([{"ipBlock": {"cidr": if bit(v, 3) && bit(v, 4) { "bogus" } else { "10.0.0.0/31" }}}])
                }
                _ => json!([]),
            };
            let mut spec = json!({
                "podSelector": if bit(v, 5) { json!({}) } else { json!({"matchLabels": {"app": pick(&APPS, v >> 6)}}) },
                "ingress": [{"from": from, "ports": [{"port": pick(&[80, 8080], v >> 7), "protocol": "TCP"}]}]});
            if bit(v, 8) {
                spec["policyTypes"] = json!(["Ingress", "Egress"]);
                spec["egress"] = json!([{"to": [{"podSelector": {"matchLabels": {"app": pick(&APPS, v >> 9)}}}]}]);
            }
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
        }
    }
}

type Model = BTreeMap<(Kind, Option<&'static str>, String), Value>;

fn snapshot(m: &Model) -> Snapshot {
    let mut s = Snapshot::default();
    for ((kind, _, _), v) in m {
        let v = v.clone();
        match kind {
            Kind::Namespace => s.namespaces.push(serde_json::from_value(v).unwrap()),
            Kind::Pod => s.pods.push(serde_json::from_value(v).unwrap()),
            Kind::Service => s.services.push(serde_json::from_value(v).unwrap()),
            Kind::Slice => s.endpoint_slices.push(serde_json::from_value(v).unwrap()),
            Kind::Policy => s.network_policies.push(serde_json::from_value(v).unwrap()),
            Kind::Node => s.nodes.push(serde_json::from_value(v).unwrap()),
        }
    }
    s
}

/// Applies one change to the view; Ok(false) when the engine rejected it.
fn apply(c: &mut Cluster, kind: Kind, ns: Option<&str>, name: &str, obj: Option<&Value>) -> bool {
    let e = &mut c.engine;
    let ns_ = ns.unwrap_or("");
    let r = match (kind, obj) {
        (Kind::Namespace, Some(v)) => {
            e.apply_namespace(&serde_json::from_value(v.clone()).unwrap());
            Ok(())
        }
        (Kind::Namespace, None) => {
            e.remove_namespace(name);
            Ok(())
        }
        (Kind::Node, Some(v)) => e.apply_node(&serde_json::from_value(v.clone()).unwrap()),
        (Kind::Node, None) => {
            e.remove_node(name);
            Ok(())
        }
        (Kind::Pod, Some(v)) => e
            .apply_pod(&serde_json::from_value(v.clone()).unwrap())
            .map(|_| ()),
        (Kind::Pod, None) => {
            e.remove_pod(ns_, name);
            Ok(())
        }
        (Kind::Service, Some(v)) => {
            e.apply_service(Arc::new(serde_json::from_value(v.clone()).unwrap()))
        }
        (Kind::Service, None) => {
            e.remove_service(ns_, name);
            Ok(())
        }
        (Kind::Slice, Some(v)) => {
            e.apply_endpoint_slice(Arc::new(serde_json::from_value(v.clone()).unwrap()))
        }
        (Kind::Slice, None) => {
            e.remove_endpoint_slice(ns_, name);
            Ok(())
        }
        (Kind::Policy, Some(v)) => e.apply_policy(&serde_json::from_value(v.clone()).unwrap()),
        (Kind::Policy, None) => {
            e.remove_policy(ns_, name);
            Ok(())
        }
    };
    r.is_ok()
}

fn ips() -> Vec<IpAddr> {
    POD_IPS
        .iter()
        .chain(&NODE_IPS)
        .chain(&VIPS)
        .chain(&["203.0.113.9"])
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Every answer the recorder asks of a view, in words (ids differ between the two).
fn answers(c: &Cluster, m: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for ((kind, ns, name), v) in m {
        if *kind == Kind::Pod {
            let u = v["metadata"]["uid"].as_str().unwrap();
            let path = format!("/kubepods/besteffort/pod{u}/{}", "ab".repeat(32));
            let who = c.pod_of_cgroup(&path).map(|id| c.engine.pod_name(id));
            out.push(format!("cgroup {ns:?}/{name}: {who:?}"));
        }
    }
    let ips = ips();
    for &ip in &ips {
        out.push(format!("ip {ip}: {:?}", c.endpoint_of_ip(ip)));
        for port in [80, 8080] {
            out.push(format!(
                "backends {ip}:{port}: {:?}",
                c.backends(ip, port, Protocol::Tcp)
            ));
        }
    }
    for &src in &ips {
        for &dst in &ips {
            for port in [80, 8080] {
                out.push(format!(
                    "{src} -> {dst}:{port}: {:?}",
                    c.verdict(src, dst, port, Protocol::Tcp)
                ));
            }
        }
        out.push(format!(
            "{src} -> dns: {:?}",
            c.verdict(src, "10.0.0.1".parse().unwrap(), 53, Protocol::Udp)
        ));
    }
    out
}

fn kind_of(k: u32) -> Kind {
    // Pods and slices churn most, as in a live cluster.
    match k % 10 {
        0 => Kind::Namespace,
        1..=3 => Kind::Pod,
        4 => Kind::Service,
        5 | 6 => Kind::Slice,
        7 | 8 => Kind::Policy,
        _ => Kind::Node,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn incremental_view_answers_as_a_rebuild(
        initial in proptest::collection::vec((0u32..10, 0u32..12, any::<u32>()), 0..12),
        ops in proptest::collection::vec((0u32..10, 0u32..12, any::<u32>(), 0u32..4), 1..30),
    ) {
        // The starting view: a build on a valid snapshot.
        let mut model = Model::new();
        for (k, i, v) in initial {
            let kind = kind_of(k);
            let (ns, name) = ident(kind, i);
            model.insert((kind, ns, name), object(kind, i, v));
        }
        let mut view = match Cluster::new(&snapshot(&model)) {
            Ok(c) => c,
            Err(_) => {
                model.clear();
                Cluster::new(&Snapshot::default()).unwrap()
            }
        };
        for (k, i, v, del) in ops {
            let kind = kind_of(k);
            let (ns, name) = ident(kind, i);
            let obj = (del != 0).then(|| object(kind, i, v));
            // Applied to a copy, as the live view does (copy on write).
            let before = view.clone();
            let ok = apply(&mut view, kind, ns, &name, obj.as_ref());
            let key = (kind, ns, name.clone());
            if ok {
                match obj {
                    Some(o) => { model.insert(key, o); }
                    None => { model.remove(&key); }
                }
            } else {
                // Rejected: nothing changed.
                prop_assert_eq!(answers(&before, &model), answers(&view, &model));
            }
            let rebuilt = Cluster::new(&snapshot(&model))
                .map_err(|e| TestCaseError::fail(format!("rebuild of accepted objects failed: {e}")))?;
            let (got, want) = (answers(&view, &model), answers(&rebuilt, &model));
            let differ: Vec<_> = got.iter().zip(&want).filter(|(g, w)| g != w).take(3).collect();
            prop_assert!(differ.is_empty() && got.len() == want.len(),
                "after {:?} {:?}/{} ({}): incremental vs rebuild: {:#?}",
                kind, ns, name, if ok { "applied" } else { "rejected" }, differ);
            prop_assert_eq!(view.engine.pods().len(), rebuilt.engine.pods().len());
            prop_assert_eq!(view.engine.services().len(), rebuilt.engine.services().len());
        }
    }
}

#[test]
fn cgroup_paths_of_the_test_resolve() {
    let mut m = Model::new();
    m.insert((Kind::Pod, Some("a"), "p0".into()), object(Kind::Pod, 0, 0));
    let c = Cluster::new(&snapshot(&m)).unwrap();
    let a = answers(&c, &m);
    assert_eq!(a[0], "cgroup Some(\"a\")/p0: Some(\"a/p0\")");
}
