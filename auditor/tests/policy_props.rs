//! Property test: the engine agrees with a deliberately naive evaluator on random clusters.
//!
//! The naive evaluator below reads a small model of the cluster directly, with loops and
//! string comparisons and no indexes; it shares no code with the engine. The model is
//! turned into k8s-openapi objects (through JSON) for the engine.

use std::collections::BTreeMap;

use auditor::cluster::Snapshot;
use auditor::flowlog::Protocol;
use auditor::policy::{Engine, Side};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const NODE_IPS: [&str; 2] = ["192.168.0.1", "192.168.0.2"];
const EXTERNAL: &str = "203.0.113.9";
const PORT_NAMES: [&str; 3] = ["http", "dns", "nope"];
const CONTAINER_PORTS: [(&str, u16, &str); 4] = [
    ("http", 80, "TCP"),
    ("dns", 53, "UDP"),
    ("sig", 3868, "SCTP"),
    ("http", 8080, "UDP"),
];
const FLOW_PORTS: [u16; 6] = [53, 80, 81, 3868, 8080, 8100];
const CIDRS: [&str; 6] = [
    "10.0.0.0/30",
    "10.0.0.0/29",
    "10.0.0.5/29",
    "0.0.0.0/0",
    "203.0.113.0/24",
    "10.0.0.2/32",
];
const EXCEPTS: [&str; 3] = ["10.0.0.0/31", "10.0.0.3/31", "10.0.0.6/32"];

#[derive(Debug, Clone)]
struct Expr {
    key: &'static str,
    op: &'static str,
    values: Vec<&'static str>,
}

#[derive(Debug, Clone)]
struct Sel {
    labels: BTreeMap<&'static str, &'static str>,
    exprs: Vec<Expr>,
}

#[derive(Debug, Clone)]
enum PeerM {
    Pods {
        ns: Option<Sel>,
        pods: Option<Sel>,
    },
    Block {
        cidr: &'static str,
        except: Vec<&'static str>,
    },
}

#[derive(Debug, Clone)]
enum PortNum {
    Int(u16),
    Name(&'static str),
}

#[derive(Debug, Clone)]
struct PortM {
    protocol: Option<&'static str>,
    port: Option<PortNum>,
    end_port: Option<u16>,
}

#[derive(Debug, Clone)]
struct RuleM {
    peers: Option<Vec<PeerM>>,
    ports: Option<Vec<PortM>>,
}

#[derive(Debug, Clone)]
struct PolicyM {
    ns: &'static str,
    selector: Sel,
    types: Option<Vec<&'static str>>,
    ingress: Option<Vec<RuleM>>,
    egress: Option<Vec<RuleM>>,
}

#[derive(Debug, Clone)]
struct PodM {
    ns: &'static str,
    labels: BTreeMap<&'static str, &'static str>,
    node: usize,
    ports: Vec<usize>,
}

#[derive(Debug, Clone)]
struct ClusterM {
    ns_team: Vec<&'static str>,
    pods: Vec<PodM>,
    policies: Vec<PolicyM>,
}

fn label_map() -> impl Strategy<Value = BTreeMap<&'static str, &'static str>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "tier", "team"]),
        prop::sample::select(vec!["x", "y", "z"]),
        0..3,
    )
}

fn sel() -> impl Strategy<Value = Sel> {
    let expr = (
        prop::sample::select(vec!["app", "tier", "team"]),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
        prop::collection::vec(prop::sample::select(vec!["x", "y", "z"]), 1..3),
    )
        .prop_map(|(key, op, values)| Expr {
            key,
            op,
            values: if op == "In" || op == "NotIn" {
                values
            } else {
                vec![]
            },
        });
    (
        prop::collection::btree_map(
            prop::sample::select(vec!["app", "tier", "team"]),
            prop::sample::select(vec!["x", "y"]),
            0..2,
        ),
        prop::collection::vec(expr, 0..2),
    )
        .prop_map(|(labels, exprs)| Sel { labels, exprs })
}

fn peer() -> impl Strategy<Value = PeerM> {
    prop_oneof![
        (prop::option::of(sel()), sel()).prop_map(|(ns, pods)| PeerM::Pods {
            ns,
            pods: Some(pods)
        }),
        sel().prop_map(|ns| PeerM::Pods {
            ns: Some(ns),
            pods: None
        }),
        (
            prop::sample::select(CIDRS.to_vec()),
            prop::collection::vec(prop::sample::select(EXCEPTS.to_vec()), 0..2)
        )
            .prop_map(|(cidr, mut except)| {
                // As the API server requires: each except a strict subset of the cidr.
                let net: ipnet::IpNet = cidr.parse().map(|n: ipnet::IpNet| n.trunc()).unwrap();
                except.retain(|e| {
                    let e: ipnet::IpNet = e.parse().unwrap();
                    net.contains(&e) && e.prefix_len() > net.prefix_len()
                });
                PeerM::Block { cidr, except }
            }),
    ]
}

fn port() -> impl Strategy<Value = PortM> {
    let proto = prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP"]));
    prop_oneof![
        proto.clone().prop_map(|protocol| PortM {
            protocol,
            port: None,
            end_port: None
        }),
        (
            proto.clone(),
            prop::sample::select(FLOW_PORTS.to_vec()),
            prop::option::of(0u16..40)
        )
            .prop_map(|(protocol, p, end)| PortM {
                protocol,
                port: Some(PortNum::Int(p)),
                end_port: end.map(|e| p + e),
            }),
        (proto, prop::sample::select(PORT_NAMES.to_vec())).prop_map(|(protocol, n)| PortM {
            protocol,
            port: Some(PortNum::Name(n)),
            end_port: None
        }),
    ]
}

fn rule() -> impl Strategy<Value = RuleM> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
        .prop_map(|(peers, ports)| RuleM { peers, ports })
}

fn policy() -> impl Strategy<Value = PolicyM> {
    let types = prop::option::of(prop::sample::select(vec![
        vec!["Ingress"],
        vec!["Egress"],
        vec!["Ingress", "Egress"],
        vec![],
    ]));
    (
        prop::sample::select(NAMESPACES.to_vec()),
        sel(),
        types,
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
    )
        .prop_map(|(ns, selector, types, ingress, egress)| PolicyM {
            ns,
            selector,
            types,
            ingress,
            egress,
        })
}

fn cluster() -> impl Strategy<Value = ClusterM> {
    let pod = (
        prop::sample::select(NAMESPACES.to_vec()),
        label_map(),
        0usize..2,
        prop::sample::subsequence(vec![0usize, 1, 2, 3], 0..4),
    )
        .prop_map(|(ns, labels, node, ports)| PodM {
            ns,
            labels,
            node,
            ports,
        });
    (
        prop::collection::vec(prop::sample::select(vec!["x", "y"]), 3),
        prop::collection::vec(pod, 1..7),
        prop::collection::vec(policy(), 0..5),
    )
        .prop_map(|(ns_team, pods, policies)| ClusterM {
            ns_team,
            pods,
            policies,
        })
}

fn pod_ip(i: usize) -> String {
    format!("10.0.0.{}", i + 1)
}

// ---------- model -> k8s objects ----------

fn sel_json(s: &Sel) -> Value {
    let mut v = json!({});
    if !s.labels.is_empty() {
        v["matchLabels"] = json!(s.labels);
    }
    if !s.exprs.is_empty() {
        v["matchExpressions"] = s
            .exprs
            .iter()
            .map(|e| {
                if e.values.is_empty() {
                    json!({"key": e.key, "operator": e.op})
                } else {
                    json!({"key": e.key, "operator": e.op, "values": e.values})
                }
            })
            .collect();
    }
    v
}

fn rule_json(r: &RuleM, peer_key: &str) -> Value {
    let mut v = json!({});
    if let Some(peers) = &r.peers {
        v[peer_key] = peers
            .iter()
            .map(|p| match p {
                PeerM::Pods { ns, pods } => {
                    let mut o = json!({});
                    if let Some(n) = ns {
                        o["namespaceSelector"] = sel_json(n);
                    }
                    if let Some(p) = pods {
                        o["podSelector"] = sel_json(p);
                    }
                    o
                }
                PeerM::Block { cidr, except } => {
                    if except.is_empty() {
                        json!({"ipBlock": {"cidr": cidr}})
                    } else {
                        json!({"ipBlock": {"cidr": cidr, "except": except}})
                    }
                }
            })
            .collect();
    }
    if let Some(ports) = &r.ports {
        v["ports"] = ports
            .iter()
            .map(|p| {
                let mut o = json!({});
                if let Some(pr) = p.protocol {
                    o["protocol"] = json!(pr);
                }
                match &p.port {
                    Some(PortNum::Int(n)) => o["port"] = json!(n),
                    Some(PortNum::Name(n)) => o["port"] = json!(n),
                    None => {}
                }
                if let Some(e) = p.end_port {
                    o["endPort"] = json!(e);
                }
                o
            })
            .collect();
    }
    v
}

fn snapshot(c: &ClusterM) -> Snapshot {
    let mut s = Snapshot::default();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        s.namespaces.push(
            serde_json::from_value(
                json!({"metadata": {"name": ns, "labels": {"team": c.ns_team[i]}}}),
            )
            .unwrap(),
        );
    }
    for (i, p) in c.pods.iter().enumerate() {
        let ports: Vec<Value> = p
            .ports
            .iter()
            .map(|&k| {
                let (name, port, proto) = CONTAINER_PORTS[k];
                json!({"name": name, "containerPort": port, "protocol": proto})
            })
            .collect();
        s.pods.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("pod{i}"), "namespace": p.ns, "labels": p.labels},
                "spec": {"nodeName": format!("n{}", p.node), "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": pod_ip(i), "hostIP": NODE_IPS[p.node]},
            }))
            .unwrap(),
        );
    }
    for (i, p) in c.policies.iter().enumerate() {
        let mut spec = json!({"podSelector": sel_json(&p.selector)});
        if let Some(t) = &p.types {
            spec["policyTypes"] = json!(t);
        }
        if let Some(r) = &p.ingress {
            spec["ingress"] = r.iter().map(|r| rule_json(r, "from")).collect();
        }
        if let Some(r) = &p.egress {
            spec["egress"] = r.iter().map(|r| rule_json(r, "to")).collect();
        }
        s.network_policies.push(
            serde_json::from_value(
                json!({"metadata": {"name": format!("p{i}"), "namespace": p.ns}, "spec": spec}),
            )
            .unwrap(),
        );
    }
    s
}

// ---------- the naive evaluator ----------

fn naive_sel(s: &Sel, labels: &BTreeMap<&str, &str>) -> bool {
    for (k, v) in &s.labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in &s.exprs {
        let has = labels.get(e.key);
        let ok = match e.op {
            "In" => has.is_some() && e.values.contains(has.unwrap()),
            "NotIn" => has.is_none() || !e.values.contains(has.unwrap()),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            _ => unreachable!(),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn ip_u32(s: &str) -> u32 {
    let mut n = 0u32;
    for part in s.split('.') {
        n = n * 256 + part.parse::<u32>().unwrap();
    }
    n
}

fn naive_in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (ip_u32(ip) & mask) == (ip_u32(net) & mask)
}

fn pod_at(c: &ClusterM, ip: &str) -> Option<usize> {
    (0..c.pods.len()).find(|&i| pod_ip(i) == ip)
}

fn ns_labels(c: &ClusterM, ns: &str) -> BTreeMap<&'static str, &'static str> {
    let i = NAMESPACES.iter().position(|n| *n == ns).unwrap();
    let mut m = BTreeMap::new();
    m.insert("team", c.ns_team[i]);
    // kubernetes.io/metadata.name is never used by the generated selectors
    m
}

fn naive_policy_applies(p: &PolicyM, ingress: bool) -> bool {
    match &p.types {
        Some(t) if !t.is_empty() => t.contains(&if ingress { "Ingress" } else { "Egress" }),
        _ => ingress || p.egress.as_ref().map(|e| !e.is_empty()).unwrap_or(false),
    }
}

fn naive_rule(
    c: &ClusterM,
    pol: &PolicyM,
    r: &RuleM,
    peer_ip: &str,
    dst_ip: &str,
    port: u16,
    proto: &str,
) -> bool {
    let dst_pod = pod_at(c, dst_ip);
    let mut port_ok = r.ports.as_ref().map(|v| v.is_empty()).unwrap_or(true);
    for p in r.ports.iter().flatten() {
        let pproto = p.protocol.unwrap_or("TCP");
        if pproto != proto {
            continue;
        }
        match &p.port {
            None => port_ok = true,
            Some(PortNum::Int(n)) => {
                let last = p.end_port.unwrap_or(*n);
                if port >= *n && port <= last {
                    port_ok = true;
                }
            }
            Some(PortNum::Name(name)) => {
                if let Some(d) = dst_pod {
                    for &k in &c.pods[d].ports {
                        let (cn, cp, cpr) = CONTAINER_PORTS[k];
                        if cn == *name && cp == port && cpr == proto {
                            port_ok = true;
                        }
                    }
                }
            }
        }
    }
    if !port_ok {
        return false;
    }
    let peers = match &r.peers {
        None => return true,
        Some(v) if v.is_empty() => return true,
        Some(v) => v,
    };
    let peer_pod = pod_at(c, peer_ip);
    for p in peers {
        match p {
            PeerM::Block { cidr, except } => {
                if naive_in_cidr(peer_ip, cidr) && !except.iter().any(|e| naive_in_cidr(peer_ip, e))
                {
                    return true;
                }
            }
            PeerM::Pods { ns, pods } => {
                if let Some(pp) = peer_pod {
                    let other = &c.pods[pp];
                    let ns_ok = match ns {
                        None => other.ns == pol.ns,
                        Some(s) => naive_sel(s, &ns_labels(c, other.ns)),
                    };
                    let pod_ok = match pods {
                        None => true,
                        Some(s) => naive_sel(s, &other.labels),
                    };
                    if ns_ok && pod_ok {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// (isolated, allowed, allowed_by as "ns/pN#rule"), or None when the side does not apply.
fn naive_side(
    c: &ClusterM,
    pod: usize,
    ingress: bool,
    peer_ip: &str,
    dst_ip: &str,
    port: u16,
    proto: &str,
) -> (bool, bool, Vec<String>) {
    let me = &c.pods[pod];
    let mut names: Vec<(String, usize)> = Vec::new();
    for (i, p) in c.policies.iter().enumerate() {
        if p.ns == me.ns && naive_sel(&p.selector, &me.labels) && naive_policy_applies(p, ingress) {
            names.push((format!("{}/p{i}", p.ns), i));
        }
    }
    if names.is_empty() {
        return (false, true, vec![]);
    }
    names.sort();
    let mut by = Vec::new();
    for (name, i) in &names {
        let pol = &c.policies[*i];
        let rules = if ingress { &pol.ingress } else { &pol.egress };
        for (k, r) in rules.iter().flatten().enumerate() {
            if naive_rule(c, pol, r, peer_ip, dst_ip, port, proto) {
                by.push(format!("{name}#{k}"));
            }
        }
    }
    let same = peer_ip == pod_ip(pod);
    let own_node = peer_ip == NODE_IPS[me.node];
    let allowed = !by.is_empty() || same || own_node;
    (true, allowed, by)
}

fn engine_side(e: &Engine, s: &Side) -> (bool, bool, Vec<String>) {
    (
        s.isolated,
        s.allowed,
        s.allowed_by
            .iter()
            .map(|r| format!("{}#{}", e.policy_name(r.policy), r.rule))
            .collect(),
    )
}

fn protocol(s: &str) -> Protocol {
    match s {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        _ => Protocol::Sctp,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_naive_evaluator(
        c in cluster(),
        flows in prop::collection::vec((0usize..10, 0usize..10, prop::sample::select(FLOW_PORTS.to_vec()), prop::sample::select(vec!["TCP", "UDP", "SCTP"])), 1..30),
    ) {
        let e = Engine::build(&snapshot(&c)).expect("generated policies are valid");
        let addrs: Vec<String> = (0..c.pods.len()).map(pod_ip).chain(NODE_IPS.iter().map(|s| s.to_string())).chain([EXTERNAL.to_owned()]).collect();
        for (s, d, port, proto) in flows {
            let (src, dst) = (&addrs[s % addrs.len()], &addrs[d % addrs.len()]);
            let r = e.evaluate(src.parse().unwrap(), dst.parse().unwrap(), port, protocol(proto));
            prop_assert_eq!(r.targets.len(), 1);
            let t = &r.targets[0];
            let eg = pod_at(&c, src).map(|p| naive_side(&c, p, false, dst, dst, port, proto));
            let ing = pod_at(&c, dst).map(|p| naive_side(&c, p, true, src, dst, port, proto));
            let want_allowed = eg.as_ref().is_none_or(|x| x.1) && ing.as_ref().is_none_or(|x| x.1);
            prop_assert_eq!(r.allowed, want_allowed, "flow {} -> {}:{}/{}", src, dst, port, proto);
            prop_assert_eq!(t.egress.pod.is_some(), eg.is_some());
            prop_assert_eq!(t.ingress.pod.is_some(), ing.is_some());
            if let Some(x) = eg {
                prop_assert_eq!(engine_side(&e, &t.egress), x, "egress of {} -> {}:{}/{}", src, dst, port, proto);
            }
            if let Some(x) = ing {
                prop_assert_eq!(engine_side(&e, &t.ingress), x, "ingress of {} -> {}:{}/{}", src, dst, port, proto);
            }
        }
    }
}
