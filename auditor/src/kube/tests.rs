//! ClusterWatch against the faked API server: first list, watch events, 410 Gone and
//! relist, an unreachable server at start and later, reconnects that catch up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::fake::FakeApi;
use super::*;

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"app": name, "pod-template-hash": "5d9f8"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\":true}"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-5d9f8"),
                                 "uid": "rs-1", "controller": true}],
            "finalizers": ["example.com/keep"]
        },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "ffmpeg", "image": "ffmpeg:7",
                "command": ["ffmpeg", "-i", "srt://origin:9000"],
                "env": [{"name": "SECRET_URL", "value": "rtmp://user:pw@cdn/live"}],
                "ports": [{"name": "rtmp", "containerPort": 1935, "protocol": "TCP"}]
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "tolerations": [{"operator": "Exists"}]
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": "192.168.0.10", "hostIPs": [{"ip": "192.168.0.10"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "ffmpeg", "image": "ffmpeg:7", "imageID": "sha256:abc",
                "containerID": format!("containerd://{name}0123"), "ready": true, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            }]
        }
    })
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name},
                        "managedFields": [{"manager": "kubectl"}]},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns, "annotations": {"a": "b"}},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                    "ports": [{"name": "rtmp", "port": 1935, "targetPort": "rtmp", "protocol": "TCP"}]},
           "status": {"loadBalancer": {}}})
}

fn slice(ns: &str, svc: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-abcde"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip], "conditions": {"ready": true},
                          "hints": {"forZones": [{"name": "a"}]}, "zone": "a"}],
           "ports": [{"name": "rtmp", "port": 1935, "protocol": "TCP"}]})
}

fn policy(ns: &str, name: &str, port: u16) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns,
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
           "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"ports": [{"port": port, "protocol": "TCP"}]}]}})
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                        "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
           "spec": {"podCIDR": "10.0.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                      "images": [{"names": ["ffmpeg:7"], "sizeBytes": 1}],
                      "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                                   "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                                   "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""}}})
}

fn seed(fake: &FakeApi) {
    fake.apply(node("node-a", "192.168.0.10"));
    fake.apply(node("node-b", "192.168.0.11"));
    fake.apply(namespace("media"));
    fake.apply(namespace("kube-system"));
    fake.apply(pod("media", "encoder", "node-a", "10.0.1.5"));
    fake.apply(pod("media", "packager", "node-b", "10.0.2.7"));
    fake.apply(service("media", "origin", "10.96.0.20"));
    fake.apply(slice("media", "origin", "10.0.2.7"));
    fake.apply(policy("media", "default-deny", 53));
}

// Generous: a loaded CI machine (other builds, a benchmark) slows the watchers' backoff loops.
const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` on every change (and every 50 ms) until it holds, or panics naming `what`.
async fn eventually(w: &ClusterWatch, what: &str, mut f: impl FnMut(&ClusterWatch) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f(w) {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), w.changed()).await;
    }
}

fn names<T: Resource>(v: &[T]) -> Vec<String> {
    v.iter()
        .map(|o| {
            let m = o.meta();
            match &m.namespace {
                Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or("")),
                None => m.name.clone().unwrap_or_default(),
            }
        })
        .collect()
}

fn pod_names(w: &ClusterWatch) -> Vec<String> {
    w.snapshot().map(|s| names(&s.pods)).unwrap_or_default()
}

#[tokio::test]
async fn first_list_then_adds_modifies_deletes() {
    let (fake, client) = FakeApi::start();
    seed(&fake);
    let w = ClusterWatch::start_with_client(client, Some("node-a".into()));
    tokio::time::timeout(WAIT, w.wait_until_ready())
        .await
        .expect("watchers synced");
    let s = w.snapshot().expect("snapshot after first list");
    assert_eq!(names(&s.namespaces), ["kube-system", "media"]);
    assert_eq!(names(&s.pods), ["media/encoder", "media/packager"]);
    assert_eq!(names(&s.services), ["media/origin"]);
    assert_eq!(names(&s.endpoint_slices), ["media/origin-abcde"]);
    assert_eq!(names(&s.network_policies), ["media/default-deny"]);
    assert_eq!(names(&s.nodes), ["node-a", "node-b"]);
    assert!(w.healthy());

    // Trimmed before caching: no managedFields, annotations, finalizers, env, images,
    // volumes; kept: labels, owners, IPs, node, named ports, phase.
    for p in &s.pods {
        assert!(p.metadata.managed_fields.is_none() && p.metadata.annotations.is_none());
        assert!(p.metadata.finalizers.is_none());
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["app"],
            p.metadata.name.clone().unwrap()
        );
        assert_eq!(
            p.metadata.owner_references.as_ref().unwrap()[0].kind,
            "ReplicaSet"
        );
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none() && spec.tolerations.is_none());
        let c = &spec.containers[0];
        assert!(
            c.env.is_none() && c.command.is_none() && c.image.is_none(),
            "{c:?}"
        );
        assert_eq!(c.ports.as_ref().unwrap()[0].name.as_deref(), Some("rtmp"));
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert!(st.pod_ip.is_some() && st.pod_ips.is_some() && st.host_ips.is_some());
        assert!(st.conditions.is_none());
    }
    // This node's pod keeps its container ids (from the node-local watcher), a peer's
    // does not.
    let statuses = |name: &str| {
        s.pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.status.as_ref()?.container_statuses.clone())
    };
    let local = statuses("encoder").expect("local pod keeps container statuses");
    assert_eq!(
        local[0].container_id.as_deref(),
        Some("containerd://encoder0123")
    );
    assert!(local[0].state.is_none());
    assert!(statuses("packager").is_none());
    assert!(s
        .namespaces
        .iter()
        .all(|n| n.spec.is_none() && n.status.is_none()));
    assert!(s.services[0].status.is_none() && s.services[0].metadata.annotations.is_none());
    assert!(s.endpoint_slices[0].endpoints[0].hints.is_none());
    assert!(s.network_policies[0].metadata.annotations.is_none());
    let n = &s.nodes[0];
    assert!(n.spec.is_none() && n.metadata.annotations.is_none());
    let st = n.status.as_ref().unwrap();
    assert_eq!(st.addresses.as_ref().unwrap().len(), 2);
    assert!(st.images.is_none() && st.node_info.is_none());
    // The snapshot feeds the policy engine as it is.
    crate::policy::Engine::build(&s).expect("engine from the live snapshot");

    // The node-local watcher lists with the field selector; all watchers list from the
    // watch cache (resourceVersion=0) and then watch.
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName=node-a")),
        "{reqs:#?}"
    );
    for c in [
        "/api/v1/namespaces?",
        "/apis/networking.k8s.io/v1/networkpolicies?",
    ] {
        assert!(
            reqs.iter()
                .any(|r| r.starts_with(c) && r.contains("watch=true")),
            "{c}: {reqs:#?}"
        );
        assert!(
            reqs.iter()
                .any(|r| r.starts_with(c) && r.contains("resourceVersion=0")),
            "{c}: {reqs:#?}"
        );
    }

    // Adds, modifies, deletes.
    let g0 = w.generation();
    fake.apply(pod("media", "uploader", "node-b", "10.0.2.9"));
    fake.apply(policy("media", "default-deny", 1935));
    fake.delete("Service", "media", "origin");
    let mut ns = namespace("media");
    ns["metadata"]["labels"]["team"] = json!("video");
    fake.apply(ns);
    eventually(
        &w,
        "uploader added, policy modified, service deleted, ns relabelled",
        |w| {
            let Some(s) = w.snapshot() else { return false };
            names(&s.pods) == ["media/encoder", "media/packager", "media/uploader"]
                && s.services.is_empty()
                && s.network_policies[0]
                    .spec
                    .as_ref()
                    .unwrap()
                    .egress
                    .as_ref()
                    .unwrap()[0]
                    .ports
                    .as_ref()
                    .unwrap()[0]
                    .port
                    == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1935))
                && s.namespaces[1]
                    .metadata
                    .labels
                    .as_ref()
                    .unwrap()
                    .get("team")
                    .map(String::as_str)
                    == Some("video")
        },
    )
    .await;
    assert!(w.generation() >= g0 + 4, "{} -> {}", g0, w.generation());

    // A pod of this node deleted: gone from both caches.
    fake.delete("Pod", "media", "encoder");
    eventually(&w, "encoder deleted", |w| {
        pod_names(w) == ["media/packager", "media/uploader"]
    })
    .await;
    assert!(w.healthy());
}

#[tokio::test]
async fn unreachable_at_start_then_synced_when_back() {
    let (fake, client) = FakeApi::start();
    seed(&fake);
    fake.set_down(true);
    let w = ClusterWatch::start_with_client(client, Some("node-a".into()));
    // Keeps trying; no snapshot, not healthy, nothing changed.
    eventually(&w, "a failed request", |_| !fake.requests().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.snapshot().is_none());
    assert!(!w.healthy());
    assert_eq!(w.generation(), 0);
    fake.set_down(false);
    tokio::time::timeout(WAIT, w.wait_until_ready())
        .await
        .expect("synced once the API server is back");
    assert_eq!(pod_names(&w), ["media/encoder", "media/packager"]);
    eventually(&w, "healthy", ClusterWatch::healthy).await;
}

#[tokio::test]
async fn outage_keeps_cache_and_resumed_watch_catches_up() {
    let (fake, client) = FakeApi::start();
    seed(&fake);
    let w = ClusterWatch::start_with_client(client, Some("node-a".into()));
    tokio::time::timeout(WAIT, w.wait_until_ready())
        .await
        .expect("synced");
    eventually(&w, "all watches open", |_| fake.open_watches() == 7).await;

    // The API server goes away; the watchers see their watches end and fail to restart.
    fake.set_down(true);
    eventually(&w, "unhealthy during the outage", |w| !w.healthy()).await;
    // Changes the agent cannot see yet.
    fake.apply(pod("media", "uploader", "node-a", "10.0.1.9"));
    fake.delete("Pod", "media", "packager");
    fake.apply(policy("media", "allow-rtmp", 1935));
    // The cache is not lost.
    let s = w
        .snapshot()
        .expect("last good snapshot kept during the outage");
    assert_eq!(names(&s.pods), ["media/encoder", "media/packager"]);
    assert_eq!(names(&s.network_policies), ["media/default-deny"]);

    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    fake.set_down(false);
    eventually(&w, "caught up after the outage", |w| {
        let Some(s) = w.snapshot() else { return false };
        names(&s.pods) == ["media/encoder", "media/uploader"]
            && names(&s.network_policies) == ["media/allow-rtmp", "media/default-deny"]
    })
    .await;
    eventually(&w, "healthy again", ClusterWatch::healthy).await;
    // Caught up by resuming the watches from their resourceVersion, not by relisting.
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert_eq!(lists_before, lists_after, "{:#?}", fake.requests());
    // The node-local watcher saw the new pod of this node.
    let s = w.snapshot().unwrap();
    let up = s
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("uploader"))
        .unwrap();
    assert!(up.status.as_ref().unwrap().container_statuses.is_some());
}

#[tokio::test]
async fn gone_410_relists_and_drops_what_was_deleted_meanwhile() {
    let (fake, client) = FakeApi::start();
    seed(&fake);
    let w = ClusterWatch::start_with_client(client, None);
    tokio::time::timeout(WAIT, w.wait_until_ready())
        .await
        .expect("synced");
    eventually(&w, "all watches open", |_| fake.open_watches() == 6).await;
    let before = w.cluster().expect("view once synced");
    assert!(before.engine.pod_id("media", "packager").is_some());
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();

    // Watches cut; while they are away, objects change and the history is compacted, so
    // the resumed watches get 410 Gone and the watchers relist.
    fake.set_down(true);
    eventually(&w, "unhealthy", |w| !w.healthy()).await;
    fake.delete("Pod", "media", "packager");
    fake.delete("NetworkPolicy", "media", "default-deny");
    fake.apply(pod("media", "uploader", "node-b", "10.0.2.9"));
    fake.compact(false);
    assert_eq!(
        pod_names(&w),
        ["media/encoder", "media/packager"],
        "cache kept"
    );
    fake.set_down(false);
    eventually(&w, "relisted", |w| {
        let Some(s) = w.snapshot() else { return false };
        names(&s.pods) == ["media/encoder", "media/uploader"] && s.network_policies.is_empty()
    })
    .await;
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "a relist after 410");
    // The view is rebuilt from the relisted caches: what was deleted meanwhile is gone.
    eventually(&w, "view relisted", |w| {
        w.cluster().is_some_and(|c| {
            c.engine.pod_id("media", "packager").is_none()
                && c.engine.pod_id("media", "uploader").is_some()
                && c.engine.policies().is_empty()
        })
    })
    .await;
    let c = w.cluster().unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(c.endpoint_of_ip(ip("10.0.2.7")), None, "packager's IP");
    assert_eq!(
        c.endpoint_of_ip(ip("10.0.2.9"))
            .and_then(|e| e.pod)
            .as_deref(),
        Some("uploader")
    );
    assert!(w.view_stats().builds >= 2, "{:?}", w.view_stats());
    eventually(&w, "healthy again", ClusterWatch::healthy).await;

    // 410 on an open watch: relist, cache kept meanwhile, catches up.
    eventually(&w, "all watches open again", |_| fake.open_watches() == 6).await;
    fake.apply(service("media", "edge", "10.96.0.30"));
    eventually(&w, "edge seen", |w| {
        w.snapshot()
            .is_some_and(|s| names(&s.services) == ["media/edge", "media/origin"])
    })
    .await;
    fake.compact(true);
    fake.delete("Service", "media", "edge");
    eventually(&w, "edge gone after relist", |w| {
        w.snapshot()
            .is_some_and(|s| names(&s.services) == ["media/origin"])
    })
    .await;
}

#[tokio::test]
async fn dropped_watch_reconnects_without_error() {
    let (fake, client) = FakeApi::start();
    seed(&fake);
    let w = ClusterWatch::start_with_client(client, None);
    tokio::time::timeout(WAIT, w.wait_until_ready())
        .await
        .expect("synced");
    eventually(&w, "all watches open", |_| fake.open_watches() == 6).await;
    fake.drop_watches();
    fake.apply(namespace("cdn"));
    eventually(&w, "namespace seen after reconnect", |w| {
        w.snapshot()
            .is_some_and(|s| names(&s.namespaces) == ["cdn", "kube-system", "media"])
    })
    .await;
    assert!(w.healthy());
}

#[test]
fn trimming_keeps_what_the_engine_needs() {
    let mut p: Pod = serde_json::from_value(pod("media", "encoder", "node-a", "10.0.1.5")).unwrap();
    let mut local = p.clone();
    trim_peer_pod(&mut p);
    trim_local_pod(&mut local);
    let peer = serde_json::to_value(&p).unwrap();
    assert_eq!(
        peer,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "encoder", "namespace": "media",
                "labels": {"app": "encoder", "pod-template-hash": "5d9f8"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "encoder-5d9f8",
                                     "uid": "rs-1", "controller": true}]
            },
            "spec": {"nodeName": "node-a",
                     "containers": [{"name": "ffmpeg",
                                     "ports": [{"name": "rtmp", "containerPort": 1935, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.1.5", "podIPs": [{"ip": "10.0.1.5"}],
                       "hostIP": "192.168.0.10", "hostIPs": [{"ip": "192.168.0.10"}]}
        })
    );
    let st = local.status.unwrap().container_statuses.unwrap();
    assert_eq!(
        st[0].container_id.as_deref(),
        Some("containerd://encoder0123")
    );
    assert!(st[0].state.is_none());
}

#[test]
fn trimming_a_service_keeps_its_load_balancer_addresses() {
    let mut svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ingest", "namespace": "media",
                     "annotations": {"metallb.universe.tf/ip-allocated-from-pool": "edge"}},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.40.10", "externalIPs": ["192.0.2.50"],
                 "selector": {"app": "ingest"}, "ports": [{"port": 5000, "protocol": "UDP"}]},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10", "ipMode": "VIP", "ports": [{"port": 5000, "protocol": "UDP"}]},
            {"hostname": "lb.example.net"}]},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "x", "message": "",
                                   "lastTransitionTime": "2026-12-03T09:00:00Z"}]}
    }))
    .unwrap();
    trim_service(&mut svc);
    let v = serde_json::to_value(&svc).unwrap();
    assert_eq!(
        v["status"],
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]}})
    );
    assert_eq!(v["spec"]["externalIPs"], json!(["192.0.2.50"]));
    assert!(v["metadata"].get("annotations").is_none(), "{v}");
}

#[tokio::test]
async fn bad_kubeconfig_is_an_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("auditor-kube-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.yaml");
    let err = ClusterWatch::start(KubeOptions {
        kubeconfig: Some(missing.clone()),
        node_name: None,
    })
    .await
    .err()
    .expect("missing kubeconfig is an error");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let garbage = dir.join("garbage.yaml");
    std::fs::write(&garbage, "clusters: 3\n").unwrap();
    let err = ClusterWatch::start(KubeOptions {
        kubeconfig: Some(garbage.clone()),
        node_name: None,
    })
    .await
    .err()
    .expect("invalid kubeconfig is an error");
    assert!(err.to_string().contains("garbage.yaml"), "{err}");
    // A valid kubeconfig whose server is unreachable starts fine (nothing is contacted).
    let ok = dir.join("ok.yaml");
    std::fs::write(
        &ok,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {server: 'http://127.0.0.1:9'}\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let w = ClusterWatch::start(KubeOptions {
        kubeconfig: Some(ok),
        node_name: Some("node-a".into()),
    })
    .await
    .expect("starts although the API server is unreachable");
    assert!(w.snapshot().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A writer for a test subscriber that keeps what was logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn one_warning_per_outage_and_one_line_when_it_is_over() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded: every watcher task logs through this.
    let _guard = tracing::subscriber::set_default(subscriber);
    // tracing caches each callsite's interest for the whole process. While only one
    // dispatcher exists, a callsite first hit on another test's thread (no subscriber
    // there) is cached as "never", and this test would miss its warning (seen for the
    // second outage's, whose callsite other kube tests reach first). A second live
    // dispatcher makes every rebuild ask all of them; the rebuild applies that now.
    let _anchor = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish(),
    );
    tracing::callsite::rebuild_interest_cache();
    let text = || String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let count = |needle: &str| text().matches(needle).count();

    let (fake, client) = FakeApi::start();
    seed(&fake);
    fake.set_down(true);
    let w = ClusterWatch::start_with_client(client, Some("node-a".into()));
    // Seven watchers failing, each retrying: one warning, saying attribution is IP-only.
    eventually(&w, "several failed requests", |_| {
        fake.requests().len() >= 12
    })
    .await;
    assert_eq!(count("Kubernetes API unreachable"), 1, "{}", text());
    assert_eq!(
        count("attribution is IP-only until it is back"),
        1,
        "{}",
        text()
    );
    fake.set_down(false);
    eventually(&w, "healthy", ClusterWatch::healthy).await;
    assert_eq!(count("Kubernetes API reachable again"), 1, "{}", text());

    // A second outage, with a cache: its own single warning, naming the stale view.
    eventually(&w, "all watches open", |_| fake.open_watches() == 7).await;
    let before = fake.requests().len();
    fake.set_down(true);
    eventually(&w, "several failed requests", |_| {
        fake.requests().len() >= before + 12
    })
    .await;
    // The failed requests are counted by the fake before the watchers handle their
    // errors: on a loaded machine the warning can come a little later.
    eventually(&w, "the second outage's warning", |_| {
        count("Kubernetes API unreachable") >= 2
    })
    .await;
    assert_eq!(count("Kubernetes API unreachable"), 2, "{}", text());
    assert_eq!(
        count("attributing with the last cluster view"),
        1,
        "{}",
        text()
    );
    fake.set_down(false);
    eventually(&w, "healthy", ClusterWatch::healthy).await;
    assert_eq!(count("Kubernetes API reachable again"), 2, "{}", text());
}

const UPLOADER_UID: &str = "0b5e1f52-7d3c-4a8e-9f21-3c4d5e6f7a8b";

#[tokio::test]
async fn view_follows_pod_slice_and_policy_changes_without_a_rebuild() {
    let (fake, client) = FakeApi::start();
    seed(&fake);
    let w = ClusterWatch::start_with_client(client, Some("node-a".into()));
    tokio::time::timeout(WAIT, w.wait_until_ready())
        .await
        .expect("synced");
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let first = w.cluster().expect("view once synced");
    assert_eq!(w.view_stats().builds, 1);
    assert_eq!(first.endpoint_of_ip(ip("10.0.2.9")), None);
    let cgroup = format!("/kubepods/besteffort/pod{UPLOADER_UID}/{}", "ab".repeat(32));
    assert_eq!(first.pod_of_cgroup(&cgroup), None);

    // A pod created through the API server: attributed by IP and by cgroup (uid).
    let mut p = pod("media", "uploader", "node-b", "10.0.2.9");
    p["metadata"]["uid"] = json!(UPLOADER_UID);
    fake.apply(p);
    eventually(&w, "uploader in the view", |w| {
        w.cluster()
            .is_some_and(|c| c.endpoint_of_ip(ip("10.0.2.9")).is_some())
    })
    .await;
    let c = w.cluster().unwrap();
    let e = c.endpoint_of_ip(ip("10.0.2.9")).unwrap();
    assert_eq!(
        (
            e.namespace.as_deref(),
            e.pod.as_deref(),
            e.workload.as_deref()
        ),
        (Some("media"), Some("uploader"), Some("Deployment/uploader"))
    );
    let id = c.pod_of_cgroup(&cgroup).expect("cgroup -> uploader");
    assert_eq!(c.engine.pod_name(id), "media/uploader");
    // default-deny (Egress, port 53 only) selects the new pod too.
    assert_eq!(
        c.verdict(
            ip("10.0.2.9"),
            ip("203.0.113.9"),
            53,
            crate::flowlog::Protocol::Tcp
        ),
        (true, "allowed".into())
    );
    assert_eq!(
        c.verdict(ip("10.0.2.9"), ip("203.0.113.9"), 80, crate::flowlog::Protocol::Tcp),
        (
            false,
            "denied: media/uploader isolated for egress by media/default-deny, no rule allows 80/TCP".into()
        )
    );
    // The view held before is a snapshot of its own (copy on write).
    assert_eq!(first.endpoint_of_ip(ip("10.0.2.9")), None);

    // An EndpointSlice and a policy changed.
    fake.apply(slice("media", "origin", "10.0.1.5"));
    fake.apply(policy("media", "default-deny", 80));
    eventually(&w, "slice and policy in the view", |w| {
        w.cluster().is_some_and(|c| {
            c.backends(ip("10.96.0.20"), 1935, crate::flowlog::Protocol::Tcp)
                == [(ip("10.0.1.5"), 1935)]
                && c.verdict(
                    ip("10.0.2.9"),
                    ip("203.0.113.9"),
                    80,
                    crate::flowlog::Protocol::Tcp,
                )
                .0
        })
    })
    .await;

    // A policy the engine rejects: logged, and the view keeps the version before it.
    let g = w.generation();
    fake.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "media"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "bogus"}}]}]}}),
    );
    eventually(&w, "bad policy cached", |w| {
        w.generation() > g
            && w.snapshot().is_some_and(|s| {
                s.network_policies[0]
                    .spec
                    .as_ref()
                    .unwrap()
                    .egress
                    .as_ref()
                    .unwrap()[0]
                    .to
                    .is_some()
            })
    })
    .await;
    let c = w.cluster().unwrap();
    let tcp = crate::flowlog::Protocol::Tcp;
    assert!(c.verdict(ip("10.0.2.9"), ip("203.0.113.9"), 80, tcp).0);
    assert!(!c.verdict(ip("10.0.2.9"), ip("203.0.113.9"), 443, tcp).0);

    // The pod deleted: gone from both indexes.
    fake.delete("Pod", "media", "uploader");
    eventually(&w, "uploader gone from the view", |w| {
        w.cluster()
            .is_some_and(|c| c.endpoint_of_ip(ip("10.0.2.9")).is_none())
    })
    .await;
    let c = w.cluster().unwrap();
    assert_eq!(c.pod_of_cgroup(&cgroup), None);
    assert_eq!(c.engine.pods().len(), 2);
    // Every change was applied in place: one build, at the first sync.
    let stats = w.view_stats();
    assert_eq!(stats.builds, 1, "{stats:?}");
    assert!(stats.updates >= 4, "{stats:?}");
}
