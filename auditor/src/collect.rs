//! `auditor collect`: every node's flow log, fetched from the agents through the API
//! server's pod proxy and merged into one flow log.
//!
//! Requests (what the Role `auditor-collect` in deploy/rbac.yaml grants):
//! - `GET /api/v1/namespaces/{ns}/pods?labelSelector=...` (pods: list) finds the agents;
//! - `POST /api/v1/namespaces/{ns}/serviceaccounts/auditor-collect/token`
//!   (serviceaccounts/token: create) mints a token bound to the audience `auditor`, valid
//!   10 minutes, which agents started with `--flows-auth kubernetes` check
//!   ([`crate::kube::review`]); it travels in the `auditor-authorization` header, which
//!   the API server passes on to the pod (it drops `Authorization`);
//! - `GET /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/flows?since=RFC3339`
//!   (pods/proxy: get) reads one agent's flow log lines whose `last_seen` >= since.
//!
//! Each line is validated as a flow record ([`crate::flowlog`]) as it streams in; bad
//! lines are reported with the node and line number and skipped. The merged log is sorted
//! by `first_seen`, then node, then line, in bounded memory: records go through sorted runs
//! in a spool directory under `$TMPDIR` and are merged from there ([`merge`]); at most 16
//! agents are fetched at a time. A node whose agent does not answer within `--timeout` (or
//! answers with an error) is reported and the others are still collected; the exit code
//! is then 3.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, ListParams};
use ::kube::Client;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;

use crate::kube::KubeError;

/// Exit code when at least one node's flows could not be collected, or only in part.
pub const EXIT_PARTIAL: i32 = 3;

/// Agents fetched at the same time.
const CONCURRENCY: usize = 16;

/// Gather the flow logs of every node's agent through the API server and merge them into
/// one flow log (JSON lines, sorted by first_seen, then node). Needs the Role
/// `auditor-collect` (deploy/rbac.yaml). Exits 3 when a node did not answer, or answered
/// without part of the window (its agent's `/flows` buffer had evicted it: the records are
/// in that node's flow log); everything received is still written. Memory stays bounded
/// whatever the number of nodes and records: at most 16 agents are fetched at a time, and
/// records go through sorted runs in `$TMPDIR` (about the merged log's size, removed at
/// the end) before they are merged into the output.
///
/// Example: auditor collect --since 1h --output flows.jsonl
#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// Namespace of the agent pods.
    ///
    /// Example: --namespace auditor
    #[arg(long, short = 'n', default_value = "auditor", value_name = "NAMESPACE")]
    pub namespace: String,
    /// Label selector of the agent pods.
    ///
    /// Example: --selector app.kubernetes.io/name=auditor,app.kubernetes.io/component=agent
    #[arg(
        long,
        short = 'l',
        default_value = "app.kubernetes.io/name=auditor,app.kubernetes.io/component=agent",
        value_name = "SELECTOR"
    )]
    pub selector: String,
    /// Flows last seen at or after this time: RFC 3339, or a duration back from now.
    ///
    /// Example: --since 2026-11-28T10:00:00Z  or  --since 90m
    #[arg(long, default_value = "1h", value_parser = parse_since, value_name = "TIME|DURATION")]
    pub since: Since,
    /// Where to write the merged flow log (`-` for stdout).
    ///
    /// Example: --output flows.jsonl
    #[arg(long, short, default_value = "-", value_name = "FILE")]
    pub output: PathBuf,
    /// How long to wait for each agent's answer.
    ///
    /// Example: --timeout 30s
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Port the agents serve /flows on (the DaemonSet's `--listen` port).
    ///
    /// Example: --port 9090
    #[arg(long, default_value_t = 9090)]
    pub port: u16,
    /// ServiceAccount (in `--namespace`) whose short-lived token, bound to the audience
    /// `auditor`, is shown to the agents (the ClusterRole auditor-flows-reader lets it read
    /// /flows). Without the right to create it, agents that check callers answer 401.
    ///
    /// Example: --service-account auditor-collect
    #[arg(long, default_value = "auditor-collect", value_name = "NAME")]
    pub service_account: String,
    /// kubeconfig file; default: `$KUBECONFIG`, `~/.kube/config`, or the in-cluster
    /// service account.
    ///
    /// Example: --kubeconfig ~/.kube/staging.yaml
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// The start of the collected window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    At(SystemTime),
    Ago(Duration),
}

impl Since {
    pub fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// `--since`: RFC 3339 (`2026-11-28T10:00:00Z`) or a duration (`1h`, `90m`, `2h 30m`).
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(Since::At(t));
    }
    humantime::parse_duration(s).map(Since::Ago).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-28T10:00:00Z) nor a duration (1h, 90m)")
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("list agent pods in namespace {namespace} with selector {selector}")]
    ListAgents {
        namespace: String,
        selector: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("no agent pods in namespace {namespace} match {selector} (is the DaemonSet installed? kubectl apply -k deploy/)")]
    NoAgents { namespace: String, selector: String },
    #[error("spool the flow records under {path}")]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write the merged flow log to {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why one node's flows are missing.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("agent pod {pod} is {phase}, not Running")]
    NotRunning { pod: String, phase: String },
    #[error("agent pod {pod} is not scheduled on a node")]
    Unscheduled { pod: String },
    #[error("GET {path}: no answer within {}", humantime::format_duration(*timeout))]
    Timeout { path: String, timeout: Duration },
    #[error("GET {path}")]
    Request {
        path: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("GET {path}: HTTP {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("GET {path}: spool the answer")]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One node's part of a collection.
#[derive(Debug)]
pub struct NodeOutcome {
    pub node: String,
    pub pod: String,
    /// Valid flow records received, or why there are none.
    pub result: Result<usize, NodeError>,
    /// The agent's `/flows` buffer had already evicted records of the window, up to this
    /// `last_seen`: they are only in that node's flow log.
    pub evicted_until: Option<String>,
}

/// A line of an agent's answer that is not a valid flow record (skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub node: String,
    pub line: usize,
    pub message: String,
}

/// What a collection produced.
#[derive(Debug, Default)]
pub struct Collected {
    /// Valid flow records received (what [`Merged::write_to`] writes).
    pub records: u64,
    /// One per node with an agent pod, sorted by node.
    pub nodes: Vec<NodeOutcome>,
    pub bad_lines: Vec<BadLine>,
    /// The resolved start of the window, RFC 3339.
    pub since: String,
    /// Why no token for the agents could be minted (collection went on without one).
    pub token_error: Option<String>,
}

impl Collected {
    pub fn failed(&self) -> impl Iterator<Item = &NodeOutcome> {
        self.nodes.iter().filter(|n| n.result.is_err())
    }

    /// Nodes that answered without every record of the window.
    pub fn incomplete(&self) -> impl Iterator<Item = &NodeOutcome> {
        self.nodes
            .iter()
            .filter(|n| n.result.is_ok() && n.evicted_until.is_some())
    }

    /// 0 when every node answered with the whole window, [`EXIT_PARTIAL`] otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.failed().next().is_some() || self.incomplete().next().is_some() {
            EXIT_PARTIAL
        } else {
            0
        }
    }
}

/// `auditor collect`: collects, writes `--output`, reports each node on stderr. Returns
/// the exit code: 0, or 3 when a node's flows are missing.
pub async fn run(args: &CollectArgs) -> Result<i32, CollectError> {
    let mut config = crate::kube::config(args.kubeconfig.as_deref()).await?;
    // kube-rs retries 503 with backoff by default, and the pod proxy answers 503 for an
    // agent it cannot reach: without this a dead agent is reported as a timeout after
    // --timeout instead of with the API server's reason at once.
    config.default_retry = false;
    run_with_client(crate::kube::client_from(config)?, args).await
}

/// [`run`] with a ready client.
pub async fn run_with_client(client: Client, args: &CollectArgs) -> Result<i32, CollectError> {
    let (collected, merged) = collect(&client, args, SystemTime::now()).await?;
    write_output(&args.output, merged)?;
    let stderr = std::io::stderr();
    let _ = report(&mut stderr.lock(), &collected, &args.output);
    Ok(collected.exit_code())
}

/// The records of a collection, spooled in sorted runs, ready to be merged.
pub struct Merged {
    spool: merge::Spool,
    runs: Vec<PathBuf>,
}

impl std::fmt::Debug for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merged")
            .field("spool", &self.spool.dir())
            .field("runs", &self.runs.len())
            .finish()
    }
}

impl Merged {
    /// Writes the merged flow log; returns how many records.
    pub fn write_to(mut self, out: &mut dyn Write) -> std::io::Result<u64> {
        let runs = std::mem::take(&mut self.runs);
        self.spool.merge(runs, out)
    }
}

/// Finds the agents, fetches and validates every node's flows into sorted runs.
pub async fn collect(
    client: &Client,
    args: &CollectArgs,
    now: SystemTime,
) -> Result<(Collected, Merged), CollectError> {
    let since = humantime::format_rfc3339_millis(args.since.resolve(now)).to_string();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
    let list = pods
        .list(&ListParams::default().labels(&args.selector))
        .await
        .map_err(|source| CollectError::ListAgents {
            namespace: args.namespace.clone(),
            selector: args.selector.clone(),
            source,
        })?;
    if list.items.is_empty() {
        return Err(CollectError::NoAgents {
            namespace: args.namespace.clone(),
            selector: args.selector.clone(),
        });
    }
    let (targets, mut nodes) = choose_agents(list.items);
    let (token, token_error) = match mint_token(client, args).await {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e)),
    };
    let token = token.as_deref();

    let spool = merge::Spool::new().map_err(|source| CollectError::Spool {
        path: std::env::temp_dir(),
        source,
    })?;
    let spool = std::sync::Mutex::new(spool);
    let fetched: Vec<(String, String, Result<Fetched, NodeError>)> =
        futures::stream::iter(targets.into_iter().enumerate())
            .map(|(rank, (node, pod))| {
                let client = client.clone();
                let since = since.clone();
                let spool = &spool;
                async move {
                    let r = fetch(&client, args, &pod, &since, token, rank as u32, spool).await;
                    (node, pod, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let spool = spool.into_inner().unwrap_or_else(|p| p.into_inner());

    let mut runs = Vec::new();
    let mut bad_lines = Vec::new();
    let mut records = 0u64;
    for (node, pod, r) in fetched {
        let evicted_until = r.as_ref().ok().and_then(|f| f.evicted_until.clone());
        let result = r.map(|f| {
            for (line, message) in f.run.bad {
                bad_lines.push(BadLine {
                    node: node.clone(),
                    line,
                    message,
                });
            }
            records += f.run.records as u64;
            runs.extend(f.run.runs);
            f.run.records
        });
        nodes.push(NodeOutcome {
            node,
            pod,
            result,
            evicted_until,
        });
    }
    nodes.sort_by(|a, b| (&a.node, &a.pod).cmp(&(&b.node, &b.pod)));
    bad_lines.sort_by(|a, b| (&a.node, a.line).cmp(&(&b.node, b.line)));
    Ok((
        Collected {
            records,
            nodes,
            bad_lines,
            since,
            token_error,
        },
        Merged { spool, runs },
    ))
}

/// How long a minted token is valid (the API server's minimum is 10 minutes).
const TOKEN_SECONDS: i64 = 600;

/// A token of `--service-account` for the audience the agents check.
async fn mint_token(client: &Client, args: &CollectArgs) -> Result<String, String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![crate::kube::review::AUDIENCE.to_owned()],
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let sa = format!("{}/{}", args.namespace, args.service_account);
    let minted = Api::<ServiceAccount>::namespaced(client.clone(), &args.namespace)
        .create_token_request(&args.service_account, &Default::default(), &request)
        .await
        .map_err(|e| format!("create a token for ServiceAccount {sa}: {e}"))?;
    minted
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            format!("create a token for ServiceAccount {sa}: the answer has no status.token")
        })
}

/// One agent per node: a Running pod that is not being deleted if there is one, else a
/// Running one. Nodes (and unscheduled pods) without a Running agent are failures.
fn choose_agents(pods: Vec<Pod>) -> (Vec<(String, String)>, Vec<NodeOutcome>) {
    use std::collections::BTreeMap;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    let mut failed = Vec::new();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        match p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => by_node.entry(node).or_default().push(p),
            None => failed.push(NodeOutcome {
                node: "(unscheduled)".to_owned(),
                pod: name.clone(),
                result: Err(NodeError::Unscheduled { pod: name }),
                evicted_until: None,
            }),
        }
    }
    let mut targets = Vec::new();
    for (node, mut pods) in by_node {
        let running =
            |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        pods.sort_by_key(|p| {
            (
                !running(p),
                p.metadata.deletion_timestamp.is_some(),
                p.metadata.name.clone(),
            )
        });
        let p = &pods[0];
        let name = p.metadata.name.clone().unwrap_or_default();
        if running(p) {
            targets.push((node, name));
        } else {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".to_owned());
            failed.push(NodeOutcome {
                node,
                pod: name.clone(),
                result: Err(NodeError::NotRunning { pod: name, phase }),
                evicted_until: None,
            });
        }
    }
    (targets, failed)
}

/// One agent's `/flows` answer.
struct Fetched {
    run: merge::NodeRun,
    /// Its [`crate::serve::EVICTED_HEADER`].
    evicted_until: Option<String>,
}

async fn fetch(
    client: &Client,
    args: &CollectArgs,
    pod: &str,
    since: &str,
    token: Option<&str>,
    rank: u32,
    spool: &std::sync::Mutex<merge::Spool>,
) -> Result<Fetched, NodeError> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{pod}:{}/proxy/flows",
        args.namespace, args.port
    );
    let uri = format!("{path}?since={}", query_escape(since));
    let request_error = |source| NodeError::Request {
        path: path.clone(),
        source,
    };
    let mut request = http::Request::get(&uri).header(http::header::ACCEPT, "application/x-ndjson");
    if let Some(t) = token {
        request = request.header(crate::kube::review::TOKEN_HEADER, format!("Bearer {t}"));
    }
    let request = request
        .body(::kube::client::Body::from(Vec::new()))
        .map_err(|e| request_error(::kube::Error::HttpError(e)))?;
    let exchange = async {
        let response = client.send(request).await.map_err(request_error)?;
        let status = response.status();
        let evicted_until = response
            .headers()
            .get(crate::serve::EVICTED_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        if !status.is_success() {
            let body = body.collect_bytes().await.map_err(request_error)?;
            return Err(NodeError::Status {
                path: path.clone(),
                status: status.as_u16(),
                message: status_message(&body),
            });
        }
        let mut run = merge::NodeRun::new(rank);
        let spool_error = |source: std::io::Error| NodeError::Spool {
            path: path.clone(),
            source,
        };
        let streamed: Result<(), NodeError> = async {
            use http_body_util::BodyExt as _;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(request_error)?;
                if let Ok(data) = frame.into_data() {
                    let mut sp = spool.lock().unwrap_or_else(|p| p.into_inner());
                    run.push(&mut sp, &data).map_err(spool_error)?;
                }
            }
            let mut sp = spool.lock().unwrap_or_else(|p| p.into_inner());
            run.finish(&mut sp).map_err(spool_error)
        }
        .await;
        if let Err(e) = streamed {
            run.discard();
            return Err(e);
        }
        Ok(Fetched { run, evicted_until })
    };
    match tokio::time::timeout(args.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(NodeError::Timeout {
            path: path.clone(),
            timeout: args.timeout,
        }),
    }
}

/// The `message` of a Kubernetes `Status` body, else the body's first line.
fn status_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return m.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    let first = text.lines().next().unwrap_or("").trim();
    first.chars().take(200).collect()
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn write_output(path: &Path, merged: Merged) -> Result<(), CollectError> {
    let output_error = |source| CollectError::Output {
        path: path.to_owned(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        merged.write_to(&mut out).map_err(output_error)?;
        out.flush().map_err(output_error)
    } else {
        let f = std::fs::File::create(path).map_err(output_error)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, f);
        merged.write_to(&mut out).map_err(output_error)?;
        out.flush().map_err(output_error)
    }
}

/// The human report: one line per node, skipped lines, a summary.
pub fn report(w: &mut impl Write, c: &Collected, output: &Path) -> std::io::Result<()> {
    if let Some(e) = &c.token_error {
        writeln!(
            w,
            "auditor collect: warning: {e}; going on without a token (agents started with \
             --flows-auth kubernetes will answer 401; deploy/rbac.yaml's Role auditor-collect \
             grants it)"
        )?;
    }
    for n in &c.nodes {
        match &n.result {
            Ok(records) => match &n.evicted_until {
                None => writeln!(
                    w,
                    "auditor collect: {} ({}): {records} flow records",
                    n.node, n.pod
                )?,
                Some(until) => writeln!(
                    w,
                    "auditor collect: {} ({}): {records} flow records, INCOMPLETE: records \
                     last seen up to {until} were evicted from the agent's /flows buffer \
                     (they are in the node's flow log; raise --flows-buffer-bytes or \
                     collect more often)",
                    n.node, n.pod
                )?,
            },
            Err(e) => {
                write!(w, "auditor collect: {} ({}): FAILED: {e}", n.node, n.pod)?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(w, ": {s}")?;
                    source = s.source();
                }
                if matches!(
                    e,
                    NodeError::Status {
                        status: 401 | 403,
                        ..
                    }
                ) {
                    write!(w, " (the agent checks callers: see --service-account and the ClusterRole auditor-flows-reader in deploy/rbac.yaml)")?;
                }
                if matches!(e, NodeError::Timeout { .. }) {
                    write!(w, " (is the agent up, and does its NetworkPolicy let the API server reach the agent's port? see deploy/SECURITY.md)")?;
                }
                writeln!(w)?;
            }
        }
    }
    for b in &c.bad_lines {
        writeln!(
            w,
            "auditor collect: {}: line {}: skipped, not a flow record: {}",
            b.node, b.line, b.message
        )?;
    }
    let ok = c.nodes.iter().filter(|n| n.result.is_ok()).count();
    let out = if output.as_os_str() == "-" {
        "stdout".to_owned()
    } else {
        output.display().to_string()
    };
    writeln!(
        w,
        "auditor collect: {} flow records since {} from {ok} of {} nodes to {out}{}",
        c.records,
        c.since,
        c.nodes.len(),
        if ok < c.nodes.len() {
            " (incomplete: see FAILED above)"
        } else if c.incomplete().next().is_some() {
            " (incomplete: see INCOMPLETE above)"
        } else {
            ""
        }
    )
}

pub mod merge;
#[cfg(test)]
mod tests;
