//! `auditor diff --policies` end to end with the binary: the fixture cluster and its
//! policies, the fixture flow log, and proposals that tighten (break the HTTPS flow), open
//! (unblock the RTMP push) or are wrong; every output format, the exit codes, `--replace`,
//! the filters, stdin, and each refused input with its message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    Path::new(FIXTURES).join(name).display().to_string()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("auditor-whatif-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture cluster and policies in one snapshot file.
fn snapshot(dir: &Path) -> String {
    let cluster = std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap();
    let policies = std::fs::read_to_string(Path::new(FIXTURES).join("policies.yaml")).unwrap();
    let p = dir.join("snapshot.yaml");
    std::fs::write(&p, format!("{cluster}---\n{policies}")).unwrap();
    p.display().to_string()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_with(name: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let dir = temp_dir(name);
    let snap = snapshot(&dir);
    let flows = fixture("flows.jsonl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditor"));
    cmd.arg("diff");
    if !args.contains(&"--cluster") {
        cmd.args(["--cluster", &snap]);
    }
    cmd.args(["--flows", &flows]).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write as _;
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    }
    let out: Output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r
}

fn run(name: &str, args: &[&str]) -> Run {
    run_with(name, args, None)
}

/// The part of table output after `what if:`.
fn what_if_text(out: &str) -> &str {
    let i = out.find("\nwhat if: ").expect("a what-if section");
    &out[i..]
}

/// The rows of one section of the table output (`would break` or `would unblock`).
fn section_rows<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    let start = text
        .find(title)
        .unwrap_or_else(|| panic!("{title} in {text}"));
    text[start..]
        .lines()
        .skip(2) // the title and the header
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn tightening_breaks_the_https_flow_exit_4() {
    let tighten = fixture("whatif-tighten.yaml");
    let r = run("tighten", &["--policies", &tighten]);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
    let w = what_if_text(&r.stdout);
    assert!(
        w.contains("1 proposed NetworkPolicy from ")
            && w.contains("applied to the 3 installed NetworkPolicies (1 replaced): of 6 observed flows, 1 would break, 0 would be unblocked"),
        "{w}"
    );
    let rows = section_rows(w, "would break (allowed today, denied by the proposal):");
    assert_eq!(rows.len(), 1, "{w}");
    let row = rows[0];
    for want in [
        "media/ffmpeg-7c9d8b6f5-x2k4q",
        "203.0.113.80 (external)",
        "443/TCP",
        " allow ",
        " DENY ",
        "egress DENIED: isolated by media/default-deny, media/ffmpeg-egress, no rule allows 443/TCP",
    ] {
        assert!(row.contains(want), "{want} missing from {row}");
    }
    assert!(row.starts_with("3 "), "the flow's first line: {row}");
    assert!(
        w.contains("would unblock (denied today, allowed by the proposal): none"),
        "{w}"
    );
    // Breaks come first.
    assert!(w.find("would break").unwrap() < w.find("would unblock").unwrap());
    // The diff itself is unchanged above it.
    assert!(r
        .stdout
        .contains("7 records, 6 distinct flows, 2 records denied"));
    // --fail-on none: the same output, exit 0.
    let r = run(
        "tighten-none",
        &["--policies", &tighten, "--fail-on", "none"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("1 would break"));
}

#[test]
fn opening_unblocks_the_rtmp_push_exit_0_or_5() {
    let unblock = fixture("whatif-unblock.yaml");
    let r = run("unblock", &["--policies", &unblock]);
    assert_eq!(r.code, 0, "nothing breaks: {}{}", r.stdout, r.stderr);
    let w = what_if_text(&r.stdout);
    assert!(w.contains("added to the 3 installed NetworkPolicies: of 6 observed flows, 0 would break, 1 would be unblocked"), "{w}");
    assert!(w.contains("would break (allowed today, denied by the proposal): none"));
    let rows = section_rows(w, "would unblock (denied today, allowed by the proposal):");
    assert_eq!(rows.len(), 1, "{w}");
    for want in [
        "203.0.113.81 (external)",
        "1935/TCP",
        " deny ",
        " ALLOW ",
        "egress allowed by media/ffmpeg-ingest egress[0]",
    ] {
        assert!(rows[0].contains(want), "{want} missing from {}", rows[0]);
    }
    let r = run(
        "unblock-change",
        &["--policies", &unblock, "--fail-on", "change"],
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    // Both proposal files at once: one break, one unblock; a break wins over a change.
    let tighten = fixture("whatif-tighten.yaml");
    let r = run(
        "both",
        &[
            "--policies",
            &unblock,
            "--policies",
            &tighten,
            "--fail-on",
            "change",
        ],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    let w = what_if_text(&r.stdout);
    assert!(w.contains("2 proposed NetworkPolicies from "), "{w}");
    assert!(
        w.contains("(1 replaced): of 6 observed flows, 1 would break, 1 would be unblocked"),
        "{w}"
    );
}

#[test]
fn replace_swaps_out_every_installed_policy() {
    let tighten = fixture("whatif-tighten.yaml");
    let r = run(
        "replace",
        &["--policies", &tighten, "--replace", "-o", "json"],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("valid JSON");
    let w = &v["what_if"];
    assert_eq!(w["mode"], "replace");
    assert_eq!(w["policies"]["installed"], 3);
    assert_eq!(w["policies"]["proposed"], 1);
    assert_eq!(w["policies"]["in_effect"], 1);
    assert_eq!(w["counts"]["checked"], 6);
    assert_eq!(w["counts"]["broken"], 1);
    assert_eq!(w["counts"]["unblocked"], 1);
    assert_eq!(w["counts"]["unchanged"], 4);
    // Without default-deny and origin-ingress, the probe's call to origin is let through.
    let u = &w["unblocked"][0];
    assert_eq!(u["source"], "media/probe");
    assert_eq!(u["destination"], "media/origin-0");
    assert_eq!(u["dst_port"], 8080);
    assert_eq!(u["today"], "deny");
    assert_eq!(u["proposed"], "allow");
    assert_eq!(
        u["why_proposed"],
        "egress not isolated; ingress not isolated"
    );
    assert!(u["why_today"]
        .as_str()
        .unwrap()
        .contains("isolated by media/default-deny"));
    let b = &w["broken"][0];
    assert_eq!(b["dst_ip"], "203.0.113.80");
    assert_eq!(
        b["why_proposed"],
        "egress DENIED: isolated by media/ffmpeg-egress, no rule allows 443/TCP; ingress n/a"
    );
    // The table says it replaced them.
    let r = run("replace-table", &["--policies", &tighten, "--replace"]);
    assert!(
        r.stdout
            .contains("replacing all 3 installed NetworkPolicies: of 6 observed flows, 1 would break, 1 would be unblocked"),
        "{}",
        r.stdout
    );
}

#[test]
fn json_carries_the_what_if_object_and_a_member_per_record() {
    let tighten = fixture("whatif-tighten.yaml");
    let r = run("json", &["--policies", &tighten, "-o", "json"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("valid JSON");
    let w = &v["what_if"];
    assert_eq!(w["files"][0], tighten.as_str());
    assert_eq!(w["mode"], "apply");
    assert_eq!(w["policies"]["replaced"], 1);
    assert_eq!(w["counts"]["broken"], 1);
    assert_eq!(w["counts"]["unblocked"], 0);
    assert_eq!(w["unblocked"].as_array().map(Vec::len), Some(0));
    let b = &w["broken"][0];
    assert_eq!(b["first_line"], 3);
    assert_eq!(b["records"], 1);
    assert_eq!(b["protocol"], "TCP");
    assert_eq!(b["source"], "media/ffmpeg-7c9d8b6f5-x2k4q");
    assert!(b["why_today"]
        .as_str()
        .unwrap()
        .contains("allowed by media/ffmpeg-egress egress[2]"));
    let flows = v["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 7);
    for f in flows {
        let m = &f["what_if"];
        let want = if f["dst_ip"] == "203.0.113.80" {
            ("break", "deny")
        } else {
            ("none", f["verdict"].as_str().unwrap())
        };
        assert_eq!(
            (
                m["change"].as_str().unwrap(),
                m["verdict"].as_str().unwrap()
            ),
            want,
            "{f}"
        );
        assert!(m["why"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // The summary is diff's own.
    assert_eq!(v["summary"]["denied_records"], 2);
}

#[test]
fn jsonl_is_still_one_flow_a_line_each_with_its_what_if() {
    let unblock = fixture("whatif-unblock.yaml");
    let r = run("jsonl", &["--policies", &unblock, "-o", "jsonl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 7, "one line per record, no extra record");
    let mut unblocked = 0;
    for l in &lines {
        assert!(l["src_ip"].is_string(), "every line is a flow: {l}");
        if l["what_if"]["change"] == "unblock" {
            unblocked += 1;
            assert_eq!(l["dst_ip"], "203.0.113.81");
            assert_eq!(l["verdict"], "deny");
            assert_eq!(l["what_if"]["verdict"], "allow");
            assert!(l["what_if"]["why"]
                .as_str()
                .unwrap()
                .contains("media/ffmpeg-ingest egress[0]"));
        } else {
            assert_eq!(l["what_if"]["change"], "none", "{l}");
        }
    }
    assert_eq!(unblocked, 1);
}

#[test]
fn markdown_has_a_what_if_section() {
    let tighten = fixture("whatif-tighten.yaml");
    let r = run("md", &["--policies", &tighten, "-o", "markdown"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let i = r.stdout.find("\n## What if\n").expect("the section");
    let md = &r.stdout[i..];
    assert!(md.contains("1 would break, 0 would be unblocked."), "{md}");
    let b = md
        .find("### Would break (allowed today, denied by the proposal)")
        .unwrap();
    let u = md
        .find("### Would unblock (denied today, allowed by the proposal)")
        .unwrap();
    assert!(b < u);
    let broken = &md[b..u];
    assert!(
        broken.contains(
            "| LINE | RECORDS | SOURCE | DESTINATION | PORT | TODAY | PROPOSED | WHY (PROPOSED) |"
        ),
        "{broken}"
    );
    assert!(
        broken.contains("| 3 | 1 | media/ffmpeg-7c9d8b6f5-x2k4q | 203.0.113.80 (external) | 443/TCP | allow | DENY | egress DENIED"),
        "{broken}"
    );
    assert!(md[u..].contains("None."), "{md}");
}

#[test]
fn filters_choose_the_flows_checked() {
    let tighten = fixture("whatif-tighten.yaml");
    // -n cdn: only the edge's flow to origin is shown; the proposal does not touch it.
    let r = run("ns", &["--policies", &tighten, "-n", "cdn", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["what_if"]["counts"]["checked"], 1);
    assert_eq!(v["what_if"]["counts"]["broken"], 0);
    // --verdict denied: only today's denied flows; the HTTPS flow is not among them.
    let unblock = fixture("whatif-unblock.yaml");
    let r = run(
        "verdict",
        &[
            "--policies",
            &unblock,
            "--policies",
            &tighten,
            "--verdict",
            "denied",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["what_if"]["counts"]["checked"], 2);
    assert_eq!(v["what_if"]["counts"]["unblocked"], 1);
    assert_eq!(v["what_if"]["counts"]["broken"], 0);
}

#[test]
fn without_policies_nothing_changes() {
    let r = run("plain", &[]);
    assert_eq!(r.code, 1, "a denied flow: exit 1 as before");
    assert!(!r.stdout.contains("what if"));
    let r = run("plain-json", &["-o", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v.get("what_if").is_none());
    assert!(v["flows"][0].get("what_if").is_none());
    // --fail-on and --replace mean nothing without --policies: refused.
    for flag in [&["--fail-on", "change"][..], &["--replace"][..]] {
        let r = run("fail-on-alone", flag);
        assert_eq!(r.code, 2, "{flag:?}");
        assert!(r.stderr.contains("--policies <FILE>"), "{}", r.stderr);
    }
}

#[test]
fn proposal_on_stdin_and_stdin_conflicts() {
    let text = std::fs::read_to_string(fixture("whatif-unblock.yaml")).unwrap();
    let r = run_with(
        "stdin",
        &["--policies", "-", "--fail-on", "change"],
        Some(&text),
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stdout.contains("proposed NetworkPolicy from -, added to"),
        "{}",
        r.stdout
    );
    let r = run_with(
        "stdin-both",
        &["--cluster", "-", "--policies", "-"],
        Some(&text),
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("--policies -: standard input is already the cluster snapshot (--cluster -)"),
        "{}",
        r.stderr
    );
    let r = run_with(
        "stdin-twice",
        &["--policies", "-", "--policies", "-"],
        Some(&text),
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--policies - is given twice"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_proposals_are_refused_naming_file_object_and_field() {
    let dir = temp_dir("bad");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let np = |meta: &str, spec: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {meta}\nspec: {spec}\n")
    };
    let missing = dir.join("nothing-here.yaml").display().to_string();
    let empty = write("empty.yaml", "");
    let empty_list = write("empty-list.yaml", "apiVersion: v1\nkind: List\nitems: []\n");
    let config_map = write(
        "cm.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: media}}\n",
            np("{name: a, namespace: media}", "{podSelector: {}}")
        ),
    );
    let no_ns = write("no-ns.yaml", &np("{name: a}", "{podSelector: {}}"));
    let no_name = write(
        "no-name.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {namespace: media}\n",
    );
    let bad_type = write(
        "bad-type.yaml",
        &np(
            "{name: a, namespace: media}",
            "{podSelector: {}, ingress: [{ports: [{port: [1]}]}]}",
        ),
    );
    let beta = write(
        "beta.yaml",
        "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: media}\n",
    );
    let not_yaml = write("not-yaml.yaml", "kind: List\nitems: [\n");
    let dup = write(
        "dup.yaml",
        &np(
            "{name: ffmpeg-ingest, namespace: media}",
            "{podSelector: {}}",
        ),
    );
    let bad_field = fixture("whatif-bad-field.yaml");
    let unblock = fixture("whatif-unblock.yaml");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![&missing],
            format!("--policies {missing}: cannot read the proposed policies: No such file"),
        ),
        (
            vec![&empty],
            format!("--policies {empty}: contains no NetworkPolicy (expected NetworkPolicy manifests"),
        ),
        (
            vec![&empty_list],
            format!("--policies {empty_list}: contains no NetworkPolicy"),
        ),
        (
            vec![&config_map],
            format!("--policies {config_map}: document 2: ConfigMap media/settings: field kind: a proposal holds NetworkPolicies only (expected kind NetworkPolicy"),
        ),
        (
            vec![&no_ns],
            format!("--policies {no_ns}: document 1: NetworkPolicy a: field metadata.namespace: missing (expected the namespace the policy goes to"),
        ),
        (
            vec![&no_name],
            format!("--policies {no_name}: document 1, item 0: NetworkPolicy media/<no name>: field metadata.name: missing (expected the policy's name"),
        ),
        (
            vec![&bad_type],
            format!("{bad_type}: NetworkPolicy media/a: field spec.ingress[0].ports[0].port: invalid type: sequence"),
        ),
        (
            vec![&beta],
            format!("{beta}: NetworkPolicy media/a: field apiVersion: \"networking.k8s.io/v1beta1\" is not supported (expected networking.k8s.io/v1)"),
        ),
        (
            vec![&not_yaml],
            format!("{not_yaml}: document 1: not valid YAML"),
        ),
        (
            vec![&unblock, &dup],
            format!("--policies {dup}: document 1: NetworkPolicy media/ffmpeg-ingest: proposed twice (first in {unblock} document 1, item 0); expected each namespace/name once"),
        ),
        (
            vec![&bad_field],
            format!("--policies {bad_field}: NetworkPolicy media/ffmpeg-ingest: field spec.egress[0].to[0].ipBlock.cidr: \"203.0.113.300/32\" is not a CIDR"),
        ),
    ];
    for (files, want) in cases {
        let mut args = Vec::new();
        for f in &files {
            args.push("--policies");
            args.push(f);
        }
        let r = run("bad-case", &args);
        assert_eq!(r.code, 2, "{files:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "no output on error: {}", r.stdout);
        assert!(
            r.stderr.contains(&want),
            "{files:?}\n got: {}\nwant: {want}",
            r.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
