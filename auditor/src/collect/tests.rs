//! `auditor collect` against the faked API server: agents that answer, fail, hang.

use std::time::{Duration, SystemTime};

use clap::Parser;
use serde_json::{json, Value};

use super::*;
use crate::flowlog;
use crate::kube::fake::{FakeApi, Proxy};

fn agent(name: &str, node: Option<&str>, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "auditor",
                     "labels": {"app.kubernetes.io/name": "auditor", "app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "containers": [{"name": "auditor", "image": "auditor:dev"}]},
        "status": {"phase": phase}
    })
}

fn flow(port: u16, first: &str) -> String {
    format!(
        r#"{{"src_ip":"10.0.1.5","dst_ip":"10.0.2.7","dst_port":{port},"protocol":"TCP","first_seen":"{first}","last_seen":"2026-11-28T10:59:00.000Z"}}"#
    )
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: CollectArgs,
}

fn args(extra: &[&str]) -> CollectArgs {
    let mut v = vec![
        "collect",
        "--timeout",
        "300ms",
        "--since",
        "2026-11-28T10:00:00Z",
    ];
    v.extend_from_slice(extra);
    Cli::try_parse_from(v).expect("valid arguments").args
}

/// Three nodes: a answers (with one bad line), b's agent errors, c's never answers;
/// d answers too. Pods that do not match the selector or namespace are not asked.
fn cluster(fake: &FakeApi) {
    fake.apply(agent("auditor-aaaaa", Some("node-a"), "Running"));
    fake.apply(agent("auditor-bbbbb", Some("node-b"), "Running"));
    fake.apply(agent("auditor-ccccc", Some("node-c"), "Running"));
    fake.apply(agent("auditor-ddddd", Some("node-d"), "Running"));
    let mut other = agent("prometheus-0", Some("node-a"), "Running");
    other["metadata"]["labels"] = json!({"app.kubernetes.io/name": "prometheus"});
    fake.apply(other);
    let mut elsewhere = agent("auditor-zzzzz", Some("node-z"), "Running");
    elsewhere["metadata"]["namespace"] = json!("staging");
    fake.apply(elsewhere);

    let a = format!(
        "{}\n{{\"src_ip\":\"10.0.1.5\",\"dst_port\":1}}\n{}\n",
        flow(1935, "2026-11-28T10:00:03.000Z"),
        flow(443, "2026-11-28T10:00:01.000Z")
    );
    fake.set_proxy("auditor", "auditor-aaaaa", 9090, Proxy::Ok(a));
    fake.set_proxy(
        "auditor",
        "auditor-bbbbb",
        9090,
        Proxy::Status(
            503,
            "error trying to reach service: dial tcp 10.0.2.3:9090: connect: connection refused"
                .into(),
        ),
    );
    fake.set_proxy("auditor", "auditor-ccccc", 9090, Proxy::Hang);
    // Same first_seen as a's second line: node order breaks the tie. The last line is
    // cut off (the agent was killed mid-write): reported and skipped.
    let d = format!(
        "{}\n{}\n{{\"src_ip\":\"10.0",
        flow(53, "2026-11-28T10:00:01.000Z"),
        flow(80, "2026-11-28T10:00:02.000Z")
    );
    fake.set_proxy("auditor", "auditor-ddddd", 9090, Proxy::Ok(d));
}

fn port_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["dst_port"]
        .as_u64()
        .unwrap()
}

/// Collects and merges into memory: the outcome and the merged lines.
async fn collect_lines(client: &::kube::Client, a: &CollectArgs) -> (Collected, Vec<String>) {
    let (c, merged) = collect(client, a, SystemTime::now())
        .await
        .expect("collect");
    let mut out = Vec::new();
    let n = merged.write_to(&mut out).expect("merge");
    let lines: Vec<String> = String::from_utf8(out)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(n as usize, lines.len());
    assert_eq!(c.records, n);
    (c, lines)
}

#[tokio::test]
async fn collects_merges_and_reports_failed_nodes() {
    let (fake, client) = FakeApi::start();
    cluster(&fake);
    let a = args(&[]);
    let started = std::time::Instant::now();
    let (c, lines) = collect_lines(&client, &a).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the hanging agent is bounded by --timeout"
    );

    // Merged: by first_seen, then node, then line.
    let ports: Vec<u64> = lines.iter().map(|l| port_of(l)).collect();
    assert_eq!(ports, [443, 53, 80, 1935]);
    assert_eq!(c.records, 4);
    // Lines are passed through as the agent wrote them.
    assert_eq!(lines[3], flow(1935, "2026-11-28T10:00:03.000Z"));

    let summary: Vec<(String, String, Result<usize, String>)> = c
        .nodes
        .iter()
        .map(|n| {
            (
                n.node.clone(),
                n.pod.clone(),
                n.result.as_ref().map(|x| *x).map_err(|e| e.to_string()),
            )
        })
        .collect();
    assert_eq!(summary.len(), 4, "{summary:#?}");
    assert_eq!(summary[0], ("node-a".into(), "auditor-aaaaa".into(), Ok(2)));
    let b = summary[1].2.clone().unwrap_err();
    assert!(
        b.contains("HTTP 503") && b.contains("connection refused"),
        "{b}"
    );
    assert!(
        b.contains("/api/v1/namespaces/auditor/pods/auditor-bbbbb:9090/proxy/flows"),
        "{b}"
    );
    let cc = summary[2].2.clone().unwrap_err();
    assert!(cc.contains("no answer within 300ms"), "{cc}");
    assert_eq!(summary[3], ("node-d".into(), "auditor-ddddd".into(), Ok(2)));
    assert_eq!(c.exit_code(), EXIT_PARTIAL);

    assert_eq!(c.bad_lines.len(), 2, "{:?}", c.bad_lines);
    assert_eq!(
        (c.bad_lines[0].node.as_str(), c.bad_lines[0].line),
        ("node-a", 2)
    );
    assert!(
        c.bad_lines[0].message.contains("dst_ip"),
        "{:?}",
        c.bad_lines[0]
    );
    assert_eq!(
        (c.bad_lines[1].node.as_str(), c.bad_lines[1].line),
        ("node-d", 3)
    );

    // What was asked: one list in the namespace with the selector, one token for the
    // agents, one proxy GET per agent with the resolved since; nothing else (this is what
    // Role auditor-collect grants: pods list, serviceaccounts/token create for
    // auditor-collect, pods/proxy get).
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 6, "{reqs:#?}");
    assert!(
        reqs[1].starts_with("/api/v1/namespaces/auditor/serviceaccounts/auditor-collect/token"),
        "{reqs:#?}"
    );
    assert_eq!(c.token_error, None);
    assert!(
        reqs[0].starts_with("/api/v1/namespaces/auditor/pods?"),
        "{reqs:#?}"
    );
    assert!(
        reqs[0].contains("labelSelector=app.kubernetes.io/name=auditor"),
        "{reqs:#?}"
    );
    for pod in [
        "auditor-aaaaa",
        "auditor-bbbbb",
        "auditor-ccccc",
        "auditor-ddddd",
    ] {
        let want = format!(
            "/api/v1/namespaces/auditor/pods/{pod}:9090/proxy/flows?since=2026-11-28T10:00:00.000Z"
        );
        assert!(reqs.contains(&want), "{want}\n{reqs:#?}");
    }

    let mut text = Vec::new();
    report(&mut text, &c, Path::new("flows.jsonl")).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("node-a (auditor-aaaaa): 2 flow records"),
        "{text}"
    );
    assert!(text.contains("node-c (auditor-ccccc): FAILED: GET /api/v1/namespaces/auditor/pods/auditor-ccccc:9090/proxy/flows: no answer within 300ms"), "{text}");
    assert!(text.contains("node-a: line 2: skipped"), "{text}");
    assert!(text.contains("4 flow records since 2026-11-28T10:00:00.000Z from 2 of 4 nodes to flows.jsonl (incomplete"), "{text}");
}

/// Agents on node-a (answering one flow) and node-b (its answer is the test's).
fn two_agents(fake: &FakeApi) {
    fake.apply(agent("auditor-aaaaa", Some("node-a"), "Running"));
    fake.apply(agent("auditor-bbbbb", Some("node-b"), "Running"));
    fake.set_proxy(
        "auditor",
        "auditor-aaaaa",
        9090,
        Proxy::Ok(flow(1, "2026-11-28T10:00:02Z") + "\n"),
    );
}

#[tokio::test]
async fn run_writes_the_output_and_exits_0_when_all_answer() {
    let (fake, client) = FakeApi::start();
    two_agents(&fake);
    fake.set_proxy("auditor", "auditor-bbbbb", 9090, Proxy::Ok(String::new()));
    let dir = std::env::temp_dir().join(format!("auditor-collect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("flows.jsonl");
    let a = args(&["--output", out.to_str().unwrap()]);
    let code = run_with_client(client, &a).await.expect("run");
    assert_eq!(code, 0);
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written, flow(1, "2026-11-28T10:00:02Z") + "\n");
    // The merged log reads back as a flow log.
    let log = flowlog::parse_flow_log(&out, written.as_bytes(), false).unwrap();
    assert_eq!(log.records.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_whose_buffer_evicted_part_of_the_window_is_reported_incomplete() {
    let (fake, client) = FakeApi::start();
    two_agents(&fake);
    fake.set_proxy(
        "auditor",
        "auditor-bbbbb",
        9090,
        Proxy::OkWithHeaders(
            flow(2, "2026-11-28T10:30:00Z") + "\n",
            vec![(
                crate::serve::EVICTED_HEADER,
                "2026-11-28T10:29:59.000Z".to_owned(),
            )],
        ),
    );
    let (c, lines) = collect_lines(&client, &args(&[])).await;
    assert_eq!(lines.len(), 2, "what arrived is still written");
    let b = &c.nodes[1];
    assert_eq!(b.node, "node-b");
    assert_eq!(b.evicted_until.as_deref(), Some("2026-11-28T10:29:59.000Z"));
    assert_eq!(c.nodes[0].evicted_until, None);
    assert_eq!(c.exit_code(), EXIT_PARTIAL);
    let mut text = Vec::new();
    report(&mut text, &c, Path::new("flows.jsonl")).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("node-b (auditor-bbbbb): 1 flow records, INCOMPLETE: records last seen up to 2026-11-28T10:29:59.000Z were evicted from the agent's /flows buffer"),
        "{text}"
    );
    assert!(
        text.contains("from 2 of 2 nodes to flows.jsonl (incomplete: see INCOMPLETE above)"),
        "{text}"
    );
}

#[tokio::test]
async fn agents_not_running_are_failures_and_a_node_with_a_running_one_is_asked() {
    let (fake, client) = FakeApi::start();
    fake.apply(agent("auditor-old", Some("node-a"), "Failed"));
    fake.apply(agent("auditor-new", Some("node-a"), "Running"));
    fake.apply(agent("auditor-pending", Some("node-b"), "Pending"));
    fake.apply(agent("auditor-unscheduled", None, "Pending"));
    fake.set_proxy(
        "auditor",
        "auditor-new",
        9090,
        Proxy::Ok(flow(1, "2026-11-28T10:00:02Z")),
    );
    let (c, lines) = collect_lines(&client, &args(&[])).await;
    let got: Vec<(String, String, bool)> = c
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.pod.clone(), n.result.is_ok()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "(unscheduled)".to_owned(),
                "auditor-unscheduled".to_owned(),
                false
            ),
            ("node-a".to_owned(), "auditor-new".to_owned(), true),
            ("node-b".to_owned(), "auditor-pending".to_owned(), false),
        ]
    );
    assert!(c.nodes[2]
        .result
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("is Pending, not Running"));
    assert_eq!(lines.len(), 1);
    assert_eq!(c.exit_code(), EXIT_PARTIAL);
}

#[tokio::test]
async fn no_agents_and_unreachable_api_are_errors() {
    let (fake, client) = FakeApi::start();
    let err = collect(&client, &args(&["-n", "media"]), SystemTime::now())
        .await
        .unwrap_err();
    assert!(matches!(err, CollectError::NoAgents { .. }), "{err}");
    assert!(err.to_string().contains("namespace media"), "{err}");
    fake.set_down(true);
    let err = collect(&client, &args(&[]), SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "list agent pods in namespace auditor with selector app.kubernetes.io/name=auditor"
        ),
        "{err}"
    );
}

#[test]
fn since_is_a_time_or_a_duration() {
    let now = humantime::parse_rfc3339("2026-11-28T12:00:00Z").unwrap();
    let at = |s: &str| {
        humantime::format_rfc3339_seconds(parse_since(s).unwrap().resolve(now)).to_string()
    };
    assert_eq!(at("1h"), "2026-11-28T11:00:00Z");
    assert_eq!(at("90m"), "2026-11-28T10:30:00Z");
    assert_eq!(at("2026-11-28T10:00:00Z"), "2026-11-28T10:00:00Z");
    assert_eq!(at("2026-11-28T10:00:00.250Z"), "2026-11-28T10:00:00Z");
    let err = parse_since("yesterday").unwrap_err();
    assert!(
        err.contains("RFC 3339") && err.contains("duration"),
        "{err}"
    );
    assert!(Cli::try_parse_from(["collect", "--since", "soon"]).is_err());
    let d = Cli::try_parse_from(["collect"]).unwrap().args;
    assert_eq!(
        (
            d.namespace.as_str(),
            d.selector.as_str(),
            d.timeout,
            d.port,
            d.since
        ),
        (
            "auditor",
            "app.kubernetes.io/name=auditor,app.kubernetes.io/component=agent",
            Duration::from_secs(10),
            9090,
            Since::Ago(Duration::from_secs(3600))
        )
    );
    assert_eq!(d.output, PathBuf::from("-"));
}

#[tokio::test]
async fn without_a_token_collection_goes_on_with_a_warning() {
    let (fake, client) = FakeApi::start();
    two_agents(&fake);
    fake.set_proxy(
        "auditor",
        "auditor-bbbbb",
        9090,
        Proxy::Ok(flow(2, "2026-11-28T10:00:01Z") + "\n"),
    );
    fake.with_state(|s| s.forbid_token_requests = true);
    let (c, lines) = collect_lines(&client, &args(&[])).await;
    assert_eq!(lines.len(), 2);
    let why = c.token_error.as_deref().expect("the refusal is kept");
    assert!(
        why.contains("ServiceAccount auditor/auditor-collect"),
        "{why}"
    );
    let mut text = Vec::new();
    report(&mut text, &c, Path::new("flows.jsonl")).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.starts_with(
            "auditor collect: warning: create a token for ServiceAccount auditor/auditor-collect"
        ),
        "{text}"
    );
    assert!(
        text.contains("--flows-auth kubernetes will answer 401"),
        "{text}"
    );
    assert_eq!(c.exit_code(), 0, "a missing token alone is not a failure");
}
