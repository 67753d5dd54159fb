//! The cluster end to end with the real binaries: a fake API server in its own process
//! over HTTPS (`fake-apiserver`), two simulated nodes, one `auditor record` per node (node
//! name from the environment as the DaemonSet sets it, its own cgroup subtree,
//! `--kubeconfig` at the fake, `--flows-auth kubernetes`). While recording: a pod created
//! and one deleted (attribution follows), a NetworkPolicy added (the verdict of the drop
//! alert follows), an API outage with a pod created meanwhile (recording goes on,
//! attribution catches up). Then `auditor collect` through the fake's pod proxy merges
//! both nodes, with a token it minted, while a caller without one is refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::apiserver::ApiServer;
use integration_tests::node::{cleanup_stale, Node};
use integration_tests::*;
use serde_json::{json, Value};

const AGENT: &str = "system:serviceaccount:auditor:auditor";
const COLLECTOR: &str = "system:serviceaccount:auditor:auditor-collect";

fn agent_pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "auditor",
            "labels": {"app.kubernetes.io/name": "auditor", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "localhost/auditor:0.1.0"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip}})
}

/// Waits until some record of `rec`'s flow log satisfies `f`; returns it.
fn wait_record(rec: &Recorder, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let flows = read_jsonl(&rec.log);
        if let Some(r) = flows.iter().find(|r| f(r)) {
            return r.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: no such record after 30 s in\n{}\nstderr:\n{}",
                flows
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                rec.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn healthz(addr: &str) -> (u16, String) {
    http_get(addr, "/healthz", Duration::from_secs(3)).unwrap_or((0, String::new()))
}

/// Waits until the agent's cluster view is synced (its /healthz says plain `ok`).
fn wait_synced(addr: &str, rec: &Recorder) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = healthz(addr);
        if code == 200 && body.trim() == "ok" {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "agent {addr} not synced after 60 s: {code} {body:?}\n{}",
                rec.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn connect(node: &Node, pod: &str, ip: &str, port: u16) -> bool {
    let p = node.pod("media", pod);
    node.run_in(
        p,
        &format!("python3 -c \"import socket;socket.create_connection(('{ip}',{port}),timeout=2).close()\""),
    )
    .0
}

fn pod_of(e: &Value) -> Option<&str> {
    e["pod"].as_str()
}

fn curl_status(args: &str) -> String {
    must(&format!("curl -s -o /dev/null -w '%{{http_code}}' {args}"))
        .trim()
        .to_owned()
}

#[test]
fn two_nodes_one_agent_each_through_a_fake_api_server() {
    let Some(()) = privileged("cluster end to end") else {
        return;
    };
    node::exit_cleanly_on_signals();
    cleanup_stale("ka");
    cleanup_stale("kb");
    let dir = std::env::temp_dir().join(format!("auditor-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut api = ApiServer::start(Path::new(env!("CARGO_BIN_EXE_fake-apiserver")), &dir);

    // Node A: transcoder -> ingest:5000, and a probe pod created later. Node B: uploader
    // -> storage:8080/8081/8082, and a pod created during the outage.
    let mut a = Node::numbered("ka", 1);
    let mut b = Node::numbered("kb", 2);
    let transcoder = a.add_pod(
        "media",
        "transcoder",
        11,
        &[("app", "transcoder")],
        &[],
        Some(("ReplicaSet", "transcoder-7d9f8")),
    );
    let ingest = a.add_pod(
        "media",
        "ingest",
        12,
        &[("app", "ingest")],
        &[("rtmp", 5000, "TCP")],
        Some(("ReplicaSet", "ingest-5c4b3")),
    );
    let uploader = b.add_pod(
        "media",
        "uploader",
        11,
        &[("app", "uploader")],
        &[],
        Some(("ReplicaSet", "uploader-6f5e4")),
    );
    let storage = b.add_pod(
        "media",
        "storage",
        12,
        &[("app", "storage")],
        &[("http", 8080, "TCP")],
        Some(("StatefulSet", "storage")),
    );
    a.spawn_in(&ingest, "python3 -m http.server 5000", None);
    for port in [8080, 8081, 8082] {
        b.spawn_in(&storage, &format!("python3 -m http.server {port}"), None);
    }
    wait_tcp(&ingest.netns, &ingest.ip, 5000);
    wait_tcp(&storage.netns, &storage.ip, 8082);

    api.apply_yaml(&a.snapshot_yaml(""));
    api.apply_yaml(&b.snapshot_yaml(""));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "auditor", "labels": {"kubernetes.io/metadata.name": "auditor"}}}));
    let port = free_port();
    let (addr_a, addr_b) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    api.apply(agent_pod("auditor-ka111", &a.node_name, "127.0.0.2"));
    api.apply(agent_pod("auditor-kb222", &b.node_name, "127.0.0.3"));
    // Who may do what (RBAC as deploy/rbac.yaml grants it).
    api.token("agent-token", AGENT);
    api.grant(AGENT, "create tokenreviews");
    api.grant(AGENT, "create subjectaccessreviews");
    api.token("alice-token", "alice");
    api.grant("alice", "get pods/proxy");
    api.grant("alice", "create serviceaccounts/token");
    api.grant(COLLECTOR, "get /flows");
    let agent_kc = api.kubeconfig("agent", "agent-token");
    let alice_kc = api.kubeconfig("alice", "alice-token");

    let start = |node: &Node, addr: &str, cgroup: &str| {
        Recorder::start_env(
            &[("AUDITOR_NODE_NAME", &node.node_name)],
            &[
                "--cgroup",
                cgroup,
                "--kubeconfig",
                agent_kc.to_str().unwrap(),
                "--listen",
                addr,
                "--flows-auth",
                "kubernetes",
                "--alerts",
                dir.join(format!("alerts-{}.jsonl", node.tag))
                    .to_str()
                    .unwrap(),
            ],
        )
    };
    // Node A's agent gets its cgroup as a path under the mount, node B's as the flow log
    // prints cgroups (from the cgroup v2 root).
    let rec_a = start(&a, &addr_a, a.cgroup_root.to_str().unwrap());
    let b_cgroup = format!(
        "/{}",
        b.cgroup_root
            .strip_prefix(cgroup2_root().expect("cgroup v2"))
            .expect("under the cgroup v2 root")
            .display()
    );
    let rec_b = start(&b, &addr_b, &b_cgroup);
    wait_synced(&addr_a, &rec_a);
    wait_synced(&addr_b, &rec_b);

    // 1. Attribution from the API: both ends named, on each node by its own agent.
    assert!(
        connect(&a, "transcoder", &ingest.ip, 5000),
        "transcoder -> ingest"
    );
    assert!(
        connect(&b, "uploader", &storage.ip, 8080),
        "uploader -> storage"
    );
    let r = wait_record(&rec_a, "transcoder -> ingest attributed", |r| {
        r["dst_port"] == 5000
            && r["direction"] == "egress"
            && pod_of(&r["src"]) == Some("transcoder")
    });
    assert_eq!(pod_of(&r["dst"]), Some("ingest"), "{r}");
    assert_eq!(r["src"]["workload"], "ReplicaSet/transcoder-7d9f8", "{r}");
    // The pod's UID is recorded too (offline tools resolve a flow by it first).
    assert_eq!(r["src"]["uid"], transcoder.uid.as_str(), "{r}");
    assert_eq!(r["dst"]["uid"], ingest.uid.as_str(), "{r}");
    wait_record(&rec_b, "uploader -> storage attributed", |r| {
        r["dst_port"] == 8080
            && pod_of(&r["src"]) == Some("uploader")
            && pod_of(&r["dst"]) == Some("storage")
    });
    assert!(
        !read_jsonl(&rec_b.log).iter().any(|r| r["dst_port"] == 5000),
        "node B's agent records only node B's pods"
    );

    // 2. A pod created while recording is attributed; once deleted, it is not.
    let probe = a.add_pod("media", "probe", 20, &[("app", "probe")], &[], None);
    a.spawn_in(&probe, "python3 -m http.server 8081", None);
    a.spawn_in(&probe, "python3 -m http.server 8082", None);
    wait_tcp(&probe.netns, &probe.ip, 8082);
    api.apply_yaml(&a.snapshot_yaml(""));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(connect(&a, "transcoder", &probe.ip, 8081));
    let r = wait_record(&rec_a, "flow to the new pod", |r| {
        r["dst_port"] == 8081 && r["direction"] == "egress" && pod_of(&r["dst"]).is_some()
    });
    assert_eq!(pod_of(&r["dst"]), Some("probe"), "{r}");
    api.delete("Pod", "media", "probe");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(connect(&a, "transcoder", &probe.ip, 8082));
    let r = wait_record(&rec_a, "flow to the deleted pod", |r| {
        r["dst_port"] == 8082 && r["direction"] == "egress"
    });
    assert_eq!(pod_of(&r["dst"]), None, "a deleted pod is not named: {r}");

    // 3. A NetworkPolicy applied (and enforced by the node): the drop alert's verdict
    // names it.
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "ingest-from-encoders", "namespace": "media"},
        "spec": {"podSelector": {"matchLabels": {"app": "ingest"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "encoder"}}}],
                              "ports": [{"port": 5000, "protocol": "TCP"}]}]}}),
    );
    a.nft(&format!(
        "table inet netpol {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ip saddr {} ip daddr {} tcp dport 5000 drop\n  }}\n}}\n",
        transcoder.ip, ingest.ip
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !connect(&a, "transcoder", &ingest.ip, 5000),
        "the node drops it now"
    );
    let alerts_a = dir.join("alerts-ka.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let found = read_jsonl(&alerts_a)
            .into_iter()
            .find(|x| x["kind"] == "drop" && x["port"] == 5000);
        if let Some(x) = found {
            break x;
        }
        assert!(
            Instant::now() < deadline,
            "no drop alert for ingest:5000:\n{}",
            rec_a.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alert["workload"], "ReplicaSet/transcoder-7d9f8", "{alert}");
    let verdict = alert["verdict"].as_str().unwrap_or("");
    assert!(
        verdict.starts_with("denied") && verdict.contains("ingest-from-encoders"),
        "the verdict follows the new policy: {alert}"
    );
    let metrics = must(&format!("curl -sf http://{addr_a}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("auditor_flows_total{")
                && l.contains("workload=\"ReplicaSet/transcoder-7d9f8\"")
                && l.contains("verdict=\"deny\"")),
        "{metrics}"
    );

    // 4. API outage: recording goes on (attribution from the cached view), a pod created
    // meanwhile is attributed once the API server is back.
    api.set_down(true);
    let t_down = Instant::now();
    let (code, body) = healthz(&addr_b);
    assert_eq!(code, 200, "still recording: {body}");
    assert!(connect(&b, "uploader", &storage.ip, 8081));
    wait_record(
        &rec_b,
        "flow during the outage, attributed from the cache",
        |r| r["dst_port"] == 8081 && pod_of(&r["src"]) == Some("uploader"),
    );
    let late = b.add_pod("media", "late", 30, &[("app", "late")], &[], None);
    api.apply_yaml(&b.snapshot_yaml(""));
    std::thread::sleep(Duration::from_secs(3));
    let (_, during) = healthz(&addr_b);
    assert!(
        during.contains("attributing with the last cluster view"),
        "/healthz says so during the outage: {during:?}"
    );
    api.set_down(false);
    wait_synced(&addr_b, &rec_b);
    eprintln!("outage of {:?}; node B's agent resynced", t_down.elapsed());
    assert!(connect(&b, "late", &storage.ip, 8082));
    wait_record(
        &rec_b,
        "the pod created during the outage, attributed after it",
        |r| r["dst_port"] == 8082 && pod_of(&r["src"]) == Some("late"),
    );
    drop(late);

    // 5. /flows checks its callers; /metrics and /healthz stay open.
    assert_eq!(
        curl_status(&format!("http://{addr_a}/flows")),
        "401",
        "no token"
    );
    assert_eq!(
        curl_status(&format!(
            "-H 'Authorization: Bearer alice-token' http://{addr_a}/flows"
        )),
        "401",
        "a token for the API server's audience is not one for the agent"
    );
    let minted: Value = serde_json::from_str(&must(&format!(
        "curl -sf --cacert {} -H 'Authorization: Bearer alice-token' -H 'Content-Type: application/json' \
         -d '{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenRequest\",\"spec\":{{\"audiences\":[\"auditor\"]}}}}' \
         {}/api/v1/namespaces/auditor/serviceaccounts/nobody/token",
        dir.join("ca.crt").display(),
        api.url
    )))
    .expect("a TokenRequest answer");
    let nobody = minted["status"]["token"].as_str().expect("a token");
    assert_eq!(
        curl_status(&format!(
            "-H 'auditor-authorization: Bearer {nobody}' http://{addr_a}/flows"
        )),
        "403",
        "a valid token without the grant"
    );
    assert_eq!(curl_status(&format!("http://{addr_a}/metrics")), "200");
    assert_eq!(curl_status(&format!("http://{addr_a}/healthz")), "200");
    let metrics = must(&format!("curl -sf http://{addr_a}/metrics"));
    assert!(
        metrics.contains("auditor_flows_requests_denied_total{reason=\"unauthenticated\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("auditor_flows_requests_denied_total{reason=\"forbidden\"} 1"),
        "{metrics}"
    );

    // 6. collect through the pod proxy, as alice: both nodes merged.
    let merged = dir.join("merged.jsonl");
    let out = Command::new(auditor_bin())
        .args(["collect", "--kubeconfig"])
        .arg(&alice_kc)
        .args([
            "--namespace",
            "auditor",
            "--port",
            &port.to_string(),
            "--since",
            "10m",
            "--output",
        ])
        .arg(&merged)
        .output()
        .expect("run auditor collect");
    let report = String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "collect exit {:?}:\n{report}",
        out.status.code()
    );
    assert!(
        report.contains(&format!("{} (auditor-ka111): ", a.node_name)),
        "{report}"
    );
    assert!(
        report.contains(&format!("{} (auditor-kb222): ", b.node_name)),
        "{report}"
    );
    let lines = read_jsonl(&merged);
    assert!(
        lines
            .iter()
            .any(|r| pod_of(&r["src"]) == Some("transcoder")),
        "node A's flows"
    );
    assert!(
        lines.iter().any(|r| pod_of(&r["src"]) == Some("late")),
        "node B's flows"
    );
    let firsts: Vec<String> = lines
        .iter()
        .map(|r| r["first_seen"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] <= w[1]),
        "merged in first_seen order"
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r
                .starts_with("/api/v1/namespaces/auditor/serviceaccounts/auditor-collect/token")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(
            |r| r.starts_with("/api/v1/namespaces/auditor/pods/auditor-ka111:")
                && r.contains("/proxy/flows?since=")
        ),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/apis/authentication.k8s.io/v1/tokenreviews")),
        "{requests:?}"
    );

    // 7. A third node whose agent is gone: reported with the proxy's reason at once (no
    // retries until --timeout), the others still merged, exit 3.
    api.apply(agent_pod("auditor-kc333", "kc-node-3", "127.0.0.4"));
    let started = Instant::now();
    let out = Command::new(auditor_bin())
        .args(["collect", "--kubeconfig"])
        .arg(&alice_kc)
        .args([
            "--namespace",
            "auditor",
            "--port",
            &port.to_string(),
            "--since",
            "10m",
            "--timeout",
            "30s",
            "--output",
        ])
        .arg(&merged)
        .output()
        .expect("run auditor collect");
    let report = String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(
        report.contains("kc-node-3 (auditor-kc333): FAILED: ")
            && report.contains("HTTP 503")
            && report.contains("connect"),
        "{report}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(report.contains("from 2 of 3 nodes"), "{report}");

    let (flows_a, summary_a) = rec_a.stop();
    let (_, summary_b) = rec_b.stop();
    eprintln!(
        "node A: {} records; summaries: A losses {} B losses {}",
        flows_a.len(),
        summary_a["losses"],
        summary_b["losses"]
    );
    drop((transcoder, uploader));
    let _ = std::fs::remove_dir_all(&dir);
}
