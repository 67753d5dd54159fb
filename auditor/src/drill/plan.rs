//! What a drill blocks and how its outcome is judged: pure, no kernel.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::flowlog::Protocol;
use crate::policy::Engine;

/// A `--peer` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    /// An address or a CIDR.
    Net(IpNet),
    /// `svc/NAMESPACE/NAME`: its ClusterIPs (with its external and LoadBalancer IPs) and
    /// its backends, on its ports.
    Service { namespace: String, name: String },
    /// `pod/NAMESPACE/NAME`: the pod's IPs.
    Pod { namespace: String, name: String },
}

impl std::fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerSpec::Net(n) => write!(f, "{n}"),
            PeerSpec::Service { namespace, name } => write!(f, "svc/{namespace}/{name}"),
            PeerSpec::Pod { namespace, name } => write!(f, "pod/{namespace}/{name}"),
        }
    }
}

const PEER_EXPECTED: &str = "expected an IP, a CIDR, svc/NAMESPACE/NAME or pod/NAMESPACE/NAME";

impl PeerSpec {
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err(format!("empty peer; {PEER_EXPECTED}"));
        }
        let object = |rest: &str, kind: &str| -> Result<(String, String), String> {
            match rest.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok((ns.to_owned(), name.to_owned()))
                }
                _ => Err(format!("{kind}/{rest}: {PEER_EXPECTED}")),
            }
        };
        for prefix in ["svc/", "service/", "services/"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (namespace, name) = object(rest, "svc")?;
                return Ok(PeerSpec::Service { namespace, name });
            }
        }
        for prefix in ["pod/", "pods/", "po/"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (namespace, name) = object(rest, "pod")?;
                return Ok(PeerSpec::Pod { namespace, name });
            }
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerSpec::Net(IpNet::from(ip)));
        }
        match s.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => Ok(PeerSpec::Net(net)),
            Ok(net) => Err(format!(
                "{s}: host bits are set; the network is {}",
                net.trunc()
            )),
            Err(_) => Err(format!("{s}: {PEER_EXPECTED}")),
        }
    }

    /// Whether resolving it needs the cluster snapshot.
    pub fn needs_cluster(&self) -> bool {
        !matches!(self, PeerSpec::Net(_))
    }
}

/// `--port N` or `--port N-M` (the peer's port: destination on egress, source on ingress).
pub fn parse_ports(input: &str) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
            _ => Err(format!(
                "{input:?}: expected a port 1-65535 or a range N-M, e.g. 8080 or 5000-5010"
            )),
        }
    };
    match input.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (one(a)?, one(b)?);
            if lo > hi {
                return Err(format!("{input:?}: the range's start is above its end"));
            }
            Ok((lo, hi))
        }
        None => one(input).map(|p| (p, p)),
    }
}

/// Which way the block applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets from the target to the peer (the target calls the peer: the usual dependency).
    Egress,
    /// Packets from the peer to the target (the peer pushes to the target, or its replies).
    Ingress,
    /// Both.
    Both,
}

impl Direction {
    pub fn bits(self) -> u8 {
        match self {
            Direction::Egress => auditor_ebpf::DRILL_EGRESS,
            Direction::Ingress => auditor_ebpf::DRILL_INGRESS,
            Direction::Both => auditor_ebpf::DRILL_EGRESS | auditor_ebpf::DRILL_INGRESS,
        }
    }
}

/// One rule the kernel program matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub net: IpNet,
    /// `None`: any protocol (and any port).
    pub protocol: Option<Protocol>,
    /// The peer's ports, inclusive.
    pub ports: (u16, u16),
    /// The `--peer` it came from.
    pub peer: String,
}

impl Rule {
    pub fn describe(&self) -> String {
        match self.protocol {
            None => format!("{} (any protocol)", self.net),
            Some(p) if self.ports == (0, 65535) => format!("{} {p} (any port)", self.net),
            Some(p) if self.ports.0 == self.ports.1 => format!("{}:{}/{p}", self.net, self.ports.0),
            Some(p) => format!("{}:{}-{}/{p}", self.net, self.ports.0, self.ports.1),
        }
    }

    pub fn to_abi(&self, direction: Direction) -> auditor_ebpf::DrillRule {
        let mut addr = [0u8; 16];
        let family = match self.net.network() {
            IpAddr::V4(a) => {
                addr[..4].copy_from_slice(&a.octets());
                auditor_ebpf::AF_INET
            }
            IpAddr::V6(a) => {
                addr.copy_from_slice(&a.octets());
                auditor_ebpf::AF_INET6
            }
        };
        auditor_ebpf::DrillRule {
            family,
            prefix_len: self.net.prefix_len(),
            protocol: match self.protocol {
                None => 0,
                Some(Protocol::Tcp) => auditor_ebpf::IPPROTO_TCP,
                Some(Protocol::Udp) => auditor_ebpf::IPPROTO_UDP,
                Some(Protocol::Sctp) => auditor_ebpf::IPPROTO_SCTP,
            },
            port_lo: self.ports.0,
            port_hi: self.ports.1,
            direction: direction.bits(),
            _pad: [0; 7],
            addr,
        }
    }
}

/// The rules for the peers, with `--port` and `--protocol` applied. A Service without
/// `--port` is blocked on its own ports (ClusterIP: the Service port; backends: the target
/// port); with `--port`, on the Service ports named by it.
pub fn rules(
    peers: &[PeerSpec],
    engine: Option<&Engine>,
    ports: Option<(u16, u16)>,
    protocol: Option<Protocol>,
) -> Result<Vec<Rule>, String> {
    let protocols: Vec<Option<Protocol>> = match (protocol, ports) {
        (Some(p), _) => vec![Some(p)],
        (None, Some(_)) => vec![Some(Protocol::Tcp), Some(Protocol::Udp)],
        (None, None) => vec![None],
    };
    let any_port = (0u16, 65535u16);
    let mut out = BTreeSet::new();
    for peer in peers {
        let spec = peer.to_string();
        let mut add = |net: IpNet, protocol: Option<Protocol>, ports: (u16, u16)| {
            out.insert(Rule {
                net,
                protocol,
                ports: if protocol.is_some() { ports } else { any_port },
                peer: spec.clone(),
            });
        };
        match peer {
            PeerSpec::Net(net) => {
                for p in &protocols {
                    add(*net, *p, ports.unwrap_or(any_port));
                }
            }
            PeerSpec::Pod { namespace, name } => {
                let engine = engine.ok_or("needs --cluster")?;
                let pod = engine
                    .pods()
                    .iter()
                    .find(|p| &p.namespace == namespace && &p.name == name)
                    .ok_or_else(|| format!("no pod {namespace}/{name} in the snapshot"))?;
                if pod.ips.is_empty() {
                    return Err(format!(
                        "pod {namespace}/{name} has no IP in the snapshot (status.podIPs)"
                    ));
                }
                for ip in &pod.ips {
                    for p in &protocols {
                        add(IpNet::from(*ip), *p, ports.unwrap_or(any_port));
                    }
                }
            }
            PeerSpec::Service { namespace, name } => {
                let engine = engine.ok_or("needs --cluster")?;
                let svc_ports: Vec<_> = engine
                    .services()
                    .iter()
                    .filter(|s| &s.namespace == namespace && &s.service == name)
                    .collect();
                if svc_ports.is_empty() {
                    return Err(format!(
                        "no Service {namespace}/{name} with a ClusterIP and ports in the snapshot"
                    ));
                }
                let mut matched = false;
                for sp in svc_ports {
                    if ports.is_some_and(|(lo, hi)| sp.port < lo || sp.port > hi)
                        || protocol.is_some_and(|p| p != sp.protocol)
                    {
                        continue;
                    }
                    matched = true;
                    for vip in sp.vips() {
                        add(IpNet::from(*vip), Some(sp.protocol), (sp.port, sp.port));
                    }
                    for b in &sp.backends {
                        add(IpNet::from(b.ip), Some(sp.protocol), (b.port, b.port));
                    }
                }
                if !matched {
                    return Err(format!(
                        "Service {namespace}/{name} has no port matching --port/--protocol"
                    ));
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The outcome of a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The workload kept running and came back to the peer within the bound.
    Graceful,
    /// A process of the workload exited, or it did not come back within the bound.
    Failed,
    /// Nothing went to the peer while it was blocked: nothing was tested.
    Untested,
}

impl Outcome {
    /// `auditor drill`'s exit code for it.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Graceful => 0,
            Outcome::Failed => 1,
            Outcome::Untested => 3,
        }
    }
}

/// What the judgement rests on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    pub dropped_packets: u64,
    /// Time from the release to the first packet to the peer that passed; `None`: none did
    /// within the observation.
    pub resumed_after_ms: Option<u64>,
    /// Processes of the target that were running when the block began and are gone.
    pub exited: Vec<String>,
    pub recover_within_ms: u64,
    pub observe_ms: u64,
}

/// Graceful, failed or untested, and why, in one sentence.
pub fn judge(e: &Evidence) -> (Outcome, String) {
    if e.dropped_packets == 0 {
        return (
            Outcome::Untested,
            "the target sent nothing to the peer while it was blocked: nothing was tested (is the peer used, or is --port/--direction right?)".into(),
        );
    }
    if !e.exited.is_empty() {
        return (
            Outcome::Failed,
            format!(
                "{} exited during the drill: the pipeline did not survive the block",
                e.exited.join(", ")
            ),
        );
    }
    match e.resumed_after_ms {
        None => (
            Outcome::Failed,
            format!(
                "no packet to the peer in the {:.1} s after the release: the pipeline did not come back",
                e.observe_ms as f64 / 1000.0
            ),
        ),
        Some(ms) if ms > e.recover_within_ms => (
            Outcome::Failed,
            format!(
                "traffic to the peer resumed {:.1} s after the release, over --recover-within {:.1} s",
                ms as f64 / 1000.0,
                e.recover_within_ms as f64 / 1000.0
            ),
        ),
        Some(ms) => (
            Outcome::Graceful,
            format!(
                "kept running through {} dropped packets and resumed talking to the peer {:.1} s after the release",
                e.dropped_packets,
                ms as f64 / 1000.0
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_with_what_was_expected() {
        assert_eq!(
            PeerSpec::parse("10.0.0.0/8").unwrap(),
            PeerSpec::Net("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            PeerSpec::parse("10.1.2.3").unwrap(),
            PeerSpec::Net("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(
            PeerSpec::parse("fd00::1").unwrap(),
            PeerSpec::Net("fd00::1/128".parse().unwrap())
        );
        assert_eq!(
            PeerSpec::parse("svc/media/cdn").unwrap(),
            PeerSpec::Service {
                namespace: "media".into(),
                name: "cdn".into()
            }
        );
        assert_eq!(
            PeerSpec::parse("pod/storage/minio-0").unwrap().to_string(),
            "pod/storage/minio-0"
        );
        let e = PeerSpec::parse("10.1.2.3/8").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        for bad in ["", "cdn", "svc/cdn", "pod/a/b/c", "10.0.0.0/33"] {
            let e = PeerSpec::parse(bad).unwrap_err();
            assert!(e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn ports_parse_single_and_ranges() {
        assert_eq!(parse_ports("8080"), Ok((8080, 8080)));
        assert_eq!(parse_ports("5000-5010"), Ok((5000, 5010)));
        for bad in ["0", "65536", "x", "10-5", "-5", ""] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_port_without_protocol_blocks_tcp_and_udp_and_no_port_blocks_everything() {
        let peers = [PeerSpec::parse("10.0.0.1").unwrap()];
        let r = rules(&peers, None, Some((80, 80)), None).unwrap();
        let d: Vec<String> = r.iter().map(Rule::describe).collect();
        assert_eq!(d, ["10.0.0.1/32:80/TCP", "10.0.0.1/32:80/UDP"]);
        let r = rules(&peers, None, None, None).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].describe(), "10.0.0.1/32 (any protocol)");
        let abi = r[0].to_abi(Direction::Both);
        assert_eq!((abi.family, abi.prefix_len, abi.protocol), (2, 32, 0));
        assert_eq!(&abi.addr[..4], &[10, 0, 0, 1]);
        assert_eq!(abi.direction, 3);
        let r = rules(&peers, None, None, Some(Protocol::Udp)).unwrap();
        assert_eq!(r[0].describe(), "10.0.0.1/32 UDP (any port)");
    }

    #[test]
    fn cluster_peers_resolve_through_the_snapshot() {
        let yaml = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: minio-0, namespace: storage, uid: 11111111-1111-1111-1111-111111111111, labels: {app: minio}}
  spec: {containers: [{name: m, image: m, ports: [{containerPort: 9000, name: s3}]}]}
  status: {phase: Running, podIP: 10.244.1.20, podIPs: [{ip: 10.244.1.20}]}
- apiVersion: v1
  kind: Service
  metadata: {name: minio, namespace: storage}
  spec:
    clusterIP: 10.96.0.50
    selector: {app: minio}
    ports: [{name: s3, port: 80, targetPort: s3, protocol: TCP}]
"#;
        let snap = crate::cluster::parse_snapshot(std::path::Path::new("s.yaml"), yaml.as_bytes())
            .unwrap();
        let engine = Engine::build(&snap).unwrap();
        let svc = [PeerSpec::parse("svc/storage/minio").unwrap()];
        let d: Vec<String> = rules(&svc, Some(&engine), None, None)
            .unwrap()
            .iter()
            .map(Rule::describe)
            .collect();
        assert_eq!(d, ["10.96.0.50/32:80/TCP", "10.244.1.20/32:9000/TCP"]);
        let e = rules(&svc, Some(&engine), Some((443, 443)), None).unwrap_err();
        assert!(e.contains("no port matching"), "{e}");
        let pod = [PeerSpec::parse("pod/storage/minio-0").unwrap()];
        let r = rules(&pod, Some(&engine), None, None).unwrap();
        assert_eq!(r[0].describe(), "10.244.1.20/32 (any protocol)");
        let e = rules(
            &[PeerSpec::parse("pod/storage/nope").unwrap()],
            Some(&engine),
            None,
            None,
        )
        .unwrap_err();
        assert!(e.contains("no pod storage/nope"), "{e}");
    }

    #[test]
    fn judgement() {
        let base = Evidence {
            dropped_packets: 12,
            resumed_after_ms: Some(300),
            exited: vec![],
            recover_within_ms: 10_000,
            observe_ms: 10_000,
        };
        assert_eq!(judge(&base).0, Outcome::Graceful);
        let (o, why) = judge(&Evidence {
            dropped_packets: 0,
            ..base.clone()
        });
        assert_eq!(o, Outcome::Untested);
        assert!(why.contains("nothing was tested"));
        let (o, why) = judge(&Evidence {
            exited: vec!["pid 42 (ffmpeg)".into()],
            ..base.clone()
        });
        assert_eq!(o, Outcome::Failed);
        assert!(why.contains("pid 42 (ffmpeg) exited"), "{why}");
        let (o, why) = judge(&Evidence {
            resumed_after_ms: None,
            ..base.clone()
        });
        assert_eq!(o, Outcome::Failed);
        assert!(why.contains("did not come back"), "{why}");
        let (o, why) = judge(&Evidence {
            resumed_after_ms: Some(12_000),
            ..base
        });
        assert_eq!(o, Outcome::Failed);
        assert!(why.contains("over --recover-within"), "{why}");
        assert_eq!(Outcome::Untested.exit_code(), 3);
    }
}
