//! The cluster view of the DaemonSet agent: kube-rs reflectors on the objects the policy
//! engine and the attribution need, trimmed before they are cached, turned into a
//! [`Snapshot`] on demand, and the [`Cluster`] the recorder evaluates flows against,
//! kept current object by object.
//!
//! The view ([`ClusterWatch::cluster`]) is built once from a snapshot when every watcher
//! has had its first full list, and again after a re-list (410 Gone: the set of objects
//! is replaced, so objects absent from it must go). Between re-lists each watch event
//! (`Apply`/`Delete`) only marks its object as changed; the next `cluster()` call reads
//! the marked objects from the caches and applies them to the engine one by one
//! (`Engine::apply_pod`, ...), in time proportional to what changed, not to the cluster.
//! The view is shared as an `Arc` and copied on write: an update while the caller still
//! holds the previous view copies the engine shallowly (pods and policies are shared).
//! An object the engine rejects is logged and left as it was in the view.
//!
//! Watched: this node's Pods (field selector `spec.nodeName=<node>`, kept with their
//! container statuses), all Pods (peer IPs, labels and owners only), Namespaces, Services,
//! EndpointSlices (discovery.k8s.io/v1), NetworkPolicies (networking.k8s.io/v1) and Nodes
//! (addresses only: node and host-network peers).
//!
//! The API server may be unreachable at start or go away later: the watchers keep
//! retrying with kube-rs' default backoff, the caches keep the last good state (and
//! [`ClusterWatch::snapshot`] keeps returning it), one warning is logged per outage and
//! one line when it is over; a relist or a resumed watch catches up when it returns.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::kube::api::Api;
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::{Client, Config, Resource};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, LoadBalancerIngress, LoadBalancerStatus, Namespace, Node,
    NodeStatus, Pod, PodSpec, PodStatus, Service, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::Snapshot;
use crate::enrich::Cluster;

#[cfg(any(test, feature = "fake-api"))]
pub mod fake;
pub mod list;
pub mod review;
#[cfg(test)]
mod tests;

/// How the agent reaches the API server and which node it runs on.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: in-cluster service account (or `$KUBECONFIG` /
    /// `~/.kube/config`, as `kubectl` would).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet passes `spec.nodeName`); `None`: no node-local
    /// Pod watcher (all Pods are still watched for attribution).
    pub node_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("read kubeconfig {path}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("load kubeconfig {path} (current context, cluster, credentials)")]
    LoadKubeconfig {
        path: PathBuf,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("find a Kubernetes client configuration: no in-cluster service account and no usable kubeconfig (pass --kubeconfig)")]
    InferConfig {
        #[source]
        source: ::kube::config::InferConfigError,
    },
    #[error("{path} has no context {context:?} (its contexts: {known})")]
    UnknownContext {
        path: PathBuf,
        context: String,
        known: String,
    },
    #[error("use the in-cluster service account (pass --kubeconfig or --context outside a pod)")]
    InCluster {
        #[source]
        source: ::kube::config::InClusterError,
    },
    #[error("list {what} from the API server {server}")]
    List {
        what: &'static str,
        server: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("the API server {server} did not answer within {} (is it up and reachable? --request-timeout sets the wait)", humantime::format_duration(*timeout))]
    Timeout {
        server: String,
        timeout: std::time::Duration,
    },
    #[error("start the runtime for the Kubernetes client")]
    Runtime(#[source] std::io::Error),
    #[error("create the Kubernetes client for {cluster_url}")]
    Client {
        cluster_url: String,
        #[source]
        source: ::kube::Error,
    },
}

/// A client from `kubeconfig`, or inferred (in-cluster service account, `$KUBECONFIG`,
/// `~/.kube/config`). Does not contact the API server.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    client_from(config(kubeconfig).await?)
}

/// A client from a ready configuration (e.g. [`config`] with settings changed).
pub fn client_from(config: Config) -> Result<Client, KubeError> {
    let cluster_url = config.cluster_url.to_string();
    Client::try_from(config).map_err(|source| KubeError::Client {
        cluster_url,
        source,
    })
}

/// The client configuration from `kubeconfig`, or inferred as [`client`] does.
pub async fn config(kubeconfig: Option<&Path>) -> Result<Config, KubeError> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::ReadKubeconfig {
                path: path.to_owned(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::LoadKubeconfig {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => Config::infer()
            .await
            .map_err(|source| KubeError::InferConfig { source })?,
    })
}

/// The live cluster view. Cloning shares the same watchers; they stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct ClusterWatch {
    stores: Stores,
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

#[derive(Clone)]
struct Stores {
    node_pods: Option<Store<Pod>>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    network_policies: Store<NetworkPolicy>,
    nodes: Store<Node>,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What one watcher has been through.
struct WatchState {
    what: &'static str,
    /// Has had a full list (the store is usable).
    synced: AtomicBool,
    /// Its last request got a successful response, and no error came after it.
    connected: AtomicBool,
}

/// Which kind of object a watch event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pod,
    Namespace,
    Service,
    EndpointSlice,
    NetworkPolicy,
    Node,
}

/// Objects changed since the view was last brought up to date.
#[derive(Default)]
struct Pending {
    /// (kind, namespace or "", name).
    objects: std::collections::HashSet<(Kind, String, String)>,
    /// A watcher (re-)listed: build the view from a snapshot.
    rebuild: bool,
}

#[derive(Default)]
struct View {
    current: Option<Arc<Cluster>>,
    /// The generation whose snapshot the engine rejected (no retry until it moves).
    failed_generation: Option<u64>,
    stats: ViewStats,
}

/// How the view has been kept current, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewStats {
    /// Full builds from a snapshot.
    pub builds: u64,
    /// Objects applied to the view one by one.
    pub updates: u64,
}

struct Shared {
    generation: AtomicU64,
    pending: Mutex<Pending>,
    view: Mutex<View>,
    watches: Vec<WatchState>,
    /// Start of the outage being reported, if any.
    outage: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Shared {
    fn all_synced(&self) -> bool {
        self.watches
            .iter()
            .all(|w| w.synced.load(Ordering::Acquire))
    }

    fn healthy(&self) -> bool {
        self.all_synced()
            && self
                .watches
                .iter()
                .all(|w| w.connected.load(Ordering::Acquire))
    }

    /// A request of watcher `i` (list or watch) got a 2xx response.
    fn on_response(&self, i: usize) {
        if !self.watches[i].connected.swap(true, Ordering::AcqRel) {
            self.check_recovered();
            self.changed.notify_waiters();
        }
    }

    fn on_event<K: Resource>(&self, i: usize, kind: Kind, event: &watcher::Event<K>) {
        let w = &self.watches[i];
        match event {
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                if !w.synced.swap(true, Ordering::AcqRel) {
                    tracing::debug!(watch = w.what, "first full list");
                }
                lock(&self.pending).rebuild = true;
                self.bump();
            }
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                let (ns, name) = key(o.meta());
                lock(&self.pending).objects.insert((kind, ns, name));
                self.bump();
            }
        }
        self.check_recovered();
    }

    fn on_error(&self, i: usize, error: &watcher::Error) {
        let w = &self.watches[i];
        w.connected.store(false, Ordering::Release);
        tracing::debug!(watch = w.what, error = %error, "Kubernetes watch error; retrying with backoff");
        let mut outage = lock(&self.outage);
        if outage.is_none() {
            *outage = Some(Instant::now());
            if self.all_synced() {
                tracing::warn!(watch = w.what, error = %error,
                    "Kubernetes API unreachable: attributing with the last cluster view, which may go stale, until it is back");
            } else {
                tracing::warn!(watch = w.what, error = %error,
                    "Kubernetes API unreachable: attribution is IP-only until it is back");
            }
        }
        drop(outage);
        self.changed.notify_waiters();
    }

    fn check_recovered(&self) {
        let mut outage = lock(&self.outage);
        if let Some(since) = *outage {
            if self.healthy() {
                *outage = None;
                tracing::info!(
                    outage_secs = since.elapsed().as_secs(),
                    "Kubernetes API reachable again; cluster view caught up"
                );
            }
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

/// A poisoned lock still holds consistent data here (every update is whole or not at all).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterWatch {
    /// Starts the watchers in the background on the current tokio runtime. Never fails
    /// because the API server is unreachable: it keeps retrying with backoff and logs
    /// (tracing) that attribution is IP-only until it is back. Errors only for a bad
    /// kubeconfig or no configuration at all.
    pub async fn start(opts: KubeOptions) -> Result<ClusterWatch, KubeError> {
        let client = client(opts.kubeconfig.as_deref()).await?;
        Ok(Self::start_with_client(client, opts.node_name))
    }

    /// Like [`ClusterWatch::start`] with a ready client (tests pass one on a faked API
    /// server). Must be called within a tokio runtime.
    pub fn start_with_client(client: Client, node_name: Option<String>) -> ClusterWatch {
        let mut names = Vec::new();
        if node_name.is_some() {
            names.push("pods on this node");
        }
        names.extend([
            "pods",
            "namespaces",
            "services",
            "endpointslices",
            "networkpolicies",
            "nodes",
        ]);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            view: Mutex::new(View::default()),
            watches: names
                .iter()
                .map(|&what| WatchState {
                    what,
                    synced: AtomicBool::new(false),
                    connected: AtomicBool::new(false),
                })
                .collect(),
            outage: Mutex::new(None),
            changed: Notify::new(),
        });
        let mut sp = Spawner {
            client,
            shared: shared.clone(),
            next: 0,
            tasks: Vec::new(),
        };
        // Lists at resourceVersion=0, served from the API server's watch cache as
        // client-go informers do; kube-core drops resourceVersion=0 when a page size
        // is set (the cache ignores limits), so no page size.
        let cfg = || {
            watcher::Config {
                page_size: None,
                ..watcher::Config::default()
            }
            .any_semantic()
        };
        let node_pods = match &node_name {
            Some(node) => {
                tracing::info!(node = %node, "watching this node's pods");
                Some(sp.watch(
                    cfg().fields(&format!("spec.nodeName={node}")),
                    Kind::Pod,
                    trim_local_pod,
                ))
            }
            None => {
                tracing::info!("no node name given: not watching node-local pods separately");
                None
            }
        };
        let pods = sp.watch(cfg(), Kind::Pod, trim_peer_pod);
        let namespaces = sp.watch(cfg(), Kind::Namespace, trim_namespace);
        let services = sp.watch(cfg(), Kind::Service, trim_service);
        let endpoint_slices = sp.watch(cfg(), Kind::EndpointSlice, trim_endpoint_slice);
        let network_policies = sp.watch(cfg(), Kind::NetworkPolicy, trim_network_policy);
        let nodes = sp.watch(cfg(), Kind::Node, trim_node);
        debug_assert_eq!(sp.next, shared.watches.len());
        let tasks = sp.tasks;
        ClusterWatch {
            stores: Stores {
                node_pods,
                pods,
                namespaces,
                services,
                endpoint_slices,
                network_policies,
                nodes,
            },
            shared,
            _tasks: Arc::new(Tasks(tasks)),
        }
    }

    /// A snapshot of the current caches; `None` until every watcher has had its first
    /// full list. Objects are sorted (namespace, name); a Pod of this node comes from the
    /// node-local cache (with container statuses), the others from the all-Pods cache.
    pub fn snapshot(&self) -> Option<Snapshot> {
        if !self.shared.all_synced() {
            return None;
        }
        let s = &self.stores;
        let mut pods: BTreeMap<(String, String), Pod> = BTreeMap::new();
        for p in s.pods.state() {
            pods.insert(key(p.meta()), (*p).clone());
        }
        for p in s.node_pods.iter().flat_map(Store::state) {
            pods.insert(key(p.meta()), (*p).clone());
        }
        Some(Snapshot {
            namespaces: sorted(&s.namespaces),
            pods: pods.into_values().collect(),
            services: sorted(&s.services),
            endpoint_slices: sorted(&s.endpoint_slices),
            network_policies: sorted(&s.network_policies),
            nodes: sorted(&s.nodes),
            notes: Vec::new(),
        })
    }

    /// The cluster view, current as of this call; `None` until every watcher has had its
    /// first full list (or while the first snapshot is one the engine rejects). Cheap when
    /// nothing changed (an `Arc` clone); otherwise it first applies the objects changed
    /// since the last call (or rebuilds after a re-list), in place when no one else
    /// holds the view: drop the previous `Arc` before calling again. When it is still
    /// held, the engine is copied first (shallowly: pods and policies are shared, the
    /// indexes are copied; about 10 ms at 10k pods, BENCHMARKS.md figure v).
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        if !self.shared.all_synced() {
            return None;
        }
        let mut view = lock(&self.shared.view);
        let generation = self.generation();
        let (objects, rebuild) = {
            let mut p = lock(&self.shared.pending);
            (
                std::mem::take(&mut p.objects),
                std::mem::take(&mut p.rebuild),
            )
        };
        if rebuild || view.current.is_none() {
            if view.failed_generation == Some(generation) {
                lock(&self.shared.pending).rebuild = true;
                return view.current.clone();
            }
            // The caches already hold every change marked so far (a reflector writes its
            // store before it passes the event on), so the snapshot covers `objects`.
            let snap = self.snapshot()?;
            match Cluster::new(&snap) {
                Ok(c) => {
                    view.current = Some(Arc::new(c));
                    view.failed_generation = None;
                    view.stats.builds += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cluster's objects could not be indexed; keeping the previous view");
                    view.failed_generation = Some(generation);
                    lock(&self.shared.pending).rebuild = true;
                }
            }
        } else if !objects.is_empty() {
            let View { current, stats, .. } = &mut *view;
            if let Some(cur) = current.as_mut() {
                let c = Arc::make_mut(cur);
                for (kind, ns, name) in objects {
                    match self.apply_object(c, kind, &ns, &name) {
                        Ok(()) => stats.updates += 1,
                        Err(e) => {
                            tracing::warn!(error = %e, "a changed object could not be indexed; the view keeps its previous version")
                        }
                    }
                }
            }
        }
        view.current.clone()
    }

    /// How the view has been kept current so far.
    pub fn view_stats(&self) -> ViewStats {
        lock(&self.shared.view).stats
    }

    /// Brings one object of the view to what the caches hold (absent: removed).
    fn apply_object(
        &self,
        c: &mut Cluster,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<(), crate::policy::PolicyError> {
        let s = &self.stores;
        fn at<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> reflector::ObjectRef<K> {
            reflector::ObjectRef::new(name).within(ns)
        }
        let engine = &mut c.engine;
        let engine_ns = if ns.is_empty() { "default" } else { ns };
        match kind {
            Kind::Pod => {
                // As in `snapshot`: this node's cache first (it may be ahead of the other).
                let pod = s
                    .node_pods
                    .as_ref()
                    .and_then(|st| st.get(&at(ns, name)))
                    .or_else(|| s.pods.get(&at(ns, name)));
                match pod {
                    Some(p) => engine.apply_pod(&p).map(|_| ()),
                    None => {
                        engine.remove_pod(engine_ns, name);
                        Ok(())
                    }
                }
            }
            Kind::Namespace => {
                match s.namespaces.get(&reflector::ObjectRef::new(name)) {
                    Some(n) => engine.apply_namespace(&n),
                    None => engine.remove_namespace(name),
                }
                Ok(())
            }
            Kind::Service => match s.services.get(&at(ns, name)) {
                Some(svc) => engine.apply_service(svc),
                None => {
                    engine.remove_service(engine_ns, name);
                    Ok(())
                }
            },
            Kind::EndpointSlice => match s.endpoint_slices.get(&at(ns, name)) {
                Some(sl) => engine.apply_endpoint_slice(sl),
                None => {
                    engine.remove_endpoint_slice(engine_ns, name);
                    Ok(())
                }
            },
            Kind::NetworkPolicy => match s.network_policies.get(&at(ns, name)) {
                Some(np) => engine.apply_policy(&np),
                None => {
                    engine.remove_policy(engine_ns, name);
                    Ok(())
                }
            },
            Kind::Node => match s.nodes.get(&reflector::ObjectRef::new(name)) {
                Some(n) => engine.apply_node(&n),
                None => {
                    engine.remove_node(name);
                    Ok(())
                }
            },
        }
    }

    /// Increments whenever any cache changed.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// true while every watcher is connected and synced: each has had its first full
    /// list, and the last request of each (list or watch) got a successful response with
    /// no error after it.
    pub fn healthy(&self) -> bool {
        self.shared.healthy()
    }

    /// Resolves once every watcher has had its first full list (then
    /// [`ClusterWatch::snapshot`] is `Some`). Never resolves while the API server is
    /// unreachable: wrap it in a timeout.
    pub async fn wait_until_ready(&self) {
        loop {
            let changed = self.shared.changed.notified();
            if self.shared.all_synced() {
                return;
            }
            changed.await;
        }
    }

    /// Resolves when [`ClusterWatch::generation`] or the health may have changed.
    pub async fn changed(&self) {
        self.shared.changed.notified().await;
    }
}

fn key(m: &ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn sorted<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource<Scope: Sized> + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut v: Vec<K> = store.state().iter().map(|o| (**o).clone()).collect();
    v.sort_by_key(|o| key(o.meta()));
    v
}

/// Spawns watchers in the order of `Shared::watches`.
struct Spawner {
    client: Client,
    shared: Arc<Shared>,
    next: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Spawner {
    fn watch<K>(&mut self, config: watcher::Config, kind: Kind, trim: fn(&mut K)) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let client = observed(&self.client, self.shared.clone(), self.next);
        let (store, task) = spawn_watch(
            Api::all(client),
            config,
            trim,
            self.shared.clone(),
            self.next,
            kind,
        );
        self.next += 1;
        self.tasks.push(task);
        store
    }
}

/// The client for watcher `index`: marks it connected on every successful response
/// (a resumed watch with nothing to report is otherwise silent).
fn observed(client: &Client, shared: Arc<Shared>, index: usize) -> Client {
    let inner = client.clone();
    let service = tower::service_fn(move |req: http::Request<::kube::client::Body>| {
        let inner = inner.clone();
        let shared = shared.clone();
        async move {
            let res = inner.send(req).await;
            if res.as_ref().is_ok_and(|r| r.status().is_success()) {
                shared.on_response(index);
            }
            res
        }
    });
    Client::new(service, client.default_namespace())
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    shared: Arc<Shared>,
    index: usize,
    kind: Kind,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => shared.on_event(index, kind, &event),
                Err(error) => shared.on_error(index, &error),
            }
        }
    });
    (reader, task)
}

/// Metadata every cached object keeps: identity, labels, owners; no managedFields,
/// annotations (last-applied-configuration is a copy of the object) or finalizers.
fn trim_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.annotations = None;
    m.finalizers = None;
}

fn trim_container(c: &mut Container) {
    *c = Container {
        name: std::mem::take(&mut c.name),
        ports: c.ports.take(),
        ..Container::default()
    };
}

/// A peer Pod: what names it (labels, owner), where it is (IPs, node, hostNetwork),
/// whether it is live (phase), and its named ports.
pub(crate) fn trim_peer_pod(p: &mut Pod) {
    trim_meta(&mut p.metadata);
    if let Some(spec) = p.spec.take() {
        let mut containers = spec.containers;
        containers.iter_mut().for_each(trim_container);
        let mut init = spec.init_containers;
        init.iter_mut().flatten().for_each(trim_container);
        p.spec = Some(PodSpec {
            containers,
            init_containers: init,
            host_network: spec.host_network,
            node_name: spec.node_name,
            ..PodSpec::default()
        });
    }
    if let Some(st) = p.status.take() {
        p.status = Some(PodStatus {
            phase: st.phase,
            pod_ip: st.pod_ip,
            pod_ips: st.pod_ips,
            host_ip: st.host_ip,
            host_ips: st.host_ips,
            ..PodStatus::default()
        });
    }
}

fn trim_container_status(c: &mut ContainerStatus) {
    *c = ContainerStatus {
        name: std::mem::take(&mut c.name),
        container_id: c.container_id.take(),
        image: std::mem::take(&mut c.image),
        image_id: std::mem::take(&mut c.image_id),
        ready: c.ready,
        restart_count: c.restart_count,
        started: c.started,
        ..ContainerStatus::default()
    };
}

/// A Pod of this node: as a peer, plus the container ids and images of its containers.
pub(crate) fn trim_local_pod(p: &mut Pod) {
    let statuses = p.status.as_mut().map(|s| {
        let mut c = s.container_statuses.take();
        c.iter_mut().flatten().for_each(trim_container_status);
        let mut i = s.init_container_statuses.take();
        i.iter_mut().flatten().for_each(trim_container_status);
        (c, i)
    });
    trim_peer_pod(p);
    if let (Some(st), Some((c, i))) = (p.status.as_mut(), statuses) {
        st.container_statuses = c;
        st.init_container_statuses = i;
    }
}

/// Namespaces: name and labels are what namespaceSelectors match.
pub(crate) fn trim_namespace(n: &mut Namespace) {
    trim_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

/// Services: spec, and of the status only the LoadBalancer ingress addresses (they
/// resolve to the backends like ClusterIPs).
pub(crate) fn trim_service(s: &mut Service) {
    trim_meta(&mut s.metadata);
    let ingress: Vec<LoadBalancerIngress> = s
        .status
        .take()
        .and_then(|st| st.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.ip.is_some())
        .map(|i| LoadBalancerIngress {
            ip: i.ip,
            ip_mode: i.ip_mode,
            ..LoadBalancerIngress::default()
        })
        .collect();
    if !ingress.is_empty() {
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..ServiceStatus::default()
        });
    }
}

pub(crate) fn trim_endpoint_slice(e: &mut EndpointSlice) {
    trim_meta(&mut e.metadata);
    for ep in &mut e.endpoints {
        ep.hints = None;
        ep.deprecated_topology = None;
    }
}

pub(crate) fn trim_network_policy(n: &mut NetworkPolicy) {
    trim_meta(&mut n.metadata);
}

/// Nodes: their addresses tell node and host-network peers from external ones.
pub(crate) fn trim_node(n: &mut Node) {
    trim_meta(&mut n.metadata);
    n.spec = None;
    n.status = n.status.take().map(|st| NodeStatus {
        addresses: st.addresses,
        ..NodeStatus::default()
    });
}
