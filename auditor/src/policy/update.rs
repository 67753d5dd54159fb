//! Updating a built [`Engine`] one object at a time, for the live cluster view: a Pod,
//! Namespace, Service, EndpointSlice, NetworkPolicy, AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy or Node added, changed or removed
//! costs what it touches, not a rebuild, and the engine answers exactly as
//! [`Engine::build`] would on the resulting snapshot (ids aside: see [`Engine::pods`];
//! `notes` stay those of the build).
//!
//! Costs: a Pod is O(its IPs + the policies of its namespace); a Namespace O(1) (its
//! labels are read at evaluation); a Service or EndpointSlice O(that Service's ports and
//! slices); a Node O(its addresses). A NetworkPolicy is O(pods) (a scan re-deciding which
//! pods of its namespace it selects). One exception: a Service that has no EndpointSlice
//! at all is resolved through its selector, so a matching pod of its namespace changing
//! re-resolves it in O(pods); live clusters have slices for every selector Service.
//!
//! Every update validates first and changes nothing when it fails: the engine keeps the
//! previous version of that object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::admin::{self, AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use super::index::{
    compile_policy, invalid, namespace_of, parse_ip, parse_pod, service_ports, slice_service,
    NS_NAME_LABEL,
};
use super::*;
use crate::cluster::Snapshot;

type Addr = (IpAddr, u16, Protocol);

/// The bookkeeping behind the engine's indexes that updates need.
#[derive(Debug, Clone, Default)]
pub(super) struct Tracking {
    pub(super) ns_index: HashMap<String, usize>,
    /// `namespace/name` -> pod.
    pods: HashMap<Arc<str>, PodId>,
    by_uid: HashMap<Arc<str>, PodId>,
    /// Pods that claim an address `pod_by_ip` gives to another pod.
    ip_shadow: HashMap<IpAddr, Vec<PodId>>,
    /// Who says an address is a node's: per address, node name (`None`: a pod without a
    /// node name) -> how many (the Node object, and each pod with that hostIP).
    node_refs: HashMap<IpAddr, BTreeMap<Option<String>, u32>>,
    /// A Node object's addresses, as counted in `node_refs`.
    node_addrs: HashMap<String, Vec<IpAddr>>,
    /// `namespace/name` -> policy.
    policies: HashMap<Arc<str>, PolicyId>,
    /// `namespace/name` -> the Service object, and its ports in `services`.
    services: HashMap<Arc<str>, Arc<Service>>,
    service_ports: HashMap<Arc<str>, Vec<usize>>,
    /// Service ports that claim an address `service_by_addr` gives to another port.
    addr_shadow: HashMap<Addr, Vec<usize>>,
    /// `namespace/service` -> slice name -> slice; `namespace/slice` -> `namespace/service`.
    slices: HashMap<Arc<str>, BTreeMap<String, Arc<EndpointSlice>>>,
    slice_owner: HashMap<Arc<str>, Arc<str>>,
    /// Services resolved through their selector (no slice): (namespace, name).
    by_selector: BTreeSet<(String, String)>,
}

fn key(namespace: &str, name: &str) -> Arc<str> {
    Arc::from(format!("{namespace}/{name}"))
}

fn meta_key(m: &ObjectMeta) -> (String, String) {
    (namespace_of(m), m.name.clone().unwrap_or_default())
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A Node's InternalIP and ExternalIP addresses, deduplicated.
fn node_addresses(node: &Node) -> Result<Vec<IpAddr>, PolicyError> {
    let mut out = Vec::new();
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
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

fn dedup(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = Vec::with_capacity(ips.len());
    for ip in ips {
        if !v.contains(ip) {
            v.push(*ip);
        }
    }
    v
}

impl Engine {
    /// After [`Engine::build`]: the bookkeeping for updates, from the built indexes.
    pub(super) fn track_snapshot(&mut self, snap: &Snapshot) {
        let mut t = std::mem::take(&mut self.track);
        for (id, p) in self.pods.iter().enumerate() {
            t.pods.insert(key(&p.namespace, &p.name), id);
            if let Some(uid) = &p.uid {
                t.by_uid.insert(uid.clone(), id);
            }
            if !p.host_network {
                for ip in dedup(&p.ips) {
                    if self.pod_by_ip.get(&ip) != Some(&id) {
                        t.ip_shadow.entry(ip).or_default().push(id);
                    }
                }
            }
            for ip in &p.host_ips {
                *t.node_refs
                    .entry(*ip)
                    .or_default()
                    .entry(p.node.clone())
                    .or_default() += 1;
            }
        }
        for node in &snap.nodes {
            // Already validated by the build.
            let ips = node_addresses(node).unwrap_or_default();
            let name = node.metadata.name.clone().unwrap_or_default();
            for ip in &ips {
                *t.node_refs
                    .entry(*ip)
                    .or_default()
                    .entry(Some(name.clone()))
                    .or_default() += 1;
            }
            t.node_addrs.entry(name).or_default().extend(ips);
        }
        for (id, p) in self.policies.iter().enumerate() {
            t.policies.insert(key(&p.namespace, &p.name), id);
        }
        for s in &snap.endpoint_slices {
            let (ns, name) = meta_key(&s.metadata);
            if let Some(svc) = slice_service(s) {
                let owner = key(&ns, svc);
                t.slices
                    .entry(owner.clone())
                    .or_default()
                    .insert(name.clone(), Arc::new(s.clone()));
                t.slice_owner.insert(key(&ns, &name), owner);
            }
        }
        for s in &snap.services {
            let (ns, name) = meta_key(&s.metadata);
            let k = key(&ns, &name);
            if has_selector(s) && !t.slices.contains_key(&k) {
                t.by_selector.insert((ns, name));
            }
            t.services.insert(k, Arc::new(s.clone()));
        }
        for (id, sp) in self.services.iter().enumerate() {
            t.service_ports
                .entry(key(&sp.namespace, &sp.service))
                .or_default()
                .push(id);
            for vip in &sp.vips {
                let a = (*vip, sp.port, sp.protocol);
                if self.service_by_addr.get(&a) != Some(&id) {
                    t.addr_shadow.entry(a).or_default().push(id);
                }
            }
        }
        self.track = t;
    }

    /// The pod whose `metadata.uid` this is.
    pub fn pod_by_uid(&self, uid: &str) -> Option<PodId> {
        self.track.by_uid.get(uid).copied()
    }

    /// The pod `namespace/name`.
    pub fn pod_id(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.track
            .pods
            .get(format!("{namespace}/{name}").as_str())
            .copied()
    }

    // ---- Pods ----

    /// Adds or replaces a Pod (by namespace/name; a replaced pod keeps its id).
    pub fn apply_pod(&mut self, pod: &Pod) -> Result<PodId, PolicyError> {
        let mut info = parse_pod(pod)?;
        info.ns = self.namespace_id(&info.namespace);
        if !info.host_network {
            let (i, e) = self.policies_selecting(&info);
            info.ingress_policies = i;
            info.egress_policies = e;
        }
        let k = key(&info.namespace, &info.name);
        let old_labels;
        let id = match self.track.pods.get(&k).copied() {
            Some(id) => {
                let old = self.pods[id].clone();
                self.unlink_pod(id, &old);
                old_labels = Some(old.labels.clone());
                self.pods[id] = Arc::new(info);
                id
            }
            None => {
                old_labels = None;
                let id = self.pods.len();
                self.pods.push(Arc::new(info));
                self.track.pods.insert(k, id);
                id
            }
        };
        let new = self.pods[id].clone();
        self.link_pod(id, &new);
        self.pod_changed_for_selectors(&new.namespace, old_labels.as_ref(), Some(&new.labels));
        Ok(id)
    }

    /// Removes the Pod `namespace/name`, if present; the last pod takes its id.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> bool {
        let k = key(namespace, name);
        let Some(id) = self.track.pods.remove(&k) else {
            return false;
        };
        let old = self.pods[id].clone();
        self.unlink_pod(id, &old);
        let last = self.pods.len() - 1;
        if id != last {
            let moved = self.pods[last].clone();
            for ip in self.claimed_ips(&moved) {
                if self.pod_by_ip.get(&ip) == Some(&last) {
                    self.pod_by_ip.insert(ip, id);
                } else if let Some(v) = self.track.ip_shadow.get_mut(&ip) {
                    v.iter_mut().filter(|x| **x == last).for_each(|x| *x = id);
                }
            }
            self.track
                .pods
                .insert(key(&moved.namespace, &moved.name), id);
            if let Some(uid) = &moved.uid {
                if self.track.by_uid.get(uid) == Some(&last) {
                    self.track.by_uid.insert(uid.clone(), id);
                }
            }
        }
        self.pods.swap_remove(id);
        self.pod_changed_for_selectors(namespace, Some(&old.labels), None);
        true
    }

    fn claimed_ips(&self, p: &PodInfo) -> Vec<IpAddr> {
        if p.host_network {
            Vec::new()
        } else {
            dedup(&p.ips)
        }
    }

    /// Pod `id` first wins an address: live before finished, then by (namespace, name).
    fn pod_rank(&self, id: PodId) -> (bool, &str, &str) {
        let p = &self.pods[id];
        (!p.live, &p.namespace, &p.name)
    }

    /// Enters pod `id` (already in `pods`) into the address, node and uid indexes.
    fn link_pod(&mut self, id: PodId, p: &PodInfo) {
        for ip in self.claimed_ips(p) {
            match self.pod_by_ip.get(&ip).copied() {
                None => {
                    self.pod_by_ip.insert(ip, id);
                }
                Some(w) if w == id => {}
                Some(w) => {
                    let loser = if self.pod_rank(id) < self.pod_rank(w) {
                        self.pod_by_ip.insert(ip, id);
                        w
                    } else {
                        id
                    };
                    self.track.ip_shadow.entry(ip).or_default().push(loser);
                }
            }
        }
        for ip in &p.host_ips {
            self.node_ref(*ip, p.node.as_deref(), true);
        }
        if let Some(uid) = &p.uid {
            self.track.by_uid.insert(uid.clone(), id);
        }
    }

    /// Takes pod `id` (still in `pods`, as `p`) out of the indexes `link_pod` entered it in.
    fn unlink_pod(&mut self, id: PodId, p: &PodInfo) {
        for ip in self.claimed_ips(p) {
            if self.pod_by_ip.get(&ip) == Some(&id) {
                let next = self.track.ip_shadow.get(&ip).and_then(|v| {
                    v.iter()
                        .copied()
                        .filter(|&x| x != id)
                        .min_by(|&a, &b| self.pod_rank(a).cmp(&self.pod_rank(b)))
                });
                match next {
                    Some(n) => {
                        self.pod_by_ip.insert(ip, n);
                        self.unshadow_ip(ip, n);
                    }
                    None => {
                        self.pod_by_ip.remove(&ip);
                    }
                }
            } else {
                self.unshadow_ip(ip, id);
            }
        }
        for ip in &p.host_ips {
            self.node_ref(*ip, p.node.as_deref(), false);
        }
        if let Some(uid) = &p.uid {
            if self.track.by_uid.get(uid) == Some(&id) {
                self.track.by_uid.remove(uid);
            }
        }
    }

    fn unshadow_ip(&mut self, ip: IpAddr, id: PodId) {
        if let Some(v) = self.track.ip_shadow.get_mut(&ip) {
            if let Some(i) = v.iter().position(|&x| x == id) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.track.ip_shadow.remove(&ip);
            }
        }
    }

    /// The policies of the pod's namespace that select it, per direction, in policy
    /// (name) order.
    fn policies_selecting(&self, pod: &PodInfo) -> (Vec<PolicyId>, Vec<PolicyId>) {
        let ns_policies = self.namespace_policies(pod.ns);
        self.selecting_among(&ns_policies, pod)
    }

    fn namespace_policies(&self, ns: usize) -> Vec<PolicyId> {
        let mut v: Vec<PolicyId> = (0..self.policies.len())
            .filter(|&i| self.policies[i].ns == ns)
            .collect();
        v.sort_by(|&a, &b| self.policies[a].name.cmp(&self.policies[b].name));
        v
    }

    fn selecting_among(&self, ids: &[PolicyId], pod: &PodInfo) -> (Vec<PolicyId>, Vec<PolicyId>) {
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        for &pid in ids {
            let pol = &self.policies[pid];
            if pol.selector.matches(&pod.labels) {
                if pol.ingress.is_some() {
                    ingress.push(pid);
                }
                if pol.egress.is_some() {
                    egress.push(pid);
                }
            }
        }
        (ingress, egress)
    }

    /// A pod of `namespace` with these labels before / after changed: re-resolve the
    /// selector-resolved Services it matches.
    fn pod_changed_for_selectors(
        &mut self,
        namespace: &str,
        before: Option<&BTreeMap<String, String>>,
        after: Option<&BTreeMap<String, String>>,
    ) {
        let affected: Vec<Arc<str>> = self
            .track
            .by_selector
            .range((namespace.to_owned(), String::new())..)
            .take_while(|(ns, _)| ns == namespace)
            .map(|(ns, name)| key(ns, name))
            .filter(|k| {
                self.track.services.get(k).is_some_and(|s| {
                    [before, after]
                        .into_iter()
                        .flatten()
                        .any(|labels| selector_matches(s, labels))
                })
            })
            .collect();
        for k in affected {
            if let Err(e) = self.reindex_service(&k) {
                // Cannot happen: selector resolution does not fail once the Service is in.
                tracing::debug!(error = %e, service = %k, "service not re-resolved");
            }
        }
    }

    // ---- Nodes ----

    /// Counts (`add`) or uncounts one voice saying `ip` is node `node`'s (`None`: some node's).
    fn node_ref(&mut self, ip: IpAddr, node: Option<&str>, add: bool) {
        let refs = self.track.node_refs.entry(ip).or_default();
        let name = node.map(str::to_owned);
        let count = refs.entry(name.clone()).or_default();
        let was = *count;
        if add {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let now = *count;
        if now == 0 {
            refs.remove(&name);
        }
        if let Some(n) = &name {
            if was == 0 && now > 0 {
                self.node_ips.entry(n.clone()).or_default().push(ip);
            } else if was > 0 && now == 0 {
                if let Some(v) = self.node_ips.get_mut(n) {
                    v.retain(|x| *x != ip);
                }
            }
        }
        // The greatest node name says whose address it is (as the build does); `None`
        // alone: a node's, name unknown.
        match refs.last_key_value() {
            Some((n, _)) => {
                self.node_by_ip.insert(ip, n.clone());
            }
            None => {
                self.track.node_refs.remove(&ip);
                self.node_by_ip.remove(&ip);
            }
        }
    }

    /// Adds or replaces a Node (its addresses).
    pub fn apply_node(&mut self, node: &Node) -> Result<(), PolicyError> {
        let ips = node_addresses(node)?;
        let name = node.metadata.name.clone().unwrap_or_default();
        self.remove_node(&name);
        for ip in &ips {
            self.node_ref(*ip, Some(&name), true);
        }
        self.node_ips.entry(name.clone()).or_default();
        if let Some(l) = node.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
            self.node_labels.insert(name.clone(), l.clone());
        }
        self.track.node_addrs.insert(name, ips);
        Ok(())
    }

    pub fn remove_node(&mut self, name: &str) {
        self.node_labels.remove(name);
        for ip in self.track.node_addrs.remove(name).unwrap_or_default() {
            self.node_ref(ip, Some(name), false);
        }
    }

    // ---- AdminNetworkPolicies and the BaselineAdminNetworkPolicy ----
    // O(admin policies): they are few, and subjects are matched at evaluation.

    /// Adds or replaces an AdminNetworkPolicy.
    pub fn apply_admin_policy(&mut self, anp: &AdminNetworkPolicy) -> Result<(), PolicyError> {
        let (info, _) = admin::compile_anp(anp)?;
        let list = Arc::make_mut(&mut self.admin);
        list.retain(|p| p.is_baseline() || p.name != info.name);
        list.push(info);
        admin::order(list);
        Ok(())
    }

    /// Removes the AdminNetworkPolicy `name`, if present.
    pub fn remove_admin_policy(&mut self, name: &str) -> bool {
        let before = self.admin.len();
        Arc::make_mut(&mut self.admin).retain(|p| p.is_baseline() || p.name != name);
        self.admin.len() != before
    }

    /// Adds or replaces the BaselineAdminNetworkPolicy (named `default`).
    pub fn apply_baseline_policy(
        &mut self,
        banp: &BaselineAdminNetworkPolicy,
    ) -> Result<(), PolicyError> {
        let info = admin::compile_banp(banp)?;
        let list = Arc::make_mut(&mut self.admin);
        list.retain(|p| !p.is_baseline());
        list.push(info);
        Ok(())
    }

    /// Removes the BaselineAdminNetworkPolicy `name`, if present.
    pub fn remove_baseline_policy(&mut self, name: &str) -> bool {
        let before = self.admin.len();
        Arc::make_mut(&mut self.admin).retain(|p| !(p.is_baseline() && p.name == name));
        self.admin.len() != before
    }

    // ---- Namespaces ----

    /// Adds or replaces a Namespace (its labels; selectors read them at evaluation).
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let i = self.namespace_id(&name);
        let labels = &mut self.namespaces[i].labels;
        labels.clear();
        labels.extend(ns.metadata.labels.clone().unwrap_or_default());
        labels.insert(NS_NAME_LABEL.to_owned(), name);
    }

    /// Removes a Namespace: what is left of it is its name label.
    pub fn remove_namespace(&mut self, name: &str) {
        if let Some(&i) = self.track.ns_index.get(name) {
            let labels = &mut self.namespaces[i].labels;
            labels.clear();
            labels.insert(NS_NAME_LABEL.to_owned(), name.to_owned());
        }
    }

    // ---- NetworkPolicies ----

    /// Adds or replaces a NetworkPolicy; re-decides which pods of its namespace it selects.
    pub fn apply_policy(&mut self, np: &NetworkPolicy) -> Result<(), PolicyError> {
        let (ns_name, name) = meta_key(&np.metadata);
        let ns = self.namespace_id(&ns_name);
        let info = compile_policy(np, ns)?;
        let k = key(&ns_name, &name);
        let policies = Arc::make_mut(&mut self.policies);
        match self.track.policies.get(&k) {
            Some(&id) => policies[id] = info,
            None => {
                self.track.policies.insert(k, policies.len());
                policies.push(info);
            }
        }
        self.reselect(&[ns]);
        Ok(())
    }

    /// Removes the NetworkPolicy `namespace/name`, if present; the last policy takes its id.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) -> bool {
        let Some(id) = self.track.policies.remove(&key(namespace, name)) else {
            return false;
        };
        let policies = Arc::make_mut(&mut self.policies);
        let removed_ns = policies[id].ns;
        let last = policies.len() - 1;
        let mut touched = vec![removed_ns];
        if id != last {
            let moved = &policies[last];
            touched.push(moved.ns);
            self.track
                .policies
                .insert(key(&moved.namespace, &moved.name), id);
        }
        policies.swap_remove(id);
        self.reselect(&touched);
        true
    }

    /// Recomputes which policies select each pod of these namespaces.
    fn reselect(&mut self, namespaces: &[usize]) {
        for &ns in namespaces {
            let ids = self.namespace_policies(ns);
            for i in 0..self.pods.len() {
                let p = &self.pods[i];
                if p.ns != ns || p.host_network {
                    continue;
                }
                let (ingress, egress) = self.selecting_among(&ids, p);
                if ingress != p.ingress_policies || egress != p.egress_policies {
                    let p = Arc::make_mut(&mut self.pods[i]);
                    p.ingress_policies = ingress;
                    p.egress_policies = egress;
                }
            }
        }
    }

    // ---- Services and EndpointSlices ----

    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, svc: Arc<Service>) -> Result<(), PolicyError> {
        let (ns, name) = meta_key(&svc.metadata);
        let k = key(&ns, &name);
        let ports = self.compute_service(&svc, &k)?;
        self.track.by_selector.remove(&(ns.clone(), name.clone()));
        if has_selector(&svc) && !self.track.slices.contains_key(&k) {
            self.track.by_selector.insert((ns, name));
        }
        self.track.services.insert(k.clone(), svc);
        self.set_service_ports(&k, ports);
        Ok(())
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        let k = key(namespace, name);
        self.track.services.remove(&k);
        self.track
            .by_selector
            .remove(&(namespace.to_owned(), name.to_owned()));
        self.set_service_ports(&k, Vec::new());
    }

    /// Adds or replaces an EndpointSlice; re-resolves the Service(s) it belongs (belonged) to.
    pub fn apply_endpoint_slice(&mut self, s: Arc<EndpointSlice>) -> Result<(), PolicyError> {
        let (ns, name) = meta_key(&s.metadata);
        let owner = slice_service(&s).map(|svc| key(&ns, svc));
        self.replace_slice(&ns, &name, owner.map(|o| (o, s)))
    }

    pub fn remove_endpoint_slice(&mut self, namespace: &str, name: &str) {
        // Removing never makes a valid Service invalid: its remaining slices were
        // resolved before.
        if let Err(e) = self.replace_slice(namespace, name, None) {
            tracing::debug!(error = %e, "endpoint slice removal left a service as it was");
        }
    }

    fn replace_slice(
        &mut self,
        ns: &str,
        name: &str,
        new: Option<(Arc<str>, Arc<EndpointSlice>)>,
    ) -> Result<(), PolicyError> {
        let sk = key(ns, name);
        let saved = self.track.clone_slice_state(&sk);
        let old_owner = self.track.slice_owner.remove(&sk);
        if let Some(o) = &old_owner {
            if let Some(m) = self.track.slices.get_mut(o) {
                m.remove(name);
                if m.is_empty() {
                    self.track.slices.remove(o);
                }
            }
        }
        let new_owner = new.as_ref().map(|(o, _)| o.clone());
        if let Some((o, s)) = new {
            self.track
                .slices
                .entry(o.clone())
                .or_default()
                .insert(name.to_owned(), s);
            self.track.slice_owner.insert(sk.clone(), o);
        }
        let mut owners: Vec<Arc<str>> = old_owner.into_iter().chain(new_owner).collect();
        owners.dedup();
        let mut computed = Vec::new();
        for o in &owners {
            let Some(svc) = self.track.services.get(o).cloned() else {
                continue;
            };
            match self.compute_service(&svc, o) {
                Ok(p) => computed.push((o.clone(), svc, p)),
                Err(e) => {
                    self.track.restore_slice_state(&sk, saved);
                    return Err(e);
                }
            }
        }
        for (o, svc, ports) in computed {
            let (sns, sname) = meta_key(&svc.metadata);
            let sel = (sns, sname);
            if has_selector(&svc) && !self.track.slices.contains_key(&o) {
                self.track.by_selector.insert(sel);
            } else {
                self.track.by_selector.remove(&sel);
            }
            self.set_service_ports(&o, ports);
        }
        Ok(())
    }

    /// Re-resolves the Service `k` from what is tracked.
    fn reindex_service(&mut self, k: &Arc<str>) -> Result<(), PolicyError> {
        let Some(svc) = self.track.services.get(k).cloned() else {
            return Ok(());
        };
        let ports = self.compute_service(&svc, k)?;
        self.set_service_ports(k, ports);
        Ok(())
    }

    fn compute_service(&self, svc: &Service, k: &str) -> Result<Vec<ServicePort>, PolicyError> {
        let slices: Option<Vec<&EndpointSlice>> = self
            .track
            .slices
            .get(k)
            .map(|m| m.values().map(|s| s.as_ref()).collect());
        let mut notes = Vec::new();
        service_ports(svc, slices.as_deref(), &self.pods, &mut notes)
    }

    /// Replaces the ports of Service `k` (in `services` and the address index).
    fn set_service_ports(&mut self, k: &Arc<str>, ports: Vec<ServicePort>) {
        let old = self.track.service_ports.remove(k).unwrap_or_default();
        // Highest id first, so that swap_remove never moves one of them.
        let mut old = old;
        old.sort_unstable_by(|a, b| b.cmp(a));
        for id in old {
            self.remove_service_port(id);
        }
        let mut ids = Vec::new();
        for sp in ports {
            let id = self.services.len();
            let addrs: Vec<Addr> = sp.vips.iter().map(|v| (*v, sp.port, sp.protocol)).collect();
            self.services.push(sp);
            for a in addrs {
                self.claim_addr(a, id);
            }
            ids.push(id);
        }
        if !ids.is_empty() {
            self.track.service_ports.insert(k.clone(), ids);
        }
    }

    fn addrs_of(&self, id: usize) -> Vec<Addr> {
        let sp = &self.services[id];
        sp.vips.iter().map(|v| (*v, sp.port, sp.protocol)).collect()
    }

    /// Of two Service ports on one address, the later (namespace, name, position) wins.
    fn service_rank(&self, id: usize) -> (&str, &str, usize) {
        let s = &self.services[id];
        (&s.namespace, &s.service, s.order)
    }

    fn claim_addr(&mut self, a: Addr, id: usize) {
        match self.service_by_addr.get(&a).copied() {
            None => {
                self.service_by_addr.insert(a, id);
            }
            Some(w) if w == id => {}
            Some(w) => {
                let loser = if self.service_rank(id) > self.service_rank(w) {
                    self.service_by_addr.insert(a, id);
                    w
                } else {
                    id
                };
                self.track.addr_shadow.entry(a).or_default().push(loser);
            }
        }
    }

    fn remove_service_port(&mut self, id: usize) {
        for a in self.addrs_of(id) {
            if self.service_by_addr.get(&a) == Some(&id) {
                let next = self.track.addr_shadow.get(&a).and_then(|v| {
                    v.iter()
                        .copied()
                        .filter(|&x| x != id)
                        .max_by(|&x, &y| self.service_rank(x).cmp(&self.service_rank(y)))
                });
                match next {
                    Some(n) => {
                        self.service_by_addr.insert(a, n);
                        self.unshadow_addr(a, n);
                    }
                    None => {
                        self.service_by_addr.remove(&a);
                    }
                }
            } else {
                self.unshadow_addr(a, id);
            }
        }
        let last = self.services.len() - 1;
        if id != last {
            for a in self.addrs_of(last) {
                if self.service_by_addr.get(&a) == Some(&last) {
                    self.service_by_addr.insert(a, id);
                } else if let Some(v) = self.track.addr_shadow.get_mut(&a) {
                    v.iter_mut().filter(|x| **x == last).for_each(|x| *x = id);
                }
            }
            let moved = &self.services[last];
            let mk = key(&moved.namespace, &moved.service);
            if let Some(v) = self.track.service_ports.get_mut(&mk) {
                v.iter_mut().filter(|x| **x == last).for_each(|x| *x = id);
            }
        }
        self.services.swap_remove(id);
    }

    fn unshadow_addr(&mut self, a: Addr, id: usize) {
        if let Some(v) = self.track.addr_shadow.get_mut(&a) {
            if let Some(i) = v.iter().position(|&x| x == id) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.track.addr_shadow.remove(&a);
            }
        }
    }
}

type SliceState = (
    Option<Arc<str>>,
    Option<(Arc<str>, BTreeMap<String, Arc<EndpointSlice>>)>,
);

impl Tracking {
    /// What `replace_slice` may change for slice key `sk`, to undo it on failure.
    fn clone_slice_state(&self, sk: &Arc<str>) -> SliceState {
        let owner = self.slice_owner.get(sk).cloned();
        let map = owner
            .as_ref()
            .and_then(|o| self.slices.get(o).map(|m| (o.clone(), m.clone())));
        (owner, map)
    }

    fn restore_slice_state(&mut self, sk: &Arc<str>, saved: SliceState) {
        // Undo the new owner's entry, then put the old one back.
        if let Some(o) = self.slice_owner.remove(sk) {
            let name = sk.split_once('/').map(|(_, n)| n).unwrap_or_default();
            if let Some(m) = self.slices.get_mut(&o) {
                m.remove(name);
                if m.is_empty() {
                    self.slices.remove(&o);
                }
            }
        }
        let (owner, map) = saved;
        if let Some(o) = owner {
            self.slice_owner.insert(sk.clone(), o);
        }
        if let Some((o, m)) = map {
            self.slices.insert(o, m);
        }
    }
}

fn has_selector(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|sp| sp.selector.as_ref())
        .is_some_and(|m| !m.is_empty())
}

fn selector_matches(s: &Service, labels: &BTreeMap<String, String>) -> bool {
    s.spec
        .as_ref()
        .and_then(|sp| sp.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}
