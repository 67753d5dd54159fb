//! Cluster snapshots: the objects the policy engine needs, read from files, or from the
//! live API server ([`ClusterSource`], [`crate::kube::list`]).
//!
//! A snapshot is what `kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml`
//! prints (one `kind: List` document), or multi-document YAML of plain manifests, or a mix
//! (JSON works too: it is YAML). Objects are typed with k8s-openapi. Kinds the engine
//! does not use are skipped, and each skip is noted so the user can see it. `Node`
//! objects are read too when present: their addresses name node IPs.
//!
//! Errors name the file, the document, the object (kind, namespace/name) and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;

use crate::policy::admin::{AdminNetworkPolicy, BaselineAdminNetworkPolicy};
use serde_yaml::Value;

/// The objects of one snapshot, in file order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub network_policies: Vec<NetworkPolicy>,
    pub nodes: Vec<Node>,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicies.
    pub admin_network_policies: Vec<AdminNetworkPolicy>,
    /// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicies (the API allows
    /// one, named `default`).
    pub baseline_admin_network_policies: Vec<BaselineAdminNetworkPolicy>,
    /// Objects skipped, one human-readable line each (kind, namespace/name, why).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read cluster snapshot {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {document}: not valid YAML")]
    Yaml {
        path: PathBuf,
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: document {document}{item}: {message}")]
    Shape {
        path: PathBuf,
        document: usize,
        /// `, item N` for an element of a `kind: List`, empty otherwise.
        item: String,
        message: String,
    },
    #[error("{path}: {kind} {object}: field {field}: {message}")]
    Field {
        path: PathBuf,
        kind: String,
        /// `namespace/name`, or `name` for cluster-scoped objects.
        object: String,
        /// Dotted path, e.g. `spec.ingress[0].ports[0].port`.
        field: String,
        message: String,
    },
    #[error("{path}: {message} (expected what `kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml` prints)")]
    Empty { path: PathBuf, message: String },
    #[error("--cluster and --flows are both `-`: only one of them can be read from standard input; write the other to a file")]
    BothStdin,
    #[error("no cluster to evaluate against: pass --cluster SNAPSHOT (a file, e.g. from `kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml`) or --kubeconfig FILE / --context NAME (read the live API server; in a pod, the in-cluster service account is used without them)")]
    NoSource,
    #[error("--cluster {0} and --kubeconfig/--context both choose the cluster: pass one of them")]
    BothSources(PathBuf),
    #[error(transparent)]
    Live(#[from] crate::kube::KubeError),
}

/// Where `diff`, `suggest` and `report` read the cluster from: a snapshot file
/// (`--cluster`), or the live API server (`--kubeconfig`, `--context`, or in a pod the
/// in-cluster service account). Exactly one of the two.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterSource {
    /// Cluster snapshot: a `kind: List` or multi-document YAML with Namespaces, Pods,
    /// Services, EndpointSlices and NetworkPolicies, and where the cluster has them
    /// AdminNetworkPolicies and the BaselineAdminNetworkPolicy (`-` for stdin). Not with
    /// --kubeconfig/--context.
    ///
    /// Example: kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml > cluster.yaml
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["kubeconfig", "context"])]
    pub cluster: Option<PathBuf>,
    /// Read the live cluster from the API server of this kubeconfig instead of a
    /// `--cluster` file (Namespaces, Pods, Services, EndpointSlices, NetworkPolicies,
    /// AdminNetworkPolicies where installed, and Nodes, listed once). In a pod, the in-cluster service account is used without it.
    ///
    /// Example: --kubeconfig ~/.kube/staging.yaml
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use, as kubectl's `--context` (default: its current
    /// context). Without --kubeconfig, from `$KUBECONFIG` or `~/.kube/config`.
    ///
    /// Example: --context staging
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// How long the read of the live cluster may take in all before it fails.
    ///
    /// Example: --request-timeout 1m
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl Default for ClusterSource {
    fn default() -> Self {
        Self {
            cluster: None,
            kubeconfig: None,
            context: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A snapshot and what names its source in messages: the file, or the API server.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub origin: PathBuf,
}

impl ClusterSource {
    /// A snapshot file source.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            cluster: Some(path.into()),
            ..Self::default()
        }
    }

    /// The snapshot file, if that is the source.
    pub fn file_path(&self) -> Option<&Path> {
        self.cluster.as_deref()
    }

    /// Which source the flags (and the environment: `KUBERNETES_SERVICE_HOST` in a pod)
    /// choose; `Err(NoSource)` when none.
    fn is_live(&self) -> Result<bool, ClusterError> {
        if let Some(path) = &self.cluster {
            if self.kubeconfig.is_some() || self.context.is_some() {
                return Err(ClusterError::BothSources(path.clone()));
            }
            return Ok(false);
        }
        if self.kubeconfig.is_some()
            || self.context.is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        {
            return Ok(true);
        }
        Err(ClusterError::NoSource)
    }

    /// Checks the source against the flow log's path before anything is read.
    pub fn check(&self, flows: &Path) -> Result<(), ClusterError> {
        if !self.is_live()? {
            if let Some(c) = &self.cluster {
                check_inputs(c, flows)?;
            }
        }
        Ok(())
    }

    /// Reads the snapshot from the file or the live API server. The live read runs on a
    /// runtime of its own: call it outside of any tokio runtime.
    pub fn read(&self) -> Result<Loaded, ClusterError> {
        match (&self.cluster, self.is_live()?) {
            (Some(path), false) => Ok(Loaded {
                snapshot: read_snapshot(path)?,
                origin: path.clone(),
            }),
            _ => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(crate::kube::KubeError::Runtime)?;
                Ok(rt.block_on(self.read_live())?)
            }
        }
    }

    async fn read_live(&self) -> Result<Loaded, crate::kube::KubeError> {
        let config =
            crate::kube::list::config_for(self.kubeconfig.as_deref(), self.context.as_deref())
                .await?;
        let server = config.cluster_url.to_string();
        let client = crate::kube::client_from(config)?;
        let snapshot =
            crate::kube::list::read_cluster(&client, &server, self.request_timeout).await?;
        Ok(Loaded {
            snapshot,
            origin: PathBuf::from(live_origin(&server, self.context.as_deref())),
        })
    }
}

/// How messages name a live cluster: `API server URL` (and the context when one was chosen).
pub fn live_origin(server: &str, context: Option<&str>) -> String {
    match context {
        Some(c) => format!("API server {server} (context {c})"),
        None => format!("API server {server}"),
    }
}

/// Reads and parses a snapshot file (`-` is stdin). A snapshot without any object is an
/// error; so is one without Pods, once its objects are known valid ([`require_pods`]).
pub fn read_snapshot(path: &Path) -> Result<Snapshot, ClusterError> {
    let io = |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    };
    let data = crate::flowlog::read_input(path).map_err(io)?;
    let snap = parse_snapshot(path, &data)?;
    let empty = |message: &str| ClusterError::Empty {
        path: path.to_owned(),
        message: message.to_owned(),
    };
    let objects = snap.namespaces.len()
        + snap.pods.len()
        + snap.services.len()
        + snap.endpoint_slices.len()
        + snap.network_policies.len()
        + snap.admin_network_policies.len()
        + snap.baseline_admin_network_policies.len()
        + snap.nodes.len();
    if objects == 0 && snap.notes.is_empty() {
        return Err(empty("contains no Kubernetes objects"));
    }
    Ok(snap)
}

/// A snapshot without Pods attributes no flow: every verdict would rest on nothing.
pub fn require_pods(path: &Path, snap: &Snapshot) -> Result<(), ClusterError> {
    if !snap.pods.is_empty() {
        return Ok(());
    }
    let objects = snap.namespaces.len()
        + snap.services.len()
        + snap.endpoint_slices.len()
        + snap.network_policies.len()
        + snap.admin_network_policies.len()
        + snap.baseline_admin_network_policies.len()
        + snap.nodes.len();
    Err(ClusterError::Empty {
        path: path.to_owned(),
        message: format!(
            "has no Pods ({objects} other objects{}), so no flow could be attributed",
            if snap.notes.is_empty() {
                String::new()
            } else {
                format!(", {} skipped", snap.notes.len())
            }
        ),
    })
}

/// The snapshot and the flow log cannot both come from standard input.
pub fn check_inputs(cluster: &Path, flows: &Path) -> Result<(), ClusterError> {
    if cluster.as_os_str() == "-" && flows.as_os_str() == "-" {
        return Err(ClusterError::BothStdin);
    }
    Ok(())
}

/// Parses snapshot bytes; `path` only names the source in errors.
pub fn parse_snapshot(path: &Path, data: &[u8]) -> Result<Snapshot, ClusterError> {
    let mut snap = Snapshot::default();
    visit_objects(path, data, |id, value| -> Result<(), ClusterError> {
        add_object(&mut snap, path, value, |m| id.error(path, m))
    })?;
    Ok(snap)
}

/// Where an object sits in a YAML file: its document (from 1) and, inside a `kind: List`,
/// its item (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectId {
    pub document: usize,
    pub item: Option<usize>,
}

impl ObjectId {
    /// A [`ClusterError::Shape`] about the object at this place.
    pub fn error(&self, path: &Path, message: String) -> ClusterError {
        ClusterError::Shape {
            path: path.to_owned(),
            document: self.document,
            item: self.item.map(|n| format!(", item {n}")).unwrap_or_default(),
            message,
        }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(n) = self.item {
            write!(f, ", item {n}")?;
        }
        Ok(())
    }
}

/// Calls `visit` with every object of YAML (or JSON) bytes, in file order: each
/// document, and each item of a document that is a `kind: List` (or `kind: FooList` with
/// `items`). Empty documents are skipped; a document or item that is not a mapping, a
/// List without `items` or with `items` not a sequence, and invalid YAML are errors naming
/// `path` and the document (and item). The snapshot and the what-if proposal files are
/// read through this one loop.
pub fn visit_objects<E: From<ClusterError>>(
    path: &Path,
    data: &[u8],
    mut visit: impl FnMut(ObjectId, Value) -> Result<(), E>,
) -> Result<(), E> {
    for (i, doc) in serde_yaml::Deserializer::from_slice(data).enumerate() {
        let document = i + 1;
        let value = Value::deserialize(doc).map_err(|source| ClusterError::Yaml {
            path: path.to_owned(),
            document,
            source,
        })?;
        let at = |item: Option<usize>| ObjectId { document, item };
        let not_object = |v: &Value| {
            format!(
                "expected a Kubernetes object (a mapping), found {}",
                type_name(v)
            )
        };
        match value {
            Value::Null => continue,
            Value::Mapping(_) => {}
            other => return Err(at(None).error(path, not_object(&other)).into()),
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let is_list = kind == "List" || (kind.ends_with("List") && value.get("items").is_some());
        if !is_list {
            visit(at(None), value)?;
            continue;
        }
        let Value::Mapping(mut map) = value else {
            continue;
        };
        match map.remove("items") {
            None => {
                return Err(at(None)
                    .error(path, format!("a {kind} needs an items field"))
                    .into())
            }
            Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (n, item) in items.into_iter().enumerate() {
                    if !item.is_mapping() {
                        return Err(at(Some(n)).error(path, not_object(&item)).into());
                    }
                    visit(at(Some(n)), item)?;
                }
            }
            Some(other) => {
                return Err(at(None)
                    .error(
                        path,
                        format!(
                            "field items: expected a sequence, found {}",
                            type_name(&other)
                        ),
                    )
                    .into())
            }
        }
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn add_object(
    snap: &mut Snapshot,
    path: &Path,
    value: Value,
    shape: impl Fn(String) -> ClusterError,
) -> Result<(), ClusterError> {
    if !value.is_mapping() {
        return Err(shape(format!(
            "expected a Kubernetes object (a mapping), found {}",
            type_name(&value)
        )));
    }
    let Some(Header {
        kind,
        api_version,
        object,
        ..
    }) = Header::of(&value)
    else {
        return Err(shape("the object has no kind".into()));
    };
    let typed = TypedTarget {
        path,
        kind: &kind,
        object: &object,
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => snap.namespaces.push(typed.parse(value)?),
        ("v1", "Pod") => snap.pods.push(typed.parse(value)?),
        ("v1", "Service") => snap.services.push(typed.parse(value)?),
        ("v1", "Node") => snap.nodes.push(typed.parse(value)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => snap.endpoint_slices.push(typed.parse(value)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            snap.network_policies.push(typed.parse(value)?)
        }
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => {
            snap.admin_network_policies.push(typed.parse(value)?)
        }
        ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => snap
            .baseline_admin_network_policies
            .push(typed.parse(value)?),
        (_, "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy") => {
            return Err(typed.error(
                "apiVersion",
                format!(
                    "{api_version:?} is not supported (expected policy.networking.k8s.io/v1alpha1)"
                ),
            ))
        }
        (_, "NetworkPolicy") => {
            return Err(typed.error(
                "apiVersion",
                format!("{api_version:?} is not supported (expected networking.k8s.io/v1)"),
            ))
        }
        _ => snap.notes.push(format!(
            "skipped {kind} {object} ({api_version}): not used by the policy engine"
        )),
    }
    Ok(())
}

/// What names an object in messages, read before it is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: String,
    pub api_version: String,
    /// `metadata.namespace`, `metadata.name` as given (a non-string is absent).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `namespace/name`, or `name` (`<no name>` without one).
    pub object: String,
}

impl Header {
    /// The header of an object; `None` when it has no `kind`.
    pub fn of(value: &Value) -> Option<Self> {
        let kind = value.get("kind").and_then(Value::as_str)?.to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let meta = value.get("metadata");
        let field = |f: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (namespace, name) = (field("namespace"), field("name"));
        let shown = name.as_deref().unwrap_or("<no name>");
        let object = match &namespace {
            Some(ns) => format!("{ns}/{shown}"),
            None => shown.to_owned(),
        };
        Some(Self {
            kind,
            api_version,
            namespace,
            name,
            object,
        })
    }
}

/// Types an object read from `path`; a field that does not fit is a [`ClusterError::Field`]
/// naming the file, the object and the field (the snapshot's own message).
pub fn parse_typed<T: serde::de::DeserializeOwned>(
    path: &Path,
    header: &Header,
    value: Value,
) -> Result<T, ClusterError> {
    TypedTarget {
        path,
        kind: &header.kind,
        object: &header.object,
    }
    .parse(value)
}

struct TypedTarget<'a> {
    path: &'a Path,
    kind: &'a str,
    object: &'a str,
}

impl TypedTarget<'_> {
    fn error(&self, field: &str, message: String) -> ClusterError {
        ClusterError::Field {
            path: self.path.to_owned(),
            kind: self.kind.to_owned(),
            object: self.object.to_owned(),
            field: field.to_owned(),
            message,
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, value: Value) -> Result<T, ClusterError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                "(object)".to_owned()
            } else {
                field
            };
            self.error(&field, e.into_inner().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Snapshot, ClusterError> {
        parse_snapshot(Path::new("snap.yaml"), s.as_bytes())
    }

    #[test]
    fn list_and_multi_document() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: media}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: x, namespace: media}\n";
        let s = parse(list).unwrap();
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].contains("ConfigMap media/x"), "{:?}", s.notes);
        let docs = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: media}\n---\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec: {podSelector: {}}\n";
        let s = parse(docs).unwrap();
        assert_eq!((s.pods.len(), s.network_policies.len()), (1, 1));
    }

    /// Documents are numbered as the file has them, empty ones included.
    #[test]
    fn visit_objects_gives_each_object_its_place() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {kind: Pod, metadata: {name: p, namespace: a}}\n- {kind: Service, metadata: {name: s, namespace: a}}\n";
        let mut seen = Vec::new();
        visit_objects(
            Path::new("f.yaml"),
            text.as_bytes(),
            |at, v| -> Result<(), ClusterError> {
                let h = Header::of(&v).unwrap();
                seen.push(format!("{at}: {} {}", h.kind, h.object));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                "document 1: Namespace a",
                "document 3, item 0: Pod a/p",
                "document 3, item 1: Service a/s"
            ]
        );
        let err = visit_objects(
            Path::new("f.yaml"),
            b"kind: List\nitems: [1]\n",
            |_, _| -> Result<(), ClusterError> { Ok(()) },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "f.yaml: document 1, item 0: expected a Kubernetes object (a mapping), found a number"
        );
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let cases = [
            ("apiVersion: v1\nkind: List\nitems: [\n", "snap.yaml: document 1: not valid YAML"),
            ("- 1\n- 2\n", "expected a Kubernetes object"),
            ("apiVersion: v1\nkind: List\nitems: 3\n", "field items: expected a sequence"),
            ("apiVersion: v1\nkind: List\nitems:\n- {metadata: {name: x}}\n", "document 1, item 0: the object has no kind"),
            (
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: [1]\n",
                "snap.yaml: NetworkPolicy media/n: field spec.ingress[0].ports[0].port",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: media}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: http\n",
                "Pod media/p: field spec.containers[0].ports[0].containerPort",
            ),
            (
                "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: media}\n",
                "NetworkPolicy media/n: field apiVersion",
            ),
        ];
        for (input, want) in cases {
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}\n got: {err}\nwant: {want}");
        }
    }
}
