//! `auditor diff` end to end on files: the fixture cluster, its policies and a recorder-shaped flow log.

use std::path::{Path, PathBuf};

use auditor::diff::{run, DiffArgs, Format, VerdictFilter};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("auditor-diff-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Cluster fixture + policies fixture in one snapshot file, as a user would concatenate them.
fn snapshot(dir: &Path) -> PathBuf {
    let cluster = std::fs::read_to_string(Path::new(FIXTURES).join("cluster.yaml")).unwrap();
    let policies = std::fs::read_to_string(Path::new(FIXTURES).join("policies.yaml")).unwrap();
    let p = dir.join("snapshot.yaml");
    std::fs::write(&p, format!("{cluster}---\n{policies}")).unwrap();
    p
}

fn diff(
    name: &str,
    format: Format,
    flows: Option<&str>,
    skip_invalid: bool,
) -> (Result<i32, String>, String) {
    let dir = temp_dir(name);
    let flows_path = match flows {
        Some(text) => {
            let p = dir.join("flows.jsonl");
            std::fs::write(&p, text).unwrap();
            p
        }
        None => Path::new(FIXTURES).join("flows.jsonl"),
    };
    let out = dir.join("out");
    let args = DiffArgs {
        source: auditor::cluster::ClusterSource::file(snapshot(&dir)),
        flows: flows_path,
        format,
        skip_invalid,
        output: Some(out.clone()),
        ..Default::default()
    };
    let code = run(&args).map_err(|e| e.to_string());
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (code, text)
}

#[test]
fn json_output_in_input_order_with_verdicts() {
    let (code, out) = diff("json", Format::Json, None, false);
    assert_eq!(code, Ok(1), "a denied flow makes exit code 1");
    let v: Value = serde_json::from_str(&out).expect("valid JSON");
    let flows = v["flows"].as_array().unwrap();
    let verdicts: Vec<&str> = flows
        .iter()
        .map(|f| f["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["allow", "allow", "allow", "deny", "allow", "allow", "deny"]
    );
    // Input fields are kept.
    assert_eq!(flows[0]["comm"], "ffmpeg");
    assert_eq!(
        flows[0]["dns_name"],
        "kube-dns.kube-system.svc.cluster.local"
    );
    assert_eq!(
        flows[0]["egress"]["allowed_by"][0]["policy"],
        "media/ffmpeg-egress"
    );
    assert_eq!(flows[0]["egress"]["allowed_by"][0]["rule"], 0);
    assert_eq!(flows[0]["ingress"]["isolated"], false);
    // Service resolved to its backend and target port.
    assert_eq!(flows[1]["service"]["name"], "media/origin");
    assert_eq!(flows[1]["service"]["backends"][0]["port"], 8080);
    assert_eq!(flows[1]["ingress"]["endpoint"]["name"], "origin-0");
    assert_eq!(
        flows[1]["ingress"]["allowed_by"][0]["policy"],
        "media/origin-ingress"
    );
    // The denied flow names the isolating policies.
    assert_eq!(flows[3]["egress"]["allowed"], false);
    let by: Vec<&str> = flows[3]["egress"]["isolated_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(by, ["media/default-deny", "media/ffmpeg-egress"]);
    assert_eq!(flows[3]["ingress"]["applies"], false);
    assert_eq!(flows[5]["ingress"]["allowed_by"][0]["rule"], 1);

    let s = &v["summary"];
    assert_eq!(s["records"], 7);
    assert_eq!(s["distinct_flows"], 6);
    assert_eq!(s["denied_records"], 2);
    let unused: Vec<String> = s["unused_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}[{}]",
                r["policy"].as_str().unwrap(),
                r["direction"].as_str().unwrap(),
                r["rule"]
            )
        })
        .collect();
    assert_eq!(unused, ["media/ffmpeg-egress egress[3]"]);
    let ffmpeg = s["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == "media/Deployment/ffmpeg")
        .unwrap();
    assert_eq!(
        (
            ffmpeg["egress_records"].as_u64(),
            ffmpeg["egress_denied"].as_u64()
        ),
        (Some(5), Some(1))
    );
    assert_eq!(s["denied_flows"].as_array().unwrap().len(), 2);
}

#[test]
fn output_is_deterministic() {
    let (_, a) = diff("det-a", Format::Json, None, false);
    let (_, b) = diff("det-b", Format::Json, None, false);
    assert_eq!(a, b);
}

#[test]
fn table_and_markdown() {
    let (code, table) = diff("table", Format::Table, None, false);
    assert_eq!(code, Ok(1));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("LINE  RECORDS  SOURCE"), "{table}");
    // Columns are aligned: VERDICT starts at the same offset on every flow row.
    let col = lines[0].find("VERDICT").unwrap();
    for l in &lines[1..7] {
        let v = &l[col..];
        assert!(
            v.starts_with("allow") || v.starts_with("DENY"),
            "{l:?}\n{table}"
        );
    }
    assert!(table.contains("egress DENIED: isolated by media/default-deny, media/ffmpeg-egress, no rule allows 1935/TCP"), "{table}");
    assert!(table.contains("media/ffmpeg-egress egress[3]"), "{table}");
    let (_, md) = diff("md", Format::Markdown, None, false);
    assert!(md.contains("| LINE | RECORDS | SOURCE |"), "{md}");
    assert!(md.contains("## Unused rules"), "{md}");
}

#[test]
fn all_allowed_exits_zero() {
    let (code, _) = diff("zero", Format::Json, Some("{\"src_ip\":\"10.0.2.1\",\"dst_ip\":\"10.0.1.2\",\"dst_port\":1935,\"protocol\":\"TCP\"}\n"), false);
    assert_eq!(code, Ok(0));
}

#[test]
fn bad_flow_lines_name_the_line_or_are_skipped() {
    let flows = "{\"src_ip\":\"10.0.2.1\",\"dst_ip\":\"10.0.1.2\",\"dst_port\":1935,\"protocol\":\"TCP\"}\n\
                 {\"src_ip\":\"10.0.2.1\",\"dst_ip\":\"10.0.1.2\",\"dst_port\":70000,\"protocol\":\"TCP\"}\n\
                 {\"src_ip\":\"nope\",\"dst_ip\":\"10.0.1.2\",\"dst_port\":1,\"protocol\":\"TCP\"}\n\
                 {\"src_ip\":\"10.0.2.1\",\"dst_ip\":\"10.0.1.2\",\"dst_port\":1,\"protocol\":\"ICMP\"}\n";
    let (code, _) = diff("bad", Format::Json, Some(flows), false);
    let err = code.unwrap_err();
    assert!(err.contains("flows.jsonl:2:"), "{err}");
    let (code, out) = diff("skip", Format::Json, Some(flows), true);
    assert_eq!(code, Ok(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["skipped_lines"], 3);
    let lines: Vec<u64> = v["summary"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4]);
}

#[test]
fn bad_snapshot_names_file_object_and_field() {
    let dir = temp_dir("badsnap");
    let cases = [
        ("kind: List\nitems: [\n", "snap.yaml: document 1: not valid YAML"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: media}\nstatus: {podIP: 10.0.0.300}\n",
            "snap.yaml: Pod media/p: field status.podIP",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10/8}}]}]}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {matchLabels: [a]}}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.podSelector.matchLabels",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: media}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}\n",
            "snap.yaml: Service media/s: field spec.ports[0].port",
        ),
        // A port number written as a string is not a named port.
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {}, ingress: [{ports: [{port: '8080'}]}]}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.ingress[0].ports[0].port: \"8080\" is a string of digits",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {}, ingress: [{ports: [{port: HTTP}]}]}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.ingress[0].ports[0].port: \"HTTP\" is not a valid port name",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.ingress[0].from[0].ipBlock.except[0]: \"192.168.0.0/16\" is not inside the ipBlock's cidr",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {matchLabels: {'-app': x}}}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.podSelector.matchLabels.-app: label key \"-app\"",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {matchExpressions: [{key: app, operator: In, values: ['a b']}]}}\n",
            "snap.yaml: NetworkPolicy media/n: field spec.podSelector.matchExpressions[0].values[0]: label value \"a b\" is not valid",
        ),
        // Empty input, or a cluster without Pods, is not silently "all allowed".
        (
            "",
            "snap.yaml: contains no Kubernetes objects (expected what `kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml` prints)",
        ),
        (
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: media}}\n",
            "snap.yaml: has no Pods (1 other objects), so no flow could be attributed",
        ),
    ];
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, "").unwrap();
    for (yaml, want) in cases {
        let snap = dir.join("snap.yaml");
        std::fs::write(&snap, yaml).unwrap();
        let args = DiffArgs {
            source: auditor::cluster::ClusterSource::file(snap.clone()),
            flows: flows.clone(),
            format: Format::Json,
            skip_invalid: false,
            output: Some(dir.join("out")),
            ..Default::default()
        };
        let err = run(&args).unwrap_err().to_string();
        assert!(err.contains(want), "{yaml}\n got: {err}\nwant: {want}");
    }
    // Both inputs from stdin would race for it.
    let args = DiffArgs {
        source: auditor::cluster::ClusterSource::file("-"),
        flows: "-".into(),
        format: Format::Json,
        skip_invalid: false,
        output: Some(dir.join("out")),
        ..Default::default()
    };
    let err = run(&args).unwrap_err().to_string();
    assert!(err.contains("--cluster and --flows are both `-`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_error_is_printed_once_with_its_cause() {
    let dir = std::env::temp_dir().join(format!("auditor-diff-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("snap.yaml");
    std::fs::write(&snap, "kind: List\nitems: [\n").unwrap();
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["diff", "--cluster"])
        .arg(&snap)
        .arg("--flows")
        .arg(&flows)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snap.yaml: document 1: not valid YAML: "),
        "{err}"
    );
    // The parser's message (it names the line) comes once, as the cause.
    let cause = err.rsplit("not valid YAML: ").next().unwrap().trim();
    assert!(!cause.is_empty(), "{err}");
    assert_eq!(err.matches(cause).count(), 1, "printed twice: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-n`, `-l` and `--verdict` as kubectl users expect: the flows shown, the counts and the
/// exit code cover only the flows that pass; bad values are refused with what was expected.
#[test]
fn kubectl_filters() {
    let run_with = |name: &str, set: &dyn Fn(&mut DiffArgs)| -> (Result<i32, String>, Value) {
        let dir = temp_dir(name);
        let out = dir.join("out");
        let mut args = DiffArgs {
            source: auditor::cluster::ClusterSource::file(snapshot(&dir)),
            flows: Path::new(FIXTURES).join("flows.jsonl"),
            format: Format::Json,
            output: Some(out.clone()),
            ..Default::default()
        };
        set(&mut args);
        let code = run(&args).map_err(|e| e.to_string());
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let lines = |v: &Value| -> Vec<String> {
        v["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f["src_ip"].as_str().unwrap(),
                    f["verdict"].as_str().unwrap()
                )
            })
            .collect()
    };

    let (code, v) = run_with("denied", &|a| {
        a.filter.verdict = Some(VerdictFilter::Denied)
    });
    assert_eq!(code, Ok(1));
    assert_eq!(lines(&v), ["10.0.1.1 deny", "10.0.1.3 deny"]);
    assert_eq!(
        (
            v["summary"]["records"].as_u64(),
            v["summary"]["denied_records"].as_u64()
        ),
        (Some(2), Some(2))
    );

    let (code, v) = run_with("allowed", &|a| {
        a.filter.verdict = Some(VerdictFilter::Allowed)
    });
    assert_eq!(code, Ok(0), "no denied flow among those shown");
    assert_eq!(lines(&v).len(), 5);
    assert!(lines(&v).iter().all(|l| l.ends_with("allow")));

    // A flow is in a namespace when either end is a pod of it.
    let (code, v) = run_with("ns", &|a| a.filter.namespace = Some("cdn".into()));
    assert_eq!(code, Ok(0));
    assert_eq!(lines(&v), ["10.0.2.1 allow"]);
    assert_eq!(v["summary"]["distinct_flows"], 1);
    assert_eq!(
        v["summary"]["unused_rules"].as_array().unwrap().len(),
        0,
        "cdn has no policies"
    );
    // Unused rules are still those no flow of the whole log used (here: of media's policies).
    let (_, v) = run_with("ns-media-denied", &|a| {
        a.filter.namespace = Some("media".into());
        a.filter.verdict = Some(VerdictFilter::Denied);
    });
    assert_eq!(
        v["summary"]["unused_rules"][0]["policy"],
        "media/ffmpeg-egress"
    );
    assert_eq!(v["summary"]["unused_rules"].as_array().unwrap().len(), 1);

    let (code, v) = run_with("selector", &|a| {
        a.filter.selector = Some("app=ffmpeg".into());
        a.filter.verdict = Some(VerdictFilter::Denied);
    });
    assert_eq!(code, Ok(1));
    assert_eq!(lines(&v), ["10.0.1.1 deny"]);
    assert_eq!(v["flows"][0]["dst_ip"], "203.0.113.81");

    let (code, _) = run_with("no-such-ns", &|a| {
        a.filter.namespace = Some("nosuch".into())
    });
    let err = code.unwrap_err();
    assert!(
        err.contains("-n nosuch: the cluster has no namespace \"nosuch\"")
            && err.contains("cdn, kube-system, media, monitoring"),
        "{err}"
    );
    let (code, _) = run_with("bad-selector", &|a| {
        a.filter.selector = Some("Bad Key=x".into())
    });
    let err = code.unwrap_err();
    assert!(
        err.starts_with("-l \"Bad Key=x\":") && err.contains("expected a label selector"),
        "{err}"
    );
}

/// A kubeconfig with two contexts, `a` (current) and `b`, for API servers on these ports
/// of 127.0.0.1.
fn kubeconfig(dir: &Path, port_a: u16, port_b: u16) -> PathBuf {
    let p = dir.join("kubeconfig.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {{server: 'https://127.0.0.1:{port_a}', insecure-skip-tls-verify: true}}
- name: b
  cluster: {{server: 'https://127.0.0.1:{port_b}', insecure-skip-tls-verify: true}}
users:
- name: auditor
  user: {{token: not-a-secret}}
contexts:
- name: a
  context: {{cluster: a, user: auditor}}
- name: b
  context: {{cluster: b, user: auditor}}
current-context: a
"
        ),
    )
    .unwrap();
    p
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn error_chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

/// `--kubeconfig` / `--context`: the live API server instead of a snapshot file. (Reading
/// one and diffing it as the file is checked against the faked API server in the
/// library's tests, kube::list.) Here: which server is chosen, and what a user sees when
/// it cannot be read.
#[test]
fn live_cluster_choice_and_errors() {
    let dir = temp_dir("live");
    let flows = Path::new(FIXTURES).join("flows.jsonl");
    // Accepts connections (the kernel completes the handshake) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let down_port = closed_port();
    let kc = kubeconfig(&dir, silent_port, down_port);
    let run_live = |kubeconfig: Option<&Path>, context: Option<&str>| {
        let args = DiffArgs {
            source: auditor::cluster::ClusterSource {
                kubeconfig: kubeconfig.map(Path::to_owned),
                context: context.map(str::to_owned),
                request_timeout: std::time::Duration::from_secs(1),
                ..Default::default()
            },
            flows: flows.clone(),
            output: Some(dir.join("out")),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let err = error_chain(run(&args).unwrap_err());
        (err, t.elapsed())
    };

    // The current context's server never answers: bounded by --request-timeout.
    let (err, took) = run_live(Some(&kc), None);
    assert!(
        err.contains(&format!(
            "the API server https://127.0.0.1:{silent_port}/ did not answer within 1s"
        )),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    // --context b: that context's server, which is down.
    let (err, took) = run_live(Some(&kc), Some("b"));
    assert!(
        err.starts_with(&format!(
            "list namespaces from the API server https://127.0.0.1:{down_port}/: "
        )),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    // An unknown context names the file and the contexts it has.
    let (err, _) = run_live(Some(&kc), Some("prod"));
    assert!(
        err.contains("kubeconfig.yaml has no context \"prod\" (its contexts: a, b)"),
        "{err}"
    );
    // A kubeconfig that is not one names the file.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "clusters: 3\n").unwrap();
    let (err, _) = run_live(Some(&bad), None);
    assert!(
        err.starts_with(&format!("read kubeconfig {}", bad.display())),
        "{err}"
    );
    drop(silent);

    // Neither a snapshot nor a kubeconfig (outside a pod): say how to choose.
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let args = DiffArgs {
            flows: flows.clone(),
            ..Default::default()
        };
        let err = error_chain(run(&args).unwrap_err());
        assert!(
            err.starts_with("no cluster to evaluate against: pass --cluster SNAPSHOT"),
            "{err}"
        );
    } else {
        eprintln!("skipped the no-source case: KUBERNETES_SERVICE_HOST is set (in-cluster)");
    }
    // Both: the command line refuses it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["diff", "--cluster", "c.yaml", "--kubeconfig"])
        .arg(&kc)
        .arg("--flows")
        .arg(&flows)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'--cluster <SNAPSHOT>' cannot be used with '--kubeconfig <FILE>'"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-o jsonl`: one object per kept record, each the same as `-o json`'s (the input record
/// and its verdict), in input order, no summary line, deterministic.
#[test]
fn jsonl_is_the_json_flows_one_a_line() {
    let (code, json) = diff("jsonl-json", Format::Json, None, false);
    let (jcode, jsonl) = diff("jsonl", Format::Jsonl, None, false);
    assert_eq!((code, jcode), (Ok(1), Ok(1)));
    let (_, again) = diff("jsonl-again", Format::Jsonl, None, false);
    assert_eq!(jsonl, again, "deterministic");
    let flows: Vec<Value> = serde_json::from_str::<Value>(&json).unwrap()["flows"]
        .as_array()
        .unwrap()
        .clone();
    assert!(jsonl.ends_with('\n'));
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line one JSON object"))
        .collect();
    assert_eq!(lines, flows);

    // Filtered: only the denied records.
    let dir = temp_dir("jsonl-filtered");
    let out = dir.join("denied.jsonl");
    let args = DiffArgs {
        source: auditor::cluster::ClusterSource::file(snapshot(&dir)),
        flows: Path::new(FIXTURES).join("flows.jsonl"),
        format: Format::Jsonl,
        output: Some(out.clone()),
        filter: auditor::filter::FilterArgs {
            verdict: Some(VerdictFilter::Denied),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(run(&args).map_err(|e| e.to_string()), Ok(1));
    let denied = std::fs::read_to_string(&out).unwrap();
    let verdicts: Vec<String> = denied
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["verdict"].to_string())
        .collect();
    assert_eq!(verdicts, ["\"deny\"", "\"deny\""]);
    // Each line is its input record with the verdict members added.
    let input: Vec<Value> = std::fs::read_to_string(Path::new(FIXTURES).join("flows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null)) // blank lines
        .collect();
    for (line, n) in denied.lines().zip([3usize, 7]) {
        let v: Value = serde_json::from_str(line).unwrap();
        for (k, x) in input[n].as_object().unwrap() {
            assert_eq!(&v[k], x, "line {} field {k}", n + 1);
        }
    }
    let again = dir.join("again.jsonl");
    // Nothing kept: no output at all (not even an empty line).
    let args = DiffArgs {
        flows: Path::new(FIXTURES).join("flows.jsonl"),
        filter: auditor::filter::FilterArgs {
            namespace: Some("monitoring".into()),
            ..Default::default()
        },
        output: Some(again.clone()),
        ..args
    };
    assert_eq!(run(&args).map_err(|e| e.to_string()), Ok(0));
    assert_eq!(std::fs::read_to_string(&again).unwrap(), "");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-o` is the format, as kubectl's; `--format` and `--output-format` are the same flag;
/// `--output` is the file; suggest and report have no `-o`.
#[test]
fn dash_o_is_the_format() {
    let dir = temp_dir("dash-o");
    let snap = snapshot(&dir);
    let flows = Path::new(FIXTURES).join("flows.jsonl");
    let auditor = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (s, f) = (snap.to_str().unwrap(), flows.to_str().unwrap());
    let (code, by_o, _) = auditor(&["diff", "--cluster", s, "--flows", f, "-o", "jsonl"]);
    assert_eq!(code, Some(1));
    let (_, by_long, _) = auditor(&["diff", "--cluster", s, "--flows", f, "--format", "jsonl"]);
    let (_, by_alias, _) = auditor(&[
        "diff",
        "--cluster",
        s,
        "--flows",
        f,
        "--output-format",
        "jsonl",
    ]);
    assert_eq!(by_o, by_long);
    assert_eq!(by_o, by_alias);
    assert_eq!(by_o.lines().count(), 7);
    // A file name after -o is not a format.
    let (code, _, err) = auditor(&["diff", "--cluster", s, "--flows", f, "-o", "diff.json"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid value 'diff.json' for '--format <FORMAT>'")
            && err.contains("[possible values: json, table, markdown, jsonl]"),
        "{err}"
    );
    for cmd in ["suggest", "report"] {
        let (code, _, err) = auditor(&[cmd, "--cluster", s, "--flows", f, "-o", "out/"]);
        assert_eq!(code, Some(2), "{cmd}");
        assert!(
            err.contains("unexpected argument '-o' found"),
            "{cmd}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fixture with `admin-policies.yaml` added: an AdminNetworkPolicy Deny over the
/// NetworkPolicy that allows 203.0.113.80:443.
fn diff_with_admin(format: Format) -> (Result<i32, String>, String) {
    let dir = temp_dir(&format!("admin-{format:?}"));
    let snap = snapshot(&dir);
    let admin = std::fs::read_to_string(Path::new(FIXTURES).join("admin-policies.yaml")).unwrap();
    let mut text = std::fs::read_to_string(&snap).unwrap();
    text.push_str("---\n");
    text.push_str(&admin);
    std::fs::write(&snap, text).unwrap();
    let out = dir.join("out");
    let args = DiffArgs {
        source: auditor::cluster::ClusterSource::file(snap),
        flows: Path::new(FIXTURES).join("flows.jsonl"),
        format,
        output: Some(out.clone()),
        ..Default::default()
    };
    let code = run(&args).map_err(|e| e.to_string());
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (code, text)
}

#[test]
fn admin_network_policy_named_in_verdicts() {
    let (code, table) = diff_with_admin(Format::Table);
    assert_eq!(code, Ok(1));
    assert!(
        table.contains("egress DENIED by AdminNetworkPolicy deny-egress-cdn rule block-cdn (priority 10) (NetworkPolicy media/ffmpeg-egress egress[2] allows it, but no NetworkPolicy overrides an AdminNetworkPolicy Deny)"),
        "{table}"
    );
    let (_, json) = diff_with_admin(Format::Json);
    let v: Value = serde_json::from_str(&json).expect("valid JSON");
    let flows = v["flows"].as_array().unwrap();
    let cdn = flows
        .iter()
        .find(|f| f["dst_ip"] == "203.0.113.80")
        .expect("the CDN flow");
    assert_eq!(cdn["verdict"], "deny");
    assert_eq!(
        cdn["egress"]["admin"],
        serde_json::json!({"kind": "AdminNetworkPolicy", "name": "deny-egress-cdn", "priority": 10, "rule": 0, "rule_name": "block-cdn", "action": "Deny"})
    );
    // Sides no admin rule decided carry no admin member, as without AdminNetworkPolicies.
    let ingest = flows
        .iter()
        .find(|f| f["dst_ip"] == "203.0.113.81")
        .expect("the ingest flow");
    assert!(ingest["egress"].get("admin").is_none(), "{ingest}");
    // The baseline decides where no NetworkPolicy isolates: ingress into cdn from media.
    let (_, plain) = diff("admin-none", Format::Json, None, false);
    assert!(
        !plain.contains("\"admin\""),
        "no admin member without AdminNetworkPolicies"
    );
}
