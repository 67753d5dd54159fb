//! End to end: the demo's scenario (tests/src/demo.rs) with its outcome checked.
//! Real ffmpeg, real eBPF, NetworkPolicies enforced with nftables on a simulated node.

use integration_tests::demo::{self, Options};
use integration_tests::*;
use serde_json::Value;

#[test]
fn media_pipelines_recorded_diffed_fixed_and_verified() {
    let Some(()) = privileged("demo end to end") else {
        return;
    };
    integration_tests::node::cleanup_stale("e2");
    let out = std::env::temp_dir().join(format!("auditor-e2e-{}", std::process::id()));
    let o = demo::run(Options {
        out: out.clone(),
        auditor: auditor_bin(),
        tag: "e2".into(),
        verbose: true,
    });
    let [r1, r2, r3] = &o.rounds[..] else {
        panic!("three rounds")
    };

    // Round 1, too tight: DNS forgotten in `transcode`, so the pipelines fail and the
    // auditor says why.
    assert!(
        !r1.live_ok && !r1.hls_ok,
        "too-tight policies break the pipelines"
    );
    assert!(r1.drops() > 0 && r1.denied() > 0);
    let dns: Vec<&Value> = r1
        .flows
        .iter()
        .filter(|f| f["dst_port"] == 53 && f["protocol"] == "UDP")
        .collect();
    assert!(!dns.is_empty(), "DNS lookups recorded");
    assert!(
        dns.iter().any(|f| f["comm"] == "ffmpeg"),
        "ffmpeg's own lookups: {dns:?}"
    );
    assert!(
        dns.iter()
            .all(|f| f["src"]["pod"] == "transcoder-7d9f8c6b4-k8s2n"),
        "attributed to the transcoder pod by cgroup"
    );
    // Every denied flow was alerted, with the flow and the policy that denies it.
    for f in r1.diff["flows"].as_array().expect("diff flows") {
        if f["verdict"] != "deny" {
            continue;
        }
        let port = f["dst_port"].as_u64().unwrap();
        let alerted = r1.recorder_log.lines().any(|l| {
            l.contains("drop:")
                && l.contains(&format!(" {port}/"))
                && l.contains("denied:")
                && l.contains("transcode/default-deny")
        });
        assert!(
            alerted,
            "denied flow to port {port} alerted with its policy:\n{}",
            r1.recorder_log
        );
    }

    // Round 2, fix mode applied: DNS works; storage and the second UDP port are still
    // blocked and now show up as drops and connect timeouts.
    assert!(r2.drops() > 0, "round 2 reveals the flows DNS hid");
    let ff2: Vec<&Value> = r2.flows.iter().filter(|f| f["comm"] == "ffmpeg").collect();
    assert!(
        ff2.iter()
            .any(|f| f["dst_port"] == 5001 && f["protocol"] == "UDP"),
        "UDP to the backup port: {ff2:?}"
    );
    assert!(
        ff2.iter()
            .any(|f| f["dns_name"] == "gateway.storage.svc.cluster.local"),
        "storage upload named by DNS: {ff2:?}"
    );
    assert!(
        ff2.iter()
            .any(|f| f["dns_name"] == "cdn.example.test" && f["dst_ip"] == "198.51.100.10"),
        "external CDN named: {ff2:?}"
    );
    assert!(
        ff2.iter()
            .all(|f| f["src"]["pod"] == "transcoder-7d9f8c6b4-k8s2n"),
        "every ffmpeg flow from the transcoder pod"
    );
    // The sidecar is told apart from ffmpeg.
    let side: Vec<&Value> = r2
        .flows
        .iter()
        .filter(|f| f["comm"] == "python3" && f["dst_port"] == 80 && f["direction"] == "egress")
        .collect();
    assert!(
        !side.is_empty(),
        "the sidecar's heartbeats are its own flows"
    );
    assert!(
        r2.recorder_log.contains("connect_timeout:"),
        "storage connect timeouts alerted:\n{}",
        r2.recorder_log
    );
    // A real Prometheus scraped the recorder and the shipped drop alert fired.
    if let Some(firing) = &r2.prometheus_alerts {
        assert!(
            firing
                .iter()
                .any(|a| a["labels"]["alertname"] == "AuditorFlowDropped"
                    && a["labels"]["namespace"] == "transcode"
                    && a["labels"]["reason"] == "NETFILTER_DROP"),
            "AuditorFlowDropped firing for transcode: {firing:?}"
        );
    }
    if let Some(firing) = &r3.prometheus_alerts {
        assert!(
            !firing
                .iter()
                .any(|a| a["labels"]["alertname"] == "AuditorFlowDropped"),
            "quiet under the allowlist: {firing:?}"
        );
    }

    // Round 3, the suggested allowlist instead of the installed policies: everything works,
    // nothing is dropped, nothing is denied, and an unobserved connection is refused.
    assert!(r3.live_ok, "live push finished");
    assert!(r3.hls_ok, "HLS upload finished");
    assert!(r3.heartbeats, "sidecar heartbeats arrived");
    assert!(
        r3.ingest_counts["5000"].as_u64().unwrap_or(0) > 0
            && r3.ingest_counts["5001"].as_u64().unwrap_or(0) > 0,
        "both renditions arrived: {}",
        r3.ingest_counts
    );
    assert_eq!(
        r3.drops(),
        0,
        "zero drops under the allowlist: {}",
        r3.summary
    );
    assert_eq!(r3.denied(), 0, "zero denied flows under the allowlist");
    assert!(
        !o.unobserved_probe_connected,
        "a connection nobody needed is denied by the allowlist"
    );

    // The drill round: the live push survives 5 s without the ingest's backup port (UDP
    // datagrams lost, nothing fails: the sender never sees an error), and the HLS packager
    // dies when the storage gateway is blocked for 5 s (its segment PUT times out).
    let [backup, storage] = &o.drills[..] else {
        panic!("two drills: {:?}", o.drills)
    };
    let t = &backup.report["traffic"];
    assert_eq!(
        (backup.exit_code, backup.report["outcome"].as_str()),
        (Some(0), Some("graceful")),
        "{}",
        backup.report
    );
    assert!(
        backup.pipeline_ok,
        "the live push finished: {}",
        backup.pipeline_log
    );
    assert!(t["before_packets"].as_u64().unwrap() > 0, "{t}");
    // About 90 datagrams a second for 5 s.
    assert!(t["dropped_packets"].as_u64().unwrap() > 200, "{t}");
    assert!(
        t["resumed_after_release_ms"].as_u64().unwrap() < 1000,
        "{t}"
    );
    assert!(
        backup.report["other_peers"]
            .to_string()
            .contains("10.96.2.40:5000/UDP"),
        "the primary port kept flowing: {}",
        backup.report
    );
    assert_eq!(
        (storage.exit_code, storage.report["outcome"].as_str()),
        (Some(1), Some("failed")),
        "{}",
        storage.report
    );
    assert!(!storage.pipeline_ok, "the packager died of the block");
    assert!(
        storage.pipeline_log.contains("Connection timed out"),
        "{}",
        storage.pipeline_log
    );
    assert!(
        storage.report["why"]
            .as_str()
            .unwrap()
            .contains("(ffmpeg) exited during the drill"),
        "{}",
        storage.report
    );
    assert!(
        storage.report["traffic"]["dropped_connection_attempts"]
            .as_u64()
            .unwrap()
            > 0,
        "{}",
        storage.report
    );

    // The report.
    let report = o.report_dir.expect("report written");
    for f in ["report.md", "report.html", "report.json"] {
        assert!(report.join(f).is_file(), "{f} written");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("transcoder"),
        "HTML report with the flow picture"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .expect("report.json is JSON");
    assert!(json.is_object());
    assert_eq!(
        json["drills"].as_array().map(Vec::len),
        Some(2),
        "drills in report.json"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("- failover drills: 1 graceful, 1 failed\n"),
        "{md}"
    );
    assert!(md.contains("### GRACEFUL: 10.96.2.40/32:5001/UDP, 10.244.1.40/32:5001/UDP blocked for 5.0 s (egress) from transcode/transcoder-7d9f8c6b4-k8s2n"), "{md}");
    assert!(
        html.contains("<div class=\"drill\" data-outcome=\"failed\">"),
        "HTML drill section"
    );
    let _ = std::fs::remove_dir_all(&out);
}
