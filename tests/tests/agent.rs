//! The recorder as an agent: `/metrics`, `/healthz`, `/flows`, and drop alerts delivered
//! to a real Alertmanager (Debian's prometheus-alertmanager) on loopback.

use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::{json, Value};

struct Alertmanager {
    _proc: Bg,
    dir: std::path::PathBuf,
    url: String,
}

impl Alertmanager {
    fn start(port: u16) -> Option<Self> {
        if sh("command -v prometheus-alertmanager").stdout.is_empty() {
            eprintln!(
                "SKIPPED: prometheus-alertmanager is not installed (cargo xtask setup installs it)"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("aud-am-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("am.yml"),
            "route:\n  receiver: none\n  group_wait: 0s\nreceivers:\n- name: none\n",
        )
        .unwrap();
        let p = spawn(&format!(
            "prometheus-alertmanager --config.file={}/am.yml --storage.path={} --web.listen-address=127.0.0.1:{port} --cluster.listen-address=",
            dir.display(),
            dir.display()
        ));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sh(&format!("curl -sf {url}/-/ready")).status.success() {
            assert!(Instant::now() < deadline, "Alertmanager did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Self { _proc: p, dir, url })
    }

    fn alerts(&self) -> Vec<Value> {
        let out = must(&format!("curl -sf {}/api/v2/alerts", self.url));
        serde_json::from_str::<Value>(&out)
            .expect("alerts JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn metrics_flows_and_alerts_reach_a_real_alertmanager() {
    let Some(()) = privileged("agent endpoints") else {
        return;
    };
    let Some(am) = Alertmanager::start(19093) else {
        return;
    };
    let net = NetPair::new("m");
    let cg = Cgroup::new("agent");
    net.nft(&net.b, "table inet audtest {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 9 drop\n  }\n}\n");
    let rec = Recorder::start(&[
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:19190",
        "--alertmanager-url",
        &am.url,
        "--node-name",
        "test-node",
    ]);
    let health = must("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19190/healthz");
    assert_eq!(health, "200");
    let t0 = must("date -u +%Y-%m-%dT%H:%M:%SZ");
    let r = py(&cg, &net.a, &format!("import socket\ns=socket.socket()\ns.settimeout(10)\ntry:\n    s.connect(('{}',9))\nexcept OSError as e:\n    print('failed', e)\n", net.b4));
    assert!(r.contains("failed"), "{r}");
    std::thread::sleep(Duration::from_millis(800));

    let metrics = must("curl -sf http://127.0.0.1:19190/metrics");
    assert!(metrics.contains("auditor_up 1"), "{metrics}");
    assert!(
        metrics.contains("reason=\"NETFILTER_DROP\""),
        "drop counted:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("auditor_connect_timeouts_total") && l.ends_with(" 1")),
        "timeout counted:\n{metrics}"
    );
    assert!(
        metrics.contains("auditor_events_lost_total{kind=\"ringbuf\"} 0"),
        "losses exposed at zero:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("auditor_flows_total{") && l.contains("protocol=\"TCP\"")),
        "{metrics}"
    );

    let flows = must(&format!(
        "curl -sf 'http://127.0.0.1:19190/flows?since={}'",
        t0.trim()
    ));
    let lines: Vec<Value> = flows
        .lines()
        .map(|l| serde_json::from_str(l).expect("/flows serves JSON lines"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|f| f["dst_ip"] == json!(net.b4) && f["dst_port"] == 9),
        "{flows}"
    );
    let bad = must(
        "curl -s -o /dev/null -w '%{http_code}' 'http://127.0.0.1:19190/flows?since=yesterday'",
    );
    assert_eq!(bad, "400", "a bad since is a client error");

    // Alerts in Alertmanager, read back from its API.
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let alerts = am.alerts();
        let ours: Vec<Value> = alerts
            .into_iter()
            .filter(|a| a["labels"]["port"] == "9" && a["labels"]["node"] == "test-node")
            .collect();
        if ours
            .iter()
            .any(|a| a["labels"]["alertname"] == "AuditorFlowDropped")
            && ours
                .iter()
                .any(|a| a["labels"]["alertname"] == "AuditorConnectTimeouts")
        {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "alerts not in Alertmanager: {ours:?}\n{}",
            rec.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let drop = found
        .iter()
        .find(|a| a["labels"]["alertname"] == "AuditorFlowDropped")
        .unwrap();
    assert_eq!(drop["labels"]["reason"], "NETFILTER_DROP");
    assert_eq!(drop["labels"]["protocol"], "TCP");
    assert_eq!(drop["labels"]["process"], "python3");
    assert!(drop["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("NETFILTER_DROP"));
    let timeout = found
        .iter()
        .find(|a| a["labels"]["alertname"] == "AuditorConnectTimeouts")
        .unwrap();
    assert!(timeout["labels"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("connect timed out after"));
    let (_, summary) = rec.stop();
    assert!(summary["alerts"].as_u64().unwrap() >= 2);
}
