//! One read of the live cluster for `diff`, `suggest` and `report` (`--kubeconfig`,
//! `--context`, or the in-cluster service account): the objects the policy engine needs,
//! listed once from the API server and trimmed as the agent's watch trims them, into the
//! same [`Snapshot`] a snapshot file gives.
//!
//! Lists are consistent reads (no `resourceVersion`, as kubectl's) in pages of 500. The
//! whole read has one deadline (`--request-timeout`): an API server that is down or does
//! not answer is an error naming it, not a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::kube::api::{Api, ListParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;

use super::{
    key, trim_admin_policy, trim_baseline_policy, trim_endpoint_slice, trim_namespace,
    trim_network_policy, trim_node, trim_peer_pod, trim_service, KubeError,
};
use crate::cluster::Snapshot;

/// Objects asked for per request (kubectl's default chunk size).
const PAGE: u32 = 500;

/// The client configuration for `--kubeconfig` / `--context`, as kubectl chooses it: the
/// given file, else `$KUBECONFIG` (a list of files, merged) or `~/.kube/config`; its
/// current context unless `context` names another. With neither, the in-cluster service
/// account.
pub async fn config_for(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Config, KubeError> {
    if kubeconfig.is_none() && context.is_none() {
        return Config::incluster().map_err(|source| KubeError::InCluster { source });
    }
    let path = match kubeconfig {
        Some(p) => p.to_owned(),
        None => default_kubeconfig_name(),
    };
    let kc = match kubeconfig {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|source| KubeError::ReadKubeconfig {
        path: path.clone(),
        source,
    })?;
    if let Some(name) = context {
        if !kc.contexts.iter().any(|c| c.name == name) {
            let mut known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
            known.sort_unstable();
            return Err(KubeError::UnknownContext {
                path,
                context: name.to_owned(),
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    let opts = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|source| KubeError::LoadKubeconfig { path, source })
}

/// What names the kubeconfig kubectl would read, for messages.
fn default_kubeconfig_name() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("~/.kube/config"),
    }
}

/// Lists Namespaces, Pods, Services, EndpointSlices, NetworkPolicies and Nodes once, within
/// `timeout` for the whole read; `server` names the API server in errors. Nodes the
/// caller may not list (403) are a note, not an error. Objects are
/// sorted (namespace, name), as [`super::ClusterWatch::snapshot`] gives them.
pub async fn read_cluster(
    client: &Client,
    server: &str,
    timeout: Duration,
) -> Result<Snapshot, KubeError> {
    let read = async {
        Ok::<_, KubeError>(Snapshot {
            namespaces: list(client, server, "namespaces", trim_namespace).await?,
            pods: list(client, server, "pods", trim_peer_pod).await?,
            services: list(client, server, "services", trim_service).await?,
            endpoint_slices: list(client, server, "endpointslices", trim_endpoint_slice).await?,
            network_policies: list(client, server, "networkpolicies", trim_network_policy).await?,
            ..Snapshot::default()
        })
    };
    // Nodes are cluster-scoped, and a user who may read every namespace often may not
    // list them: then node IPs are not known (as with a snapshot file without Nodes).
    let nodes = async {
        match list(client, server, "nodes", trim_node).await {
            Err(KubeError::List {
                source: ::kube::Error::Api(status),
                ..
            }) if status.code == 403 => Ok((
                Vec::new(),
                Some(format!("nodes not listed (forbidden by {server}): node and host-network addresses count as external")),
            )),
            other => other.map(|n| (n, None)),
        }
    };
    // AdminNetworkPolicies are a CRD: absent (404) or forbidden (403), NetworkPolicy
    // alone is evaluated, and a note says so when it is forbidden.
    let admin = async {
        let anps = optional(
            list(client, server, "adminnetworkpolicies", trim_admin_policy).await,
            server,
            "adminnetworkpolicies",
        )?;
        let banps = optional(
            list(
                client,
                server,
                "baselineadminnetworkpolicies",
                trim_baseline_policy,
            )
            .await,
            server,
            "baselineadminnetworkpolicies",
        )?;
        Ok::<_, KubeError>((anps, banps))
    };
    let read = async {
        let mut snap = read.await?;
        let (nodes, note) = nodes.await?;
        snap.nodes = nodes;
        snap.notes.extend(note);
        let ((anps, n1), (banps, n2)) = admin.await?;
        snap.admin_network_policies = anps;
        snap.baseline_admin_network_policies = banps;
        snap.notes.extend(n1.into_iter().chain(n2));
        Ok::<_, KubeError>(snap)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| KubeError::Timeout {
            server: server.to_owned(),
            timeout,
        })?
}

/// The objects of a kind that may not be installed: none when the API server does not
/// know it (404), none with a note when listing it is forbidden (403).
fn optional<K>(
    r: Result<Vec<K>, KubeError>,
    server: &str,
    what: &str,
) -> Result<(Vec<K>, Option<String>), KubeError> {
    match r {
        Err(KubeError::List {
            source: ::kube::Error::Api(status),
            ..
        }) if status.code == 404 => Ok((Vec::new(), None)),
        Err(KubeError::List {
            source: ::kube::Error::Api(status),
            ..
        }) if status.code == 403 => Ok((
            Vec::new(),
            Some(format!(
                "{what} not listed (forbidden by {server}): verdicts leave them out"
            )),
        )),
        other => other.map(|v| (v, None)),
    }
}

/// Every object of one kind, page by page, trimmed and sorted.
async fn list<K>(
    client: &Client,
    server: &str,
    what: &'static str,
    trim: fn(&mut K),
) -> Result<Vec<K>, KubeError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|source| KubeError::List {
            what,
            server: server.to_owned(),
            source,
        })?;
        out.extend(page.items.into_iter().map(|mut o| {
            trim(&mut o);
            o
        }));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    out.sort_by_key(|o| key(o.meta()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize as _;
    use serde_json::Value;

    use super::*;
    use crate::cluster::{live_origin, ClusterSource, Loaded};
    use crate::diff::{DiffArgs, Format, VerdictFilter};
    use crate::kube::fake::FakeApi;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const SERVER: &str = "https://fake-apiserver:6443/";

    /// The objects of a YAML file (a `kind: List`'s items one by one) as the API serves them.
    fn objects(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            match v.get("items").and_then(Value::as_array) {
                Some(items) => out.extend(items.iter().cloned()),
                None if v.is_null() => {}
                None => out.push(v),
            }
        }
        out
    }

    /// The fixture cluster and its policies in the fake API server; returns the snapshot
    /// file a user would have written of the same cluster.
    fn fixture_cluster(fake: &FakeApi, dir: &Path) -> PathBuf {
        let files = [
            Path::new(FIXTURES).join("cluster.yaml"),
            Path::new(FIXTURES).join("policies.yaml"),
        ];
        for o in files.iter().flat_map(|f| objects(f)) {
            // The API server serves every kind; the fake only those the engine reads (the
            // snapshot file's others are skipped with a note).
            if super::super::fake::collection_for_tests(&o) {
                fake.apply(o);
            }
        }
        let text: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        let p = dir.join("snapshot.yaml");
        std::fs::write(&p, text.join("---\n")).unwrap();
        p
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("auditor-list-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `auditor diff` on the snapshot file and on the live read give the same output, but
    /// for the file's notes about kinds the engine skips (the live read lists only the
    /// kinds it uses).
    #[tokio::test]
    async fn live_read_diffs_as_the_snapshot_file() {
        let (fake, client) = FakeApi::start();
        let dir = temp_dir("same");
        let file = fixture_cluster(&fake, &dir);
        let snapshot = read_cluster(&client, SERVER, Duration::from_secs(5))
            .await
            .unwrap();
        let from_file = crate::cluster::read_snapshot(&file).unwrap();
        assert_eq!(snapshot.pods.len(), from_file.pods.len());
        assert_eq!(
            snapshot.network_policies.len(),
            from_file.network_policies.len()
        );
        // Listed once, one kind a request, in pages.
        let lists: Vec<String> = fake.requests();
        assert_eq!(lists.len(), 8, "{lists:?}");
        assert!(lists.iter().all(|r| r.contains("limit=500")), "{lists:?}");

        type SetFilter = fn(&mut DiffArgs);
        let filters: [(&str, SetFilter); 3] = [
            ("all", |_| {}),
            ("media-denied", |a| {
                a.filter.namespace = Some("media".into());
                a.filter.verdict = Some(VerdictFilter::Denied);
            }),
            ("selector", |a| {
                a.filter.selector = Some("app=packager".into())
            }),
        ];
        for (name, set) in filters {
            for format in [Format::Json, Format::Table, Format::Markdown] {
                let run = |live: bool| -> (i32, String) {
                    let out = dir.join(format!("{name}-{format:?}-{live}"));
                    let mut args = DiffArgs {
                        source: ClusterSource::file(&file),
                        flows: Path::new(FIXTURES).join("flows.jsonl"),
                        format,
                        output: Some(out.clone()),
                        ..DiffArgs::default()
                    };
                    set(&mut args);
                    let code = if live {
                        crate::diff::run_from(&args, || {
                            Ok(Loaded {
                                snapshot: snapshot.clone(),
                                origin: live_origin(SERVER, None).into(),
                            })
                        })
                    } else {
                        crate::diff::run(&args)
                    };
                    (code.unwrap(), std::fs::read_to_string(&out).unwrap())
                };
                let (file_code, file_out) = run(false);
                let (live_code, live_out) = run(true);
                assert_eq!(file_code, live_code, "{name} {format:?}");
                if format == Format::Json {
                    let mut f: Value = serde_json::from_str(&file_out).unwrap();
                    let l: Value = serde_json::from_str(&live_out).unwrap();
                    assert!(l["summary"]["notes"].as_array().is_some());
                    // The file's notes are the live read's plus the skipped kinds.
                    let notes: Vec<Value> = f["summary"]["notes"]
                        .take()
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|n| !n.as_str().unwrap().starts_with("skipped "))
                        .cloned()
                        .collect();
                    f["summary"]["notes"] = Value::Array(notes);
                    assert_eq!(f, l, "{name}");
                } else {
                    let keep = |s: &str| -> String {
                        s.lines()
                            .filter(|l| !l.contains("skipped "))
                            .collect::<Vec<_>>()
                            .join("\n")
                            .trim_end()
                            .to_owned()
                    };
                    assert_eq!(keep(&file_out), keep(&live_out), "{name} {format:?}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without the right to list Nodes the read goes on, and says so.
    #[tokio::test]
    async fn forbidden_nodes_are_a_note() {
        let (fake, client) = FakeApi::start();
        fake.apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "media"}}));
        fake.with_state(|s| s.forbid_list.push("/api/v1/nodes"));
        let snap = read_cluster(&client, SERVER, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(snap.namespaces.len(), 1);
        assert!(snap.nodes.is_empty());
        assert_eq!(
            snap.notes,
            ["nodes not listed (forbidden by https://fake-apiserver:6443/): node and host-network addresses count as external"]
        );
    }

    /// AdminNetworkPolicies are listed where the CRD is installed; where it is not (404)
    /// there are none and nothing to say; where listing them is forbidden, a note says so.
    #[tokio::test]
    async fn admin_network_policies_listed_absent_or_forbidden() {
        const ANPS: &str = "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies";
        const BANPS: &str = "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies";
        let (fake, client) = FakeApi::start();
        fake.apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "media"}}));
        fake.apply(serde_json::json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
            "metadata": {"name": "deny-cdn"},
            "spec": {"priority": 10, "subject": {"namespaces": {}}, "egress": [{"name": "cdn", "action": "Deny", "to": [{"networks": ["203.0.113.0/24"]}]}]}}));
        fake.apply(serde_json::json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default"}, "spec": {"subject": {"namespaces": {}}}}));
        let snap = read_cluster(&client, SERVER, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(snap.admin_network_policies.len(), 1);
        assert_eq!(snap.baseline_admin_network_policies.len(), 1);
        assert!(snap.notes.is_empty(), "{:?}", snap.notes);
        let engine = crate::policy::Engine::build(&snap).unwrap();
        assert_eq!(engine.admin_policies().len(), 2);

        fake.with_state(|s| s.not_installed.extend([ANPS, BANPS]));
        let snap = read_cluster(&client, SERVER, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            snap.admin_network_policies.is_empty()
                && snap.baseline_admin_network_policies.is_empty()
        );
        assert!(snap.notes.is_empty(), "{:?}", snap.notes);

        fake.with_state(|s| {
            s.not_installed.clear();
            s.forbid_list.push(ANPS);
        });
        let snap = read_cluster(&client, SERVER, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(snap.admin_network_policies.is_empty());
        assert_eq!(snap.baseline_admin_network_policies.len(), 1);
        assert_eq!(
            snap.notes,
            ["adminnetworkpolicies not listed (forbidden by https://fake-apiserver:6443/): verdicts leave them out"]
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_named() {
        let (fake, client) = FakeApi::start();
        fake.set_down(true);
        let err = read_cluster(&client, SERVER, Duration::from_secs(5))
            .await
            .unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(
            text.starts_with("list namespaces from the API server https://fake-apiserver:6443/"),
            "{text}"
        );
    }
}
