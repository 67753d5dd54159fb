//! The policy engine: flow + cluster -> verdict, and the policy and rule that decided.
//!
//! Pure: [`Engine::build`] indexes a [`Snapshot`](crate::cluster::Snapshot) once (labels,
//! selectors, CIDRs, which policies select which pod, Service ports and their backends),
//! then [`Engine::evaluate`] answers for one flow `(src_ip, dst_ip, dst_port, protocol)`.
//! The live view keeps a built engine current one object at a time
//! ([`Engine::apply_pod`], [`Engine::remove_pod`], ... in `update.rs`), with the same
//! answers as a rebuild.
//!
//! Semantics are those of `networking.k8s.io/v1` NetworkPolicy:
//! - A pod is isolated for ingress (egress) when a policy of its own namespace selects it
//!   and that policy's effective `policyTypes` holds `Ingress` (`Egress`). Without
//!   `policyTypes`, `Ingress` is always in effect and `Egress` only when `spec.egress` has
//!   at least one rule (the API server's defaulting).
//! - An isolated pod accepts (sends) what at least one rule of at least one policy
//!   selecting it allows: policies are additive, there are no deny rules.
//! - A rule's peers are OR-ed; absent or empty `from`/`to` means every peer; absent or
//!   empty `ports` means every port. A peer with `namespaceSelector` and `podSelector`
//!   is their AND; `podSelector` alone means pods of the policy's namespace;
//!   `namespaceSelector: {}` means every namespace. Namespaces always carry
//!   `kubernetes.io/metadata.name` (the API server sets it; we add it if the snapshot
//!   lacks it).
//! - Ports: protocol defaults to TCP; `endPort` makes a range; a named port matches when
//!   the destination pod has a container port of that name and protocol equal to the
//!   flow's destination port (for egress to a non-pod, a named port matches nothing).
//! - `ipBlock` (with `except`) matches the peer's address as the flow carries it after
//!   Service resolution, pod addresses included (implementation-defined in Kubernetes;
//!   the common plugins do this). CIDRs with host bits set mean their network.
//! - Traffic between a pod and itself, and between a pod and the node it runs on, is
//!   always allowed (Kubernetes documents both exceptions); the verdict says so.
//! - hostNetwork pods are out of scope: their address is their node's, and flows from
//!   or to it are reported as node traffic, to which policies do not apply on the node
//!   side.
//! - Pods in phase Succeeded or Failed own no address (a running pod may have it now) and
//!   are no selector backends; their UID still names them (cgroup -> pod).
//! - A flow to a Service ClusterIP:port (or one of its `spec.externalIPs`, or a
//!   `status.loadBalancer.ingress[].ip` without `ipMode: Proxy`: kube-proxy short-circuits
//!   those in the cluster) is resolved through the EndpointSlices (or, if
//!   the Service has none, its selector) to backend pods and target ports first; each
//!   backend is evaluated and the flow is allowed only when every backend is reachable,
//!   since the proxy may pick any of them.

mod eval;
mod index;
pub mod ipblock;
pub mod selector;
mod update;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::flowlog::{Direction, Protocol};
pub use eval::{Exception, FlowResult, RuleRef, Side, Target};
use ipblock::IpBlock;
use selector::Selector;

/// Index of a pod in [`Engine::pods`].
pub type PodId = usize;
/// Index of a policy in [`Engine::policies`].
pub type PolicyId = usize;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// An object the API server would have rejected, or one the engine cannot read.
    #[error("{kind} {object}: field {field}: {message}")]
    Invalid {
        kind: &'static str,
        /// `namespace/name`, or `name` for cluster-scoped objects.
        object: String,
        field: String,
        message: String,
    },
}

/// What an address is, as far as the snapshot tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// A pod with its own network namespace.
    Pod(PodId),
    /// A node address (also the address of its hostNetwork pods); the node's name when known.
    Node(Option<String>),
    /// Anything else: outside the cluster, or a cluster address the snapshot does not know.
    External,
}

/// A pod as the engine sees it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub node: Option<String>,
    /// Container ports (init containers included), for named ports and Service target ports.
    pub ports: Vec<ContainerPort>,
    /// `namespace/Kind/name` of the owning workload (Deployment, StatefulSet, DaemonSet,
    /// Job, ...), or `namespace/Pod/name` for a bare pod.
    pub workload: String,
    /// Policies selecting this pod that isolate it for ingress / egress, in policy order.
    pub ingress_policies: Vec<PolicyId>,
    pub egress_policies: Vec<PolicyId>,
    ns: usize,
    /// metadata.uid, for cgroup -> pod.
    uid: Option<Arc<str>>,
    /// Not Succeeded/Failed. A finished pod owns no address (its `ips` are empty).
    live: bool,
    /// The node addresses this pod tells of (hostIPs, and its own IPs when hostNetwork), deduplicated.
    host_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A compiled NetworkPolicy.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    pub namespace: String,
    pub name: String,
    /// Ingress rules when the policy isolates for ingress (`Some(vec![])`: isolates, allows nothing).
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
    selector: Selector,
    ns: usize,
}

impl PolicyInfo {
    /// Number of rules in effect for a direction, `None` when the policy does not isolate in it.
    pub fn rule_count(&self, direction: Direction) -> Option<usize> {
        match direction {
            Direction::Ingress => self.ingress.as_ref().map(Vec::len),
            Direction::Egress => self.egress.as_ref().map(Vec::len),
        }
    }

    fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => self.ingress.as_deref().unwrap_or_default(),
            Direction::Egress => self.egress.as_deref().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    /// `None`: every peer (absent or empty `from`/`to`).
    peers: Option<Vec<Peer>>,
    /// The `Peer::Block`s of `peers`, indexed; matching reads this, not the blocks.
    blocks: ipblock::BlockIndex,
    /// `None`: every port (absent or empty `ports`).
    ports: Option<Vec<PortMatch>>,
}

#[derive(Debug, Clone)]
enum Peer {
    Pods {
        namespaces: NamespaceMatch,
        pods: Selector,
    },
    Block(IpBlock),
}

#[derive(Debug, Clone)]
enum NamespaceMatch {
    /// No namespaceSelector: the policy's own namespace.
    Own,
    Selected(Selector),
}

#[derive(Debug, Clone)]
enum PortMatch {
    AnyPort(Protocol),
    Range {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
    Named {
        protocol: Protocol,
        name: String,
    },
}

/// One port of a Service ClusterIP and where it leads.
#[derive(Debug, Clone)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    pub port_name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// Resolved backends, sorted and deduplicated.
    pub backends: Vec<Backend>,
    /// The Service's ClusterIPs, then its external IPs and LoadBalancer ingress IPs
    /// (deduplicated), and this port's position in `spec.ports`:
    /// of two Service ports on one address, the later (namespace, name, position) wins.
    vips: Vec<IpAddr>,
    order: usize,
}

impl PodInfo {
    /// metadata.uid, as cgroup paths carry it.
    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// Not Succeeded or Failed.
    pub fn is_live(&self) -> bool {
        self.live
    }
}

impl ServicePort {
    /// The Service's ClusterIPs, external IPs and LoadBalancer ingress IPs.
    pub fn vips(&self) -> &[IpAddr] {
        &self.vips
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone)]
struct NamespaceInfo {
    labels: BTreeMap<String, String>,
}

/// The indexed cluster.
///
/// Cloning is shallow where it matters (pods and policies are shared behind `Arc`s), so a
/// copy-on-write view that is then updated with [`Engine::apply_pod`] and friends costs
/// little more than the change itself.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pods: Vec<Arc<PodInfo>>,
    policies: Arc<Vec<PolicyInfo>>,
    namespaces: Vec<NamespaceInfo>,
    pod_by_ip: HashMap<IpAddr, PodId>,
    node_by_ip: HashMap<IpAddr, Option<String>>,
    node_ips: HashMap<String, Vec<IpAddr>>,
    services: Vec<ServicePort>,
    service_by_addr: HashMap<(IpAddr, u16, Protocol), usize>,
    /// Notes about the snapshot worth telling the user (ambiguous IPs, services without
    /// endpoints), as of [`Engine::build`]: incremental updates do not revise them.
    pub notes: Vec<String>,
    /// What incremental updates need to stay exact (see `update.rs`).
    track: update::Tracking,
}

impl Engine {
    /// The pods. Ids are in (namespace, name) order after [`Engine::build`]; incremental
    /// updates append new pods and move the last pod into a removed pod's place.
    pub fn pods(&self) -> &[Arc<PodInfo>] {
        &self.pods
    }

    pub fn policies(&self) -> &[PolicyInfo] {
        &self.policies
    }

    pub fn services(&self) -> &[ServicePort] {
        &self.services
    }

    /// The names of the namespaces the snapshot had (objects or their namespaces).
    pub fn namespace_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.namespaces
            .iter()
            .filter_map(|n| n.labels.get(index::NS_NAME_LABEL).map(String::as_str))
    }

    /// What an address is. IPv4-mapped IPv6 addresses are read as IPv4.
    pub fn classify(&self, ip: IpAddr) -> Party {
        let ip = ip.to_canonical();
        if let Some(&p) = self.pod_by_ip.get(&ip) {
            Party::Pod(p)
        } else if let Some(n) = self.node_by_ip.get(&ip) {
            Party::Node(n.clone())
        } else {
            Party::External
        }
    }

    /// The Service port a ClusterIP:port/protocol belongs to.
    pub fn service_at(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.service_by_addr
            .get(&(ip.to_canonical(), port, protocol))
            .map(|&i| &self.services[i])
    }

    /// Every rule in effect, in policy order: the candidates for "unused".
    pub fn all_rules(&self) -> impl Iterator<Item = RuleRef> + '_ {
        self.policies.iter().enumerate().flat_map(|(policy, p)| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .flat_map(move |direction| {
                    (0..p.rules(direction).len()).map(move |rule| RuleRef {
                        policy,
                        direction,
                        rule,
                    })
                })
        })
    }

    /// `namespace/name` of a policy.
    pub fn policy_name(&self, id: PolicyId) -> String {
        let p = &self.policies[id];
        format!("{}/{}", p.namespace, p.name)
    }

    /// `namespace/name` of a pod.
    pub fn pod_name(&self, id: PodId) -> String {
        let p = &self.pods[id];
        format!("{}/{}", p.namespace, p.name)
    }
}
