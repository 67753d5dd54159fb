//! Observation coverage (issue 15 point 9) with the binary on a realistic flow log
//! (`fixtures/coverage-flows.jsonl` on `fixtures/coverage-cluster.yaml`): a packager
//! Deployment watched 26 h in 2 pods (enough), a transcoder watched 12 min whose ingest
//! push started 40 s before the end (thin, still growing), and a CronJob seen in one run
//! (thin). In suggest's summary, YAML and warnings, and in every format of the report;
//! `--min-observation`; a log without times says "unknown".

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("auditor-coverage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn auditor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const PACKAGER: &str = "coverage: media/Deployment/packager: watched 26h (2026-11-27T09:00:00.000Z to 2026-11-28T11:00:00.000Z), 2 pods, 6 flows, 3 peers, 3 ports; last new peer 25h 57m before the end (egress 203.0.113.50 (storage.example.net) 443/TCP)";
const TRANSCODER: &str = "coverage: transcode/Deployment/transcoder: watched 12m (2026-11-28T10:00:00.000Z to 2026-11-28T10:12:00.000Z), 1 pod, 3 flows, 3 peers, 3 ports; last new peer 40s before the end (egress 198.51.100.20 (ingest.example.net) 5000/UDP)";
const THUMBNAILS: &str = "coverage: media/CronJob/thumbnails: watched 4m 57s (2026-11-28T02:00:03.000Z to 2026-11-28T02:05:00.000Z), 1 pod, 1 Job run, 3 flows, 3 peers, 3 ports; last new peer 2m before the end (egress 203.0.113.50 (storage.example.net) 443/TCP)";
const TRANSCODER_WARNING: &str = "transcode/Deployment/transcoder: watched 12m (1 pod); shorter than --min-observation 24h; a new peer appeared 40s before the end (egress 198.51.100.20 (ingest.example.net) 5000/UDP), so its needs were still growing: the allowlist may be incomplete — record longer";
const THUMBNAILS_WARNING: &str = "media/CronJob/thumbnails: watched 4m 57s (1 pod, 1 Job run); shorter than --min-observation 24h; 1 Job run of the CronJob seen (another run may need more): the allowlist may be incomplete — record longer";

fn suggest(name: &str, flows: &Path, extra: &[&str]) -> (Output, String) {
    let dir = temp_dir(name);
    let cluster = fixture("coverage-cluster.yaml");
    let out_dir = dir.join("out");
    let mut args = vec![
        "suggest",
        "--cluster",
        cluster.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = auditor(&args);
    let mode = if extra.contains(&"fix") {
        "fix"
    } else {
        "allowlist"
    };
    let yaml = std::fs::read_to_string(out_dir.join(format!("{mode}.yaml"))).unwrap_or_default();
    (o, yaml)
}

#[test]
fn suggest_states_coverage_and_warns_on_thin_evidence() {
    let (o, yaml) = suggest("suggest", &fixture("coverage-flows.jsonl"), &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("auditor suggest: "))
        .filter(|l| l.starts_with("coverage: ") || l.starts_with("warning: "))
        .collect();
    assert_eq!(
        lines,
        [
            THUMBNAILS,
            PACKAGER,
            TRANSCODER,
            &format!("warning: {THUMBNAILS_WARNING}"),
            &format!("warning: {TRANSCODER_WARNING}"),
        ],
        "{err}"
    );
    // The YAML says the same above the policies, and the packager has no warning.
    assert!(
        yaml.contains(&format!(
            "# Coverage: {}\n",
            &PACKAGER["coverage: ".len()..]
        )),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("# WARNING: {TRANSCODER_WARNING}\n")),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("# WARNING: {THUMBNAILS_WARNING}\n")),
        "{yaml}"
    );
    assert!(
        !yaml.contains("WARNING: media/Deployment/packager"),
        "{yaml}"
    );
    // The allowlist itself is what was observed, ingest included.
    assert!(yaml.contains("198.51.100.20/32"), "{yaml}");
}

#[test]
fn min_observation_sets_the_threshold() {
    let (o, _) = suggest(
        "min",
        &fixture("coverage-flows.jsonl"),
        &["--min-observation", "4m"],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("auditor suggest: warning: "))
        .collect();
    // Long enough now; still one run, and still growing.
    assert_eq!(
        warnings,
        [
            "media/CronJob/thumbnails: watched 4m 57s (1 pod, 1 Job run); 1 Job run of the CronJob seen (another run may need more): the allowlist may be incomplete — record longer",
            "transcode/Deployment/transcoder: watched 12m (1 pod); a new peer appeared 40s before the end (egress 198.51.100.20 (ingest.example.net) 5000/UDP), so its needs were still growing: the allowlist may be incomplete — record longer",
        ],
        "{err}"
    );
    let (o, _) = suggest(
        "min-bad",
        &fixture("coverage-flows.jsonl"),
        &["--min-observation", "a day"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("--min-observation"), "{err}");
}

#[test]
fn a_log_without_times_says_unknown() {
    let dir = temp_dir("untimed-log");
    let data = std::fs::read_to_string(fixture("coverage-flows.jsonl")).unwrap();
    let mut untimed = String::new();
    for line in data.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("first_seen");
        o.remove("last_seen");
        untimed.push_str(&serde_json::to_string(&v).unwrap());
        untimed.push('\n');
    }
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, untimed).unwrap();
    let (o, yaml) = suggest("untimed", &flows, &["-n", "transcode"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("auditor suggest: coverage: transcode/Deployment/transcoder: watched unknown, 1 pod, 3 flows (3 without times), 3 peers, 3 ports; last new peer or port: unknown\n"), "{err}");
    let warning = "transcode/Deployment/transcoder: watched for an unknown time (1 pod); its flow records carry no first_seen/last_seen (an older flow log?): the allowlist may be incomplete — record longer";
    assert!(
        err.contains(&format!("auditor suggest: warning: {warning}\n")),
        "{err}"
    );
    assert!(yaml.contains(&format!("# WARNING: {warning}\n")), "{yaml}");
    // -n transcode: only its workload is audited, so only its coverage.
    assert!(!err.contains("media/Deployment/packager:"), "{err}");
}

#[test]
fn fix_mode_states_coverage_without_allowlist_warnings() {
    let (o, yaml) = suggest("fix", &fixture("coverage-flows.jsonl"), &["--mode", "fix"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("auditor suggest: {TRANSCODER}\n")),
        "{err}"
    );
    assert!(!err.contains("warning: "), "{err}");
    assert!(!yaml.contains("WARNING"), "{yaml}");
}

#[test]
fn report_has_an_observation_coverage_section() {
    let dir = temp_dir("report");
    let out = dir.join("out");
    let cluster = fixture("coverage-cluster.yaml");
    let flows = fixture("coverage-flows.jsonl");
    let o = auditor(&[
        "report",
        "--cluster",
        cluster.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("auditor report: observation coverage: 2 of 3 audited workload(s) on thin evidence: their allowlists may be incomplete; the flows cover 26h\n"), "{err}");
    assert!(
        err.contains(&format!("auditor report: warning: {TRANSCODER_WARNING}\n")),
        "{err}"
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("- observation coverage: 2 of 3 audited workload(s) on thin evidence"),
        "{md}"
    );
    let section = &md[md.find("## Observation coverage").expect("section")..];
    let section = &section[..section.find("## Flows per workload").unwrap()];
    for row in [
        "| media/CronJob/thumbnails | 4m 57s | 2026-11-28T02:00:03.000Z | 2026-11-28T02:05:00.000Z | 1 | 1 | 3 | 3 / 3 | peer 2m before the end: egress 203.0.113.50 (storage.example.net) 443/TCP | THIN |",
        "| media/Deployment/packager | 26h | 2026-11-27T09:00:00.000Z | 2026-11-28T11:00:00.000Z | 2 | - | 6 | 3 / 3 | peer 25h 57m before the end: egress 203.0.113.50 (storage.example.net) 443/TCP | ok |",
        "| transcode/Deployment/transcoder | 12m | 2026-11-28T10:00:00.000Z | 2026-11-28T10:12:00.000Z | 1 | - | 3 | 3 / 3 | peer 40s before the end: egress 198.51.100.20 (ingest.example.net) 5000/UDP | THIN |",
    ] {
        assert!(section.contains(row), "{row}\n{section}");
    }
    assert!(
        section.contains(&format!("- warning: {THUMBNAILS_WARNING}\n")),
        "{section}"
    );
    // The allowlist section lists the same warnings.
    let allowlist = &md[md.find("## Suggested allowlist").unwrap()..];
    assert!(
        allowlist.contains(&format!("- warning: {TRANSCODER_WARNING}\n")),
        "{allowlist}"
    );

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<h2 id=\"coverage\">Observation coverage</h2>"),
        "{html}"
    );
    assert!(html.contains("<tr class=\"thin\" data-workload=\"transcode/Deployment/transcoder\"><td>transcode/Deployment/transcoder</td><td>12m</td>"), "{html}");
    assert!(
        html.contains("<tr class=\"ok\" data-workload=\"media/Deployment/packager\">"),
        "{html}"
    );
    assert!(html.contains("<p class=\"bad warning\">Warning: transcode/Deployment/transcoder: watched 12m (1 pod);"), "{html}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["summary"]["thin_evidence"], 2);
    let c = &json["coverage"];
    assert_eq!(c["min_observation"]["seconds"], 86400.0);
    assert_eq!(c["recording"]["duration"]["seconds"], 93600.0);
    assert_eq!(c["recording"]["first_seen"], "2026-11-27T09:00:00.000Z");
    let names: Vec<&str> = c["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "media/CronJob/thumbnails",
            "media/Deployment/packager",
            "transcode/Deployment/transcoder"
        ]
    );
    let (cron, packager, transcoder) = (&c["workloads"][0], &c["workloads"][1], &c["workloads"][2]);
    assert_eq!(cron["job_runs"], 1);
    assert_eq!(cron["pods"], 1);
    assert_eq!(cron["watched"]["duration"]["seconds"], 297.0);
    assert_eq!(packager["pods"], 2);
    assert_eq!(packager["flows"], 6);
    assert_eq!(packager["records"], 11);
    assert_eq!(packager["thin"], false);
    assert!(packager.get("job_runs").is_none());
    assert!(packager.get("warning").is_none());
    assert_eq!(transcoder["watched"]["duration"]["text"], "12m");
    assert_eq!(transcoder["last_new"]["before_end"]["seconds"], 40.0);
    assert_eq!(transcoder["last_new"]["at"], "2026-11-28T10:11:20.000Z");
    assert_eq!(transcoder["last_new"]["port"], "5000/UDP");
    assert_eq!(transcoder["warning"], TRANSCODER_WARNING);
    assert_eq!(
        transcoder["reasons"][1],
        "a new peer appeared 40s before the end (egress 198.51.100.20 (ingest.example.net) 5000/UDP), so its needs were still growing"
    );
}
