//! Observed beside predicted, with real traffic on a simulated node: a "host firewall"
//! outside the snapshot drops a flow that every NetworkPolicy allows. The agent's live view
//! says so (the drop alert names the finding and its likely cause, a Prometheus counter
//! counts the flow once however often it is tried), and `auditor diff` over the recorded flow log lists the flow as
//! blocked although allowed, while the flows that went through stay unremarkable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::node::{cleanup_stale, Node};
use integration_tests::*;
use serde_json::Value;

#[test]
fn a_drop_no_policy_explains_is_named_live_and_in_diff() {
    let Some(()) = privileged("observed beside predicted") else {
        return;
    };
    let tag = "ob1";
    cleanup_stale(tag);
    let mut node = Node::new(tag);
    node.add_pod("media", "packager", 10, &[("app", "packager")], &[], None);
    node.add_pod(
        "storage",
        "origin",
        20,
        &[("app", "origin")],
        &[("http", 8080, "TCP"), ("admin", 8081, "TCP")],
        None,
    );
    let packager = node.pod("media", "packager").clone();
    let origin = node.pod("storage", "origin").clone();
    let dir = std::env::temp_dir().join(format!("auditor-observed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // No NetworkPolicy at all: every flow is allowed.
    let snap = dir.join("cluster.yaml");
    std::fs::write(&snap, node.snapshot_yaml("")).unwrap();
    for port in [8080, 8081] {
        node.spawn_in(
            &origin,
            &format!(
                "python3 -m http.server {port} --bind 0.0.0.0 --directory {}",
                dir.display()
            ),
            None,
        );
    }
    // The host firewall: drops what goes to the origin's admin port.
    node.nft(&format!(
        "table inet hostfw {{\n  chain forward {{\n    type filter hook forward priority -5; policy accept;\n    ip daddr {} tcp dport 8081 drop\n  }}\n}}\n",
        origin.ip
    ));
    let flows = dir.join("flows.jsonl");
    let alerts = dir.join("alerts.jsonl");
    let ready = dir.join("ready");
    let mut rec = Command::new(auditor_bin())
        .args([
            "record",
            "--flush-interval",
            "300ms",
            "--listen",
            "127.0.0.1:19291",
        ])
        .arg("--cgroup")
        .arg(&node.cgroup_root)
        .arg("--cluster")
        .arg(&snap)
        .arg("--output")
        .arg(&flows)
        .arg("--alerts")
        .arg(&alerts)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--lock-file")
        .arg(dir.join("lock"))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("recorder.log")).unwrap(),
        ))
        .spawn()
        .expect("auditor record");
    let t = Instant::now();
    while !ready.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "recorder not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let get = |port: u16| {
        node.run_in(
            &packager,
            &format!(
                "python3 -c \"import urllib.request; urllib.request.urlopen('http://{}:{port}/', timeout=5).read()\"",
                origin.ip
            ),
        )
        .0
    };
    let t = Instant::now();
    while !get(8080) {
        assert!(t.elapsed() < Duration::from_secs(10), "origin :8080 serves");
        std::thread::sleep(Duration::from_millis(100));
    }
    // One process, two attempts: one flow of the agent (flows are per process).
    let (_, tried) = node.run_in(
        &packager,
        &format!(
            "python3 -c \"import socket\nfor i in range(2):\n  s=socket.socket(); s.settimeout(4)\n  try:\n    s.connect(('{}',8081)); print('connected')\n  except OSError as e:\n    print('failed', e)\"",
            origin.ip
        ),
    );
    assert_eq!(
        tried.matches("failed").count(),
        2,
        "the host firewall drops :8081: {tried}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let metrics = must("curl -sf http://127.0.0.1:19291/metrics");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    assert!(rec.wait().unwrap().success());

    // Live: the counter counts the flow once (two attempts, one flow), the alert says why.
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("auditor_flows_blocked_although_allowed_total{"))
        .collect();
    assert_eq!(
        counted,
        ["auditor_flows_blocked_although_allowed_total{namespace=\"media\",workload=\"Pod/packager\"} 1"],
        "{metrics}"
    );
    let alerts: Vec<Value> = read_jsonl(&alerts);
    let to_admin: Vec<&Value> = alerts.iter().filter(|a| a["port"] == 8081).collect();
    assert!(!to_admin.is_empty(), "alerts: {alerts:?}");
    for a in &to_admin {
        assert!(
            a["blocked_although_allowed"]
                .as_str()
                .is_some_and(|c| c
                    .starts_with("dropped by netfilter on this node although every NetworkPolicy")),
            "{a}"
        );
    }
    assert!(
        alerts.iter().all(|a| a["port"] != 8080),
        "nothing to say of the flow that worked: {alerts:?}"
    );

    // Offline: diff over the recorded log says the same.
    let out = Command::new(auditor_bin())
        .args(["diff", "-o", "json", "--cluster"])
        .arg(&snap)
        .arg("--flows")
        .arg(&flows)
        .output()
        .expect("auditor diff");
    assert_eq!(
        out.status.code(),
        Some(0),
        "all allowed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let blocked = v["summary"]["blocked_although_allowed"].as_array().unwrap();
    eprintln!("{}", serde_json::to_string_pretty(blocked).unwrap());
    assert!(
        blocked
            .iter()
            .any(|b| b["dst_ip"] == origin.ip.as_str() && b["dst_port"] == 8081),
        "{blocked:?}"
    );
    assert!(blocked.iter().all(|b| b["dst_port"] != 8080), "{blocked:?}");
    let b = blocked.iter().find(|b| b["dst_port"] == 8081).unwrap();
    assert!(
        b["observed"]
            .as_str()
            .unwrap()
            .contains("dropped (NETFILTER_DROP)"),
        "{b}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
