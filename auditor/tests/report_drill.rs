//! `auditor report --drill`: failover drill results (as `auditor drill -o json` writes them)
//! shown per drill with outcome and evidence in report.md, report.html and report.json;
//! a file that is not a drill result is refused with its name and the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// `auditor report` over the fixture cluster and flows with extra arguments.
fn report(name: &str, extra: &[&str]) -> (PathBuf, Output) {
    let dir = std::env::temp_dir().join(format!(
        "auditor-report-drill-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(
        &snapshot,
        format!(
            "{}---\n{}",
            std::fs::read_to_string(fixture("cluster.yaml")).unwrap(),
            std::fs::read_to_string(fixture("policies.yaml")).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .arg("report")
        .arg("--cluster")
        .arg(&snapshot)
        .arg("--flows")
        .arg(fixture("flows.jsonl"))
        .arg("--output")
        .arg(dir.join("out"))
        .args(extra)
        .output()
        .expect("run auditor report");
    (dir.join("out"), out)
}

#[test]
fn drills_appear_in_every_format_with_their_evidence() {
    let g = fixture("drill-graceful.json");
    let f = fixture("drill-failed.json");
    let (out, o) = report(
        "both",
        &[
            "--drill",
            g.to_str().unwrap(),
            "--drill",
            f.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("auditor report: failover drills: 1 graceful, 1 failed"),
        "{stderr}"
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("- failover drills: 1 graceful, 1 failed\n"),
        "{md}"
    );
    let section = &md[md.find("## Failover drills").expect("drill section")..];
    let graceful = section.find("### GRACEFUL: 10.96.2.40/32:5001/UDP blocked for 5.0 s (egress) from transcode/transcoder-7d9f8c6b4-k8s2n").expect("graceful drill heading");
    let failed = section.find("### FAILED: 198.51.100.10/32:80/TCP blocked for 5.0 s (egress) from transcode/transcoder-7d9f8c6b4-k8s2n").expect("failed drill heading");
    assert!(graceful < failed, "drills in the order given");
    for line in [
        "- before the block: 688 packets to the peer in 2.0 s\n",
        "- during it: 1712 packets dropped (2253000 bytes, 0 TCP connection attempts), the first at 0.0 s, the last at 5.0 s\n",
        "- after the release: 1190 packets, 0 new connections, the first 0.0 s after it\n",
        "- also sent to 10.96.2.40:5000/UDP: 1716 packets (in use before the block, first seen 1.9 s before it)\n",
        "- also sent to 10.96.1.20:80/TCP: 310 packets (new: first at 0.5 s, a fallback?)\n",
        "**failed**: pid 4302 (ffmpeg) exited during the drill: the pipeline did not survive the block\n",
        "- during it: 2 packets dropped (120 bytes, 2 TCP connection attempts), the first at 0.5 s, the last at 1.5 s\n",
        "- after the release: 0 packets, 0 new connections, none within 3.0 s\n",
        "- exited: pid 4302 (ffmpeg)\n",
    ] {
        assert!(section.contains(line), "missing {line:?} in\n{section}");
    }
    // The drills come after the blocked flows and before the per-workload tables.
    assert!(md.find("## Blocked flows").unwrap() < md.find("## Failover drills").unwrap());
    assert!(md.find("## Failover drills").unwrap() < md.find("## Flows per workload").unwrap());

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<h2>Failover drills</h2>"), "html section");
    assert!(html.contains("<div class=\"drill\" data-outcome=\"graceful\">"));
    assert!(html.contains("<div class=\"drill\" data-outcome=\"failed\"><h3>198.51.100.10/32:80/TCP blocked for 5.0 s (egress) from transcode/transcoder-7d9f8c6b4-k8s2n</h3><p class=\"bad\"><b>FAILED</b>: pid 4302 (ffmpeg) exited during the drill"), "{html}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let drills = json["drills"].as_array().expect("drills in report.json");
    assert_eq!(drills.len(), 2);
    // As the drill wrote them.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    assert_eq!(drills[1], written);
}

#[test]
fn without_drills_the_report_has_no_drill_section() {
    let (out, o) = report("none", &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("drill"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(json.get("drills").is_none());
}

#[test]
fn a_file_that_is_not_a_drill_result_is_refused_with_its_name_and_field() {
    let dir = std::env::temp_dir().join(format!("auditor-report-drill-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut no_outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("drill-failed.json")).unwrap())
            .unwrap();
    no_outcome.as_object_mut().unwrap().remove("outcome");
    let mut bad_outcome = no_outcome.clone();
    bad_outcome["outcome"] = "maybe".into();
    let mut no_rules = bad_outcome.clone();
    no_rules["outcome"] = "graceful".into();
    no_rules["rules"] = serde_json::json!([]);
    let cases: [(&str, String, &str); 5] = [
        ("empty.json", String::new(), "the file is empty"),
        (
            "flows.json",
            "{\"src_ip\": \"10.0.0.1\"}".into(),
            "missing field `outcome`",
        ),
        (
            "no-outcome.json",
            no_outcome.to_string(),
            "missing field `outcome`",
        ),
        (
            "bad-outcome.json",
            bad_outcome.to_string(),
            "unknown variant `maybe`, expected one of `graceful`, `failed`, `untested`",
        ),
        (
            "no-rules.json",
            no_rules.to_string(),
            "field `rules` is empty",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (out, o) = report(&format!("bad-{name}"), &["--drill", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("--drill {}: ", path.display())),
            "{name} names the file: {stderr}"
        );
        assert!(stderr.contains(want), "{name}: want {want:?} in {stderr}");
        assert!(
            stderr.contains("expected the JSON that `auditor drill -o json --output FILE` writes"),
            "{stderr}"
        );
        assert!(!out.join("report.md").exists(), "{name}: nothing written");
    }
    let missing = dir.join("missing.json");
    let (_, o) = report("missing", &["--drill", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--drill {}: cannot read it", missing.display())),
        "{stderr}"
    );
}
