//! NetworkPolicies enforced for real on the simulated node: the policy engine's view of
//! a snapshot turned into an nftables ruleset for the node's `forward` hook.
//!
//! For every pod isolated for egress there is a chain its outgoing new connections
//! jump to; every rule of every policy that selects it becomes `... return`, and the
//! chain ends in `drop`. The same for ingress on the destination address. Replies of
//! allowed connections pass by conntrack. Services are already DNATed to a backend in
//! `prerouting`, so the forward hook sees backend addresses, as policies do.
//! Node-originated traffic (kubelet probes) goes through `output`, not `forward`, and is
//! not filtered, as with most network plugins.

use std::fmt::Write as _;
use std::net::IpAddr;

use auditor::flowlog::{Direction, Protocol};
use auditor::policy::view::{PortSpec, ResolvedPeer, ResolvedRule};
use auditor::policy::Engine;

const TABLE: &str = "netpol";

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// Port matches of a rule for traffic to `dest_pod` (for named ports), as nft fragments;
/// `None` = any port. An empty list = nothing can match (named port not on that pod).
fn port_matches(
    engine: &Engine,
    ports: &Option<Vec<PortSpec>>,
    dest_pod: Option<usize>,
) -> Option<Vec<String>> {
    let ports = ports.as_ref()?;
    let mut out = Vec::new();
    for p in ports {
        match p {
            PortSpec::Any(pr) => out.push(format!("meta l4proto {}", proto(*pr))),
            PortSpec::Range {
                protocol,
                first,
                last,
            } if first == last => out.push(format!("{} dport {first}", proto(*protocol))),
            PortSpec::Range {
                protocol,
                first,
                last,
            } => out.push(format!("{} dport {first}-{last}", proto(*protocol))),
            PortSpec::Named { protocol, name } => {
                if let Some(d) = dest_pod {
                    for c in &engine.pods()[d].ports {
                        if c.protocol == *protocol && c.name.as_deref() == Some(name.as_str()) {
                            out.push(format!("{} dport {}", proto(*protocol), c.port));
                        }
                    }
                }
            }
        }
    }
    Some(out)
}

/// The nft lines (each ending in `return`) that allow traffic matching `rule`, seen from
/// `pod` in `direction` (`peer_field` is `daddr` for egress, `saddr` for ingress).
fn rule_lines(
    engine: &Engine,
    pod: usize,
    direction: Direction,
    rule: &ResolvedRule,
    comment: &str,
) -> Vec<String> {
    let peer_field = if direction == Direction::Egress {
        "daddr"
    } else {
        "saddr"
    };
    let mut lines = Vec::new();
    // (peer address match, destination pod for named ports)
    let mut peers: Vec<(Option<String>, Option<usize>)> = Vec::new();
    match &rule.peers {
        None => peers.push((
            None,
            if direction == Direction::Ingress {
                Some(pod)
            } else {
                None
            },
        )),
        Some(list) => {
            for p in list {
                match p {
                    ResolvedPeer::Pods(ids) => {
                        for &id in ids {
                            for ip in &engine.pods()[id].ips {
                                let dest = if direction == Direction::Egress {
                                    Some(id)
                                } else {
                                    Some(pod)
                                };
                                peers.push((Some(format!("{} {peer_field} {ip}", fam(ip))), dest));
                            }
                        }
                    }
                    ResolvedPeer::Block { cidr, except } => {
                        let f = if matches!(cidr, ipnet::IpNet::V4(_)) {
                            "ip"
                        } else {
                            "ip6"
                        };
                        let mut m = format!("{f} {peer_field} {cidr}");
                        let ex: Vec<String> = except
                            .iter()
                            .filter(|e| {
                                matches!(
                                    (e, cidr),
                                    (ipnet::IpNet::V4(_), ipnet::IpNet::V4(_))
                                        | (ipnet::IpNet::V6(_), ipnet::IpNet::V6(_))
                                )
                            })
                            .map(|e| e.to_string())
                            .collect();
                        if !ex.is_empty() {
                            let _ = write!(m, " {f} {peer_field} != {{ {} }}", ex.join(", "));
                        }
                        peers.push((
                            Some(m),
                            if direction == Direction::Ingress {
                                Some(pod)
                            } else {
                                None
                            },
                        ));
                    }
                }
            }
        }
    }
    for (peer, dest) in peers {
        match port_matches(engine, &rule.ports, dest) {
            None => lines.push(
                format!("{} return comment \"{comment}\"", peer.unwrap_or_default())
                    .trim_start()
                    .to_string(),
            ),
            Some(ports) => {
                for p in ports {
                    lines.push(
                        format!(
                            "{} {p} return comment \"{comment}\"",
                            peer.clone().unwrap_or_default()
                        )
                        .trim_start()
                        .to_string(),
                    );
                }
            }
        }
    }
    lines
}

/// The whole `inet netpol` table for the engine's snapshot (replaces any earlier one).
pub fn ruleset(engine: &Engine) -> String {
    let mut jumps = String::new();
    let mut chains = String::new();
    for (id, pod) in engine.pods().iter().enumerate() {
        if pod.host_network {
            continue;
        }
        for (direction, policies, tag, field) in [
            (Direction::Egress, &pod.egress_policies, "eg", "saddr"),
            (Direction::Ingress, &pod.ingress_policies, "in", "daddr"),
        ] {
            if policies.is_empty() {
                continue;
            }
            let chain = format!("{tag}_{id}");
            for ip in &pod.ips {
                let _ = writeln!(jumps, "    {} {field} {ip} jump {chain}", fam(ip));
            }
            let _ = writeln!(
                chains,
                "  chain {chain} {{\n    # {}/{} {:?}",
                pod.namespace, pod.name, direction
            );
            for &pid in policies.iter() {
                let rules = engine.resolved_rules(pid, direction).unwrap_or_default();
                for (i, rule) in rules.iter().enumerate() {
                    let comment = format!("{} rule {i}", engine.policy_name(pid));
                    for line in rule_lines(engine, id, direction, rule, &comment) {
                        let _ = writeln!(chains, "    {line}");
                    }
                }
            }
            let _ = writeln!(chains, "    counter drop\n  }}");
        }
    }
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n{jumps}  }}\n{chains}}}\n"
    )
}
