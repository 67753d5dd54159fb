//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`,
//! sigs.k8s.io/network-policy-api): the objects as a snapshot carries them, compiled for
//! the engine, and how one side of a flow is judged by them.
//!
//! Order of evaluation for one side (the egress side of the source pod, or the ingress
//! side of the destination pod), as the API defines it:
//! 1. AdminNetworkPolicies whose subject selects the pod, by `spec.priority` (lower number
//!    first; equal priorities are undefined in the API and taken in name order here, with
//!    a note). Within one, rules in order; the first rule whose peers and ports match
//!    decides: `Allow` and `Deny` are final, `Pass` skips every remaining
//!    AdminNetworkPolicy rule.
//! 2. NetworkPolicies, as before: if any isolates the pod in this direction, they decide.
//! 3. Otherwise the BaselineAdminNetworkPolicy (the singleton `default`): first matching
//!    rule, `Allow` or `Deny`.
//! 4. Otherwise allowed.
//!
//! Subjects and in-cluster peers never select hostNetwork pods. Peers: `namespaces`
//! (every pod of the selected namespaces), `pods` (namespaceSelector AND podSelector),
//! egress only `nodes` (the addresses of nodes whose labels match) and `networks` (CIDRs,
//! matched against the address the flow carries, pod addresses included). A peer with no
//! field we know (a newer CRD) fails closed as the API asks: it matches nothing in an
//! `Allow` rule and everything in a `Deny` or `Pass` rule. `domainNames` cannot be matched
//! offline (a flow carries addresses): such a peer matches nothing, and a note says so.
//! Ports: `portNumber` and `portRange` (protocol TCP by default), `namedPort` (a container
//! port of that name on the destination pod, any protocol: the subject for ingress, the
//! peer pod for egress). No `ports`: every port.
//!
//! The exceptions of NetworkPolicy (a pod's traffic to itself, a pod and its own node)
//! hold here too: the verdict says so.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use super::ipblock::{parse_cidr, BlockIndex, IpBlock};
use super::selector::Selector;
use super::*;

/// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: AdminNetworkPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    pub priority: i32,
    pub subject: AdminSubject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<AdminIngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<AdminEgressRule>,
}

/// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (cluster-scoped, named
/// `default`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: BaselineAdminNetworkPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicySpec {
    pub subject: AdminSubject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<AdminIngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<AdminEgressRule>,
}

/// Exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    pub namespace_selector: LabelSelector,
    pub pod_selector: LabelSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    pub from: Vec<AdminIngressPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminPort>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    pub to: Vec<AdminEgressPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AdminPort>>,
}

/// Exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminIngressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminEgressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// Exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<AdminPortNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<AdminPortRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminPortNumber {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminPortRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub start: i32,
    pub end: i32,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminAction {
    Allow,
    Deny,
    /// AdminNetworkPolicy only: on to NetworkPolicy (then the baseline).
    Pass,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "Allow",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }
}

/// Index of a policy in [`Engine::admin_policies`].
pub type AdminPolicyId = usize;

/// A rule of an AdminNetworkPolicy or of the BaselineAdminNetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdminRuleRef {
    pub policy: AdminPolicyId,
    pub direction: Direction,
    /// Index in `spec.ingress` / `spec.egress`.
    pub rule: usize,
    pub action: AdminAction,
}

/// A compiled AdminNetworkPolicy (`priority` set) or BaselineAdminNetworkPolicy.
#[derive(Debug, Clone)]
pub struct AdminPolicyInfo {
    pub name: String,
    /// `None` for the BaselineAdminNetworkPolicy.
    pub priority: Option<i32>,
    subject: Subject,
    ingress: Vec<AdminRule>,
    egress: Vec<AdminRule>,
}

#[derive(Debug, Clone)]
enum Subject {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Debug, Clone)]
struct AdminRule {
    /// `spec.ingress[i].name`, may be empty.
    name: String,
    action: AdminAction,
    peers: Vec<AdminPeer>,
    /// The `networks` of every peer, indexed.
    networks: BlockIndex,
    /// `None`: every port.
    ports: Option<Vec<AdminPortMatch>>,
}

#[derive(Debug, Clone)]
enum AdminPeer {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    Nodes(Selector),
    /// Matched through [`AdminRule::networks`].
    Networks,
    /// Not matched offline.
    DomainNames,
    /// No field we know: fails closed.
    Unknown,
}

#[derive(Debug, Clone)]
enum AdminPortMatch {
    Range {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
    Named(String),
}

impl AdminPolicyInfo {
    /// `AdminNetworkPolicy NAME` or `BaselineAdminNetworkPolicy NAME`.
    pub fn kind(&self) -> &'static str {
        if self.priority.is_some() {
            "AdminNetworkPolicy"
        } else {
            "BaselineAdminNetworkPolicy"
        }
    }

    pub fn is_baseline(&self) -> bool {
        self.priority.is_none()
    }

    fn rules(&self, direction: Direction) -> &[AdminRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Number of rules in a direction.
    pub fn rule_count(&self, direction: Direction) -> usize {
        self.rules(direction).len()
    }

    /// The name of a rule (`spec.egress[i].name`), empty when it has none.
    pub fn rule_name(&self, direction: Direction, rule: usize) -> &str {
        self.rules(direction)
            .get(rule)
            .map(|r| r.name.as_str())
            .unwrap_or_default()
    }
}

fn admin_err(kind: &'static str, meta: &ObjectMeta, field: String, message: String) -> PolicyError {
    index::invalid(kind, meta, field, message)
}

fn selector(
    kind: &'static str,
    sel: &LabelSelector,
    meta: &ObjectMeta,
    field: &str,
) -> Result<Selector, PolicyError> {
    Selector::compile(sel)
        .map_err(|e| admin_err(kind, meta, format!("{field}.{}", e.field), e.message))
}

fn action(
    kind: &'static str,
    baseline: bool,
    s: &str,
    meta: &ObjectMeta,
    field: &str,
) -> Result<AdminAction, PolicyError> {
    match s {
        "Allow" => Ok(AdminAction::Allow),
        "Deny" => Ok(AdminAction::Deny),
        "Pass" if !baseline => Ok(AdminAction::Pass),
        other => Err(admin_err(
            kind,
            meta,
            format!("{field}.action"),
            if baseline {
                format!("unknown action {other:?} (expected Allow or Deny)")
            } else {
                format!("unknown action {other:?} (expected Allow, Deny or Pass)")
            },
        )),
    }
}

fn subject(
    kind: &'static str,
    s: &AdminSubject,
    meta: &ObjectMeta,
) -> Result<Subject, PolicyError> {
    match (&s.namespaces, &s.pods) {
        (Some(n), None) => Ok(Subject::Namespaces(selector(
            kind,
            n,
            meta,
            "spec.subject.namespaces",
        )?)),
        (None, Some(p)) => Ok(Subject::Pods {
            namespaces: selector(
                kind,
                &p.namespace_selector,
                meta,
                "spec.subject.pods.namespaceSelector",
            )?,
            pods: selector(kind, &p.pod_selector, meta, "spec.subject.pods.podSelector")?,
        }),
        _ => Err(admin_err(
            kind,
            meta,
            "spec.subject".into(),
            "exactly one of namespaces or pods must be set".into(),
        )),
    }
}

fn protocol(
    kind: &'static str,
    p: Option<&str>,
    meta: &ObjectMeta,
    field: &str,
) -> Result<Protocol, PolicyError> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(admin_err(
            kind,
            meta,
            format!("{field}.protocol"),
            format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

fn port_number(
    kind: &'static str,
    n: i32,
    meta: &ObjectMeta,
    field: &str,
) -> Result<u16, PolicyError> {
    u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| {
        admin_err(
            kind,
            meta,
            field.to_owned(),
            format!("{n} is not a port (1-65535)"),
        )
    })
}

fn ports(
    kind: &'static str,
    ports: Option<&Vec<AdminPort>>,
    meta: &ObjectMeta,
    field: &str,
) -> Result<Option<Vec<AdminPortMatch>>, PolicyError> {
    let Some(list) = ports else { return Ok(None) };
    if list.is_empty() {
        return Err(admin_err(
            kind,
            meta,
            format!("{field}.ports"),
            "an empty ports list matches nothing the API accepts (at least one item, or leave ports out for every port)".into(),
        ));
    }
    let mut out = Vec::new();
    for (j, p) in list.iter().enumerate() {
        let at = format!("{field}.ports[{j}]");
        match (&p.port_number, &p.named_port, &p.port_range) {
            (Some(n), None, None) => {
                let protocol = protocol(
                    kind,
                    n.protocol.as_deref(),
                    meta,
                    &format!("{at}.portNumber"),
                )?;
                let port = port_number(kind, n.port, meta, &format!("{at}.portNumber.port"))?;
                out.push(AdminPortMatch::Range {
                    protocol,
                    first: port,
                    last: port,
                });
            }
            (None, Some(name), None) => {
                if let Err(m) = selector::check_port_name(name) {
                    return Err(admin_err(kind, meta, format!("{at}.namedPort"), m));
                }
                out.push(AdminPortMatch::Named(name.clone()));
            }
            (None, None, Some(r)) => {
                let protocol = protocol(
                    kind,
                    r.protocol.as_deref(),
                    meta,
                    &format!("{at}.portRange"),
                )?;
                let first = port_number(kind, r.start, meta, &format!("{at}.portRange.start"))?;
                let last = port_number(kind, r.end, meta, &format!("{at}.portRange.end"))?;
                if last < first {
                    return Err(admin_err(
                        kind,
                        meta,
                        format!("{at}.portRange.end"),
                        format!("end {last} is below start {first}"),
                    ));
                }
                out.push(AdminPortMatch::Range {
                    protocol,
                    first,
                    last,
                });
            }
            _ => {
                return Err(admin_err(
                    kind,
                    meta,
                    at,
                    "exactly one of portNumber, namedPort or portRange must be set".into(),
                ))
            }
        }
    }
    Ok(Some(out))
}

fn pods_peer(
    kind: &'static str,
    p: &NamespacedPod,
    meta: &ObjectMeta,
    at: &str,
) -> Result<AdminPeer, PolicyError> {
    Ok(AdminPeer::Pods {
        namespaces: selector(
            kind,
            &p.namespace_selector,
            meta,
            &format!("{at}.pods.namespaceSelector"),
        )?,
        pods: selector(
            kind,
            &p.pod_selector,
            meta,
            &format!("{at}.pods.podSelector"),
        )?,
    })
}

/// One rule, its peers already read as (peer, networks of that peer).
fn rule(
    kind: &'static str,
    name: &Option<String>,
    action: AdminAction,
    peers: Vec<(AdminPeer, Vec<IpBlock>)>,
    port_list: Option<Vec<AdminPortMatch>>,
    meta: &ObjectMeta,
    peers_field: String,
) -> Result<AdminRule, PolicyError> {
    if peers.is_empty() {
        return Err(admin_err(
            kind,
            meta,
            peers_field,
            "a rule needs at least one peer".into(),
        ));
    }
    let blocks: Vec<IpBlock> = peers.iter().flat_map(|(_, b)| b.iter().cloned()).collect();
    Ok(AdminRule {
        name: name.clone().unwrap_or_default(),
        action,
        networks: BlockIndex::new(blocks.iter()),
        peers: peers.into_iter().map(|(p, _)| p).collect(),
        ports: port_list,
    })
}

struct Spec<'a> {
    kind: &'static str,
    baseline: bool,
    meta: &'a ObjectMeta,
    subject: &'a AdminSubject,
    ingress: &'a [AdminIngressRule],
    egress: &'a [AdminEgressRule],
}

fn compile(s: Spec, priority: Option<i32>) -> Result<(AdminPolicyInfo, bool), PolicyError> {
    let (kind, meta) = (s.kind, s.meta);
    let subject = subject(kind, s.subject, meta)?;
    let mut domain_names = false;
    let mut ingress = Vec::new();
    for (i, r) in s.ingress.iter().enumerate() {
        let field = format!("spec.ingress[{i}]");
        let act = action(kind, s.baseline, &r.action, meta, &field)?;
        let mut peers = Vec::new();
        for (j, p) in r.from.iter().enumerate() {
            let at = format!("{field}.from[{j}]");
            let peer = match (&p.namespaces, &p.pods) {
                (Some(n), None) => {
                    AdminPeer::Namespaces(selector(kind, n, meta, &format!("{at}.namespaces"))?)
                }
                (None, Some(p)) => pods_peer(kind, p, meta, &at)?,
                (None, None) => AdminPeer::Unknown,
                _ => {
                    return Err(admin_err(
                        kind,
                        meta,
                        at,
                        "exactly one of namespaces or pods must be set in a peer".into(),
                    ))
                }
            };
            peers.push((peer, Vec::new()));
        }
        let port_list = ports(kind, r.ports.as_ref(), meta, &field)?;
        ingress.push(rule(
            kind,
            &r.name,
            act,
            peers,
            port_list,
            meta,
            format!("{field}.from"),
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in s.egress.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        let act = action(kind, s.baseline, &r.action, meta, &field)?;
        let mut peers = Vec::new();
        for (j, p) in r.to.iter().enumerate() {
            let at = format!("{field}.to[{j}]");
            let set = [
                p.namespaces.is_some(),
                p.pods.is_some(),
                p.nodes.is_some(),
                p.networks.is_some(),
                p.domain_names.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if set > 1 {
                return Err(admin_err(
                    kind,
                    meta,
                    at,
                    "exactly one of namespaces, pods, nodes, networks or domainNames must be set in a peer".into(),
                ));
            }
            let mut blocks = Vec::new();
            let peer = if let Some(n) = &p.namespaces {
                AdminPeer::Namespaces(selector(kind, n, meta, &format!("{at}.namespaces"))?)
            } else if let Some(pp) = &p.pods {
                pods_peer(kind, pp, meta, &at)?
            } else if let Some(n) = &p.nodes {
                AdminPeer::Nodes(selector(kind, n, meta, &format!("{at}.nodes"))?)
            } else if let Some(nets) = &p.networks {
                if nets.is_empty() {
                    return Err(admin_err(
                        kind,
                        meta,
                        format!("{at}.networks"),
                        "at least one CIDR is needed".into(),
                    ));
                }
                for (k, c) in nets.iter().enumerate() {
                    let cidr = parse_cidr(c)
                        .map_err(|m| admin_err(kind, meta, format!("{at}.networks[{k}]"), m))?;
                    blocks.push(IpBlock {
                        cidr,
                        except: Vec::new(),
                    });
                }
                AdminPeer::Networks
            } else if p.domain_names.is_some() {
                if s.baseline || act != AdminAction::Allow {
                    return Err(admin_err(
                        kind,
                        meta,
                        format!("{at}.domainNames"),
                        "domainNames is only allowed in Allow rules of an AdminNetworkPolicy"
                            .into(),
                    ));
                }
                domain_names = true;
                AdminPeer::DomainNames
            } else {
                AdminPeer::Unknown
            };
            peers.push((peer, blocks));
        }
        let port_list = ports(kind, r.ports.as_ref(), meta, &field)?;
        if port_list
            .iter()
            .flatten()
            .any(|p| matches!(p, AdminPortMatch::Named(_)))
            && peers.iter().any(|(p, _)| {
                matches!(
                    p,
                    AdminPeer::Nodes(_) | AdminPeer::Networks | AdminPeer::DomainNames
                )
            })
        {
            return Err(admin_err(
                kind,
                meta,
                format!("{field}.ports"),
                "namedPort cannot be used with nodes, networks or domainNames peers (they have no named ports)".into(),
            ));
        }
        egress.push(rule(
            kind,
            &r.name,
            act,
            peers,
            port_list,
            meta,
            format!("{field}.to"),
        )?);
    }
    Ok((
        AdminPolicyInfo {
            name: meta.name.clone().unwrap_or_default(),
            priority,
            subject,
            ingress,
            egress,
        },
        domain_names,
    ))
}

/// Compiles an AdminNetworkPolicy; the flag says it has `domainNames` peers.
pub(super) fn compile_anp(
    anp: &AdminNetworkPolicy,
) -> Result<(AdminPolicyInfo, bool), PolicyError> {
    const KIND: &str = "AdminNetworkPolicy";
    let meta = &anp.metadata;
    let p = anp.spec.priority;
    if !(0..=1000).contains(&p) {
        return Err(admin_err(
            KIND,
            meta,
            "spec.priority".into(),
            format!("{p} is outside 0-1000"),
        ));
    }
    compile(
        Spec {
            kind: KIND,
            baseline: false,
            meta,
            subject: &anp.spec.subject,
            ingress: &anp.spec.ingress,
            egress: &anp.spec.egress,
        },
        Some(p),
    )
}

/// Compiles the BaselineAdminNetworkPolicy (it must be named `default`).
pub(super) fn compile_banp(
    banp: &BaselineAdminNetworkPolicy,
) -> Result<AdminPolicyInfo, PolicyError> {
    const KIND: &str = "BaselineAdminNetworkPolicy";
    let meta = &banp.metadata;
    if meta.name.as_deref() != Some("default") {
        return Err(admin_err(
            KIND,
            meta,
            "metadata.name".into(),
            "the BaselineAdminNetworkPolicy is a singleton: its name must be \"default\"".into(),
        ));
    }
    compile(
        Spec {
            kind: KIND,
            baseline: true,
            meta,
            subject: &banp.spec.subject,
            ingress: &banp.spec.ingress,
            egress: &banp.spec.egress,
        },
        None,
    )
    .map(|(p, _)| p)
}

/// The compiled admin layer of an engine: ANPs in evaluation order, then the baseline.
pub(super) fn order(policies: &mut [AdminPolicyInfo]) {
    policies.sort_by(|a, b| {
        (a.priority.is_none(), a.priority, &a.name).cmp(&(
            b.priority.is_none(),
            b.priority,
            &b.name,
        ))
    });
}

/// Notes about the admin layer: shared priorities, domainNames.
pub(super) fn notes(policies: &[AdminPolicyInfo], with_domains: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_priority: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
    for p in policies {
        if let Some(pr) = p.priority {
            by_priority.entry(pr).or_default().push(&p.name);
        }
    }
    for (pr, names) in by_priority {
        if names.len() > 1 {
            out.push(format!(
                "AdminNetworkPolicies {} share priority {pr}: the API leaves their order undefined; they are evaluated in name order here",
                names.join(", ")
            ));
        }
    }
    for n in with_domains {
        out.push(format!(
            "AdminNetworkPolicy {n} has domainNames peers: flows carry addresses, so those peers match nothing here (the cluster may allow what this verdict denies)"
        ));
    }
    out
}

impl Engine {
    /// The AdminNetworkPolicies in evaluation order (priority, then name), then the
    /// BaselineAdminNetworkPolicy when there is one.
    pub fn admin_policies(&self) -> &[AdminPolicyInfo] {
        &self.admin
    }

    /// `AdminNetworkPolicy NAME rule RULE (priority P)`, as verdicts name it; the rule by
    /// its name, or `egress[i]` when it has none.
    pub fn admin_rule_text(&self, r: &AdminRuleRef) -> String {
        let p = &self.admin[r.policy];
        let name = p.rule_name(r.direction, r.rule);
        let rule = if name.is_empty() {
            format!(
                "{}[{}]",
                match r.direction {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                },
                r.rule
            )
        } else {
            name.to_owned()
        };
        match p.priority {
            Some(pr) => format!("{} {} rule {rule} (priority {pr})", p.kind(), p.name),
            None => format!("{} {} rule {rule}", p.kind(), p.name),
        }
    }

    fn admin_selects(&self, a: &AdminPolicyInfo, pod: &PodInfo) -> bool {
        if pod.host_network {
            return false;
        }
        let ns = &self.namespaces[pod.ns].labels;
        match &a.subject {
            Subject::Namespaces(s) => s.matches(ns),
            Subject::Pods { namespaces, pods } => {
                namespaces.matches(ns) && pods.matches(&pod.labels)
            }
        }
    }

    /// The first rule of `a` in `direction` that matches, if any.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flow's worth of context, kept flat for speed"
    )]
    fn admin_match(
        &self,
        id: AdminPolicyId,
        direction: Direction,
        peer: &Party,
        peer_ip: IpAddr,
        port_pod: Option<PodId>,
        dst_port: u16,
        protocol: Protocol,
    ) -> Option<AdminRuleRef> {
        let a = &self.admin[id];
        a.rules(direction).iter().enumerate().find_map(|(i, r)| {
            let port_ok = match &r.ports {
                None => true,
                Some(list) => list.iter().any(|m| match m {
                    AdminPortMatch::Range {
                        protocol: p,
                        first,
                        last,
                    } => *p == protocol && (*first..=*last).contains(&dst_port),
                    AdminPortMatch::Named(name) => port_pod.is_some_and(|pp| {
                        self.pods[pp].ports.iter().any(|c| {
                            c.port == dst_port
                                && c.protocol == protocol
                                && c.name.as_deref() == Some(name.as_str())
                        })
                    }),
                }),
            };
            if !port_ok {
                return None;
            }
            let peer_ok = r.networks.contains(peer_ip)
                || r.peers.iter().any(|p| match p {
                    AdminPeer::Namespaces(s) => match peer {
                        Party::Pod(pp) => s.matches(&self.namespaces[self.pods[*pp].ns].labels),
                        _ => false,
                    },
                    AdminPeer::Pods { namespaces, pods } => match peer {
                        Party::Pod(pp) => {
                            let other = &self.pods[*pp];
                            namespaces.matches(&self.namespaces[other.ns].labels)
                                && pods.matches(&other.labels)
                        }
                        _ => false,
                    },
                    AdminPeer::Nodes(s) => match peer {
                        Party::Node(name) => s.matches(
                            name.as_ref()
                                .and_then(|n| self.node_labels.get(n))
                                .unwrap_or(&EMPTY_LABELS),
                        ),
                        _ => false,
                    },
                    AdminPeer::Networks | AdminPeer::DomainNames => false,
                    AdminPeer::Unknown => r.action != AdminAction::Allow,
                });
            peer_ok.then_some(AdminRuleRef {
                policy: id,
                direction,
                rule: i,
                action: r.action,
            })
        })
    }

    /// The admin layer for one side: the ANP rule that decided (Allow or Deny) or passed
    /// (Pass), if any; then, when NetworkPolicy does not isolate the pod
    /// (`np_isolated` false), the baseline rule that decided.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flow's worth of context, kept flat for speed"
    )]
    pub(super) fn admin_side(
        &self,
        pod: PodId,
        direction: Direction,
        np_isolated: bool,
        peer: &Party,
        peer_ip: IpAddr,
        port_pod: Option<PodId>,
        dst_port: u16,
        protocol: Protocol,
    ) -> (Option<AdminRuleRef>, Option<AdminRuleRef>) {
        if self.admin.is_empty() {
            return (None, None);
        }
        let info = &self.pods[pod];
        let mut passed = None;
        for (id, a) in self.admin.iter().enumerate() {
            if a.is_baseline() {
                break;
            }
            if !self.admin_selects(a, info) {
                continue;
            }
            if let Some(r) =
                self.admin_match(id, direction, peer, peer_ip, port_pod, dst_port, protocol)
            {
                if r.action == AdminAction::Pass {
                    passed = Some(r);
                    break;
                }
                return (Some(r), None);
            }
        }
        if np_isolated {
            return (None, passed);
        }
        let baseline = self
            .admin
            .iter()
            .enumerate()
            .rev()
            .take_while(|(_, a)| a.is_baseline())
            .find(|(_, a)| self.admin_selects(a, info))
            .and_then(|(id, _)| {
                self.admin_match(id, direction, peer, peer_ip, port_pod, dst_port, protocol)
            });
        (baseline, passed)
    }
}

static EMPTY_LABELS: BTreeMap<String, String> = BTreeMap::new();

// The two kinds as API resources, so the live view can list and watch them.
macro_rules! admin_resource {
    ($t:ty, $kind:literal, $plural:literal) => {
        impl k8s_openapi::Resource for $t {
            const API_VERSION: &'static str = "policy.networking.k8s.io/v1alpha1";
            const GROUP: &'static str = "policy.networking.k8s.io";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1alpha1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::ClusterResourceScope;
        }

        impl k8s_openapi::ListableResource for $t {
            const LIST_KIND: &'static str = concat!($kind, "List");
        }

        impl k8s_openapi::Metadata for $t {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

admin_resource!(
    AdminNetworkPolicy,
    "AdminNetworkPolicy",
    "adminnetworkpolicies"
);
admin_resource!(
    BaselineAdminNetworkPolicy,
    "BaselineAdminNetworkPolicy",
    "baselineadminnetworkpolicies"
);
