//! `auditor diff` at scale: a generated cluster of 10,000 pods (50 namespaces), 1,000
//! NetworkPolicies and 200 Services with EndpointSlices, and a flow log of 1,000,000
//! records (about 100,000 distinct flows, recorder-shaped lines).
//!
//! Measures the whole of `diff::run` on files: read and parse the snapshot, index,
//! read and parse the flow log, evaluate, and write the JSON output (to /dev/null).
//! Before criterion runs, the same diff runs once in a child process of this bench,
//! which reports its wall time and peak resident memory (`ru_maxrss`), so the memory
//! figure is that of the diff alone, not of the generator.
//!
//! `cargo bench -p auditor --bench policy`; figures go to auditor/docs/benchmarks-policy.md.
//! Set `AUDITOR_BENCH_RECORDS` to change the record count (e.g. for a quick run).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use auditor::diff::{run, DiffArgs, Format};
use criterion::{criterion_group, Criterion};

const NAMESPACES: usize = 50;
const PODS_PER_NS: usize = 200;
const POLICIES_PER_NS: usize = 20;
const SERVICES_PER_NS: usize = 4;
const DISTINCT_FLOWS: usize = 100_000;
const RECORDS: usize = 1_000_000;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pod_ip(ns: usize, i: usize) -> String {
    format!("10.{}.{}.{}", ns + 1, i / 250, i % 250 + 1)
}

fn svc_ip(ns: usize, s: usize) -> String {
    format!("10.96.{}.{}", ns, s + 1)
}

fn snapshot() -> String {
    let mut y = String::with_capacity(16 << 20);
    y.push_str("apiVersion: v1\nkind: List\nitems:\n");
    for ns in 0..NAMESPACES {
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: ns{ns}\n    labels:\n      kubernetes.io/metadata.name: ns{ns}\n      team: t{}\n",
            ns % 5
        );
    }
    for ns in 0..NAMESPACES {
        for i in 0..PODS_PER_NS {
            let app = i % 40;
            let _ = write!(
                y,
                "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: app{app}-5f8d9c7b4-{i:05}\n    namespace: ns{ns}\n    labels:\n      app: app{app}\n      tier: {}\n      pod-template-hash: 5f8d9c7b4\n    ownerReferences:\n    - apiVersion: apps/v1\n      controller: true\n      kind: ReplicaSet\n      name: app{app}-5f8d9c7b4\n      uid: 00000000-0000-4000-8000-{ns:06}{i:06}\n  spec:\n    nodeName: node{}\n    containers:\n    - name: main\n      image: jrottenberg/ffmpeg:7.1-ubuntu\n      ports:\n      - name: http\n        containerPort: 8080\n        protocol: TCP\n      - name: srt\n        containerPort: 9000\n        protocol: UDP\n  status:\n    phase: Running\n    hostIP: 192.168.{}.{}\n    podIP: {ip}\n    podIPs:\n    - ip: {ip}\n",
                ["edge", "worker", "store"][i % 3],
                i % 100,
                (i % 100) / 250,
                i % 100 + 1,
                ip = pod_ip(ns, i),
            );
        }
    }
    for ns in 0..NAMESPACES {
        for s in 0..SERVICES_PER_NS {
            let _ = write!(
                y,
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: svc{s}\n    namespace: ns{ns}\n  spec:\n    clusterIP: {ip}\n    clusterIPs:\n    - {ip}\n    ports:\n    - name: http\n      port: 80\n      protocol: TCP\n      targetPort: http\n    selector:\n      app: app{s}\n    type: ClusterIP\n",
                ip = svc_ip(ns, s)
            );
            let _ = write!(
                y,
                "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  addressType: IPv4\n  metadata:\n    name: svc{s}-abcde\n    namespace: ns{ns}\n    labels:\n      kubernetes.io/service-name: svc{s}\n  ports:\n  - name: http\n    port: 8080\n    protocol: TCP\n  endpoints:\n"
            );
            for i in (s..PODS_PER_NS).step_by(40) {
                let _ = write!(
                    y,
                    "  - addresses:\n    - {}\n    conditions:\n      ready: true\n",
                    pod_ip(ns, i)
                );
            }
        }
    }
    for ns in 0..NAMESPACES {
        let _ = write!(
            y,
            "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata:\n    name: default-deny\n    namespace: ns{ns}\n  spec:\n    podSelector: {{}}\n    policyTypes: [Ingress, Egress]\n"
        );
        for j in 1..POLICIES_PER_NS {
            let app = j * 2 % 40;
            let peer_app = (j * 7) % 40;
            let _ = write!(
                y,
                "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata:\n    name: allow-app{app}-{j}\n    namespace: ns{ns}\n  spec:\n    podSelector:\n      matchLabels:\n        app: app{app}\n      matchExpressions:\n      - key: tier\n        operator: NotIn\n        values: [store]\n    policyTypes: [Ingress, Egress]\n    ingress:\n    - from:\n      - podSelector:\n          matchLabels:\n            app: app{peer_app}\n      ports:\n      - port: http\n    - from:\n      - namespaceSelector:\n          matchLabels:\n            team: t{}\n        podSelector:\n          matchExpressions:\n          - key: tier\n            operator: In\n            values: [edge, worker]\n      ports:\n      - port: 8080\n      - protocol: UDP\n        port: 9000\n        endPort: 9100\n    egress:\n    - to:\n      - namespaceSelector: {{}}\n        podSelector:\n          matchLabels:\n            app: app{}\n    - to:\n      - ipBlock:\n          cidr: 0.0.0.0/0\n          except: [10.0.0.0/8, 192.168.0.0/16]\n      ports:\n      - port: 443\n      - port: 1935\n    - to:\n      - ipBlock:\n          cidr: 198.51.100.0/24\n      ports:\n      - protocol: UDP\n        port: 5000\n        endPort: 5999\n",
                j % 5,
                (j * 3) % 40,
            );
        }
    }
    y
}

fn flows(records: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let ports = [
        (8080, "TCP"),
        (9000, "UDP"),
        (9050, "UDP"),
        (443, "TCP"),
        (1935, "TCP"),
        (5004, "UDP"),
        (80, "TCP"),
    ];
    let mut distinct = Vec::with_capacity(DISTINCT_FLOWS);
    for _ in 0..DISTINCT_FLOWS {
        let src = pod_ip(rng.below(NAMESPACES), rng.below(PODS_PER_NS));
        let (port, proto) = ports[rng.below(ports.len())];
        let (dst, port, proto) = match rng.below(10) {
            0..=5 => (
                pod_ip(rng.below(NAMESPACES), rng.below(PODS_PER_NS)),
                port,
                proto,
            ),
            6 | 7 => (
                svc_ip(rng.below(NAMESPACES), rng.below(SERVICES_PER_NS)),
                80,
                "TCP",
            ),
            _ => (
                format!(
                    "{}.{}.{}.{}",
                    [203, 198, 8][rng.below(3)],
                    rng.below(256),
                    rng.below(256),
                    rng.below(256)
                ),
                port,
                proto,
            ),
        };
        distinct.push((src, dst, port, proto));
    }
    let mut out = String::with_capacity(records * 140);
    for n in 0..records {
        let (src, dst, port, proto) = &distinct[rng.below(distinct.len())];
        let _ = writeln!(
            out,
            "{{\"src_ip\":\"{src}\",\"dst_ip\":\"{dst}\",\"dst_port\":{port},\"protocol\":\"{proto}\",\"direction\":\"egress\",\"pid\":{},\"comm\":\"ffmpeg\",\"count\":{}}}",
            1000 + n % 5000,
            1 + n % 7
        );
    }
    out
}

fn setup() -> (PathBuf, PathBuf) {
    // `cargo test --all-targets` runs this binary without `--bench`: keep that quick.
    let full = std::env::args().any(|a| a == "--bench")
        || std::env::var_os("AUDITOR_BENCH_CHILD").is_some();
    let records = std::env::var("AUDITOR_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { RECORDS } else { 10_000 });
    let dir = std::env::temp_dir().join(format!("auditor-bench-policy-{records}"));
    let (snap, fl) = (dir.join("cluster.yaml"), dir.join("flows.jsonl"));
    if !snap.exists() || !fl.exists() {
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(&snap, snapshot()).expect("write snapshot");
        std::fs::write(&fl, flows(records)).expect("write flows");
    }
    (snap, fl)
}

fn args(snap: &Path, fl: &Path) -> DiffArgs {
    DiffArgs {
        source: auditor::cluster::ClusterSource::file(snap.to_owned()),
        flows: fl.to_owned(),
        format: Format::Json,
        skip_invalid: false,
        output: Some(PathBuf::from("/dev/null")),
        ..Default::default()
    }
}

fn max_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss
    }
}

fn bench(c: &mut Criterion) {
    let (snap, fl) = setup();
    let a = args(&snap, &fl);
    let mut g = c.benchmark_group("diff");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("10k_pods_1k_policies_1m_records_json", |b| {
        b.iter(|| run(&a).expect("diff runs"))
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(dir) = std::env::var("AUDITOR_BENCH_CHILD") {
        let dir = PathBuf::from(dir);
        let start = Instant::now();
        let code =
            run(&args(&dir.join("cluster.yaml"), &dir.join("flows.jsonl"))).expect("diff runs");
        let elapsed = start.elapsed();
        println!(
            "{{\"seconds\":{:.3},\"max_rss_kib\":{},\"exit\":{code}}}",
            elapsed.as_secs_f64(),
            max_rss_kib()
        );
        return;
    }
    let (snap, fl) = setup();
    let dir = snap.parent().expect("temp dir").to_owned();
    if !std::env::args().any(|a| a == "--bench") {
        benches();
        return;
    }
    let sizes = (
        std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0),
        std::fs::metadata(&fl).map(|m| m.len()).unwrap_or(0),
    );
    let out = std::process::Command::new(std::env::current_exe().expect("bench binary"))
        .env("AUDITOR_BENCH_CHILD", &dir)
        .output()
        .expect("run the child diff");
    eprintln!(
        "policy bench: snapshot {} MiB, flow log {} MiB; one diff in a fresh process: {}",
        sizes.0 >> 20,
        sizes.1 >> 20,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    benches();
    Criterion::default().configure_from_args().final_summary();
}
