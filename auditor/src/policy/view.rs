//! A resolved, read-only view of the rules in effect: peers as pod ids and CIDRs,
//! ports as ranges or names. For code that must turn policies into something else
//! (nftables rules for the simulated node, suggestions that extend installed rules).

use ipnet::IpNet;

use super::{Engine, NamespaceMatch, Peer, PodId, PolicyId, PortMatch};
use crate::flowlog::{Direction, Protocol};

/// One rule of a policy, with its peers resolved against the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRule {
    /// `None`: every peer (absent or empty `from`/`to`).
    pub peers: Option<Vec<ResolvedPeer>>,
    /// `None`: every port of every protocol.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedPeer {
    /// The pods a namespaceSelector/podSelector peer selects (hostNetwork pods excluded).
    Pods(Vec<PodId>),
    /// An ipBlock.
    Block { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of one protocol.
    Any(Protocol),
    Range {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
    /// A named port: resolved on the destination pod's container ports.
    Named { protocol: Protocol, name: String },
}

impl Engine {
    /// The rules of `policy` for `direction`, `None` when the policy does not isolate in it.
    pub fn resolved_rules(
        &self,
        policy: PolicyId,
        direction: Direction,
    ) -> Option<Vec<ResolvedRule>> {
        let pol = &self.policies[policy];
        pol.rule_count(direction)?;
        Some(
            pol.rules(direction)
                .iter()
                .map(|r| ResolvedRule {
                    peers: r.peers.as_ref().map(|peers| {
                        peers
                            .iter()
                            .map(|p| match p {
                                Peer::Block(b) => ResolvedPeer::Block {
                                    cidr: b.cidr,
                                    except: b.except.clone(),
                                },
                                Peer::Pods { namespaces, pods } => ResolvedPeer::Pods(
                                    self.pods
                                        .iter()
                                        .enumerate()
                                        .filter(|(_, other)| !other.host_network)
                                        .filter(|(_, other)| match namespaces {
                                            NamespaceMatch::Own => other.ns == pol.ns,
                                            NamespaceMatch::Selected(s) => {
                                                s.matches(&self.namespaces[other.ns].labels)
                                            }
                                        })
                                        .filter(|(_, other)| pods.matches(&other.labels))
                                        .map(|(i, _)| i)
                                        .collect(),
                                ),
                            })
                            .collect()
                    }),
                    ports: r.ports.as_ref().map(|ports| {
                        ports
                            .iter()
                            .map(|m| match m {
                                PortMatch::AnyPort(p) => PortSpec::Any(*p),
                                PortMatch::Range {
                                    protocol,
                                    first,
                                    last,
                                } => PortSpec::Range {
                                    protocol: *protocol,
                                    first: *first,
                                    last: *last,
                                },
                                PortMatch::Named { protocol, name } => PortSpec::Named {
                                    protocol: *protocol,
                                    name: name.clone(),
                                },
                            })
                            .collect()
                    }),
                })
                .collect(),
        )
    }

    /// The node addresses the snapshot knows (from pods' hostIP and hostNetwork pods).
    pub fn node_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut v: Vec<std::net::IpAddr> = self.node_by_ip.keys().copied().collect();
        v.sort();
        v
    }
}
