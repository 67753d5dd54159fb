//! A simulated Kubernetes node on one machine, for the demo and the end-to-end test.
//!
//! - The node is a network namespace that routes between pods, as Calico does: each
//!   pod is a network namespace with one `/32` address on `eth0` and a default route to
//!   the node, so every pod-to-pod packet crosses the node's `forward` hook, where the
//!   NetworkPolicies are enforced with nftables.
//! - Services are ClusterIPs DNATed to their backends in the node's `prerouting`
//!   (kube-proxy's job), so processes connect to the VIP and policies see the backend.
//! - Each pod has a cgroup v2 directory laid out as kubelet + containerd with the systemd
//!   driver name it (`kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`),
//!   below a `auditor-<tag>.slice` so nothing of the host's is touched.
//! - External peers ("the internet": a CDN) are namespaces outside the pod CIDR,
//!   reached through the node.
//! - `/etc/netns/<pod netns>/resolv.conf` points pods at the cluster DNS Service.
//!
//! Everything is removed on drop: processes, namespaces, cgroups, /etc/netns entries.
//! Traffic only ever goes between the namespaces made here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{cgroup2_root, must, sh};

/// A pod of the simulated node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `(name, port, protocol)` container ports.
    pub ports: Vec<(String, u16, String)>,
    /// Owner kind and name, e.g. ("ReplicaSet", "transcoder-7d9f8"); None for a bare pod.
    pub owner: Option<(String, String)>,
    pub netns: String,
    pub cgroup: PathBuf,
    pub container_id: String,
    pub host_if: String,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: String,
    /// (port name, port, target port, protocol)
    pub ports: Vec<(String, u16, u16, String)>,
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct External {
    pub name: String,
    pub ip: String,
    pub netns: String,
    pub host_if: String,
}

pub struct Node {
    pub tag: String,
    pub node_ns: String,
    pub node_name: String,
    pub node_ip: String,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub externals: Vec<External>,
    pub namespaces: Vec<String>,
    pub cgroup_root: PathBuf,
    /// Pods are `10.244.<subnet>.x`, the node `10.244.<subnet>.1`.
    pub subnet: u8,
    procs: Vec<Child>,
    seq: u32,
}

fn hex_id(seed: &str, len: usize) -> String {
    // A stable pseudo-random hex id from a seed (FNV-1a, repeated).
    let mut out = String::new();
    let mut h: u64 = 0xcbf29ce484222325;
    let mut i = 0u64;
    while out.len() < len {
        for b in seed.bytes().chain(i.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        let _ = write!(out, "{h:016x}");
        i += 1;
    }
    out.truncate(len);
    out
}

impl Node {
    /// Creates the node namespace. `tag` keeps names apart (demo vs test); at most 4 chars.
    pub fn new(tag: &str) -> Self {
        Self::numbered(tag, 1)
    }

    /// Node `n` of a cluster: named `<tag>-node-<n>`, pods in `10.244.<n>.0/24`.
    pub fn numbered(tag: &str, n: u8) -> Self {
        let node_ns = format!("{tag}-node");
        let _ = sh(&format!("ip netns del {node_ns} 2>/dev/null"));
        must(&format!("ip netns add {node_ns}"));
        must(&format!("ip -n {node_ns} link set lo up"));
        must(&format!(
            "ip netns exec {node_ns} sysctl -qw net.ipv4.ip_forward=1"
        ));
        // The node's own address (kubelet probes come from it).
        must(&format!("ip -n {node_ns} addr add 10.244.{n}.1/32 dev lo"));
        let root = cgroup2_root().expect("cgroup v2 is mounted");
        let cgroup_root = root.join(format!("auditor-{tag}.slice"));
        let _ = std::fs::create_dir_all(&cgroup_root);
        Node {
            tag: tag.to_owned(),
            node_ns,
            node_name: format!("{tag}-node-{n}"),
            node_ip: format!("10.244.{n}.1"),
            pods: vec![],
            services: vec![],
            externals: vec![],
            namespaces: vec![],
            cgroup_root,
            subnet: n,
            procs: vec![],
            seq: 0,
        }
    }

    fn next(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    pub fn add_namespace(&mut self, ns: &str) {
        if !self.namespaces.iter().any(|n| n == ns) {
            self.namespaces.push(ns.to_owned());
        }
    }

    /// A namespace with one `/32` address on `eth0`, routed through the node (Calico-style).
    fn attach_host(&self, netns: &str, host_if: &str, ip: &str) {
        let _ = sh(&format!("ip netns del {netns} 2>/dev/null"));
        must(&format!("ip netns add {netns}"));
        must(&format!(
            "ip link add eth0 netns {netns} type veth peer name {host_if} netns {}",
            self.node_ns
        ));
        must(&format!("ip -n {netns} link set lo up"));
        must(&format!("ip -n {netns} addr add {ip}/32 dev eth0"));
        must(&format!("ip -n {netns} link set eth0 up"));
        let gw = &self.node_ip;
        must(&format!("ip -n {netns} route add {gw} dev eth0 scope link"));
        must(&format!(
            "ip -n {netns} route add default via {gw} dev eth0"
        ));
        must(&format!(
            "ip -n {} addr add {gw}/32 dev {host_if} noprefixroute",
            self.node_ns
        ));
        must(&format!("ip -n {} link set {host_if} up", self.node_ns));
        must(&format!(
            "ip -n {} route add {ip}/32 dev {host_if}",
            self.node_ns
        ));
    }

    /// Adds a pod with address `10.244.<subnet>.<octet>`.
    pub fn add_pod(
        &mut self,
        namespace: &str,
        name: &str,
        octet: u8,
        labels: &[(&str, &str)],
        ports: &[(&str, u16, &str)],
        owner: Option<(&str, &str)>,
    ) -> Pod {
        self.add_namespace(namespace);
        let n = self.next();
        let ip = format!("10.244.{}.{octet}", self.subnet);
        let netns = format!("{}-p{n}", self.tag);
        let host_if = format!("{}c{n}", self.tag);
        self.attach_host(&netns, &host_if, &ip);
        let uid = {
            let h = hex_id(&format!("{namespace}/{name}"), 32);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        };
        let container_id = hex_id(&format!("ctr/{namespace}/{name}"), 64);
        let cgroup = self
            .cgroup_root
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ))
            .join(format!("cri-containerd-{container_id}.scope"));
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.display()));
        // Pod DNS: the cluster DNS Service, with the usual search path.
        let etc = PathBuf::from(format!("/etc/netns/{netns}"));
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/...");
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver 10.96.0.10\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:2\n"),
        )
        .expect("write resolv.conf");
        let pod = Pod {
            namespace: namespace.into(),
            name: name.into(),
            ip,
            uid,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| (n.to_string(), *p, proto.to_string()))
                .collect(),
            owner: owner.map(|(k, n)| (k.to_owned(), n.to_owned())),
            netns,
            cgroup,
            container_id,
            host_if,
        };
        self.pods.push(pod.clone());
        pod
    }

    /// An external host (outside the cluster) at `ip`, reached through the node.
    pub fn add_external(&mut self, name: &str, ip: &str) -> External {
        let n = self.next();
        let netns = format!("{}-x{n}", self.tag);
        let host_if = format!("{}x{n}", self.tag);
        self.attach_host(&netns, &host_if, ip);
        let x = External {
            name: name.into(),
            ip: ip.into(),
            netns,
            host_if,
        };
        self.externals.push(x.clone());
        x
    }

    /// A ClusterIP Service, DNATed in the node to the pods its selector matches.
    pub fn add_service(
        &mut self,
        namespace: &str,
        name: &str,
        cluster_ip: &str,
        selector: &[(&str, &str)],
        ports: &[(&str, u16, u16, &str)],
    ) {
        self.services.push(Service {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ip: cluster_ip.into(),
            ports: ports
                .iter()
                .map(|(n, p, t, proto)| (n.to_string(), *p, *t, proto.to_string()))
                .collect(),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }

    pub fn backends(&self, svc: &Service) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == svc.namespace
                    && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect()
    }

    /// Installs kube-proxy's DNAT rules for every Service (one backend each: the first).
    pub fn install_service_nat(&self) {
        let mut rules = String::from("table ip kubeproxy {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
        for s in &self.services {
            let Some(b) = self.backends(s).into_iter().next() else {
                continue;
            };
            for (_, port, target, proto) in &s.ports {
                let _ = writeln!(
                    rules,
                    "    ip daddr {} {} dport {port} dnat to {}:{target}",
                    s.cluster_ip,
                    proto.to_lowercase(),
                    b.ip
                );
            }
        }
        rules.push_str("  }\n}\n");
        self.nft(&rules);
    }

    /// Loads an nftables ruleset into the node namespace.
    pub fn nft(&self, ruleset: &str) {
        let path =
            std::env::temp_dir().join(format!("{}-{}.nft", self.node_ns, std::process::id()));
        std::fs::write(&path, ruleset).expect("write ruleset");
        let out = sh(&format!(
            "ip netns exec {} nft -f {}",
            self.node_ns,
            path.display()
        ));
        if !out.status.success() {
            panic!(
                "nft -f failed: {}\n{ruleset}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(path);
    }

    /// Deletes an nftables table from the node namespace (ignores a missing one).
    pub fn nft_delete_table(&self, family_table: &str) {
        let _ = sh(&format!(
            "ip netns exec {} nft delete table {family_table} 2>/dev/null",
            self.node_ns
        ));
    }

    /// The shell prefix that runs a command inside `pod` (its cgroup, then its namespace).
    pub fn in_pod(&self, pod: &Pod) -> String {
        format!(
            "sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"' sh",
            pod.cgroup.display(),
            pod.netns
        )
    }

    /// Starts a long-running process in a pod; it is killed when the node is dropped.
    pub fn spawn_in(&mut self, pod: &Pod, cmd: &str, log: Option<&std::path::Path>) -> u32 {
        let full = format!("{} {cmd}", self.in_pod(pod));
        self.spawn_raw(&full, log)
    }

    pub fn spawn_in_external(
        &mut self,
        x: &External,
        cmd: &str,
        log: Option<&std::path::Path>,
    ) -> u32 {
        let full = format!("ip netns exec {} {cmd}", x.netns);
        self.spawn_raw(&full, log)
    }

    pub fn spawn_on_node(&mut self, cmd: &str, log: Option<&std::path::Path>) -> u32 {
        let full = format!("ip netns exec {} {cmd}", self.node_ns);
        self.spawn_raw(&full, log)
    }

    fn spawn_raw(&mut self, full: &str, log: Option<&std::path::Path>) -> u32 {
        let (out, err) = match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("log file");
                (Stdio::from(f.try_clone().expect("dup")), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {full}"))
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{full}`: {e}"));
        let pid = child.id();
        self.procs.push(child);
        pid
    }

    /// Runs a command in a pod to completion; returns (success, combined output).
    pub fn run_in(&self, pod: &Pod, cmd: &str) -> (bool, String) {
        let out = sh(&format!("{} {cmd} 2>&1", self.in_pod(pod)));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn run_on_node(&self, cmd: &str) -> (bool, String) {
        let out = sh(&format!("ip netns exec {} {cmd} 2>&1", self.node_ns));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn pod(&self, namespace: &str, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    /// The cluster as `kubectl get ns,pods,svc,endpointslices -A -o yaml` would print it
    /// (a `kind: List`), plus `policies` (NetworkPolicy documents, YAML) appended as items.
    pub fn snapshot_yaml(&self, policies: &str) -> String {
        let mut y = String::from(
            "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n",
        );
        let mut nss = self.namespaces.clone();
        nss.sort();
        for ns in &nss {
            let _ = write!(
                y,
                "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: {ns}\n    labels:\n      kubernetes.io/metadata.name: {ns}\n  status:\n    phase: Active\n"
            );
        }
        for p in &self.pods {
            let _ = write!(y, "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: {}\n    namespace: {}\n    uid: \"{}\"\n", p.name, p.namespace, p.uid);
            if !p.labels.is_empty() {
                y.push_str("    labels:\n");
                for (k, v) in &p.labels {
                    let _ = writeln!(y, "      {k}: \"{v}\"");
                }
            }
            if let Some((kind, name)) = &p.owner {
                let api = if kind == "Job" { "batch/v1" } else { "apps/v1" };
                let _ = write!(y, "    ownerReferences:\n    - apiVersion: {api}\n      kind: {kind}\n      name: {name}\n      uid: \"{}\"\n      controller: true\n", hex_id(name, 8));
            }
            let _ = write!(y, "  spec:\n    nodeName: {}\n    containers:\n    - name: main\n      image: debian:bookworm\n", self.node_name);
            if !p.ports.is_empty() {
                y.push_str("      ports:\n");
                for (n, port, proto) in &p.ports {
                    let _ = write!(y, "      - name: {n}\n        containerPort: {port}\n        protocol: {proto}\n");
                }
            }
            let _ = write!(
                y,
                "  status:\n    phase: Running\n    hostIP: {}\n    podIP: {}\n    podIPs:\n    - ip: {}\n    containerStatuses:\n    - name: main\n      containerID: containerd://{}\n      ready: true\n      restartCount: 0\n      image: debian:bookworm\n      imageID: \"\"\n",
                self.node_ip, p.ip, p.ip, p.container_id
            );
        }
        for s in &self.services {
            let _ = write!(y, "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {}\n    namespace: {}\n  spec:\n    type: ClusterIP\n    clusterIP: {}\n    clusterIPs:\n    - {}\n    selector:\n", s.name, s.namespace, s.cluster_ip, s.cluster_ip);
            for (k, v) in &s.selector {
                let _ = writeln!(y, "      {k}: \"{v}\"");
            }
            y.push_str("    ports:\n");
            for (n, port, target, proto) in &s.ports {
                let _ = write!(y, "    - name: {n}\n      port: {port}\n      targetPort: {target}\n      protocol: {proto}\n");
            }
            let _ = write!(y, "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n    name: {}-abc12\n    namespace: {}\n    labels:\n      kubernetes.io/service-name: {}\n  addressType: IPv4\n  endpoints:\n", s.name, s.namespace, s.name);
            for b in self.backends(s) {
                let _ = write!(y, "  - addresses:\n    - {}\n    conditions:\n      ready: true\n    nodeName: {}\n    targetRef:\n      kind: Pod\n      name: {}\n      namespace: {}\n", b.ip, self.node_name, b.name, b.namespace);
            }
            y.push_str("  ports:\n");
            for (n, _, target, proto) in &s.ports {
                let _ = write!(
                    y,
                    "  - name: {n}\n    port: {target}\n    protocol: {proto}\n"
                );
            }
        }
        // Policies: documents of their own, indented as list items.
        for doc in policies
            .split("\n---")
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != "---")
        {
            let doc = doc.trim_start_matches("---").trim();
            if doc.is_empty() {
                continue;
            }
            let mut first = true;
            for line in doc.lines() {
                if line.trim_start().starts_with('#') {
                    continue;
                }
                if first {
                    let _ = writeln!(y, "- {line}");
                    first = false;
                } else {
                    let _ = writeln!(y, "  {line}");
                }
            }
        }
        y
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
        }
        for c in &mut self.procs {
            let _ = c.wait();
        }
        let mut all_ns: Vec<String> = self.pods.iter().map(|p| p.netns.clone()).collect();
        all_ns.extend(self.externals.iter().map(|x| x.netns.clone()));
        all_ns.push(self.node_ns.clone());
        for ns in &all_ns {
            let _ = sh(&format!(
                "ip netns pids {ns} 2>/dev/null | xargs -r kill -9"
            ));
        }
        for p in &self.pods {
            if let Ok(pids) = std::fs::read_to_string(p.cgroup.join("cgroup.procs")) {
                for pid in pids.split_whitespace() {
                    let _ = sh(&format!("kill -9 {pid}"));
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        for ns in &all_ns {
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        for p in &self.pods {
            for _ in 0..20 {
                if std::fs::remove_dir(&p.cgroup).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if let Some(parent) = p.cgroup.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// Removes what an earlier run with this tag left behind (a killed demo or test).
pub fn cleanup_stale(tag: &str) {
    let prefix = format!("{tag}-");
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&prefix) {
                let _ = sh(&format!(
                    "ip netns pids {name} | xargs -r kill -9; ip netns del {name}"
                ));
                let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
            }
        }
    }
    if let Some(root) = cgroup2_root() {
        let dir = root.join(format!("auditor-{tag}.slice"));
        if dir.exists() {
            let _ = sh(&format!(
                "find {} -name cgroup.procs -exec cat {{}} + | xargs -r kill -9",
                dir.display()
            ));
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = sh(&format!(
                "find {} -depth -type d -exec rmdir {{}} + 2>/dev/null",
                dir.display()
            ));
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// On SIGINT/SIGTERM, remember it; `check_interrupted` then unwinds, so every guard's
/// Drop removes what it made.
pub fn exit_cleanly_on_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether a signal asked us to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Panics (unwinding, so Drop cleans up) when a signal asked us to stop.
pub fn check_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        panic!("interrupted: cleaning up");
    }
}
