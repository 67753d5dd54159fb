//! Figure v: the agent's cluster view, one watch event at 1k and 10k pods: the full
//! rebuild the recorder used to do on every change (`Cluster::new` on a snapshot) against
//! the incremental update the watch now applies (`Engine::apply_pod`, ...), in the same
//! run. In process, unprivileged: `bench cluster-view [--reps N]` prints the section.
//!
//! The cluster is generated: 20 namespaces; Deployments of 10 pods (labels app, tier,
//! pod-template-hash, a ReplicaSet owner, two containers with named ports, pod and host
//! IPs, a node); one Service per Deployment with one EndpointSlice listing its pods; per
//! namespace a default-deny policy and one allow policy per 5 Deployments (pod and
//! namespace selectors, named ports); one Node per 30 pods.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use auditor::cluster::{parse_snapshot, Snapshot};
use auditor::enrich::Cluster;
use serde_json::{json, Value};

use super::{fmt, met, spread, Report, Spread};

const NAMESPACES: usize = 20;
const PER_DEPLOYMENT: usize = 10;

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

fn node_ip(n: usize) -> String {
    format!("192.168.{}.{}", n / 250, 1 + n % 250)
}

/// Pod `i` (of deployment `i / 10`), `gen` varying its IP and labels between versions.
fn pod(i: usize, pods: usize, gen: usize) -> Value {
    let d = i / PER_DEPLOYMENT;
    let ns = format!("ns{}", d % NAMESPACES);
    let nodes = pods.div_ceil(30);
    let node = (i * 7) % nodes;
    let ip = pod_ip(i + gen * pods);
    let tier = ["web", "db", "cache"][d % 3];
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("app{d}-5d9f8-{i:05}"), "namespace": ns,
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, gen),
            "labels": {"app": format!("app{d}"), "tier": tier,
                       "pod-template-hash": "5d9f8", "version": format!("v{gen}")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app{d}-5d9f8"),
                                 "uid": "rs", "controller": true}]},
        "spec": {"nodeName": format!("node{node}"), "containers": [
            {"name": "main", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                       {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]},
            {"name": "sidecar", "ports": [{"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "hostIP": node_ip(node), "hostIPs": [{"ip": node_ip(node)}]}})
}

fn slice(d: usize, pods: usize, gen: usize) -> Value {
    let ns = format!("ns{}", d % NAMESPACES);
    let endpoints: Vec<Value> = (0..PER_DEPLOYMENT)
        .map(|k| {
            let i = d * PER_DEPLOYMENT + k;
            let g = if k == 0 { gen } else { 0 };
            json!({"addresses": [pod_ip(i + g * pods)], "conditions": {"ready": true}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("app{d}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": format!("app{d}")}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn policy(ns: usize, k: usize, port: u16) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("allow-{k}"), "namespace": format!("ns{ns}")},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", k * NAMESPACES + ns)}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "media"}},
                                        "podSelector": {"matchLabels": {"tier": "web"}}}],
                              "ports": [{"port": "http", "protocol": "TCP"}, {"port": port, "protocol": "TCP"}]}],
                 "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 5353, "protocol": "UDP"}]}]}})
}

fn parse(items: Vec<Value>) -> Result<Snapshot> {
    let data = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?;
    parse_snapshot(Path::new("<generated>"), &data).context("generated cluster")
}

fn cluster(pods: usize) -> Result<Snapshot> {
    let deployments = pods / PER_DEPLOYMENT;
    let mut items = Vec::new();
    for n in 0..NAMESPACES {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns{n}"), "labels": {"team": if n % 2 == 0 { "media" } else { "ops" }}}}));
        items.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": format!("ns{n}")},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        );
    }
    for n in 0..pods.div_ceil(30) {
        items.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node{n}")},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(n)}]}}),
        );
    }
    for i in 0..pods {
        items.push(pod(i, pods, 0));
    }
    for d in 0..deployments {
        items.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("app{d}"), "namespace": format!("ns{}", d % NAMESPACES)},
            "spec": {"clusterIP": format!("10.96.{}.{}", d / 250, 1 + d % 250),
                     "selector": {"app": format!("app{d}")},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}));
        items.push(slice(d, pods, 0));
    }
    for k in 0..deployments / 5 / NAMESPACES {
        for n in 0..NAMESPACES {
            items.push(policy(n, k, 9090));
        }
    }
    parse(items)
}

/// Milliseconds per call of `f` over `n` calls.
fn per_op(n: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    for i in 0..n {
        f(i)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
}

struct Row {
    pods: usize,
    rebuild: Spread,
    pod_in_place: Spread,
    pod_cow: Spread,
    pod_add_remove: Spread,
    slice: Spread,
    policy: Spread,
}

fn measure(pods: usize, reps: usize) -> Result<Row> {
    let snap = cluster(pods)?;
    // The changed objects, parsed once: pod i in a new version (new IP and labels), a
    // new pod, a slice with one endpoint moved, a policy with another port.
    const OPS: usize = 50;
    let changed = parse(
        (0..OPS)
            .map(|k| pod(k * (pods / OPS), pods, 1))
            .chain((0..OPS).map(|k| pod(pods + k, pods, 0)))
            .chain((0..OPS).map(|k| slice(k * (pods / PER_DEPLOYMENT / OPS), pods, 1)))
            .chain([policy(0, 0, 9091)])
            .collect(),
    )?;
    let slices: Vec<_> = changed
        .endpoint_slices
        .iter()
        .map(|s| Arc::new(s.clone()))
        .collect();
    let err = |e: auditor::policy::PolicyError| anyhow::anyhow!("{e}");
    let mut m: [Vec<f64>; 6] = Default::default();
    for _ in 0..reps {
        let t = Instant::now();
        let base = Arc::new(Cluster::new(&snap).map_err(err)?);
        m[0].push(t.elapsed().as_secs_f64() * 1e3);
        let mut own = (*base).clone();
        m[1].push(per_op(OPS, |k| {
            own.engine.apply_pod(&changed.pods[k]).map_err(err)?;
            Ok(())
        })?);
        // As the live view does when the recorder still holds the previous one: copy
        // (shallowly) on write, then apply.
        let mut held = base.clone();
        m[2].push(per_op(OPS, |k| {
            let keep = held.clone();
            Arc::make_mut(&mut held)
                .engine
                .apply_pod(&changed.pods[k])
                .map_err(err)?;
            drop(keep);
            Ok(())
        })?);
        m[3].push(per_op(OPS, |k| {
            let p = &changed.pods[OPS + k];
            own.engine.apply_pod(p).map_err(err)?;
            let meta = &p.metadata;
            own.engine.remove_pod(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            );
            Ok(())
        })?);
        m[4].push(per_op(OPS, |k| {
            own.engine
                .apply_endpoint_slice(slices[k].clone())
                .map_err(err)
        })?);
        m[5].push(per_op(5, |_| {
            own.engine
                .apply_policy(&changed.network_policies[0])
                .map_err(err)
        })?);
    }
    Ok(Row {
        pods,
        rebuild: spread(&m[0]),
        pod_in_place: spread(&m[1]),
        pod_cow: spread(&m[2]),
        pod_add_remove: spread(&m[3]),
        slice: spread(&m[4]),
        policy: spread(&m[5]),
    })
}

/// Registers figure v: a summary row (10k pods, one pod change) and a section.
pub fn figure(reps: usize, rep: &mut Report) -> Result<()> {
    eprintln!("== figure v: cluster view updates");
    let rows = [measure(1_000, reps)?, measure(10_000, reps)?];
    let mut sec = String::from("## v. Cluster view: one watch event\n\nThe agent's view of the cluster after one watch event, in process (`tests/src/bin/bench/cluster_view.rs`, generated cluster: 20 namespaces, Deployments of 10 pods with a Service and an EndpointSlice each, a default-deny and one allow policy per 5 Deployments, a node per 30 pods). Full rebuild: `Cluster::new` on the snapshot, what the recorder did on every change before (not counting the snapshot's clone and sort of every object). Incremental: what the watch applies now; per change, mean over 50 changes (5 for policies) per repetition. \"In place\": the caller released its previous view before asking for the next (`ClusterWatch::cluster` then updates the engine in place); \"copy-on-write\": the previous view is still held, so the engine is first copied (shallowly: pods and policies are shared, the indexes are not) and the old copy dropped, once per `cluster()` call that has changes to apply. Milliseconds, median (min–max) over the repetitions.\n\n| pods | full rebuild | pod changed, in place | pod changed, copy-on-write | pod created + deleted | EndpointSlice changed | NetworkPolicy changed (re-selects its namespace) |\n|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let _ = writeln!(
            sec,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.pods,
            fmt(r.rebuild, 2),
            fmt(r.pod_in_place, 4),
            fmt(r.pod_cow, 3),
            fmt(r.pod_add_remove, 4),
            fmt(r.slice, 4),
            fmt(r.policy, 3)
        );
    }
    let big = &rows[1];
    rep.main.push([
        "v. cluster view: one pod change at 10k pods".into(),
        format!("{} ms (full rebuild)", fmt(big.rebuild, 1)),
        format!(
            "{} ms (incremental, in place; {} ms when the old view is still held)",
            fmt(big.pod_in_place, 3),
            fmt(big.pod_cow, 1)
        ),
        format!("{:.0}× less", big.rebuild.med / big.pod_in_place.med),
        "a few ms".into(),
        met(big.pod_in_place.med < 5.0),
    ]);
    rep.sections.push(sec);
    Ok(())
}

/// `bench cluster-view [--reps N]`: figure v alone, printed.
pub fn main(args: &[String]) -> Result<()> {
    let reps = super::arg(args, "--reps")
        .map(|x| x.parse())
        .transpose()?
        .unwrap_or(5);
    let mut rep = Report::default();
    figure(reps, &mut rep)?;
    println!("| {} |\n", rep.main[0].join(" | "));
    for s in &rep.sections {
        println!("{s}");
    }
    Ok(())
}
