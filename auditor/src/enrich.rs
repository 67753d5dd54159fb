//! Attribution of recorded flows to the cluster (pure): cgroup -> pod by UID, IP ->
//! pod / node / external, and the live verdict of a flow in words.
//!
//! Cgroup -> pod goes through the engine's uid index, built once with the engine and
//! kept by its incremental updates (no per-pod search).

use std::net::IpAddr;

use crate::attribute::parse_cgroup_path;
use crate::cluster::Snapshot;
use crate::flowlog::{Endpoint, Protocol};
use crate::policy::{Engine, FlowResult, Party, PolicyError};

/// The cluster the recorder evaluates flows against.
///
/// Built once from a snapshot ([`Cluster::new`]); the live view then keeps it current
/// object by object through the engine's updates (`engine.apply_pod`, ...; see
/// `policy/update.rs`), which answer as a rebuild on the new snapshot would. Cloning is
/// shallow for pods and policies (copy-on-write behind an `Arc`).
#[derive(Clone)]
pub struct Cluster {
    pub engine: Engine,
}

impl Cluster {
    pub fn new(snap: &Snapshot) -> Result<Self, PolicyError> {
        Ok(Self {
            engine: Engine::build(snap)?,
        })
    }

    /// The pod whose cgroup this is (kubelet + runtime layouts), if the snapshot has it.
    pub fn pod_of_cgroup(&self, cgroup_path: &str) -> Option<usize> {
        let owner = parse_cgroup_path(cgroup_path).ok()??;
        self.engine.pod_by_uid(&owner.pod()?.uid)
    }

    pub fn endpoint_of_pod(&self, id: usize) -> Endpoint {
        let p = &self.engine.pods()[id];
        Endpoint {
            namespace: Some(p.namespace.clone()),
            pod: Some(p.name.clone()),
            uid: p.uid().map(str::to_owned),
            workload: Some(workload_name(&p.workload)),
            labels: p.labels.clone(),
        }
    }

    /// What an address is: a pod, a node (`workload: node/<name>`), or None for external.
    pub fn endpoint_of_ip(&self, ip: IpAddr) -> Option<Endpoint> {
        match self.engine.classify(ip) {
            Party::Pod(id) => Some(self.endpoint_of_pod(id)),
            Party::Node(name) => Some(Endpoint {
                namespace: None,
                pod: None,
                workload: Some(format!("node/{}", name.unwrap_or_else(|| ip.to_string()))),
                ..Endpoint::default()
            }),
            Party::External => None,
        }
    }

    /// Backend (ip, port) pairs of a Service ClusterIP:port, empty if it is none.
    pub fn backends(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Vec<(IpAddr, u16)> {
        self.engine
            .service_at(ip, port, protocol)
            .map(|s| s.backends.iter().map(|b| (b.ip, b.port)).collect())
            .unwrap_or_default()
    }

    /// "allowed" or "denied: ..." naming the policies, as an operator would say it.
    pub fn verdict(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> (bool, String) {
        let r = self.engine.evaluate(src, dst, port, protocol);
        (r.allowed, self.verdict_text(&r, port, protocol))
    }

    pub fn verdict_text(&self, r: &FlowResult, port: u16, protocol: Protocol) -> String {
        let t = r.deciding_target();
        if r.allowed {
            return "allowed".into();
        }
        let mut parts = Vec::new();
        for (side, what) in [(&t.egress, "egress"), (&t.ingress, "ingress")] {
            if side.allowed {
                continue;
            }
            let pod = side
                .pod
                .map(|p| self.engine.pod_name(p))
                .unwrap_or_default();
            let by: Vec<String> = side
                .isolated_by
                .iter()
                .map(|&p| self.engine.policy_name(p))
                .collect();
            let target_port = if t.dst_port != port {
                format!(" (target port {})", t.dst_port)
            } else {
                String::new()
            };
            parts.push(format!(
                "{pod} isolated for {what} by {}, no rule allows {port}/{protocol}{target_port}",
                by.join(", ")
            ));
        }
        format!("denied: {}", parts.join("; "))
    }
}

/// `namespace/Kind/name` -> `Kind/name` (the namespace is a field of its own).
fn workload_name(w: &str) -> String {
    let mut it = w.splitn(2, '/');
    let (_ns, rest) = (it.next(), it.next());
    rest.unwrap_or(w).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_writes_the_pods_uid() {
        let snap = crate::cluster::parse_snapshot(
            std::path::Path::new("c.yaml"),
            br#"
apiVersion: v1
kind: Pod
metadata: {name: transcoder-5f6d7c8b9-new12, namespace: media, uid: 3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90, labels: {app: transcoder}}
status: {phase: Running, podIP: 10.244.1.17}
"#,
        )
        .unwrap();
        let c = Cluster::new(&snap).unwrap();
        let e = c.endpoint_of_ip("10.244.1.17".parse().unwrap()).unwrap();
        assert_eq!(e.pod.as_deref(), Some("transcoder-5f6d7c8b9-new12"));
        assert_eq!(
            e.uid.as_deref(),
            Some("3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90")
        );
        assert_eq!(
            e.workload.as_deref(),
            Some("Pod/transcoder-5f6d7c8b9-new12")
        );
        let cgroup = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f0c2a4e_8b1d_4c6e_9a7f_2d5b8e1c4a90.slice";
        assert_eq!(c.pod_of_cgroup(cgroup), Some(0));
    }
}
