//! The kernel's facts beside the verdict: `auditor diff` and `auditor report` show drops
//! with their reasons, timeouts and refusals per flow, and the two findings where they
//! disagree with the policies: blocked although every policy allows it (with the likely
//! cause), and denied yet it went through.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The fixture's flows with kernel facts that contradict the fixture's policies:
/// - line 1: ffmpeg -> origin 80/TCP, allowed, yet dropped by netfilter and timed out;
/// - line 2: ffmpeg -> 203.0.113.80:443, allowed, timed out with no drop seen here;
/// - line 3: probe -> origin 8080/TCP, denied, yet established;
/// - line 4: ffmpeg -> 203.0.113.81:1935, denied and timed out: as predicted;
/// - line 5: ffmpeg -> origin 80/TCP again, established: same flow as line 1.
const FLOWS: &str = r#"{"src_ip":"10.0.1.1","dst_ip":"10.96.0.10","dst_port":80,"protocol":"TCP","direction":"egress","state":"timed_out","comm":"ffmpeg","count":2,"timed_out":2,"drops":4,"drop_reason":"NETFILTER_DROP"}
{"src_ip":"10.0.1.1","dst_ip":"203.0.113.80","dst_port":443,"protocol":"TCP","direction":"egress","state":"timed_out","comm":"ffmpeg","count":1,"timed_out":1}
{"src_ip":"10.0.1.3","dst_ip":"10.0.1.2","dst_port":8080,"protocol":"TCP","direction":"egress","state":"established","comm":"curl","count":1,"established":1}
{"src_ip":"10.0.1.1","dst_ip":"203.0.113.81","dst_port":1935,"protocol":"TCP","direction":"egress","state":"timed_out","comm":"ffmpeg","count":1,"timed_out":1,"drops":2,"drop_reason":"NETFILTER_DROP"}
{"src_ip":"10.0.1.1","dst_ip":"10.96.0.10","dst_port":80,"protocol":"TCP","direction":"egress","state":"established","comm":"ffmpeg","count":1,"established":1}
"#;

fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("auditor-observed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("snapshot.yaml");
    std::fs::write(
        &snap,
        format!(
            "{}---\n{}",
            std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap(),
            std::fs::read_to_string(Path::new(FIXTURES).join("policies.yaml")).unwrap()
        ),
    )
    .unwrap();
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, FLOWS).unwrap();
    (dir, snap, flows)
}

fn diff(snap: &Path, flows: &Path, format: &str) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["diff", "-o", format, "--cluster"])
        .arg(snap)
        .arg("--flows")
        .arg(flows)
        .output()
        .expect("auditor diff");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
    )
}

#[test]
fn diff_shows_the_kernels_facts_and_the_findings_in_every_format() {
    let (_dir, snap, flows) = setup("diff");
    let (code, json) = diff(&snap, &flows, "json");
    assert_eq!(code, 1, "denied flows exist");
    let v: Value = serde_json::from_str(&json).unwrap();
    let f = v["flows"].as_array().unwrap();
    assert_eq!(f.len(), 5);
    // Each record carries its distinct flow's facts (lines 1 and 5 are one flow).
    assert_eq!(
        f[0]["observed"],
        serde_json::json!({"established":1,"refused":0,"timed_out":2,"drops":4,"drop_reasons":["NETFILTER_DROP"],"received":0})
    );
    assert_eq!(f[4]["observed"], f[0]["observed"]);
    assert_eq!(f[0]["verdict"], "allow");
    assert_eq!(f[0]["finding"], "blocked_although_allowed");
    assert_eq!(f[1]["finding"], "blocked_although_allowed");
    assert_eq!(f[2]["verdict"], "deny");
    assert_eq!(f[2]["finding"], "denied_but_passed");
    assert!(
        f[3].get("finding").is_none(),
        "denied and blocked, as predicted: {}",
        f[3]
    );
    let s = &v["summary"];
    let blocked = s["blocked_although_allowed"].as_array().unwrap();
    assert_eq!(blocked.len(), 2);
    assert_eq!(blocked[0]["first_line"], 1);
    assert_eq!(
        blocked[0]["observed"],
        "4 dropped (NETFILTER_DROP), 2 timed out, 1 connected"
    );
    assert!(blocked[0]["likely_cause"].as_str().unwrap().starts_with("dropped by netfilter on this node although every NetworkPolicy in the snapshot allows it"), "{}", blocked[0]);
    assert!(
        blocked[1]["likely_cause"]
            .as_str()
            .unwrap()
            .contains("no drop seen on this node"),
        "{}",
        blocked[1]
    );
    let passed = s["denied_but_passed"].as_array().unwrap();
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0]["first_line"], 3);
    assert!(passed[0]["likely_cause"]
        .as_str()
        .unwrap()
        .contains("does not enforce NetworkPolicy"));

    let (_, table) = diff(&snap, &flows, "table");
    let header = table.lines().next().unwrap();
    assert!(header.contains("VERDICT  OBSERVED"), "{header}");
    let row = |line: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{line} ")))
            .unwrap_or_else(|| panic!("row {line} in\n{table}"))
            .to_owned()
    };
    // Columns split by runs of two spaces or more, as write_aligned pads them.
    let cells = |line: &str| -> Vec<String> {
        row(line)
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        cells("1")[5..7],
        [
            "allow!",
            "4 dropped (NETFILTER_DROP), 2 timed out, 1 connected"
        ]
    );
    assert_eq!(cells("3")[5..7], ["DENY!", "1 connected"]);
    assert_eq!(
        cells("4")[5..7],
        ["DENY", "2 dropped (NETFILTER_DROP), 1 timed out"]
    );
    assert!(table.contains("blocked although every policy allows them (allow!):\n  line 1: media/ffmpeg-7c9d8b6f5-x2k4q -> svc media/origin -> media/origin-0:8080 80/TCP: 4 dropped (NETFILTER_DROP), 2 timed out, 1 connected\n    likely: dropped by netfilter"), "{table}");
    assert!(table.contains("denied, yet they went through (DENY!):\n  line 3: media/probe -> media/origin-0 8080/TCP: 1 connected\n"), "{table}");

    let (_, md) = diff(&snap, &flows, "markdown");
    assert!(
        md.contains("\n## Blocked although every policy allows them\n\n- line 1: "),
        "{md}"
    );
    assert!(
        md.contains("\n## Denied, yet they went through\n\n- line 3: "),
        "{md}"
    );
    assert!(md.contains("| OBSERVED |"), "{md}");

    // jsonl: the same members, one record a line.
    let (_, jsonl) = diff(&snap, &flows, "jsonl");
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["finding"], "blocked_although_allowed");
}

#[test]
fn a_log_that_agrees_with_the_policies_has_no_findings() {
    let (code, json) = {
        let (_dir, snap, _) = setup("agree");
        diff(&snap, &Path::new(FIXTURES).join("flows.jsonl"), "json")
    };
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["summary"]["blocked_although_allowed"],
        serde_json::json!([])
    );
    assert_eq!(v["summary"]["denied_but_passed"], serde_json::json!([]));
    assert!(v["flows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f.get("finding").is_none()));
}

#[test]
fn report_shows_the_kernels_facts_and_both_findings() {
    let (dir, snap, flows) = setup("report");
    let out = dir.join("report");
    let o = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["report", "--cluster"])
        .arg(&snap)
        .arg("--flows")
        .arg(&flows)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("auditor report");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("- the kernel disagrees with the policies: **2 blocked although every policy allows them**, 1 denied yet went through\n"), "{md}");
    let section = &md[md
        .find("## Blocked although every policy allows them\n")
        .expect("section")..];
    assert!(section.contains("\n- media/ffmpeg-7c9d8b6f5-x2k4q -> media/origin-0 8080/TCP (allow): 4 dropped (NETFILTER_DROP), 2 timed out, 1 connected. Likely: dropped by netfilter on this node"), "{section}");
    assert!(section.contains("\n- media/ffmpeg-7c9d8b6f5-x2k4q -> 203.0.113.80 443/TCP (allow): 1 timed out. Likely: connections timed out with no drop seen on this node"), "{section}");
    assert!(md.contains("## Denied, yet they went through\n\n- media/probe -> media/origin-0 8080/TCP (deny): 1 connected. Likely: the snapshot's policies deny it, yet it went through"), "{md}");
    // The observed column of the flow tables, drop reasons included.
    assert!(md.contains("| records | observed | why |"), "{md}");
    assert!(
        md.contains("| 2 dropped (NETFILTER_DROP), 1 timed out |"),
        "{md}"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["summary"]["blocked_although_allowed"], 2);
    assert_eq!(json["summary"]["denied_but_passed"], 1);
    assert_eq!(
        json["blocked_although_allowed"][0]["finding"],
        "blocked_although_allowed"
    );
    assert_eq!(json["denied_but_passed"][0]["source"], "media/probe");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<h2 class=\"finding\">Blocked although every policy allows them</h2><ul><li class=\"bad\">"), "html");
    assert!(html.contains("<th>observed</th>"));
}
