//! Building the [`Engine`]: every label, selector and CIDR is read once here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ipblock::{parse_cidr, BlockIndex, IpBlock};
use super::selector::Selector;
use super::*;
use crate::cluster::Snapshot;

pub(super) const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn object_name(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("<no name>");
    match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

pub(super) fn invalid(
    kind: &'static str,
    meta: &ObjectMeta,
    field: impl Into<String>,
    message: impl Into<String>,
) -> PolicyError {
    PolicyError::Invalid {
        kind,
        object: object_name(meta),
        field: field.into(),
        message: message.into(),
    }
}

fn parse_protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!(
            "unknown protocol {other:?} (expected TCP, UDP or SCTP)"
        )),
    }
}

fn port_u16(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{n} is not a port (1-65535)"))
}

pub(super) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| format!("{s:?} is not an IP address"))
}

pub(super) fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

/// `namespace/Kind/name` of a pod's owning workload.
fn workload_of(pod: &Pod, namespace: &str, name: &str) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| pod.metadata.owner_references.iter().flatten().next());
    let Some(o) = owner else {
        return format!("{namespace}/Pod/{name}");
    };
    if o.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
            return format!("{namespace}/Deployment/{deployment}");
        }
    }
    format!("{namespace}/{}/{}", o.kind, o.name)
}

struct Builder {
    engine: Engine,
}

impl Builder {
    fn namespace(&mut self, name: &str) -> usize {
        self.engine.namespace_id(name)
    }
}

impl Engine {
    /// The index of namespace `name`, added (with only its name label) when new.
    pub(super) fn namespace_id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.track.ns_index.get(name) {
            return i;
        }
        let mut labels = BTreeMap::new();
        labels.insert(NS_NAME_LABEL.to_owned(), name.to_owned());
        self.namespaces.push(NamespaceInfo { labels });
        let i = self.namespaces.len() - 1;
        self.track.ns_index.insert(name.to_owned(), i);
        i
    }
}

fn compile_selector(
    sel: &LabelSelector,
    meta: &ObjectMeta,
    field: &str,
) -> Result<Selector, PolicyError> {
    Selector::compile(sel).map_err(|e| {
        invalid(
            "NetworkPolicy",
            meta,
            format!("{field}.{}", e.field),
            e.message,
        )
    })
}

fn compile_peer(
    peer: &NetworkPolicyPeer,
    meta: &ObjectMeta,
    field: &str,
) -> Result<Peer, PolicyError> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(b), None, None) => {
            let cidr = parse_cidr(&b.cidr)
                .map_err(|m| invalid("NetworkPolicy", meta, format!("{field}.ipBlock.cidr"), m))?;
            let mut except = Vec::new();
            for (i, e) in b.except.iter().flatten().enumerate() {
                let at = format!("{field}.ipBlock.except[{i}]");
                let net = parse_cidr(e).map_err(|m| invalid("NetworkPolicy", meta, &at, m))?;
                // As the API server validates it: a strict subset of the cidr.
                if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
                    return Err(invalid(
                        "NetworkPolicy",
                        meta,
                        &at,
                        format!("{e:?} is not inside the ipBlock's cidr {:?} (except must be a strict subset of cidr)", b.cidr),
                    ));
                }
                except.push(net);
            }
            Ok(Peer::Block(IpBlock { cidr, except }))
        }
        (Some(_), _, _) => Err(invalid(
            "NetworkPolicy",
            meta,
            field,
            "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        )),
        (None, None, None) => Err(invalid(
            "NetworkPolicy",
            meta,
            field,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        )),
        (None, ns, pods) => {
            let namespaces = match ns {
                None => NamespaceMatch::Own,
                Some(s) => NamespaceMatch::Selected(compile_selector(
                    s,
                    meta,
                    &format!("{field}.namespaceSelector"),
                )?),
            };
            let pods = match pods {
                None => Selector::everything(),
                Some(s) => compile_selector(s, meta, &format!("{field}.podSelector"))?,
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn compile_port(
    port: &NetworkPolicyPort,
    meta: &ObjectMeta,
    field: &str,
) -> Result<PortMatch, PolicyError> {
    let err = |f: &str, m: String| invalid("NetworkPolicy", meta, format!("{field}{f}"), m);
    let protocol = parse_protocol(port.protocol.as_deref()).map_err(|m| err(".protocol", m))?;
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::AnyPort(protocol)),
        (None, Some(_)) => Err(err(".endPort", "endPort needs port".into())),
        (Some(IntOrString::Int(n)), end) => {
            let first = port_u16(*n).map_err(|m| err(".port", m))?;
            let last = match end {
                None => first,
                Some(e) => {
                    let last = port_u16(e).map_err(|m| err(".endPort", m))?;
                    if last < first {
                        return Err(err(
                            ".endPort",
                            format!("endPort {last} is below port {first}"),
                        ));
                    }
                    last
                }
            };
            Ok(PortMatch::Range {
                protocol,
                first,
                last,
            })
        }
        (Some(IntOrString::String(name)), None) => {
            if name.is_empty() {
                return Err(err(".port", "empty port name".into()));
            }
            if name.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    ".port",
                    format!("{name:?} is a string of digits: write a port number without quotes (port: {name}); a named port contains a letter"),
                ));
            }
            if let Err(m) = crate::policy::selector::check_port_name(name) {
                return Err(err(".port", m));
            }
            Ok(PortMatch::Named {
                protocol,
                name: name.clone(),
            })
        }
        (Some(IntOrString::String(_)), Some(_)) => Err(err(
            ".endPort",
            "endPort cannot be used with a named port".into(),
        )),
    }
}

fn compile_rules<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a Vec<NetworkPolicyPeer>>,
            Option<&'a Vec<NetworkPolicyPort>>,
        ),
    >,
    meta: &ObjectMeta,
    section: &str,
    peer_field: &str,
) -> Result<Vec<Rule>, PolicyError> {
    let mut out = Vec::new();
    for (i, (peers, ports)) in rules.enumerate() {
        let field = format!("spec.{section}[{i}]");
        let peers = match peers {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => Some(
                v.iter()
                    .enumerate()
                    .map(|(j, p)| compile_peer(p, meta, &format!("{field}.{peer_field}[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let ports = match ports {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => Some(
                v.iter()
                    .enumerate()
                    .map(|(j, p)| compile_port(p, meta, &format!("{field}.ports[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let blocks = BlockIndex::new(peers.iter().flatten().filter_map(|p| match p {
            Peer::Block(b) => Some(b),
            Peer::Pods { .. } => None,
        }));
        out.push(Rule {
            peers,
            blocks,
            ports,
        });
    }
    Ok(out)
}

pub(super) fn compile_policy(np: &NetworkPolicy, ns: usize) -> Result<PolicyInfo, PolicyError> {
    let meta = &np.metadata;
    let spec = np.spec.clone().unwrap_or_default();
    let selector = match &spec.pod_selector {
        None => Selector::everything(),
        Some(s) => compile_selector(s, meta, "spec.podSelector")?,
    };
    let (mut ingress_on, mut egress_on) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress_on = true;
            egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_on = true,
                    "Egress" => egress_on = true,
                    other => {
                        return Err(invalid(
                            "NetworkPolicy",
                            meta,
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        ))
                    }
                }
            }
        }
    }
    let ingress = if ingress_on {
        Some(compile_rules(
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref())),
            meta,
            "ingress",
            "from",
        )?)
    } else {
        None
    };
    let egress = if egress_on {
        Some(compile_rules(
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref())),
            meta,
            "egress",
            "to",
        )?)
    } else {
        None
    };
    Ok(PolicyInfo {
        namespace: namespace_of(meta),
        name: meta.name.clone().unwrap_or_default(),
        ingress,
        egress,
        selector,
        ns,
    })
}

fn pod_ports(pod: &Pod) -> Result<Vec<ContainerPort>, PolicyError> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else {
        return Ok(out);
    };
    for (section, containers) in [
        ("containers", &spec.containers),
        (
            "initContainers",
            spec.init_containers.as_ref().unwrap_or(&Vec::new()),
        ),
    ] {
        for (i, c) in containers.iter().enumerate() {
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.{section}[{i}].ports[{j}]");
                let port = port_u16(p.container_port).map_err(|m| {
                    invalid("Pod", &pod.metadata, format!("{field}.containerPort"), m)
                })?;
                let protocol = parse_protocol(p.protocol.as_deref())
                    .map_err(|m| invalid("Pod", &pod.metadata, format!("{field}.protocol"), m))?;
                out.push(ContainerPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol,
                });
            }
        }
    }
    Ok(out)
}

/// A pod as the engine sees it, before its namespace index and policies are known.
pub(super) fn parse_pod(pod: &Pod) -> Result<PodInfo, PolicyError> {
    let namespace = namespace_of(&pod.metadata);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut ips = Vec::new();
    for (i, p) in status.pod_ips.iter().flatten().enumerate() {
        ips.push(
            parse_ip(&p.ip)
                .map_err(|m| invalid("Pod", &pod.metadata, format!("status.podIPs[{i}].ip"), m))?,
        );
    }
    if let (true, Some(ip)) = (ips.is_empty(), &status.pod_ip) {
        ips.push(parse_ip(ip).map_err(|m| invalid("Pod", &pod.metadata, "status.podIP", m))?);
    }
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let mut host_ips = Vec::new();
    for (i, h) in status.host_ips.iter().flatten().enumerate() {
        host_ips
            .push(parse_ip(&h.ip).map_err(|m| {
                invalid("Pod", &pod.metadata, format!("status.hostIPs[{i}].ip"), m)
            })?);
    }
    if let (true, Some(ip)) = (host_ips.is_empty(), &status.host_ip) {
        host_ips.push(parse_ip(ip).map_err(|m| invalid("Pod", &pod.metadata, "status.hostIP", m))?);
    }
    if host_network {
        host_ips.extend(ips.iter().copied());
    }
    let mut seen = std::collections::HashSet::new();
    host_ips.retain(|ip| seen.insert(*ip));
    let live = !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if !live {
        // A finished pod (a completed Job's) owns no address: its IP is free for reuse and
        // is often another pod's already. Its cgroup still names it (by UID).
        ips.clear();
    }
    Ok(PodInfo {
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        workload: workload_of(pod, &namespace, &name),
        namespace,
        name,
        ips,
        host_network,
        node,
        ports: pod_ports(pod)?,
        ingress_policies: Vec::new(),
        egress_policies: Vec::new(),
        ns: 0,
        uid: pod.metadata.uid.as_deref().map(Arc::from),
        live,
        host_ips,
    })
}

impl Engine {
    /// Indexes a snapshot. Fails on objects the API server would reject where the
    /// engine depends on them (bad CIDRs, selectors, ports, IPs), naming object and field.
    pub fn build(snap: &Snapshot) -> Result<Engine, PolicyError> {
        Engine::build_with(snap, snap.network_policies.iter())
    }

    /// As [`Engine::build`], with `policies` in place of the snapshot's own (what-if checks
    /// build engines for other policy sets without copying the snapshot).
    pub fn build_with<'a>(
        snap: &Snapshot,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> Result<Engine, PolicyError> {
        let mut b = Builder {
            engine: Engine::default(),
        };

        // Namespaces, sorted by name.
        let mut ns_objs: Vec<_> = snap.namespaces.iter().collect();
        ns_objs.sort_by(|a, c| a.metadata.name.cmp(&c.metadata.name));
        for ns in ns_objs {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let i = b.namespace(&name);
            let labels = &mut b.engine.namespaces[i].labels;
            labels.extend(ns.metadata.labels.clone().unwrap_or_default());
            labels.insert(NS_NAME_LABEL.to_owned(), name);
        }

        // Nodes.
        let mut node_ips: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for node in &snap.nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            for (i, a) in node
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .enumerate()
            {
                if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                    let ip = parse_ip(&a.address).map_err(|m| {
                        invalid(
                            "Node",
                            &node.metadata,
                            format!("status.addresses[{i}].address"),
                            m,
                        )
                    })?;
                    node_ips.entry(name.clone()).or_default().insert(ip);
                }
            }
        }

        // Pods, sorted by namespace/name.
        let mut pods: Vec<&Pod> = snap.pods.iter().collect();
        pods.sort_by(|a, c| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&c.metadata.namespace, &c.metadata.name))
        });
        let mut pod_by_ip: HashMap<IpAddr, (PodId, bool)> = HashMap::new();
        for pod in pods {
            let mut info = parse_pod(pod)?;
            info.ns = b.namespace(&info.namespace);
            let (namespace, name) = (&info.namespace, &info.name);
            if let Some(n) = &info.node {
                node_ips
                    .entry(n.clone())
                    .or_default()
                    .extend(info.host_ips.iter().copied());
            } else {
                for ip in &info.host_ips {
                    b.engine.node_by_ip.entry(*ip).or_insert(None);
                }
            }
            let id = b.engine.pods.len();
            let live = info.live;
            if !info.host_network {
                for ip in &info.ips {
                    match pod_by_ip.get(ip) {
                        Some(&(other, other_live)) if other_live || !live => {
                            if live {
                                b.engine.notes.push(format!(
                                    "{ip} belongs to pods {} and {namespace}/{name}; flows are attributed to the first",
                                    b.engine.pod_name(other)
                                ));
                            }
                        }
                        _ => {
                            pod_by_ip.insert(*ip, (id, live));
                        }
                    }
                }
            }
            b.engine.pods.push(Arc::new(info));
        }
        b.engine.pod_by_ip = pod_by_ip
            .into_iter()
            .map(|(ip, (id, _))| (ip, id))
            .collect();
        for (name, ips) in node_ips {
            for ip in &ips {
                b.engine.node_by_ip.insert(*ip, Some(name.clone()));
            }
            b.engine.node_ips.insert(name, ips.into_iter().collect());
        }

        // Policies, sorted by namespace/name.
        let mut nps: Vec<&NetworkPolicy> = policies.into_iter().collect();
        nps.sort_by(|a, c| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&c.metadata.namespace, &c.metadata.name))
        });
        let mut by_ns: HashMap<usize, Vec<PolicyId>> = HashMap::new();
        for np in nps {
            let ns = b.namespace(&namespace_of(&np.metadata));
            let p = compile_policy(np, ns)?;
            let policies = Arc::make_mut(&mut b.engine.policies);
            by_ns.entry(ns).or_default().push(policies.len());
            policies.push(p);
        }
        // Which policies select which pod: once, per namespace.
        let engine = &mut b.engine;
        for pod in engine.pods.iter_mut().filter(|p| !p.host_network) {
            let pod = Arc::make_mut(pod);
            for &pid in by_ns.get(&pod.ns).map(Vec::as_slice).unwrap_or_default() {
                let pol = &engine.policies[pid];
                if pol.selector.matches(&pod.labels) {
                    if pol.ingress.is_some() {
                        pod.ingress_policies.push(pid);
                    }
                    if pol.egress.is_some() {
                        pod.egress_policies.push(pid);
                    }
                }
            }
        }

        index_services(&mut b, snap)?;
        b.engine.track_snapshot(snap);
        Ok(b.engine)
    }
}

fn index_services(b: &mut Builder, snap: &Snapshot) -> Result<(), PolicyError> {
    let mut slices: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for s in &snap.endpoint_slices {
        if let Some(svc) = slice_service(s) {
            slices
                .entry((namespace_of(&s.metadata), svc.to_owned()))
                .or_default()
                .push(s);
        }
    }
    let mut services: Vec<_> = snap.services.iter().collect();
    services.sort_by(|a, c| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&c.metadata.namespace, &c.metadata.name))
    });
    for svc in services {
        let key = (
            namespace_of(&svc.metadata),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let ports = service_ports(
            svc,
            slices.get(&key).map(Vec::as_slice),
            &b.engine.pods,
            &mut b.engine.notes,
        )?;
        for sp in ports {
            let id = b.engine.services.len();
            for vip in &sp.vips {
                b.engine
                    .service_by_addr
                    .insert((*vip, sp.port, sp.protocol), id);
            }
            b.engine.services.push(sp);
        }
    }
    Ok(())
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub(super) fn slice_service(s: &EndpointSlice) -> Option<&str> {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// The ports of one Service with their backends: from its EndpointSlices (`slices`), or,
/// without any, from its selector over `pods`. Empty for ExternalName and headless ones.
pub(super) fn service_ports(
    svc: &Service,
    slices: Option<&[&EndpointSlice]>,
    pods: &[Arc<PodInfo>],
    notes: &mut Vec<String>,
) -> Result<Vec<ServicePort>, PolicyError> {
    let mut out = Vec::new();
    let meta = &svc.metadata;
    let Some(spec) = &svc.spec else {
        return Ok(out);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(out);
    }
    let mut vips = Vec::new();
    let cluster_ips: Vec<(String, &String)> = match &spec.cluster_ips {
        Some(v) if !v.is_empty() => v
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("spec.clusterIPs[{i}]"), s))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|s| ("spec.clusterIP".to_owned(), s))
            .collect(),
    };
    for (field, s) in cluster_ips {
        if s.is_empty() || s == "None" {
            continue;
        }
        let ip = parse_ip(s).map_err(|m| invalid("Service", meta, field, m))?;
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    if vips.is_empty() {
        return Ok(out);
    }
    // kube-proxy sends in-cluster traffic to external IPs and LoadBalancer ingress IPs
    // straight to the backends, as it does for the ClusterIPs (except an ingress with
    // `ipMode: Proxy`, whose traffic goes to the load balancer).
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        let ip = parse_ip(s)
            .map_err(|m| invalid("Service", meta, format!("spec.externalIPs[{i}]"), m))?;
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        if let Some(s) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
            let ip = parse_ip(s).map_err(|m| {
                invalid(
                    "Service",
                    meta,
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    m,
                )
            })?;
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
    }
    let namespace = namespace_of(meta);
    let name = meta.name.clone().unwrap_or_default();
    for (i, sp) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port =
            port_u16(sp.port).map_err(|m| invalid("Service", meta, format!("{field}.port"), m))?;
        let protocol = parse_protocol(sp.protocol.as_deref())
            .map_err(|m| invalid("Service", meta, format!("{field}.protocol"), m))?;
        let port_name = sp.name.clone().filter(|n| !n.is_empty());
        let mut backends = Vec::new();
        if let Some(list) = slices {
            backends = slice_backends(list, port_name.as_deref(), protocol)?;
        } else if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
            // No EndpointSlices in the snapshot: what the endpoint controller would compute.
            let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
            for pod in pods
                .iter()
                .filter(|p| p.namespace == namespace && !p.host_network)
            {
                if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                    continue;
                }
                let tp = match &target {
                    IntOrString::Int(n) => port_u16(*n).ok(),
                    IntOrString::String(s) => pod
                        .ports
                        .iter()
                        .find(|c| c.name.as_deref() == Some(s.as_str()) && c.protocol == protocol)
                        .map(|c| c.port),
                };
                if let Some(tp) = tp {
                    backends.extend(pod.ips.iter().map(|&ip| Backend { ip, port: tp }));
                }
            }
        }
        backends.sort();
        backends.dedup();
        if backends.is_empty() {
            notes.push(format!(
                "Service {namespace}/{name} port {port}/{protocol} has no ready endpoints in the snapshot"
            ));
        }
        out.push(ServicePort {
            namespace: namespace.clone(),
            service: name.clone(),
            port_name,
            port,
            protocol,
            backends,
            vips: vips.clone(),
            order: i,
        });
    }
    Ok(out)
}

fn slice_backends(
    slices: &[&EndpointSlice],
    port_name: Option<&str>,
    protocol: Protocol,
) -> Result<Vec<Backend>, PolicyError> {
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    for s in slices {
        if s.address_type == "FQDN" {
            continue;
        }
        let mut target = None;
        for (i, p) in s.ports.iter().flatten().enumerate() {
            let proto = parse_protocol(p.protocol.as_deref()).map_err(|m| {
                invalid(
                    "EndpointSlice",
                    &s.metadata,
                    format!("ports[{i}].protocol"),
                    m,
                )
            })?;
            if proto == protocol && p.name.as_deref().filter(|n| !n.is_empty()) == port_name {
                if let Some(n) = p.port {
                    target = Some(port_u16(n).map_err(|m| {
                        invalid("EndpointSlice", &s.metadata, format!("ports[{i}].port"), m)
                    })?);
                }
            }
        }
        let Some(port) = target else { continue };
        for (i, e) in s.endpoints.iter().enumerate() {
            let cond = e.conditions.clone().unwrap_or_default();
            for (j, a) in e.addresses.iter().enumerate() {
                let ip = parse_ip(a).map_err(|m| {
                    invalid(
                        "EndpointSlice",
                        &s.metadata,
                        format!("endpoints[{i}].addresses[{j}]"),
                        m,
                    )
                })?;
                if cond.ready != Some(false) {
                    ready.push(Backend { ip, port });
                } else if cond.serving == Some(true) {
                    serving.push(Backend { ip, port });
                }
            }
        }
    }
    // Like kube-proxy: serving-but-terminating endpoints only when none is ready.
    Ok(if ready.is_empty() { serving } else { ready })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::parse_snapshot;

    fn engine(yaml: &str) -> Engine {
        Engine::build(&parse_snapshot(std::path::Path::new("c.yaml"), yaml.as_bytes()).unwrap())
            .unwrap()
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a-job-29123456-x1, namespace: media, uid: u-job, labels: {app: job}}
status: {phase: Succeeded, podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: z-web, namespace: media, uid: u-web, labels: {app: web}}
spec: {containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: b-done, namespace: media, labels: {app: web}}
status: {phase: Failed, podIP: 10.0.1.9}
---
apiVersion: v1
kind: Pod
metadata: {name: c-pending, namespace: media, labels: {app: web}}
status: {phase: Pending}
"#;

    #[test]
    fn finished_pods_own_no_address() {
        let e = engine(PODS);
        let web = e.pod_id("media", "z-web").unwrap();
        assert_eq!(e.classify("10.0.1.5".parse().unwrap()), Party::Pod(web));
        // Alone on its address, a Failed pod does not own it either.
        assert_eq!(e.classify("10.0.1.9".parse().unwrap()), Party::External);
        let job = e.pod_id("media", "a-job-29123456-x1").unwrap();
        assert!(e.pods()[job].ips.is_empty());
        // Still found by its UID (its cgroup), and no note about a shared address.
        assert_eq!(e.pod_by_uid("u-job"), Some(job));
        assert!(
            e.notes.iter().all(|n| !n.contains("10.0.1.5")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn external_and_load_balancer_ips_are_service_addresses() {
        let e = engine(&format!(
            r#"{PODS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: media}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalIPs: [192.0.2.50]
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
status:
  loadBalancer:
    ingress: [{{ip: 203.0.113.10, ipMode: VIP}}, {{ip: 203.0.113.11, ipMode: Proxy}}, {{hostname: lb.example.net}}]
"#
        ));
        for ip in ["10.96.0.20", "192.0.2.50", "203.0.113.10"] {
            let sp = e
                .service_at(ip.parse().unwrap(), 80, Protocol::Tcp)
                .unwrap_or_else(|| panic!("{ip} is the Service's"));
            assert_eq!(sp.service, "web");
            // The finished web pod is no backend; the running one is.
            assert_eq!(
                sp.backends,
                vec![Backend {
                    ip: "10.0.1.5".parse().unwrap(),
                    port: 8080
                }]
            );
        }
        // ipMode Proxy: the load balancer proxies, so its address is not short-circuited.
        assert!(e
            .service_at("203.0.113.11".parse().unwrap(), 80, Protocol::Tcp)
            .is_none());
    }

    #[test]
    fn a_bad_load_balancer_ip_names_the_field() {
        let snap = parse_snapshot(
            std::path::Path::new("c.yaml"),
            br#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: media}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
status: {loadBalancer: {ingress: [{ip: 203.0.113.300}]}}
"#,
        )
        .unwrap();
        let err = Engine::build(&snap).unwrap_err().to_string();
        assert!(
            err.starts_with("Service media/web: field status.loadBalancer.ingress[0].ip:"),
            "{err}"
        );
    }
}
