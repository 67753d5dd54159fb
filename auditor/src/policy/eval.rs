//! Evaluating one flow against the indexed cluster.

use std::net::IpAddr;

use super::*;

/// A rule in effect: policy, direction, and index in `spec.ingress` / `spec.egress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub direction: Direction,
    pub rule: usize,
}

/// Why a flow passes an isolated pod without any rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exception {
    /// A pod cannot block traffic to itself.
    SamePod,
    /// Traffic between a pod and the node it runs on is always allowed.
    OwnNode,
}

impl Exception {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SamePod => "same-pod",
            Self::OwnNode => "own-node",
        }
    }
}

/// The verdict of one side of a flow: the egress side of the source or the ingress side
/// of the destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Side {
    /// The pod this side is about; `None` when NetworkPolicy does not apply to this end
    /// (external address, node or hostNetwork pod).
    pub pod: Option<PodId>,
    pub isolated: bool,
    pub allowed: bool,
    /// Rules that allow the flow, in policy and rule order.
    pub allowed_by: Vec<RuleRef>,
    /// Policies that isolate the pod in this direction and have no rule allowing the flow.
    pub isolated_by: Vec<PolicyId>,
    pub exception: Option<Exception>,
}

impl Side {
    fn not_applicable() -> Self {
        Self {
            pod: None,
            isolated: false,
            allowed: true,
            allowed_by: Vec::new(),
            isolated_by: Vec::new(),
            exception: None,
        }
    }
}

/// The flow as evaluated towards one destination (the flow's, or one Service backend).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub src: Party,
    pub dst: Party,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub egress: Side,
    pub ingress: Side,
    pub allowed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowResult {
    /// Index into [`Engine::services`] when the destination was a Service ClusterIP:port.
    pub service: Option<usize>,
    /// One target, or one per Service backend (sorted by backend). A Service without
    /// backends yields one target: the ClusterIP itself, as an external address.
    pub targets: Vec<Target>,
    /// Every target allowed.
    pub allowed: bool,
}

impl FlowResult {
    /// The target that explains the verdict: the first denied one, else the first.
    pub fn deciding_target(&self) -> &Target {
        self.targets
            .iter()
            .find(|t| !t.allowed)
            .unwrap_or(&self.targets[0])
    }
}

impl Engine {
    /// Evaluates one flow. The source address is the initiator's.
    pub fn evaluate(
        &self,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        dst_port: u16,
        protocol: Protocol,
    ) -> FlowResult {
        self.evaluate_as(None, src_ip, None, dst_ip, dst_port, protocol)
    }

    /// [`Engine::evaluate`] with the pods a flow's identity names in place of its
    /// addresses' owners (see [`crate::identity`]): `src` for the source, `dst` for a
    /// destination that is no Service address (a Service's backends are its own). With a
    /// `src` pod, an unspecified source address (an unbound UDP socket) reads as the pod's
    /// address of the destination's family, for ipBlocks.
    pub fn evaluate_as(
        &self,
        src_pod: Option<PodId>,
        src_ip: IpAddr,
        dst_pod: Option<PodId>,
        dst_ip: IpAddr,
        dst_port: u16,
        protocol: Protocol,
    ) -> FlowResult {
        let mut src_ip = src_ip.to_canonical();
        let dst_ip = dst_ip.to_canonical();
        let src_pod = src_pod.filter(|&p| p < self.pods.len());
        let dst_pod = dst_pod.filter(|&p| p < self.pods.len());
        let src = match src_pod {
            Some(p) => {
                if src_ip.is_unspecified() {
                    if let Some(ip) = self.pods[p]
                        .ips
                        .iter()
                        .find(|ip| ip.is_ipv4() == dst_ip.is_ipv4())
                    {
                        src_ip = *ip;
                    }
                }
                Party::Pod(p)
            }
            None => self.classify(src_ip),
        };
        let (service, targets) = match self.service_by_addr.get(&(dst_ip, dst_port, protocol)) {
            Some(&sid) if !self.services[sid].backends.is_empty() => (
                Some(sid),
                self.services[sid]
                    .backends
                    .iter()
                    .map(|b| {
                        self.evaluate_target(
                            &src,
                            src_ip,
                            self.classify(b.ip),
                            b.ip,
                            b.port,
                            protocol,
                        )
                    })
                    .collect(),
            ),
            Some(&sid) => (
                Some(sid),
                vec![self.evaluate_target(
                    &src,
                    src_ip,
                    Party::External,
                    dst_ip,
                    dst_port,
                    protocol,
                )],
            ),
            None => (
                None,
                vec![self.evaluate_target(
                    &src,
                    src_ip,
                    dst_pod.map_or_else(|| self.classify(dst_ip), Party::Pod),
                    dst_ip,
                    dst_port,
                    protocol,
                )],
            ),
        };
        let allowed = targets.iter().all(|t| t.allowed);
        FlowResult {
            service,
            targets,
            allowed,
        }
    }

    fn evaluate_target(
        &self,
        src: &Party,
        src_ip: IpAddr,
        dst: Party,
        dst_ip: IpAddr,
        dst_port: u16,
        protocol: Protocol,
    ) -> Target {
        let dst_pod = match dst {
            Party::Pod(p) => Some(p),
            _ => None,
        };
        let egress = match src {
            Party::Pod(p) => self.side(
                *p,
                Direction::Egress,
                &dst,
                dst_ip,
                dst_pod,
                dst_port,
                protocol,
            ),
            _ => Side::not_applicable(),
        };
        let ingress = match dst_pod {
            Some(p) => self.side(
                p,
                Direction::Ingress,
                src,
                src_ip,
                Some(p),
                dst_port,
                protocol,
            ),
            None => Side::not_applicable(),
        };
        let allowed = egress.allowed && ingress.allowed;
        Target {
            src: src.clone(),
            dst,
            dst_ip,
            dst_port,
            egress,
            ingress,
            allowed,
        }
    }

    /// One side: `pod` is the pod whose isolation matters, `peer`/`peer_ip` the other end,
    /// `port_pod` the pod whose container ports name the destination port.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flow's worth of context, kept flat for speed"
    )]
    fn side(
        &self,
        pod: PodId,
        direction: Direction,
        peer: &Party,
        peer_ip: IpAddr,
        port_pod: Option<PodId>,
        dst_port: u16,
        protocol: Protocol,
    ) -> Side {
        let info = &self.pods[pod];
        let policies = match direction {
            Direction::Ingress => &info.ingress_policies,
            Direction::Egress => &info.egress_policies,
        };
        let mut side = Side {
            pod: Some(pod),
            ..Side::not_applicable()
        };
        if policies.is_empty() {
            return side;
        }
        side.isolated = true;
        for &pid in policies {
            let pol = &self.policies[pid];
            let before = side.allowed_by.len();
            for (i, rule) in pol.rules(direction).iter().enumerate() {
                if self.rule_matches(pol, rule, peer, peer_ip, port_pod, dst_port, protocol) {
                    side.allowed_by.push(RuleRef {
                        policy: pid,
                        direction,
                        rule: i,
                    });
                }
            }
            if side.allowed_by.len() == before {
                side.isolated_by.push(pid);
            }
        }
        side.exception = if *peer == Party::Pod(pod) {
            Some(Exception::SamePod)
        } else if info
            .node
            .as_ref()
            .and_then(|n| self.node_ips.get(n))
            .is_some_and(|ips| ips.contains(&peer_ip))
        {
            Some(Exception::OwnNode)
        } else {
            None
        };
        side.allowed = !side.allowed_by.is_empty() || side.exception.is_some();
        side
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one flow's worth of context, kept flat for speed"
    )]
    fn rule_matches(
        &self,
        pol: &PolicyInfo,
        rule: &Rule,
        peer: &Party,
        peer_ip: IpAddr,
        port_pod: Option<PodId>,
        dst_port: u16,
        protocol: Protocol,
    ) -> bool {
        let port_ok = match &rule.ports {
            None => true,
            Some(ports) => ports.iter().any(|m| match m {
                PortMatch::AnyPort(p) => *p == protocol,
                PortMatch::Range {
                    protocol: p,
                    first,
                    last,
                } => *p == protocol && (*first..=*last).contains(&dst_port),
                PortMatch::Named { protocol: p, name } => {
                    *p == protocol
                        && port_pod.is_some_and(|pp| {
                            self.pods[pp].ports.iter().any(|c| {
                                c.port == dst_port
                                    && c.protocol == protocol
                                    && c.name.as_deref() == Some(name.as_str())
                            })
                        })
                }
            }),
        };
        if !port_ok {
            return false;
        }
        match &rule.peers {
            None => true,
            Some(peers) => {
                rule.blocks.contains(peer_ip)
                    || peers.iter().any(|p| match p {
                        Peer::Block(_) => false,
                        Peer::Pods { namespaces, pods } => {
                            let Party::Pod(pp) = peer else { return false };
                            let other = &self.pods[*pp];
                            let ns_ok = match namespaces {
                                NamespaceMatch::Own => other.ns == pol.ns,
                                NamespaceMatch::Selected(s) => {
                                    s.matches(&self.namespaces[other.ns].labels)
                                }
                            };
                            ns_ok && pods.matches(&other.labels)
                        }
                    })
            }
        }
    }
}
