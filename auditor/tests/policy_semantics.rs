//! Table-driven tests of the policy engine: every NetworkPolicy semantic point with a flow
//! it allows and a flow it denies, on the cluster of `fixtures/cluster.yaml`.
//!
//! The cluster:
//! | pod                          | ns          | IP                 | node   | labels                  | ports                                  |
//! |------------------------------|-------------|--------------------|--------|-------------------------|----------------------------------------|
//! | ffmpeg-7c9d8b6f5-x2k4q       | media       | 10.0.1.1           | node-a | app=ffmpeg tier=worker  |                                        |
//! | origin-0                     | media       | 10.0.1.2, fd00::12 | node-a | app=origin              | http 8080, rtmp 1935, srt 9000/UDP, diameter 3868/SCTP |
//! | probe                        | media       | 10.0.1.3           | node-b | app=probe               |                                        |
//! | edge-6d4f-abcde              | cdn         | 10.0.2.1           | node-b | app=edge tier=edge      | http 8080                              |
//! | cache-0                      | cdn         | 10.0.2.2           | node-b | app=cache               | redis 6379                             |
//! | prometheus-0                 | monitoring  | 10.0.3.1           | node-b | app.kubernetes.io/name=prometheus |                              |
//! | coredns-55cb58b774-9xq2w     | kube-system | 10.0.4.1           | node-a | k8s-app=kube-dns        | dns 53/UDP, dns-tcp 53/TCP             |
//! | auditor-node-b (hostNetwork) | kube-system | 192.168.0.12       | node-b | app=auditor             | metrics 9090                           |
//! | a-old-job-abc (Succeeded)    | cdn         | 10.0.2.1 (reused)  | node-b | app=ffmpeg              |                                        |
//!
//! Namespaces: media (team=media), cdn (team=cdn), monitoring (team=ops), kube-system.
//! Nodes: node-a 192.168.0.11, node-b 192.168.0.12. Services: media/origin 10.96.0.10
//! (80 -> http, 1935 -> 1935; EndpointSlice), cdn/edge 10.96.0.20 (80 -> http; no
//! EndpointSlice: resolved by selector), media/empty 10.96.0.30 (no endpoints).

use std::path::Path;

use auditor::cluster::parse_snapshot;
use auditor::flowlog::Protocol;
use auditor::policy::{Engine, FlowResult, Side};

const CLUSTER: &str = include_str!("fixtures/cluster.yaml");

const FFMPEG: &str = "10.0.1.1";
const ORIGIN: &str = "10.0.1.2";
const PROBE: &str = "10.0.1.3";
const EDGE: &str = "10.0.2.1";
const CACHE: &str = "10.0.2.2";
const PROM: &str = "10.0.3.1";
const EXTERNAL: &str = "203.0.113.5";

fn engine(policies: &[(&str, &str)]) -> Engine {
    let mut yaml = CLUSTER.to_owned();
    for (id, spec) in policies {
        let (ns, name) = id.split_once('/').expect("policy id is ns/name");
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        ));
    }
    let snap = parse_snapshot(Path::new("cluster.yaml"), yaml.as_bytes()).expect("snapshot parses");
    Engine::build(&snap).expect("engine builds")
}

fn protocol(s: &str) -> Protocol {
    match s {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => panic!("protocol {s}"),
    }
}

/// `"SRC -> DST:PORT/PROTO"`; IPv6 destinations in brackets.
fn evaluate(e: &Engine, flow: &str) -> FlowResult {
    let (src, rest) = flow.split_once(" -> ").expect("flow syntax");
    let (addr, proto) = rest.rsplit_once('/').expect("flow syntax");
    let (dst, port) = addr.rsplit_once(':').expect("flow syntax");
    let dst = dst.trim_start_matches('[').trim_end_matches(']');
    e.evaluate(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        port.parse().unwrap(),
        protocol(proto),
    )
}

/// `n/a` (policy does not apply), `open` (not isolated), `ns/p#i,...` (allowed by rules),
/// `exc:same-pod` / `exc:own-node`, `deny:ns/p,...` (isolated by, no rule allows).
fn side(e: &Engine, s: &Side) -> String {
    if s.pod.is_none() {
        return "n/a".into();
    }
    if !s.isolated {
        return "open".into();
    }
    if !s.allowed_by.is_empty() {
        return s
            .allowed_by
            .iter()
            .map(|r| format!("{}#{}", e.policy_name(r.policy), r.rule))
            .collect::<Vec<_>>()
            .join(",");
    }
    if let Some(x) = s.exception {
        return format!("exc:{}", x.as_str());
    }
    format!(
        "deny:{}",
        s.isolated_by
            .iter()
            .map(|&p| e.policy_name(p))
            .collect::<Vec<_>>()
            .join(",")
    )
}

struct Case {
    what: &'static str,
    policies: &'static [(&'static str, &'static str)],
    flow: &'static str,
    /// `allow` or `deny`.
    allow: &'static str,
    /// Expected egress side of the source (see [`side`]); `*` to skip.
    egress: &'static str,
    /// Expected ingress side of the (deciding) destination; `*` to skip.
    ingress: &'static str,
}

const DENY_ORIGIN_INGRESS: (&str, &str) = (
    "media/deny-origin",
    "{podSelector: {matchLabels: {app: origin}}, policyTypes: [Ingress]}",
);
const DENY_FFMPEG_EGRESS: (&str, &str) = (
    "media/deny-ffmpeg-egress",
    "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress]}",
);

macro_rules! cases {
    ($($what:literal, [$($pol:expr),* $(,)?], $flow:expr, $allow:literal, $eg:literal, $in:literal;)*) => {
        &[$(Case { what: $what, policies: &[$($pol),*], flow: $flow, allow: $allow, egress: $eg, ingress: $in }),*]
    };
}

#[test]
fn semantics_table() {
    let cases: &[Case] = CASES;
    let mut failures = Vec::new();
    for c in cases {
        let e = engine(c.policies);
        let flow = c
            .flow
            .replace("FFMPEG", FFMPEG)
            .replace("ORIGIN", ORIGIN)
            .replace("PROBE", PROBE)
            .replace("EDGE", EDGE)
            .replace("CACHE", CACHE)
            .replace("PROM", PROM)
            .replace("EXTERNAL", EXTERNAL);
        let r = evaluate(&e, &flow);
        let t = r.deciding_target();
        let (eg, ing) = (side(&e, &t.egress), side(&e, &t.ingress));
        let ok = r.allowed == (c.allow == "allow")
            && (c.egress == "*" || c.egress == eg)
            && (c.ingress == "*" || c.ingress == ing);
        if !ok {
            failures.push(format!(
                "{}: {flow}\n   want {} egress={} ingress={}\n    got {} egress={eg} ingress={ing}",
                c.what,
                c.allow,
                c.egress,
                c.ingress,
                if r.allowed { "allow" } else { "deny" },
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

const CASES: &[Case] = cases![
    // No policy: nothing is isolated.
    "no policy", [], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "open";
    "no policy, external", [], "EXTERNAL -> ORIGIN:8080/TCP", "allow", "n/a", "open";

    // Ingress isolation applies to the selected pod only, in its direction only.
    "ingress isolation denies", [DENY_ORIGIN_INGRESS], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/deny-origin";
    "unselected pod stays open", [DENY_ORIGIN_INGRESS], "FFMPEG -> PROBE:8080/TCP", "allow", "open", "open";
    "ingress isolation leaves egress open", [DENY_ORIGIN_INGRESS], "ORIGIN -> EDGE:8080/TCP", "allow", "open", "open";
    "egress isolation denies", [DENY_FFMPEG_EGRESS], "FFMPEG -> EDGE:8080/TCP", "deny", "deny:media/deny-ffmpeg-egress", "open";
    "egress isolation leaves ingress open", [DENY_FFMPEG_EGRESS], "PROBE -> FFMPEG:8080/TCP", "allow", "open", "open";

    // policyTypes defaulting.
    "no policyTypes: Ingress implied", [("media/p", "{podSelector: {matchLabels: {app: origin}}}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "no policyTypes, no egress rules: egress open", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}}")], "FFMPEG -> EDGE:8080/TCP", "allow", "open", "open";
    "no policyTypes, egress: []: egress open", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, egress: []}")], "FFMPEG -> EDGE:8080/TCP", "allow", "open", "open";
    "no policyTypes, egress rules: Egress implied, allowed", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, egress: [{ports: [{port: 8080}]}]}")], "FFMPEG -> EDGE:8080/TCP", "allow", "media/p#0", "open";
    "no policyTypes, egress rules: Egress implied, denied", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, egress: [{ports: [{port: 8080}]}]}")], "FFMPEG -> EDGE:9090/TCP", "deny", "deny:media/p", "open";
    "no policyTypes, egress rules: Ingress implied too", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, egress: [{}]}")], "PROBE -> FFMPEG:80/TCP", "deny", "open", "deny:media/p";
    "policyTypes [Egress] ignores ingress rules", [("media/p", "{podSelector: {matchLabels: {app: origin}}, policyTypes: [Egress], ingress: [{}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "open";
    "policyTypes [Egress] isolates egress", [("media/p", "{podSelector: {matchLabels: {app: origin}}, policyTypes: [Egress], ingress: [{}]}")], "ORIGIN -> EDGE:8080/TCP", "deny", "deny:media/p", "open";

    // Policies are additive; every allowing rule is named.
    "additive: first policy allows", [DENY_ORIGIN_INGRESS, ("media/from-ffmpeg", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}]}]}"), ("media/from-probe", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: probe}}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/from-ffmpeg#0";
    "additive: second policy allows", [DENY_ORIGIN_INGRESS, ("media/from-ffmpeg", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}]}]}"), ("media/from-probe", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: probe}}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "media/from-probe#0";
    "additive: none allows", [DENY_ORIGIN_INGRESS, ("media/from-ffmpeg", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}]}]}"), ("media/from-probe", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: probe}}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/deny-origin,media/from-ffmpeg,media/from-probe";
    "additive: two policies both allow", [("media/a", "{podSelector: {}, ingress: [{}]}"), ("media/b", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 8080}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/a#0,media/b#0";
    "rule index is the matching rule", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 1}]}, {ports: [{port: 8080}]}, {ports: [{port: 2}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/p#1";

    // A pod is selected only by policies of its own namespace.
    "policy of another namespace does not select", [("cdn/all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "open";
    "policy of its namespace selects", [("cdn/all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")], "FFMPEG -> EDGE:8080/TCP", "deny", "open", "deny:cdn/all";
    "empty podSelector selects every pod of the namespace", [("media/all", "{podSelector: {}, policyTypes: [Ingress]}")], "EDGE -> PROBE:80/TCP", "deny", "open", "deny:media/all";

    // Peers are OR-ed.
    "peers OR-ed: first", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}, {podSelector: {matchLabels: {app: probe}}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "peers OR-ed: second", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}, {podSelector: {matchLabels: {app: probe}}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "peers OR-ed: neither", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}, {podSelector: {matchLabels: {app: probe}}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "podSelector alone: own namespace only", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}]}]}")], "10.0.2.99 -> ORIGIN:8080/TCP", "deny", "n/a", "deny:media/p";

    // namespaceSelector + podSelector in one peer: AND.
    "ns+pod AND: both match", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: cdn}}, podSelector: {matchLabels: {app: edge}}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "ns+pod AND: namespace only", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: cdn}}, podSelector: {matchLabels: {app: edge}}}]}]}")], "CACHE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "ns+pod AND: pod labels only", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: cdn}}, podSelector: {matchLabels: {app: ffmpeg}}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "ns and pod as two peers: OR", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: cdn}}}, {podSelector: {matchLabels: {app: ffmpeg}}}]}]}")], "CACHE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "namespaceSelector alone: every pod of those namespaces", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}]}]}")], "PROM -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "namespaceSelector alone: other namespaces denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "namespaceSelector by metadata.name", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]}]}")], "PROM -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";

    // {} selectors.
    "namespaceSelector {}: every namespace", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "namespaceSelector {}: not external addresses", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {}}]}]}")], "EXTERNAL -> ORIGIN:8080/TCP", "deny", "n/a", "deny:media/p";
    "podSelector {} peer: every pod of own namespace", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "podSelector {} peer: not other namespaces", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";

    // Absent vs empty lists.
    "ingress absent (Ingress type): allows nothing", [("media/p", "{podSelector: {matchLabels: {app: origin}}, policyTypes: [Ingress]}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "ingress: []: allows nothing", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: []}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "ingress: [{}]: allows everything", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{}]}")], "EXTERNAL -> ORIGIN:1/UDP", "allow", "n/a", "media/p#0";
    "from absent: every source", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 8080}]}]}")], "EXTERNAL -> ORIGIN:8080/TCP", "allow", "n/a", "media/p#0";
    "from: []: every source", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [], ports: [{port: 8080}]}]}")], "EXTERNAL -> ORIGIN:8080/TCP", "allow", "n/a", "media/p#0";
    "from: [] with ports: other port denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [], ports: [{port: 8080}]}]}")], "EXTERNAL -> ORIGIN:8081/TCP", "deny", "n/a", "deny:media/p";
    "ports absent: every port", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {}}]}]}")], "PROBE -> ORIGIN:9000/UDP", "allow", "open", "media/p#0";
    "ports: []: every port", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {}}], ports: []}]}")], "PROBE -> ORIGIN:3868/SCTP", "allow", "open", "media/p#0";
    "egress to: []: every destination", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: []}]}")], "FFMPEG -> EXTERNAL:443/TCP", "allow", "media/p#0", "n/a";
    "egress: [] with Egress type: allows nothing", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: []}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "deny:media/p", "n/a";

    // Protocols.
    "TCP default: TCP allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 9000}]}]}")], "PROBE -> ORIGIN:9000/TCP", "allow", "open", "media/p#0";
    "TCP default: UDP denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 9000}]}]}")], "PROBE -> ORIGIN:9000/UDP", "deny", "open", "deny:media/p";
    "UDP: allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP, port: 9000}]}]}")], "PROBE -> ORIGIN:9000/UDP", "allow", "open", "media/p#0";
    "UDP: TCP denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP, port: 9000}]}]}")], "PROBE -> ORIGIN:9000/TCP", "deny", "open", "deny:media/p";
    "SCTP: allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: SCTP, port: 3868}]}]}")], "PROBE -> ORIGIN:3868/SCTP", "allow", "open", "media/p#0";
    "SCTP: TCP denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: SCTP, port: 3868}]}]}")], "PROBE -> ORIGIN:3868/TCP", "deny", "open", "deny:media/p";
    "protocol without port: every port of it", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP}]}]}")], "PROBE -> ORIGIN:5004/UDP", "allow", "open", "media/p#0";
    "protocol without port: other protocol denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP}]}]}")], "PROBE -> ORIGIN:5004/TCP", "deny", "open", "deny:media/p";

    // Named ports: resolved on the destination pod.
    "named port on ingress: matches", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: http}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "named port on ingress: other port", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: http}]}]}")], "PROBE -> ORIGIN:1935/TCP", "deny", "open", "deny:media/p";
    "named port: protocol must match (default TCP)", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: srt}]}]}")], "PROBE -> ORIGIN:9000/UDP", "deny", "open", "deny:media/p";
    "named port with its protocol", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: srt, protocol: UDP}]}]}")], "PROBE -> ORIGIN:9000/UDP", "allow", "open", "media/p#0";
    "named port on egress: resolved on the destination pod", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{ports: [{port: http}]}]}")], "FFMPEG -> EDGE:8080/TCP", "allow", "media/p#0", "open";
    "named port on egress: destination without the name", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{ports: [{port: http}]}]}")], "FFMPEG -> CACHE:8080/TCP", "deny", "deny:media/p", "open";
    "named port on egress: external destination never matches", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{ports: [{port: http}]}]}")], "FFMPEG -> EXTERNAL:8080/TCP", "deny", "deny:media/p", "n/a";

    // endPort.
    "endPort: inside", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP, port: 9000, endPort: 9100}]}]}")], "PROBE -> ORIGIN:9100/UDP", "allow", "open", "media/p#0";
    "endPort: first port", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP, port: 9000, endPort: 9100}]}]}")], "PROBE -> ORIGIN:9000/UDP", "allow", "open", "media/p#0";
    "endPort: above", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP, port: 9000, endPort: 9100}]}]}")], "PROBE -> ORIGIN:9101/UDP", "deny", "open", "deny:media/p";
    "endPort: below", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{protocol: UDP, port: 9000, endPort: 9100}]}]}")], "PROBE -> ORIGIN:8999/UDP", "deny", "open", "deny:media/p";

    // ipBlock with except, IPv4 and IPv6, host bits.
    "ipBlock v4: inside", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "allow", "media/p#0", "n/a";
    "ipBlock v4: in except", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]}")], "FFMPEG -> EDGE:8080/TCP", "deny", "deny:media/p", "open";
    "ipBlock v4 host bits set: its network", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.77/24}}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "allow", "media/p#0", "n/a";
    "ipBlock v4 host bits set: outside", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.77/24}}]}]}")], "FFMPEG -> 203.0.114.1:443/TCP", "deny", "deny:media/p", "n/a";
    "ipBlock except with host bits set", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.0.0/16, except: [203.0.113.200/24]}}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "deny:media/p", "n/a";
    "ipBlock v6: inside", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}}]}]}")], "FFMPEG -> [2001:db8::1]:443/TCP", "allow", "media/p#0", "n/a";
    "ipBlock v6: in except", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}}]}]}")], "FFMPEG -> [2001:db8:1::1]:443/TCP", "deny", "deny:media/p", "n/a";
    "ipBlock v6 does not hold v4", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '::/0'}}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "deny:media/p", "n/a";
    "ipBlock on ingress from a pod address", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "ipBlock on ingress: other source", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "IPv6 pod address to a v6 ipBlock", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{ipBlock: {cidr: '2001:db8::/32'}}]}]}")], "2001:db8::7 -> [fd00::12]:8080/TCP", "allow", "n/a", "media/p#0";
    "IPv4-mapped IPv6 source is read as IPv4", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: probe}}}]}]}")], "::ffff:10.0.1.3 -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";

    // matchLabels + matchExpressions.
    "matchExpressions In", [("media/p", "{podSelector: {matchExpressions: [{key: app, operator: In, values: [origin, x]}]}, policyTypes: [Ingress]}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "matchExpressions In: not in", [("media/p", "{podSelector: {matchExpressions: [{key: app, operator: In, values: [x]}]}, policyTypes: [Ingress]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "open";
    "matchExpressions NotIn in a peer: allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [ffmpeg]}]}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "matchExpressions NotIn in a peer: denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [ffmpeg]}]}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "matchExpressions Exists: allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "matchExpressions Exists: denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "matchExpressions DoesNotExist: allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "matchExpressions DoesNotExist: denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "matchLabels AND matchExpressions: allowed", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}, matchExpressions: [{key: tier, operator: In, values: [worker]}]}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "matchLabels AND matchExpressions: denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: probe}, matchExpressions: [{key: tier, operator: In, values: [worker]}]}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";
    "namespaceSelector with matchExpressions", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [cdn, ops]}]}}]}]}")], "PROM -> ORIGIN:8080/TCP", "allow", "open", "media/p#0";
    "namespaceSelector with matchExpressions: denied", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [cdn, ops]}]}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/p";

    // hostNetwork pods and nodes: out of scope on their side; node traffic of a pod's own node is always allowed.
    "hostNetwork pod as destination: ingress n/a", [("kube-system/all", "{podSelector: {}, policyTypes: [Ingress]}")], "FFMPEG -> 192.168.0.12:9090/TCP", "allow", "open", "n/a";
    "hostNetwork pod not matched by pod selectors", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}, podSelector: {}}]}]}")], "FFMPEG -> 192.168.0.12:9090/TCP", "deny", "deny:media/p", "n/a";
    "pod selectors match pods in any namespace", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}, podSelector: {}}]}]}")], "FFMPEG -> 10.0.4.1:53/UDP", "allow", "media/p#0", "open";
    "node as source: other node denied", [DENY_ORIGIN_INGRESS], "192.168.0.12 -> ORIGIN:8080/TCP", "deny", "n/a", "deny:media/deny-origin";
    "node as source: own node (kubelet probe) allowed", [DENY_ORIGIN_INGRESS], "192.168.0.11 -> ORIGIN:8080/TCP", "allow", "n/a", "exc:own-node";
    "egress to own node allowed", [DENY_FFMPEG_EGRESS], "FFMPEG -> 192.168.0.11:10250/TCP", "allow", "exc:own-node", "n/a";
    "egress to another node denied", [DENY_FFMPEG_EGRESS], "FFMPEG -> 192.168.0.12:10250/TCP", "deny", "deny:media/deny-ffmpeg-egress", "n/a";
    "a pod to itself is allowed", [DENY_ORIGIN_INGRESS, ("media/deny-origin-egress", "{podSelector: {matchLabels: {app: origin}}, policyTypes: [Egress]}")], "ORIGIN -> ORIGIN:8080/TCP", "allow", "exc:same-pod", "exc:same-pod";
    "a pod to its own other address is allowed", [DENY_ORIGIN_INGRESS], "10.0.1.2 -> [fd00::12]:8080/TCP", "allow", "open", "exc:same-pod";

    // Unknown IPs are external; a reused IP belongs to the live pod.
    "unknown cluster-range IP is external", [DENY_FFMPEG_EGRESS], "FFMPEG -> 10.0.9.9:80/TCP", "deny", "deny:media/deny-ffmpeg-egress", "n/a";
    "IP of a Succeeded pod goes to the live pod", [("cdn/edge-in", "{podSelector: {matchLabels: {app: edge}}, ingress: [{ports: [{port: 8080}]}]}")], "FFMPEG -> EDGE:8080/TCP", "allow", "open", "cdn/edge-in#0";

    // Services: ClusterIP:port resolved to backends and target ports first.
    "service: ingress sees the target port", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 8080}]}]}")], "FFMPEG -> 10.96.0.10:80/TCP", "allow", "open", "media/p#0";
    "service: the service port is not the target port", [("media/p", "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 80}]}]}")], "FFMPEG -> 10.96.0.10:80/TCP", "deny", "open", "deny:media/p";
    "service: egress to backend pods", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: origin}}}], ports: [{port: 8080}]}]}")], "FFMPEG -> 10.96.0.10:80/TCP", "allow", "media/p#0", "open";
    "service: egress ipBlock of the ClusterIP range does not allow", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.96.0.0/12}}]}]}")], "FFMPEG -> 10.96.0.10:80/TCP", "deny", "deny:media/p", "open";
    "service without EndpointSlice: selector and named targetPort", [("cdn/edge-in", "{podSelector: {matchLabels: {app: edge}}, ingress: [{ports: [{port: http}]}]}")], "FFMPEG -> 10.96.0.20:80/TCP", "allow", "open", "cdn/edge-in#0";
    "service without EndpointSlice: denied", [("cdn/edge-in", "{podSelector: {matchLabels: {app: edge}}, ingress: [{ports: [{port: 9999}]}]}")], "FFMPEG -> 10.96.0.20:80/TCP", "deny", "open", "deny:cdn/edge-in";
    "service port not declared: plain address", [DENY_FFMPEG_EGRESS], "FFMPEG -> 10.96.0.10:8443/TCP", "deny", "deny:media/deny-ffmpeg-egress", "n/a";
    "service without endpoints: egress to the ClusterIP", [("media/p", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.96.0.0/12}}]}]}")], "FFMPEG -> 10.96.0.30:80/TCP", "allow", "media/p#0", "n/a";
];

#[test]
fn service_flow_lists_backends() {
    let e = engine(&[(
        "media/p",
        "{podSelector: {matchLabels: {app: origin}}, ingress: [{ports: [{port: 1935}]}]}",
    )]);
    let r = evaluate(&e, "10.0.1.1 -> 10.96.0.10:1935/TCP");
    let s = &e.services()[r.service.expect("service hit")];
    assert_eq!(
        (s.namespace.as_str(), s.service.as_str(), s.port),
        ("media", "origin", 1935)
    );
    assert_eq!(r.targets.len(), 1);
    assert_eq!(r.targets[0].dst_ip.to_string(), ORIGIN);
    assert!(r.allowed);
}

#[test]
fn workloads_from_owners() {
    let e = engine(&[]);
    let w: Vec<&str> = e.pods().iter().map(|p| p.workload.as_str()).collect();
    for want in [
        "media/Deployment/ffmpeg",
        "media/StatefulSet/origin",
        "media/Pod/probe",
        "kube-system/DaemonSet/auditor",
        "cdn/Deployment/edge",
    ] {
        assert!(w.contains(&want), "{want} not in {w:?}");
    }
}

#[test]
fn invalid_policies_name_object_and_field() {
    let cases: &[(&str, &str)] = &[
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]}", "NetworkPolicy media/bad: field spec.ingress[0].from[0].ipBlock.cidr"),
        ("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [x]}}]}]}", "field spec.egress[0].to[0].ipBlock.except[0]"),
        ("{podSelector: {}, ingress: [{from: [{}]}]}", "field spec.ingress[0].from[0]: a peer needs"),
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}", "cannot be combined"),
        ("{podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}", "field spec.ingress[0].ports[0].protocol"),
        ("{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 79}]}]}", "field spec.ingress[0].ports[0].endPort"),
        ("{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}", "field spec.ingress[0].ports[0].endPort"),
        ("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}", "field spec.ingress[0].ports[0].port"),
        ("{podSelector: {}, policyTypes: [Sideways]}", "field spec.policyTypes[0]"),
        ("{podSelector: {matchExpressions: [{key: a, operator: Has}]}}", "field spec.podSelector.matchExpressions[0].operator"),
        ("{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]}", "field spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"),
    ];
    for (spec, want) in cases {
        let yaml = format!("{CLUSTER}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: media}}\nspec: {spec}\n");
        let snap = parse_snapshot(Path::new("c.yaml"), yaml.as_bytes()).expect("parses as YAML");
        let err = Engine::build(&snap).expect_err(spec).to_string();
        assert!(err.contains(want), "{spec}\n got: {err}\nwant: {want}");
    }
}

// ---------------------------------------------------------------------------------------
// AdminNetworkPolicy and BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1),
// evaluated in order with NetworkPolicy: ANPs by priority, then NetworkPolicy, then the
// BANP. The same cluster, with Node objects added for `nodes` peers: node-a
// (192.168.0.11, role=ingest), node-b (192.168.0.12, role=edge).

const NODES: &str = "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {role: ingest}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.11}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-b, labels: {role: edge}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.12}]}\n";

/// `("NP", "ns/name", spec)`, `("ANP", name, spec)`, `("BANP", name, spec)`.
type Obj = (&'static str, &'static str, &'static str);

fn admin_yaml(objects: &[Obj]) -> String {
    let mut yaml = format!("{CLUSTER}{NODES}");
    for (kind, id, spec) in objects {
        match *kind {
            "NP" => {
                let (ns, name) = id.split_once('/').expect("policy id is ns/name");
                yaml.push_str(&format!(
                    "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
                ));
            }
            "ANP" => yaml.push_str(&format!(
                "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: {id}}}\nspec: {spec}\n"
            )),
            "BANP" => yaml.push_str(&format!(
                "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: {id}}}\nspec: {spec}\n"
            )),
            other => panic!("kind {other}"),
        }
    }
    yaml
}

fn admin_engine(objects: &[Obj]) -> Engine {
    let yaml = admin_yaml(objects);
    let snap = parse_snapshot(Path::new("cluster.yaml"), yaml.as_bytes()).expect("snapshot parses");
    Engine::build(&snap).expect("engine builds")
}

/// As [`side`], with the admin layer first: `Deny:NAME#RULE` / `Allow:NAME#RULE` (an ANP or
/// the BANP decided; `#RULE` is the rule's name), or `pass:NAME#RULE>` before what
/// NetworkPolicy then says.
fn admin_side(e: &Engine, s: &Side) -> String {
    let rule = |r: &auditor::policy::AdminRuleRef| {
        let p = &e.admin_policies()[r.policy];
        format!("{}#{}", p.name, p.rule_name(r.direction, r.rule))
    };
    if let (Some(_), Some(x), Some(_)) = (s.pod, s.exception, s.admin) {
        return format!("exc:{}", x.as_str());
    }
    if let Some(r) = &s.admin {
        return format!("{}:{}", r.action.as_str(), rule(r));
    }
    let rest = side(e, s);
    match &s.passed {
        Some(r) => format!("pass:{}>{rest}", rule(r)),
        None => rest,
    }
}

struct AdminCase {
    what: &'static str,
    objects: &'static [Obj],
    flow: &'static str,
    allow: &'static str,
    egress: &'static str,
    ingress: &'static str,
}

macro_rules! admin_cases {
    ($($what:literal, [$($obj:expr),* $(,)?], $flow:expr, $allow:literal, $eg:literal, $in:literal;)*) => {
        &[$(AdminCase { what: $what, objects: &[$($obj),*], flow: $flow, allow: $allow, egress: $eg, ingress: $in }),*]
    };
}

const ANP_DENY_MEDIA_TO_CDN: Obj = (
    "ANP",
    "deny-cdn",
    "{priority: 10, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: block-cdn, action: Deny, to: [{namespaces: {matchLabels: {team: cdn}}}]}]}",
);
const NP_FFMPEG_EGRESS_ALL: Obj = (
    "NP",
    "media/ffmpeg-out",
    "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress], egress: [{}]}",
);
const NP_DENY_ORIGIN: Obj = (
    "NP",
    "media/deny-origin",
    "{podSelector: {matchLabels: {app: origin}}, policyTypes: [Ingress]}",
);
const NP_ORIGIN_FROM_FFMPEG: Obj = (
    "NP",
    "media/origin-from-ffmpeg",
    "{podSelector: {matchLabels: {app: origin}}, ingress: [{from: [{podSelector: {matchLabels: {app: ffmpeg}}}]}]}",
);
const BANP_DENY_INTO_MEDIA: Obj = (
    "BANP",
    "default",
    "{subject: {namespaces: {matchLabels: {team: media}}}, ingress: [{name: from-ops, action: Allow, from: [{namespaces: {matchLabels: {team: ops}}}]}, {name: deny-all, action: Deny, from: [{namespaces: {}}]}]}",
);

const ADMIN_CASES: &[AdminCase] = admin_cases![
    // Deny: on its own, and over a NetworkPolicy allow.
    "ANP Deny denies what nothing else isolates", [ANP_DENY_MEDIA_TO_CDN], "FFMPEG -> EDGE:8080/TCP", "deny", "Deny:deny-cdn#block-cdn", "open";
    "ANP Deny: peer not matched, allowed", [ANP_DENY_MEDIA_TO_CDN], "FFMPEG -> PROM:8080/TCP", "allow", "open", "open";
    "ANP Deny: pod not a subject, allowed", [ANP_DENY_MEDIA_TO_CDN], "CACHE -> EDGE:8080/TCP", "allow", "open", "open";
    "ANP Deny beats a NetworkPolicy allow", [ANP_DENY_MEDIA_TO_CDN, NP_FFMPEG_EGRESS_ALL], "FFMPEG -> EDGE:8080/TCP", "deny", "Deny:deny-cdn#block-cdn", "open";
    "NetworkPolicy allow where the ANP Deny does not match", [ANP_DENY_MEDIA_TO_CDN, NP_FFMPEG_EGRESS_ALL], "FFMPEG -> PROM:8080/TCP", "allow", "media/ffmpeg-out#0", "open";

    // Allow: over a NetworkPolicy deny.
    "ANP Allow beats NetworkPolicy isolation", [NP_DENY_ORIGIN, ("ANP", "probe-in", "{priority: 5, subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: origin}}}}, ingress: [{name: probe, action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {team: media}}, podSelector: {matchLabels: {app: probe}}}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "Allow:probe-in#probe";
    "ANP Allow not matched: NetworkPolicy denies", [NP_DENY_ORIGIN, ("ANP", "probe-in", "{priority: 5, subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: origin}}}}, ingress: [{name: probe, action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {team: media}}, podSelector: {matchLabels: {app: probe}}}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "deny:media/deny-origin";

    // Priority: the lower number wins, whatever the names.
    "priority: Deny at 10 beats Allow at 20", [("ANP", "a-allow", "{priority: 20, subject: {namespaces: {}}, egress: [{name: all, action: Allow, to: [{networks: [0.0.0.0/0]}]}]}"), ("ANP", "z-deny", "{priority: 10, subject: {namespaces: {}}, egress: [{name: cdn, action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "Deny:z-deny#cdn", "n/a";
    "priority: Allow at 5 beats Deny at 10", [("ANP", "a-allow", "{priority: 5, subject: {namespaces: {}}, egress: [{name: all, action: Allow, to: [{networks: [0.0.0.0/0]}]}]}"), ("ANP", "z-deny", "{priority: 10, subject: {namespaces: {}}, egress: [{name: cdn, action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "allow", "Allow:a-allow#all", "n/a";

    // Rule order within one ANP: the first matching rule decides.
    "rule order: first rule allows 8080", [("ANP", "origin-in", "{priority: 1, subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: origin}}}}, ingress: [{name: http, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 8080}}]}, {name: rest, action: Deny, from: [{namespaces: {}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "Allow:origin-in#http";
    "rule order: second rule denies the rest", [("ANP", "origin-in", "{priority: 1, subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: origin}}}}, ingress: [{name: http, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 8080}}]}, {name: rest, action: Deny, from: [{namespaces: {}}]}]}")], "PROBE -> ORIGIN:1935/TCP", "deny", "open", "Deny:origin-in#rest";

    // Pass: skips the remaining ANPs, NetworkPolicy decides, then the baseline.
    "Pass skips a lower-precedence Deny: allowed", [("ANP", "pass-media", "{priority: 10, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: media, action: Pass, to: [{namespaces: {matchLabels: {team: cdn}}}]}]}"), ("ANP", "deny-all", "{priority: 20, subject: {namespaces: {}}, egress: [{name: all, action: Deny, to: [{namespaces: {}}]}]}")], "FFMPEG -> EDGE:8080/TCP", "allow", "pass:pass-media#media>open", "open";
    "without the Pass the Deny denies", [("ANP", "deny-all", "{priority: 20, subject: {namespaces: {}}, egress: [{name: all, action: Deny, to: [{namespaces: {}}]}]}")], "FFMPEG -> EDGE:8080/TCP", "deny", "Deny:deny-all#all", "open";
    "Pass: NetworkPolicy then denies", [("ANP", "pass-media", "{priority: 10, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: media, action: Pass, to: [{namespaces: {matchLabels: {team: cdn}}}]}]}"), ("NP", "media/deny-ffmpeg-egress", "{podSelector: {matchLabels: {app: ffmpeg}}, policyTypes: [Egress]}")], "FFMPEG -> EDGE:8080/TCP", "deny", "pass:pass-media#media>deny:media/deny-ffmpeg-egress", "open";
    "Pass: no NetworkPolicy, the baseline denies", [("ANP", "pass-probe", "{priority: 10, subject: {namespaces: {matchLabels: {team: media}}}, ingress: [{name: probe, action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: probe}}}}]}]}"), BANP_DENY_INTO_MEDIA], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "Deny:default#deny-all";

    // BaselineAdminNetworkPolicy: only where no NetworkPolicy isolates the pod.
    "BANP Deny applies to an unisolated pod", [BANP_DENY_INTO_MEDIA], "EDGE -> ORIGIN:8080/TCP", "deny", "open", "Deny:default#deny-all";
    "BANP Allow: its first matching rule", [BANP_DENY_INTO_MEDIA], "PROM -> ORIGIN:8080/TCP", "allow", "open", "Allow:default#from-ops";
    "BANP does not apply once a NetworkPolicy isolates: allowed by it", [BANP_DENY_INTO_MEDIA, NP_ORIGIN_FROM_FFMPEG], "FFMPEG -> ORIGIN:8080/TCP", "allow", "open", "media/origin-from-ffmpeg#0";
    "BANP does not apply once a NetworkPolicy isolates: denied by it", [BANP_DENY_INTO_MEDIA, NP_ORIGIN_FROM_FFMPEG], "PROM -> ORIGIN:8080/TCP", "deny", "open", "deny:media/origin-from-ffmpeg";
    "BANP: pod not a subject", [BANP_DENY_INTO_MEDIA], "FFMPEG -> EDGE:8080/TCP", "allow", "open", "open";
    "ANP Allow beats BANP Deny", [BANP_DENY_INTO_MEDIA, ("ANP", "edge-in", "{priority: 100, subject: {namespaces: {matchLabels: {team: media}}}, ingress: [{name: edge, action: Allow, from: [{namespaces: {matchLabels: {team: cdn}}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "allow", "open", "Allow:edge-in#edge";

    // Subjects: pods of selected namespaces, or namespace AND pod selectors; never hostNetwork pods.
    "subject pods: selected pod denied", [("ANP", "origin", "{priority: 1, subject: {pods: {namespaceSelector: {matchLabels: {team: media}}, podSelector: {matchLabels: {app: origin}}}}, ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]}")], "FFMPEG -> ORIGIN:8080/TCP", "deny", "open", "Deny:origin#all";
    "subject pods: other pod of the namespace allowed", [("ANP", "origin", "{priority: 1, subject: {pods: {namespaceSelector: {matchLabels: {team: media}}, podSelector: {matchLabels: {app: origin}}}}, ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]}")], "FFMPEG -> PROBE:8080/TCP", "allow", "open", "open";
    "hostNetwork pod is no subject", [("ANP", "all-in", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]}")], "FFMPEG -> 192.168.0.12:9090/TCP", "allow", "open", "n/a";
    "every pod is a subject of namespaces: {}", [("ANP", "all-in", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]}")], "FFMPEG -> CACHE:6379/TCP", "deny", "open", "Deny:all-in#all";

    // Peers: namespaces and pods (in-cluster pods only), nodes, networks.
    "pods peer: namespace AND pod labels", [("ANP", "no-edge", "{priority: 1, subject: {namespaces: {matchLabels: {team: media}}}, ingress: [{name: edge, action: Deny, from: [{pods: {namespaceSelector: {matchLabels: {team: cdn}}, podSelector: {matchLabels: {app: edge}}}}]}]}")], "EDGE -> ORIGIN:8080/TCP", "deny", "open", "Deny:no-edge#edge";
    "pods peer: other pod of that namespace", [("ANP", "no-edge", "{priority: 1, subject: {namespaces: {matchLabels: {team: media}}}, ingress: [{name: edge, action: Deny, from: [{pods: {namespaceSelector: {matchLabels: {team: cdn}}, podSelector: {matchLabels: {app: edge}}}}]}]}")], "CACHE -> ORIGIN:8080/TCP", "allow", "open", "open";
    "namespaces peer: not external addresses", [("ANP", "all-in", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]}")], "EXTERNAL -> ORIGIN:8080/TCP", "allow", "n/a", "open";
    "nodes peer: node with the label denied", [("ANP", "no-edge-nodes", "{priority: 1, subject: {namespaces: {}}, egress: [{name: edge-nodes, action: Deny, to: [{nodes: {matchLabels: {role: edge}}}]}]}")], "FFMPEG -> 192.168.0.12:10250/TCP", "deny", "Deny:no-edge-nodes#edge-nodes", "n/a";
    "nodes peer: node without the label allowed", [("ANP", "no-edge-nodes", "{priority: 1, subject: {namespaces: {}}, egress: [{name: edge-nodes, action: Deny, to: [{nodes: {matchLabels: {role: edge}}}]}]}")], "PROBE -> 192.168.0.11:10250/TCP", "allow", "open", "n/a";
    "nodes peer: the pod's own node stays allowed", [("ANP", "no-nodes", "{priority: 1, subject: {namespaces: {}}, egress: [{name: nodes, action: Deny, to: [{nodes: {}}]}]}")], "FFMPEG -> 192.168.0.11:10250/TCP", "allow", "exc:own-node", "n/a";
    "nodes peer: a pod is not a node", [("ANP", "no-nodes", "{priority: 1, subject: {namespaces: {}}, egress: [{name: nodes, action: Deny, to: [{nodes: {}}]}]}")], "FFMPEG -> EDGE:8080/TCP", "allow", "open", "open";
    "networks peer: inside denied", [("ANP", "no-cdn-net", "{priority: 1, subject: {namespaces: {}}, egress: [{name: net, action: Deny, to: [{networks: [203.0.113.0/24, '2001:db8::/32']}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "Deny:no-cdn-net#net", "n/a";
    "networks peer: outside allowed", [("ANP", "no-cdn-net", "{priority: 1, subject: {namespaces: {}}, egress: [{name: net, action: Deny, to: [{networks: [203.0.113.0/24, '2001:db8::/32']}]}]}")], "FFMPEG -> 198.51.100.1:443/TCP", "allow", "open", "n/a";
    "networks peer: IPv6", [("ANP", "no-cdn-net", "{priority: 1, subject: {namespaces: {}}, egress: [{name: net, action: Deny, to: [{networks: [203.0.113.0/24, '2001:db8::/32']}]}]}")], "FFMPEG -> [2001:db8::5]:443/TCP", "deny", "Deny:no-cdn-net#net", "n/a";
    "networks peer: pod addresses match too", [("ANP", "no-cdn-pods", "{priority: 1, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: net, action: Deny, to: [{networks: [10.0.2.0/24]}]}]}")], "FFMPEG -> EDGE:8080/TCP", "deny", "Deny:no-cdn-pods#net", "open";

    // Ports: portNumber, portRange (protocol TCP by default), namedPort.
    "portRange: inside denied", [("ANP", "no-udp-range", "{priority: 1, subject: {namespaces: {}}, egress: [{name: udp, action: Deny, to: [{networks: [0.0.0.0/0]}], ports: [{portRange: {protocol: UDP, start: 5000, end: 5010}}]}]}")], "FFMPEG -> EXTERNAL:5010/UDP", "deny", "Deny:no-udp-range#udp", "n/a";
    "portRange: above allowed", [("ANP", "no-udp-range", "{priority: 1, subject: {namespaces: {}}, egress: [{name: udp, action: Deny, to: [{networks: [0.0.0.0/0]}], ports: [{portRange: {protocol: UDP, start: 5000, end: 5010}}]}]}")], "FFMPEG -> EXTERNAL:5011/UDP", "allow", "open", "n/a";
    "portRange: other protocol allowed", [("ANP", "no-udp-range", "{priority: 1, subject: {namespaces: {}}, egress: [{name: udp, action: Deny, to: [{networks: [0.0.0.0/0]}], ports: [{portRange: {protocol: UDP, start: 5000, end: 5010}}]}]}")], "FFMPEG -> EXTERNAL:5005/TCP", "allow", "open", "n/a";
    "portNumber without protocol: TCP", [("ANP", "no-443", "{priority: 1, subject: {namespaces: {}}, egress: [{name: https, action: Deny, to: [{networks: [0.0.0.0/0]}], ports: [{portNumber: {port: 443}}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "Deny:no-443#https", "n/a";
    "portNumber without protocol: UDP allowed", [("ANP", "no-443", "{priority: 1, subject: {namespaces: {}}, egress: [{name: https, action: Deny, to: [{networks: [0.0.0.0/0]}], ports: [{portNumber: {port: 443}}]}]}")], "FFMPEG -> EXTERNAL:443/UDP", "allow", "open", "n/a";
    "namedPort on ingress: the subject's port", [("ANP", "no-srt", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: srt, action: Deny, from: [{namespaces: {}}], ports: [{namedPort: srt}]}]}")], "PROBE -> ORIGIN:9000/UDP", "deny", "open", "Deny:no-srt#srt";
    "namedPort on ingress: other port allowed", [("ANP", "no-srt", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: srt, action: Deny, from: [{namespaces: {}}], ports: [{namedPort: srt}]}]}")], "PROBE -> ORIGIN:8080/TCP", "allow", "open", "open";
    "namedPort on egress: the destination pod's port", [("ANP", "no-http", "{priority: 1, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: http, action: Deny, to: [{namespaces: {}}], ports: [{namedPort: http}]}]}")], "FFMPEG -> EDGE:8080/TCP", "deny", "Deny:no-http#http", "open";
    "namedPort on egress: destination without the name", [("ANP", "no-http", "{priority: 1, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: http, action: Deny, to: [{namespaces: {}}], ports: [{namedPort: http}]}]}")], "FFMPEG -> CACHE:8080/TCP", "allow", "open", "open";

    // Services resolve to backends first; a pod's traffic to itself stays allowed.
    "service: the ANP sees the target port", [("ANP", "origin-8080", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: http, action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 8080}}]}]}")], "FFMPEG -> 10.96.0.10:80/TCP", "deny", "open", "Deny:origin-8080#http";
    "service: other service port allowed", [("ANP", "origin-8080", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: http, action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 8080}}]}]}")], "FFMPEG -> 10.96.0.10:1935/TCP", "allow", "open", "open";
    "a pod to itself despite an ANP Deny", [("ANP", "all-in", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]}")], "ORIGIN -> ORIGIN:8080/TCP", "allow", "open", "exc:same-pod";

    // A peer with no field we know fails closed: Deny matches everything, Allow nothing.
    "unknown peer in a Deny rule: denies everything", [("ANP", "future", "{priority: 1, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: new, action: Deny, to: [{someNewPeer: {}}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "Deny:future#new", "n/a";
    "unknown peer in an Allow rule: allows nothing", [NP_DENY_ORIGIN, ("ANP", "future", "{priority: 1, subject: {namespaces: {}}, ingress: [{name: new, action: Allow, from: [{someNewPeer: {}}]}]}")], "PROBE -> ORIGIN:8080/TCP", "deny", "open", "deny:media/deny-origin";

    // domainNames cannot be matched from addresses: such a peer matches nothing here.
    "domainNames Allow matches nothing offline: the Deny after it decides", [("ANP", "fqdn", "{priority: 1, subject: {namespaces: {}}, egress: [{name: cdn, action: Allow, to: [{domainNames: ['*.example.com']}]}]}"), ("ANP", "deny-ext", "{priority: 2, subject: {namespaces: {}}, egress: [{name: ext, action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], "FFMPEG -> EXTERNAL:443/TCP", "deny", "Deny:deny-ext#ext", "n/a";
    "domainNames: other destinations allowed", [("ANP", "fqdn", "{priority: 1, subject: {namespaces: {}}, egress: [{name: cdn, action: Allow, to: [{domainNames: ['*.example.com']}]}]}"), ("ANP", "deny-ext", "{priority: 2, subject: {namespaces: {}}, egress: [{name: ext, action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], "FFMPEG -> 198.51.100.1:443/TCP", "allow", "open", "n/a";
];

#[test]
fn admin_semantics_table() {
    let mut failures = Vec::new();
    for c in ADMIN_CASES {
        let e = admin_engine(c.objects);
        let flow = c
            .flow
            .replace("FFMPEG", FFMPEG)
            .replace("ORIGIN", ORIGIN)
            .replace("PROBE", PROBE)
            .replace("EDGE", EDGE)
            .replace("CACHE", CACHE)
            .replace("PROM", PROM)
            .replace("EXTERNAL", EXTERNAL);
        let r = evaluate(&e, &flow);
        let t = r.deciding_target();
        let (eg, ing) = (admin_side(&e, &t.egress), admin_side(&e, &t.ingress));
        let ok = r.allowed == (c.allow == "allow")
            && (c.egress == "*" || c.egress == eg)
            && (c.ingress == "*" || c.ingress == ing);
        if !ok {
            failures.push(format!(
                "{}: {flow}\n   want {} egress={} ingress={}\n    got {} egress={eg} ingress={ing}",
                c.what,
                c.allow,
                c.egress,
                c.ingress,
                if r.allowed { "allow" } else { "deny" },
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        ADMIN_CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn admin_policies_in_evaluation_order_with_notes() {
    let e = admin_engine(&[
        BANP_DENY_INTO_MEDIA,
        ("ANP", "b", "{priority: 7, subject: {namespaces: {}}}"),
        ("ANP", "a", "{priority: 7, subject: {namespaces: {}}}"),
        ("ANP", "c", "{priority: 3, subject: {namespaces: {}}, egress: [{action: Allow, to: [{domainNames: [example.com]}]}]}"),
    ]);
    let names: Vec<&str> = e.admin_policies().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["c", "a", "b", "default"]);
    assert!(
        e.notes.iter().any(|n| n.contains("a, b share priority 7")),
        "{:?}",
        e.notes
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("AdminNetworkPolicy c has domainNames")),
        "{:?}",
        e.notes
    );
}

#[test]
fn invalid_admin_policies_name_object_and_field() {
    let cases: &[(Obj, &str)] = &[
        (("ANP", "bad", "{priority: 1001, subject: {namespaces: {}}}"), "AdminNetworkPolicy bad: field spec.priority: 1001 is outside 0-1000"),
        (("ANP", "bad", "{priority: 1, subject: {}}"), "AdminNetworkPolicy bad: field spec.subject: exactly one of namespaces or pods"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}}"), "field spec.subject: exactly one"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {matchExpressions: [{key: a, operator: Has}]}}}"), "field spec.subject.namespaces.matchExpressions[0].operator"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Block, to: [{namespaces: {}}]}]}"), "field spec.egress[0].action: unknown action \"Block\" (expected Allow, Deny or Pass)"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: []}]}"), "field spec.egress[0].to: a rule needs at least one peer"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0]}]}]}"), "field spec.egress[0].to[0].networks[0]"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}, nodes: {}}]}]}"), "field spec.egress[0].to[0]: exactly one of"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{portRange: {start: 90, end: 80}}]}]}"), "field spec.egress[0].ports[0].portRange.end: end 80 is below start 90"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{portNumber: {port: 0}}]}]}"), "field spec.egress[0].ports[0].portNumber.port: 0 is not a port"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{portNumber: {port: 80, protocol: ICMP}}]}]}"), "field spec.egress[0].ports[0].portNumber.protocol"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{}]}]}"), "field spec.egress[0].ports[0]: exactly one of portNumber, namedPort or portRange"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{namedPort: http}]}]}"), "field spec.egress[0].ports: namedPort cannot be used with nodes, networks"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{domainNames: [example.com]}]}]}"), "field spec.egress[0].to[0].domainNames: domainNames is only allowed in Allow rules"),
        (("ANP", "bad", "{priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}]}]}"), "field spec.ingress[0].from[0]: exactly one of namespaces or pods"),
        (("BANP", "default", "{subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}"), "BaselineAdminNetworkPolicy default: field spec.ingress[0].action: unknown action \"Pass\" (expected Allow or Deny)"),
        (("BANP", "other", "{subject: {namespaces: {}}}"), "BaselineAdminNetworkPolicy other: field metadata.name: the BaselineAdminNetworkPolicy is a singleton"),
    ];
    for (obj, want) in cases {
        let yaml = admin_yaml(&[*obj]);
        let snap = parse_snapshot(Path::new("c.yaml"), yaml.as_bytes()).expect("parses as YAML");
        let err = Engine::build(&snap).expect_err(obj.2).to_string();
        assert!(err.contains(want), "{}\n got: {err}\nwant: {want}", obj.2);
    }
    // Shape errors are the snapshot's: file, object and field.
    for (yaml, want) in [
        ("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: x}\nspec: {subject: {namespaces: {}}}\n", "c.yaml: AdminNetworkPolicy x: field spec: missing field `priority`"),
        ("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: x}\nspec: {priority: high, subject: {namespaces: {}}}\n", "c.yaml: AdminNetworkPolicy x: field spec.priority"),
        ("apiVersion: policy.networking.k8s.io/v1\nkind: AdminNetworkPolicy\nmetadata: {name: x}\nspec: {priority: 1, subject: {namespaces: {}}}\n", "AdminNetworkPolicy x: field apiVersion: \"policy.networking.k8s.io/v1\" is not supported (expected policy.networking.k8s.io/v1alpha1)"),
        ("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {subject: {namespaces: {}}, egress: [{action: Deny}]}\n", "c.yaml: BaselineAdminNetworkPolicy default: field spec.egress[0]: missing field `to`"),
    ] {
        let err = parse_snapshot(Path::new("c.yaml"), yaml.as_bytes())
            .expect_err(yaml)
            .to_string();
        assert!(err.contains(want), "{yaml}\n got: {err}\nwant: {want}");
    }
}

/// The live view's updates give the answers of a rebuild: an ANP added, changed, removed;
/// the BANP added and removed; a node's labels changed.
#[test]
fn admin_updates_answer_as_a_rebuild() {
    use auditor::policy::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
    let flows = [
        "FFMPEG -> EDGE:8080/TCP",
        "FFMPEG -> EXTERNAL:443/TCP",
        "EDGE -> ORIGIN:8080/TCP",
        "PROM -> ORIGIN:8080/TCP",
        "FFMPEG -> 192.168.0.12:10250/TCP",
    ];
    let answers = |e: &Engine| -> Vec<String> {
        flows
            .iter()
            .map(|f| {
                let f = f
                    .replace("FFMPEG", FFMPEG)
                    .replace("ORIGIN", ORIGIN)
                    .replace("EDGE", EDGE)
                    .replace("PROM", PROM)
                    .replace("EXTERNAL", EXTERNAL);
                let r = evaluate(e, &f);
                let t = r.deciding_target();
                format!(
                    "{f}: {} {} {}",
                    r.allowed,
                    admin_side(e, &t.egress),
                    admin_side(e, &t.ingress)
                )
            })
            .collect()
    };
    let anp = |spec: &str| -> AdminNetworkPolicy {
        serde_yaml::from_str(&format!("metadata: {{name: x}}\nspec: {spec}\n")).unwrap()
    };
    let deny_cdn = "{priority: 10, subject: {namespaces: {matchLabels: {team: media}}}, egress: [{name: a, action: Deny, to: [{namespaces: {matchLabels: {team: cdn}}}]}]}";
    let deny_ext = "{priority: 10, subject: {namespaces: {}}, egress: [{name: b, action: Deny, to: [{networks: [203.0.113.0/24]}, {nodes: {matchLabels: {role: edge}}}]}]}";
    let mut live = admin_engine(&[]);
    live.apply_admin_policy(&anp(deny_cdn)).unwrap();
    assert_eq!(
        answers(&live),
        answers(&admin_engine(&[("ANP", "x", deny_cdn)]))
    );
    live.apply_admin_policy(&anp(deny_ext)).unwrap();
    assert_eq!(
        answers(&live),
        answers(&admin_engine(&[("ANP", "x", deny_ext)]))
    );
    let banp: BaselineAdminNetworkPolicy = serde_yaml::from_str(&format!(
        "metadata: {{name: default}}\nspec: {}\n",
        BANP_DENY_INTO_MEDIA.2
    ))
    .unwrap();
    live.apply_baseline_policy(&banp).unwrap();
    assert_eq!(
        answers(&live),
        answers(&admin_engine(&[
            ("ANP", "x", deny_ext),
            BANP_DENY_INTO_MEDIA
        ]))
    );
    // node-b loses its role label: the nodes peer no longer matches it.
    let node_b: k8s_openapi::api::core::v1::Node = serde_yaml::from_str(
        "metadata: {name: node-b}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.12}]}\n",
    )
    .unwrap();
    live.apply_node(&node_b).unwrap();
    assert!(evaluate(&live, "10.0.1.1 -> 192.168.0.12:10250/TCP").allowed);
    assert!(live.remove_admin_policy("x"));
    assert!(live.remove_baseline_policy("default"));
    assert!(!live.remove_admin_policy("x"));
    assert_eq!(answers(&live), answers(&admin_engine(&[])));
    let bad: BaselineAdminNetworkPolicy =
        serde_yaml::from_str("metadata: {name: other}\nspec: {subject: {namespaces: {}}}\n")
            .unwrap();
    assert!(live.apply_baseline_policy(&bad).is_err());
}
