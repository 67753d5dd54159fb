//! The main job: real ffmpeg pipelines on a simulated node, recorded by the auditor,
//! diffed against NetworkPolicies enforced for real, fixed, and verified.
//!
//! Used by `cargo xtask demo` (through the `demo` binary) and by the end-to-end test.
//!
//! The cluster (one node):
//!
//! | namespace   | pod                          | what runs                                          |
//! |-------------|------------------------------|----------------------------------------------------|
//! | kube-system | coredns-5d78c9869d-x7k2p     | dnsmasq: the cluster DNS (Service kube-dns 10.96.0.10) |
//! | media       | origin-6f7c8d9b5-q2w4e       | HTTP origin with the source clip (Service origin :80)  |
//! | transcode   | transcoder-7d9f8c6b4-k8s2n   | ffmpeg jobs + a Python sidecar (health, heartbeats)    |
//! | ingest      | ingest-0                     | UDP MPEG-TS receiver on 5000 and 5001 (Service ingest) |
//! | storage     | gateway-5b6d7f8c9-z9x8c      | HTTP PUT gateway for HLS (Service gateway :80)         |
//! | (external)  | cdn.example.test 198.51.100.10 | HTTP server with a bumper clip                     |
//!
//! The installed policies start too tight in three ways seen in production: the
//! `transcode` namespace forgot DNS, storage egress is missing, and the UDP port range to
//! ingest covers 5000 but not 5001.
//!
//! After the allowlist round, a drill round (`auditor drill`) blocks one dependency of the
//! transcoder at a time for 5 s while its pipeline runs: the ingest's backup port 5001/UDP
//! during the live push, then the storage gateway during HLS packaging. The report shows
//! whether each pipeline degraded gracefully, with the evidence.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::enforce;
use crate::node::Node;
use crate::{must, read_jsonl};

pub const INITIAL_POLICIES: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: transcode
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: transcoder-egress
  namespace: transcode
spec:
  podSelector:
    matchLabels:
      app: transcoder
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: media
      podSelector:
        matchLabels:
          app: origin
    ports:
    - protocol: TCP
      port: 8080
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: ingest
    ports:
    - protocol: UDP
      port: 5000
  - to:
    - ipBlock:
        cidr: 198.51.100.0/24
    ports:
    - protocol: TCP
      port: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: origin-ingress
  namespace: media
spec:
  podSelector:
    matchLabels:
      app: origin
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: transcode
    ports:
    - protocol: TCP
      port: http
"#;

/// Where the demo writes, and how the auditor is found.
pub struct Options {
    pub out: PathBuf,
    pub auditor: PathBuf,
    /// Node name prefix (keeps the demo and the test apart).
    pub tag: String,
    /// Print progress.
    pub verbose: bool,
}

/// What one round of pipelines did.
#[derive(Debug, Default)]
pub struct Round {
    pub name: String,
    pub dir: PathBuf,
    pub flows: Vec<Value>,
    pub summary: Value,
    pub diff: Value,
    pub live_ok: bool,
    pub hls_ok: bool,
    pub ingest_counts: Value,
    pub heartbeats: bool,
    pub recorder_log: String,
    /// Alerts a real Prometheus, scraping the recorder with deploy/'s rules, had firing.
    pub prometheus_alerts: Option<Vec<Value>>,
}

impl Round {
    /// Packets the enforced policies dropped in this round (NETFILTER_DROP, attributed to
    /// flows or not). Other reasons (e.g. NO_SOCKET when a probe hits a sidecar that was
    /// just stopped) are in `summary.drops_by_reason`.
    pub fn drops(&self) -> u64 {
        self.summary["drops_by_reason"]["NETFILTER_DROP"]
            .as_u64()
            .unwrap_or(0)
    }
    pub fn denied(&self) -> u64 {
        self.diff["summary"]["denied"]
            .as_u64()
            .or_else(|| self.diff["summary"]["denied_flows"].as_u64())
            .unwrap_or_else(|| {
                self.diff["flows"]
                    .as_array()
                    .map(|f| f.iter().filter(|x| x["verdict"] == "deny").count() as u64)
                    .unwrap_or(0)
            })
    }
}

pub struct Demo {
    pub node: Node,
    pub opts: Options,
    work: PathBuf,
}

fn say(opts: &Options, msg: &str) {
    if opts.verbose {
        eprintln!("==> {msg}");
    }
}

impl Demo {
    /// Builds the node, its pods, services and external peer, and starts the servers.
    pub fn setup(opts: Options) -> Demo {
        let started = Instant::now();
        std::fs::create_dir_all(&opts.out).expect("create output dir");
        let work = opts.out.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("media")).expect("work dir");
        std::fs::create_dir_all(work.join("cdn")).expect("work dir");
        say(
            &opts,
            "making media: a 4 s source clip and a 1 s bumper (ffmpeg lavfi)",
        );
        must(&format!(
            "ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=duration=4:size=320x180:rate=25 -f lavfi -i sine=frequency=440:duration=4 -c:v mpeg2video -b:v 600k -c:a mp2 -shortest -f mpegts {}/source.ts",
            work.join("media").display()
        ));
        must(&format!(
            "ffmpeg -hide_banner -loglevel error -y -f lavfi -i smptebars=duration=1:size=320x180:rate=25 -c:v mpeg2video -f mpegts {}/bumper.ts",
            work.join("cdn").display()
        ));

        say(&opts, "simulated node: network namespaces as pods, routed through a node namespace, cgroups as kubelet+containerd name them");
        let mut node = Node::new(&opts.tag);
        let dns = node.add_pod(
            "kube-system",
            "coredns-5d78c9869d-x7k2p",
            10,
            &[("k8s-app", "kube-dns"), ("pod-template-hash", "5d78c9869d")],
            &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
            Some(("ReplicaSet", "coredns-5d78c9869d")),
        );
        let origin = node.add_pod(
            "media",
            "origin-6f7c8d9b5-q2w4e",
            20,
            &[("app", "origin"), ("pod-template-hash", "6f7c8d9b5")],
            &[("http", 8080, "TCP")],
            Some(("ReplicaSet", "origin-6f7c8d9b5")),
        );
        let tc = node.add_pod(
            "transcode",
            "transcoder-7d9f8c6b4-k8s2n",
            30,
            &[("app", "transcoder"), ("pod-template-hash", "7d9f8c6b4")],
            &[("health", 8081, "TCP")],
            Some(("ReplicaSet", "transcoder-7d9f8c6b4")),
        );
        let ingest = node.add_pod(
            "ingest",
            "ingest-0",
            40,
            &[
                ("app", "ingest"),
                ("controller-revision-hash", "ingest-6c5b8d"),
                ("statefulset.kubernetes.io/pod-name", "ingest-0"),
            ],
            &[("ts", 5000, "UDP"), ("ts-backup", 5001, "UDP")],
            Some(("StatefulSet", "ingest")),
        );
        let gw = node.add_pod(
            "storage",
            "gateway-5b6d7f8c9-z9x8c",
            50,
            &[("app", "gateway"), ("pod-template-hash", "5b6d7f8c9")],
            &[("http", 8000, "TCP")],
            Some(("ReplicaSet", "gateway-5b6d7f8c9")),
        );
        let cdn = node.add_external("cdn.example.test", "198.51.100.10");
        node.add_service(
            "kube-system",
            "kube-dns",
            "10.96.0.10",
            &[("k8s-app", "kube-dns")],
            &[("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP")],
        );
        node.add_service(
            "media",
            "origin",
            "10.96.1.20",
            &[("app", "origin")],
            &[("http", 80, 8080, "TCP")],
        );
        node.add_service(
            "ingest",
            "ingest",
            "10.96.2.40",
            &[("app", "ingest")],
            &[("ts", 5000, 5000, "UDP"), ("ts-backup", 5001, 5001, "UDP")],
        );
        node.add_service(
            "storage",
            "gateway",
            "10.96.3.50",
            &[("app", "gateway")],
            &[("http", 80, 8000, "TCP")],
        );
        node.install_service_nat();
        for p in node.pods.clone() {
            must(&format!(
                "ip netns exec {} sysctl -qw net.ipv4.tcp_syn_retries=1",
                p.netns
            ));
        }

        say(&opts, "servers: dnsmasq as cluster DNS, HTTP origin, UDP ingest, HTTP PUT storage gateway, external CDN");
        let logs = opts.out.join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let demo_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        node.spawn_in(
            &dns,
            "dnsmasq --no-daemon --no-resolv --no-hosts --port 53 --listen-address 10.244.1.10 --bind-interfaces \
             --address=/origin.media.svc.cluster.local/10.96.1.20 --address=/ingest.ingest.svc.cluster.local/10.96.2.40 \
             --address=/gateway.storage.svc.cluster.local/10.96.3.50 --address=/kube-dns.kube-system.svc.cluster.local/10.96.0.10 \
             --address=/cdn.example.test/198.51.100.10 --local-ttl=30 --log-facility=-",
            Some(&logs.join("dns.log")),
        );
        node.spawn_in(
            &origin,
            &format!(
                "python3 -m http.server 8080 --directory {}",
                work.join("media").display()
            ),
            Some(&logs.join("origin.log")),
        );
        node.spawn_in(
            &origin,
            &format!(
                "python3 -m http.server 9000 --directory {}",
                work.join("media").display()
            ),
            Some(&logs.join("origin-admin.log")),
        );
        node.spawn_in(
            &ingest,
            &format!(
                "python3 {} {} 5000 5001",
                demo_dir.join("ingest_rx.py").display(),
                work.join("ingest.json").display()
            ),
            Some(&logs.join("ingest.log")),
        );
        node.spawn_in(
            &gw,
            &format!(
                "python3 {} 8000 {}",
                demo_dir.join("gateway.py").display(),
                work.join("storage").display()
            ),
            Some(&logs.join("gateway.log")),
        );
        node.spawn_in_external(
            &cdn,
            &format!(
                "python3 -m http.server 80 --directory {}",
                work.join("cdn").display()
            ),
            Some(&logs.join("cdn.log")),
        );
        // Wait for the servers (checked from the node, which no policy filters).
        for (ip, port) in [
            ("10.244.1.20", 8080),
            ("10.244.1.20", 9000),
            ("10.244.1.50", 8000),
            ("198.51.100.10", 80),
        ] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !node
                .run_on_node(&format!("curl -s -o /dev/null -m 1 http://{ip}:{port}/"))
                .0
            {
                assert!(
                    Instant::now() < deadline,
                    "server {ip}:{port} did not start"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = tc;
        say(
            &opts,
            &format!("node ready in {:.1}s", started.elapsed().as_secs_f64()),
        );
        Demo { node, opts, work }
    }

    fn auditor(&self) -> Command {
        Command::new(&self.opts.auditor)
    }

    /// One round: install `policies`, enforce them, record while the pipelines run, diff.
    pub fn round(&mut self, name: &str, policies: &str) -> Round {
        crate::node::check_interrupted();
        let dir = self.opts.out.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("round dir");
        std::fs::write(dir.join("policies.yaml"), policies).expect("write policies");
        let snapshot = dir.join("cluster.yaml");
        std::fs::write(&snapshot, self.node.snapshot_yaml(policies)).expect("write snapshot");
        let snap = auditor::cluster::read_snapshot(&snapshot)
            .unwrap_or_else(|e| panic!("{}: {e}", snapshot.display()));
        let engine = auditor::policy::Engine::build(&snap)
            .unwrap_or_else(|e| panic!("{}: {e}", snapshot.display()));
        let rules = enforce::ruleset(&engine);
        std::fs::write(dir.join("enforced.nft"), &rules).expect("write ruleset");
        self.node.nft(&rules);
        say(
            &self.opts,
            &format!(
                "{name}: {} NetworkPolicies enforced with nftables on the node ({})",
                engine.policies().len(),
                dir.join("enforced.nft").display()
            ),
        );

        // Fresh state of the sinks; the ingest keeps running totals, so remember them.
        let _ = std::fs::remove_dir_all(self.work.join("storage"));
        let ingest_before: Value = std::fs::read_to_string(self.work.join("ingest.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);

        let flows = dir.join("flows.jsonl");
        let summary = dir.join("summary.json");
        let ready = dir.join("ready");
        let rec_log = dir.join("recorder.log");
        let metrics_port = 19290u16;
        let mut rec = self
            .auditor()
            .args(["record", "--flush-interval", "500ms"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(["--node-name", "demo-node"])
            .arg("--cgroup")
            .arg(&self.node.cgroup_root)
            .arg("--cluster")
            .arg(&snapshot)
            .arg("--output")
            .arg(&flows)
            .arg("--summary")
            .arg(&summary)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--lock-file")
            .arg(dir.join("lock"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start auditor record");
        // The recorder's log goes to recorder.log; its drop alerts are shown as they happen.
        let stderr = rec.stderr.take().expect("piped");
        let log_path = rec_log.clone();
        let verbose = self.opts.verbose;
        let round_name = name.to_string();
        let tee = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut f = std::fs::File::create(&log_path).expect("recorder log");
            let mut shown = 0;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = writeln!(f, "{line}");
                if let Some(i) = line
                    .find("drop: ")
                    .or_else(|| line.find("connect_timeout: "))
                {
                    shown += 1;
                    if verbose && shown <= 6 {
                        let sentence = &line[i..];
                        let cut = sentence
                            .find("  alert=")
                            .or_else(|| sentence.find(" alert="))
                            .unwrap_or(sentence.len());
                        eprintln!("    ALERT {round_name}: {}", &sentence[..cut]);
                    } else if verbose && shown == 7 {
                        eprintln!("    ALERT {round_name}: ... (all alerts in recorder.log)");
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Ok(Some(st)) = rec.try_wait() {
                panic!(
                    "auditor record exited with {st}: {}",
                    std::fs::read_to_string(&rec_log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "auditor record not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        say(
            &self.opts,
            &format!(
                "{name}: recording (auditor record --cgroup {} --cluster ...)",
                self.node.cgroup_root.display()
            ),
        );

        // A real Prometheus scrapes the recorder and evaluates the shipped alert rules.
        let prom = crate::prometheus::Prometheus::start(
            &dir.join("prometheus"),
            19390,
            &format!("127.0.0.1:{metrics_port}"),
        );
        if prom.is_some() {
            say(&self.opts, &format!("{name}: Prometheus scraping the recorder's /metrics with deploy/prometheusrule.yaml's rules"));
        }

        let tc = self
            .node
            .pod("transcode", "transcoder-7d9f8c6b4-k8s2n")
            .clone();
        let demo_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).expect("logs");
        // The sidecar and the kubelet's probes run for the whole round.
        let sidecar = self.node.spawn_in(
            &tc,
            &format!("python3 {}", demo_dir.join("sidecar.py").display()),
            Some(&logs.join("sidecar.log")),
        );
        let probes = self.node.spawn_on_node("sh -c 'while true; do curl -s -o /dev/null -m 1 http://10.244.1.30:8081/healthz; sleep 0.5; done'", None);
        std::thread::sleep(Duration::from_millis(300));

        say(&self.opts, &format!("{name}: pipelines: ffmpeg live push (origin -> UDP ingest :5000 and :5001) and ffmpeg HLS package (origin + CDN bumper -> HTTP PUT storage)"));
        let live = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} ffmpeg -hide_banner -loglevel warning -nostdin -y -rw_timeout 4000000 -re -i http://origin.media.svc.cluster.local/source.ts \
                 -map 0 -c copy -f mpegts 'udp://ingest.ingest.svc.cluster.local:5000?pkt_size=1316' \
                 -map 0 -c copy -f mpegts 'udp://ingest.ingest.svc.cluster.local:5001?pkt_size=1316'",
                self.node.in_pod(&tc)
            ))
            .stdout(std::fs::File::create(logs.join("live.log")).expect("log"))
            .stderr(std::fs::File::create(logs.join("live.err")).expect("log"))
            .spawn()
            .expect("ffmpeg live");
        let hls = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} ffmpeg -hide_banner -loglevel warning -nostdin -y -rw_timeout 4000000 -i http://origin.media.svc.cluster.local/source.ts \
                 -rw_timeout 4000000 -i http://cdn.example.test/bumper.ts \
                 -filter_complex '[1:v][0:v]concat=n=2:v=1:a=0[v]' -map '[v]' -c:v mpeg2video -b:v 500k \
                 -f hls -hls_time 1 -hls_list_size 0 -method PUT http://gateway.storage.svc.cluster.local/live/index.m3u8",
                self.node.in_pod(&tc)
            ))
            .stdout(std::fs::File::create(logs.join("hls.log")).expect("log"))
            .stderr(std::fs::File::create(logs.join("hls.err")).expect("log"))
            .spawn()
            .expect("ffmpeg hls");
        let live_ok = wait_child(live, Duration::from_secs(40));
        crate::node::check_interrupted();
        let hls_ok = wait_child(hls, Duration::from_secs(40))
            && self.work.join("storage/live/index.m3u8").exists();
        std::thread::sleep(Duration::from_millis(1200));
        // SAFETY: signalling processes we started (probes first, so none hits a dead sidecar).
        unsafe {
            libc::kill(probes as i32, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
            libc::kill(sidecar as i32, libc::SIGKILL);
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "pkill -9 -f {}",
                demo_dir.join("sidecar.py").display()
            ))
            .status();
        std::thread::sleep(Duration::from_millis(700));
        // Wait (bounded) for the shipped drop alert when this round had policy drops.
        let prometheus_alerts = prom.as_ref().map(|p| {
            let any_drop = std::fs::read_to_string(&flows)
                .map(|t| t.contains("NETFILTER_DROP"))
                .unwrap_or(false);
            let firing = if any_drop {
                p.wait_for("AuditorFlowDropped", Duration::from_secs(8))
            } else {
                std::thread::sleep(Duration::from_secs(2));
                p.firing()
            };
            if !p.target_up() {
                say(
                    &self.opts,
                    &format!("{name}: Prometheus could not scrape the recorder"),
                );
            }
            for a in &firing {
                say(
                    &self.opts,
                    &format!(
                        "{name}: Prometheus alert firing: {} {}/{} {}",
                        a["labels"]["alertname"].as_str().unwrap_or(""),
                        a["labels"]["namespace"].as_str().unwrap_or(""),
                        a["labels"]["workload"].as_str().unwrap_or(""),
                        a["labels"]["reason"].as_str().unwrap_or("")
                    ),
                );
            }
            firing
        });
        drop(prom);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
        let st = rec.wait().expect("wait recorder");
        let _ = tee.join();
        let recorder_log = std::fs::read_to_string(&rec_log).unwrap_or_default();
        assert!(st.success(), "auditor record failed: {recorder_log}");
        let ingest_after: Value = std::fs::read_to_string(self.work.join("ingest.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        let ingest_counts: Value = ["5000", "5001"]
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    Value::from(
                        ingest_after[p]
                            .as_u64()
                            .unwrap_or(0)
                            .saturating_sub(ingest_before[p].as_u64().unwrap_or(0)),
                    ),
                )
            })
            .collect::<serde_json::Map<String, Value>>()
            .into();
        let heartbeats = self.work.join("storage/heartbeat").exists();

        let diff_out = self
            .auditor()
            .args(["diff", "--format", "json", "--cluster"])
            .arg(&snapshot)
            .arg("--flows")
            .arg(&flows)
            .output()
            .expect("auditor diff");
        let diff: Value = serde_json::from_slice(&diff_out.stdout).unwrap_or_else(|e| {
            panic!(
                "auditor diff output is not JSON ({e}): {}",
                String::from_utf8_lossy(&diff_out.stderr)
            )
        });
        std::fs::write(
            dir.join("diff.json"),
            serde_json::to_string_pretty(&diff).unwrap_or_default(),
        )
        .expect("write diff");
        let table = self
            .auditor()
            .args(["diff", "--format", "table", "--cluster"])
            .arg(&snapshot)
            .arg("--flows")
            .arg(&flows)
            .output()
            .expect("auditor diff");
        std::fs::write(dir.join("diff.txt"), &table.stdout).expect("write diff table");

        let summary_v: Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap_or_default())
                .unwrap_or(Value::Null);
        let round = Round {
            name: name.into(),
            dir: dir.clone(),
            flows: read_jsonl(&flows),
            summary: summary_v,
            diff,
            live_ok,
            hls_ok,
            ingest_counts,
            heartbeats,
            recorder_log,
            prometheus_alerts,
        };
        say(
            &self.opts,
            &format!(
                "{name}: live push {}, HLS upload {}, sidecar heartbeats {}, ingest datagrams {}, kernel drops {}, denied flows {} (see {})",
                ok(round.live_ok),
                ok(round.hls_ok),
                ok(round.heartbeats),
                round.ingest_counts,
                round.drops(),
                round.denied(),
                dir.join("diff.txt").display()
            ),
        );
        round
    }

    /// The drill round: each drill blocks one dependency of the transcoder for 5 s while a
    /// pipeline that uses it runs (under the policies of the last round), and says whether
    /// the pipeline degraded gracefully.
    pub fn drill_round(&mut self, snapshot: &Path) -> Vec<DrillRun> {
        crate::node::check_interrupted();
        let dir = self.opts.out.join("round4-drill");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).expect("round dir");
        let tc = self
            .node
            .pod("transcode", "transcoder-7d9f8c6b4-k8s2n")
            .clone();
        // Each pipeline runs 12 s (the 4 s clip three times, in real time): longer than its
        // drill (2 s baseline + 5 s block + 3 s observation), so a process that is gone at
        // the end died of the block.
        let drills = [
            (
                "ingest-backup",
                "the live push (origin -> ingest :5000 and :5001) with the ingest's backup port 5001/UDP blocked",
                "-re -stream_loop 2 -i http://origin.media.svc.cluster.local/source.ts \
                 -map 0 -c copy -f mpegts 'udp://ingest.ingest.svc.cluster.local:5000?pkt_size=1316' \
                 -map 0 -c copy -f mpegts 'udp://ingest.ingest.svc.cluster.local:5001?pkt_size=1316'",
                ["svc/ingest/ingest", "--port", "5001", "--protocol", "udp"],
            ),
            (
                "storage",
                "HLS packaging (origin -> HTTP PUT to the storage gateway, a segment a second) with the gateway blocked",
                "-re -stream_loop 2 -i http://origin.media.svc.cluster.local/source.ts \
                 -c:v mpeg2video -b:v 500k -an -f hls -hls_time 1 -hls_list_size 0 -method PUT \
                 http://gateway.storage.svc.cluster.local/drill/index.m3u8",
                ["svc/storage/gateway", "--port", "80", "--protocol", "tcp"],
            ),
        ];
        let mut runs = Vec::new();
        for (name, what, ffmpeg_args, peer) in drills {
            say(
                &self.opts,
                &format!("drill {name}: {what} for 5 s (auditor drill --i-mean-it)"),
            );
            let log = dir.join("logs").join(format!("{name}.err"));
            let pipeline = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{} ffmpeg -hide_banner -loglevel warning -nostdin -y -rw_timeout 4000000 {ffmpeg_args}",
                    self.node.in_pod(&tc)
                ))
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("ffmpeg");
            std::thread::sleep(Duration::from_millis(500));
            let out = dir.join(format!("drill-{name}.json"));
            let drill = self
                .auditor()
                .arg("drill")
                .arg("--cluster")
                .arg(snapshot)
                .arg("--cgroup")
                .arg(&self.node.cgroup_root)
                .args(["--pod", "transcode/transcoder-7d9f8c6b4-k8s2n", "--peer"])
                .args(peer)
                .args(["--duration", "5s", "--baseline", "2s", "--observe", "3s"])
                .args(["--i-mean-it", "-o", "json", "--output"])
                .arg(&out)
                .stderr(std::fs::File::create(dir.join(format!("drill-{name}.log"))).expect("log"))
                .status()
                .expect("auditor drill");
            let pipeline_ok = wait_child(pipeline, Duration::from_secs(20));
            let report: Value = std::fs::read_to_string(&out)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_else(|| {
                    panic!(
                        "auditor drill ({drill}) wrote no result: {}",
                        std::fs::read_to_string(dir.join(format!("drill-{name}.log")))
                            .unwrap_or_default()
                    )
                });
            say(
                &self.opts,
                &format!(
                    "drill {name}: {} (exit {}): {}",
                    report["outcome"].as_str().unwrap_or("?").to_uppercase(),
                    drill.code().unwrap_or(-1),
                    report["why"].as_str().unwrap_or("")
                ),
            );
            runs.push(DrillRun {
                name: name.into(),
                file: out,
                exit_code: drill.code(),
                report,
                pipeline_ok,
                pipeline_log: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        }
        runs
    }

    /// A connection the pipelines never make: from the transcoder to the storage gateway's port 22.
    /// The origin pod also listens on 9000 (an admin port); nothing in the pipelines uses it.
    pub fn probe_unobserved(&self) -> bool {
        let tc = self.node.pod("transcode", "transcoder-7d9f8c6b4-k8s2n");
        let (ok, _) = self.node.run_in(tc, "python3 -c \"import socket;socket.create_connection(('10.244.1.20',9000),timeout=3).close()\"");
        ok
    }

    /// `auditor suggest` over the given flow logs; returns the YAML.
    pub fn suggest(&self, snapshot: &Path, flows: &[&Path], mode: &str, out: &Path) -> String {
        let merged = out.with_extension("flows.jsonl");
        let mut all = Vec::new();
        for f in flows {
            all.extend(std::fs::read(f).unwrap_or_default());
        }
        std::fs::write(&merged, all).expect("merge flows");
        let o = self
            .auditor()
            .args(["suggest", "--mode", mode, "--output", "-", "--cluster"])
            .arg(snapshot)
            .arg("--flows")
            .arg(&merged)
            .output()
            .expect("auditor suggest");
        let yaml = String::from_utf8_lossy(&o.stdout).into_owned();
        std::fs::write(out, &yaml).expect("write suggestion");
        std::fs::write(out.with_extension("log"), &o.stderr).expect("write suggest log");
        assert!(
            o.status.success(),
            "auditor suggest --mode {mode} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        yaml
    }

    /// `auditor report` into `out/report`, with the drills' results.
    pub fn report(&self, snapshot: &Path, flows: &Path, drills: &[DrillRun]) -> PathBuf {
        let dir = self.opts.out.join("report");
        let mut cmd = self.auditor();
        cmd.args(["report", "--cluster"])
            .arg(snapshot)
            .arg("--flows")
            .arg(flows)
            .arg("--output")
            .arg(&dir);
        for d in drills {
            cmd.arg("--drill").arg(&d.file);
        }
        let o = cmd.output().expect("auditor report");
        assert!(
            o.status.success(),
            "auditor report failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        dir
    }
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "FAILED"
    }
}

fn wait_child(mut c: std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return st.success(),
            Ok(None) if Instant::now() < deadline && !crate::node::interrupted() => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
        }
    }
}

/// One drill of the drill round.
#[derive(Debug)]
pub struct DrillRun {
    pub name: String,
    /// What `auditor drill -o json` wrote.
    pub file: PathBuf,
    pub exit_code: Option<i32>,
    pub report: Value,
    /// The pipeline under the drill exited 0 within its time.
    pub pipeline_ok: bool,
    pub pipeline_log: String,
}

/// The whole demo: too tight -> fix -> allowlist, each round recorded and diffed, then
/// the drills.
pub struct Outcome {
    pub rounds: Vec<Round>,
    pub drills: Vec<DrillRun>,
    pub unobserved_probe_connected: bool,
    pub report_dir: Option<PathBuf>,
}

pub fn run(opts: Options) -> Outcome {
    let t0 = Instant::now();
    let mut demo = Demo::setup(opts);
    let r1 = demo.round("round1-too-tight", INITIAL_POLICIES);
    let snap1 = r1.dir.join("cluster.yaml");
    say(
        &demo.opts,
        "fix: auditor suggest --mode fix (the smallest additions that allow what was denied)",
    );
    let fix = demo.suggest(
        &snap1,
        &[&r1.dir.join("flows.jsonl")],
        "fix",
        &r1.dir.join("suggest-fix.yaml"),
    );
    let r2 = demo.round("round2-fixed", &format!("{INITIAL_POLICIES}\n---\n{fix}"));
    let snap2 = r2.dir.join("cluster.yaml");
    say(
        &demo.opts,
        "allowlist: auditor suggest --mode allowlist over everything recorded",
    );
    let allow = demo.suggest(
        &snap2,
        &[&r1.dir.join("flows.jsonl"), &r2.dir.join("flows.jsonl")],
        "allowlist",
        &r2.dir.join("suggest-allowlist.yaml"),
    );
    let r3 = demo.round("round3-allowlist", &allow);
    say(&demo.opts, "probe: a connection the pipelines never made (transcoder -> origin:9000) must be denied by the allowlist");
    let probe = demo.probe_unobserved();
    let drills = demo.drill_round(&r3.dir.join("cluster.yaml"));
    let report_dir = Some(demo.report(&snap2, &r2.dir.join("flows.jsonl"), &drills));
    say(
        &demo.opts,
        &format!(
            "done in {:.0}s; unobserved probe {}",
            t0.elapsed().as_secs_f64(),
            if probe { "CONNECTED (wrong)" } else { "denied" }
        ),
    );
    Outcome {
        rounds: vec![r1, r2, r3],
        drills,
        unobserved_probe_connected: probe,
        report_dir,
    }
}
