//! The agent image (`cargo xtask image`) run by a real OCI runtime (podman + runc) with
//! the pod template of deploy/daemonset.yaml: its security context, hostPID, hostPath
//! volumes, args, env and probes are read from the manifest (never copied by hand) and
//! turned into `podman run` options. The containerised agent then records a pod of a
//! simulated node (a cgroup and two network namespaces of this machine).
//!
//! The image: $AUDITOR_IMAGE (`cargo xtask test` builds it once and sets it), else the
//! DaemonSet's image if podman has it, else `cargo xtask image --no-setup` is run here.
//! Run as root with one test thread.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

const RUNC: &str = "/usr/sbin/runc";
const STOCK_SECCOMP: &str = "/usr/share/containers/seccomp.json";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// Root, tracefs, cgroup v2, podman and runc; otherwise prints why and returns None.
fn container_prereqs(name: &str) -> Option<()> {
    privileged(name)?;
    let podman = Command::new("podman").arg("--version").output();
    if !podman.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED {name}: podman is not installed (cargo xtask setup installs it)");
        return None;
    }
    if !Path::new(RUNC).is_file() {
        eprintln!("SKIPPED {name}: {RUNC} is missing (cargo xtask setup installs runc)");
        return None;
    }
    Some(())
}

/// `path` (dot-separated; numbers index lists) inside `v`, or a panic naming the field.
fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for key in path.split('.') {
        let next = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        };
        cur = next.unwrap_or_else(|| panic!("deploy/daemonset.yaml: no field {path} (at {key})"));
    }
    cur
}

fn str_at<'a>(v: &'a Yaml, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("deploy/daemonset.yaml: {path} is not a string"))
}

fn list_at<'a>(v: &'a Yaml, path: &str) -> &'a Vec<Yaml> {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("deploy/daemonset.yaml: {path} is not a list"))
}

fn bool_at(v: &Yaml, path: &str) -> Option<bool> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.get(key)?;
    }
    Some(
        cur.as_bool()
            .unwrap_or_else(|| panic!("deploy/daemonset.yaml: {path} is not a boolean")),
    )
}

/// The scalar as a string (args like "268435456" may be numbers in YAML).
fn scalar(v: &Yaml, what: &str) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        _ => panic!("deploy/daemonset.yaml: {what} is not a scalar: {v:?}"),
    }
}

/// The DaemonSet's pod template as podman options.
struct Pod {
    image: String,
    /// podman run options (everything but the name, network, seccomp and the image).
    opts: Vec<String>,
    args: Vec<String>,
    /// Container port of the readiness probe, and its path; the liveness probe's path.
    probe_port: u16,
    readiness_path: String,
    liveness_path: String,
    grace_secs: u64,
    host_network: bool,
}

/// What stands for the node's hostPath on this machine.
fn host_path_here(node_path: &str, state_dir: &Path) -> PathBuf {
    match node_path {
        // hybrid here (/sys/fs/cgroup/unified), /sys/fs/cgroup on most nodes
        "/sys/fs/cgroup" => cgroup2_root().expect("cgroup v2 mount in /proc/self/mounts"),
        "/sys/kernel/tracing" if !Path::new("/sys/kernel/tracing/events").is_dir() => {
            PathBuf::from("/sys/kernel/debug/tracing")
        }
        "/var/lib/auditor" => state_dir.to_owned(),
        p => PathBuf::from(p),
    }
}

fn pod_from_daemonset(state_dir: &Path, node_name: &str) -> Pod {
    let path = repo().join("deploy/daemonset.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let ds: Yaml = serde_yaml::from_str(&text).expect("deploy/daemonset.yaml is YAML");
    assert_eq!(str_at(&ds, "kind"), "DaemonSet");
    let spec = at(&ds, "spec.template.spec");
    let containers = list_at(spec, "containers");
    assert_eq!(
        containers.len(),
        1,
        "deploy/daemonset.yaml: one container expected"
    );
    let c = &containers[0];
    let mut opts: Vec<String> = vec![];
    let sc = at(c, "securityContext");
    assert_ne!(
        bool_at(sc, "privileged"),
        Some(true),
        "the agent is not privileged"
    );
    let drop: Vec<String> = list_at(sc, "capabilities.drop")
        .iter()
        .map(|v| scalar(v, "capabilities.drop[]").to_lowercase())
        .collect();
    let add: Vec<String> = list_at(sc, "capabilities.add")
        .iter()
        .map(|v| scalar(v, "capabilities.add[]"))
        .collect();
    opts.push(format!("--cap-drop={}", drop.join(",")));
    opts.push(format!("--cap-add={}", add.join(",")));
    if bool_at(sc, "readOnlyRootFilesystem") == Some(true) {
        // Kubernetes mounts no tmpfs on a read-only root; podman does unless told not to.
        opts.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if bool_at(sc, "allowPrivilegeEscalation") == Some(false) {
        opts.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    let user = sc.get("runAsUser").map(|v| scalar(v, "runAsUser"));
    let group = sc.get("runAsGroup").map(|v| scalar(v, "runAsGroup"));
    if let Some(u) = user {
        opts.push(format!(
            "--user={u}:{}",
            group.unwrap_or_else(|| "0".into())
        ));
    }
    if bool_at(spec, "hostPID") == Some(true) {
        opts.push("--pid=host".into());
    }
    let host_network = bool_at(spec, "hostNetwork").unwrap_or(false);
    // hostPath volumes and their mounts
    let volumes = list_at(spec, "volumes");
    for m in list_at(c, "volumeMounts") {
        let name = str_at(m, "name");
        let vol = volumes
            .iter()
            .find(|v| v.get("name").and_then(Yaml::as_str) == Some(name))
            .unwrap_or_else(|| panic!("deploy/daemonset.yaml: volumeMount {name} has no volume"));
        let node = str_at(vol, "hostPath.path");
        let here = host_path_here(node, state_dir);
        assert!(
            here.exists(),
            "hostPath {node} -> {} does not exist here",
            here.display()
        );
        let ro = bool_at(m, "readOnly") == Some(true);
        opts.push(format!(
            "--volume={}:{}{}",
            here.display(),
            str_at(m, "mountPath"),
            if ro { ":ro" } else { "" }
        ));
    }
    for e in c
        .get("env")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = str_at(e, "name");
        let value = match (e.get("value"), e.get("valueFrom")) {
            (Some(v), _) => scalar(v, "env[].value"),
            (None, Some(from)) => match str_at(from, "fieldRef.fieldPath") {
                "spec.nodeName" => node_name.to_owned(),
                other => panic!("deploy/daemonset.yaml: env {name} from {other}: the test knows spec.nodeName only"),
            },
            _ => panic!("deploy/daemonset.yaml: env {name} has neither value nor valueFrom"),
        };
        opts.push(format!("--env={name}={value}"));
    }
    let args = list_at(c, "args")
        .iter()
        .map(|a| scalar(a, "args[]"))
        .collect();
    let port_of = |probe: &str| -> u16 {
        let p = at(c, &format!("{probe}.httpGet.port"));
        match p {
            Yaml::Number(n) => n.as_u64().expect("port number") as u16,
            Yaml::String(name) => list_at(c, "ports")
                .iter()
                .find(|port| port.get("name").and_then(Yaml::as_str) == Some(name))
                .and_then(|port| port.get("containerPort").and_then(Yaml::as_u64))
                .unwrap_or_else(|| {
                    panic!(
                        "deploy/daemonset.yaml: {probe} port {name} is not a named containerPort"
                    )
                }) as u16,
            _ => {
                panic!("deploy/daemonset.yaml: {probe}.httpGet.port is neither a number nor a name")
            }
        }
    };
    let probe_port = port_of("readinessProbe");
    assert_eq!(
        probe_port,
        port_of("livenessProbe"),
        "both probes on one port"
    );
    Pod {
        image: str_at(c, "image").to_owned(),
        opts,
        args,
        probe_port,
        readiness_path: str_at(c, "readinessProbe.httpGet.path").to_owned(),
        liveness_path: str_at(c, "livenessProbe.httpGet.path").to_owned(),
        grace_secs: at(spec, "terminationGracePeriodSeconds")
            .as_u64()
            .unwrap_or(30),
        host_network,
    }
}

/// The image to run (see the module comment).
fn image(pod: &Pod) -> String {
    if let Some(i) = std::env::var_os("AUDITOR_IMAGE") {
        return i.to_string_lossy().into_owned();
    }
    if sh(&format!("podman image exists {}", pod.image))
        .status
        .success()
    {
        eprintln!(
            "using the existing image {} (AUDITOR_IMAGE unset)",
            pod.image
        );
        return pod.image.clone();
    }
    let t = Instant::now();
    must(&format!(
        "cd {} && cargo run --quiet -p xtask -- image --no-setup",
        repo().display()
    ));
    eprintln!("built {} in {:.0} s", pod.image, t.elapsed().as_secs_f64());
    pod.image.clone()
}

/// Debian's podman profile with what containerd's RuntimeDefault (>= 1.6.9/1.7) and
/// Docker's default (>= 23) have in addition: `bpf` allowed with CAP_BPF and
/// `perf_event_open` with CAP_PERFMON. Changed from /usr/share/containers/seccomp.json:
///  - `bpf` and `perf_event_open` taken out of the rule that returns EPERM unless
///    CAP_SYS_ADMIN is held (the rule allowing them with CAP_SYS_ADMIN stays);
///  - an ALLOW rule for `bpf` when CAP_BPF is held and one for `perf_event_open` when
///    CAP_PERFMON is held;
///  - EPERM rules for each when neither CAP_SYS_ADMIN nor its own capability is held
///    (so a container without them still gets EPERM, not the default ENOSYS).
///
/// Everything else is the stock profile.
fn runtime_default_profile(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(STOCK_SECCOMP)
        .unwrap_or_else(|e| panic!("read {STOCK_SECCOMP} (podman's package ships it): {e}"));
    let mut p: Value = serde_json::from_str(&text).expect("seccomp.json is JSON");
    let calls = p["syscalls"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{STOCK_SECCOMP}: no syscalls list"));
    let ours = ["bpf", "perf_event_open"];
    let mut changed = 0;
    for rule in calls.iter_mut() {
        let denies_without_sys_admin = rule["action"] == "SCMP_ACT_ERRNO"
            && rule["excludes"]["caps"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "CAP_SYS_ADMIN"));
        if denies_without_sys_admin {
            if let Some(names) = rule["names"].as_array_mut() {
                let before = names.len();
                names.retain(|n| !ours.iter().any(|o| n == o));
                changed += before - names.len();
            }
        }
    }
    assert_eq!(
        changed, 2,
        "{STOCK_SECCOMP}: expected one EPERM-unless-CAP_SYS_ADMIN rule naming bpf and perf_event_open"
    );
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        calls.push(
            json!({"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}),
        );
        calls.push(
            json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "excludes": {"caps": ["CAP_SYS_ADMIN", cap]}}),
        );
    }
    let out = dir.join("seccomp-runtime-default-bpf.json");
    std::fs::write(&out, serde_json::to_string_pretty(&p).unwrap()).expect("write profile");
    out
}

/// A container removed (with its logs) on drop.
struct Container {
    name: String,
}

impl Container {
    fn logs(&self) -> String {
        let out = sh(&format!("podman logs {}", self.name));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
    fn state(&self, field: &str) -> String {
        must(&format!(
            "podman inspect --format '{{{{.State.{field}}}}}' {}",
            self.name
        ))
        .trim()
        .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = sh(&format!("podman rm -f -t 0 {} >/dev/null 2>&1", self.name));
    }
}

/// `podman run` with the pod's options, plus `extra` agent args after the DaemonSet's.
fn podman_run(
    pod: &Pod,
    image: &str,
    name: &str,
    seccomp: &Path,
    net: &[String],
    extra: &[String],
    detach: bool,
) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("run")
        .arg(format!("--name={name}"))
        .arg(format!("--runtime={RUNC}"))
        // The sandbox's hard limits are below podman's defaults.
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg(format!("--security-opt=seccomp={}", seccomp.display()))
        .args(&pod.opts)
        .args(net);
    if detach {
        cmd.arg("--detach");
    }
    cmd.arg(image).args(&pod.args).args(extra);
    cmd
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("auditor-ct-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn udp_send(dst: &str, port: u16, n: usize) -> String {
    format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range({n}):\n    s.sendto(b'x' * 1000, ('{dst}', {port}))\n"
    )
}

fn timed_out_connect(dst: &str, port: u16) -> String {
    format!(
        r#"import socket
s = socket.socket()
s.settimeout(10)
try:
    s.connect(('{dst}', {port}))
    print('established')
except (socket.timeout, TimeoutError):
    print('timeout')
except OSError as e:
    print('error', e.errno)
"#
    )
}

#[test]
fn daemonset_pod_in_podman_records_a_simulated_node_and_flushes_on_sigterm() {
    let Some(()) = container_prereqs("container: DaemonSet pod in podman") else {
        return;
    };
    let dir = tmp_dir("run");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let node = format!("sim-node-{}", std::process::id());
    let pod = pod_from_daemonset(&state, &node);
    let image = image(&pod);
    let profile = runtime_default_profile(&dir);

    let net = NetPair::new("ct");
    let cg = Cgroup::new("ct");
    let _dns = spawn(&format!(
        "ip netns exec {} dnsmasq --no-daemon --no-resolv --no-hosts --port 53 --listen-address {} --bind-interfaces --address=/origin.media.test/{} --local-ttl=30",
        net.b, net.b4, net.b4
    ));
    let _http = spawn(&format!(
        "ip netns exec {} python3 -m http.server 8080 --bind {} --directory /tmp",
        net.b, net.b4
    ));
    wait_tcp(&net.a, &net.b4, 8080);
    // Port 9 on b: SYNs silently dropped by nftables in b's input hook (a timed-out connect).
    net.nft(&net.b, "table inet audct {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 9 drop\n  }\n}\n");

    // Network: hostNetwork is false, so the agent gets its own network namespace (podman's
    // bridge, as a pod gets its CNI's), and the probe port is published on the host's
    // loopback, as the kubelet reaches the pod IP. Host networking is not needed: the
    // cgroup and tracepoint programs see every namespace from any namespace.
    assert!(!pod.host_network, "the DaemonSet has hostNetwork: false");
    let host_port = free_port();
    let net_opts = vec![format!(
        "--publish=127.0.0.1:{host_port}:{}",
        pod.probe_port
    )];
    // Test-only additions to the DaemonSet's args:
    //  --cgroup: the test's cgroup (its path inside the container, under the mounted
    //    host tree): this machine runs other builds and tests, and the agent must record
    //    only the simulated pod's traffic (and not hold the root cgroup's hooks);
    //  --summary: the end-of-run summary as a file in the state dir, to check the clean stop.
    let cg_in_container = Path::new("/sys/fs/cgroup").join(cg.path.file_name().unwrap());
    let extra = vec![
        "--cgroup".into(),
        cg_in_container.display().to_string(),
        "--summary".into(),
        "/var/lib/auditor/summary.json".into(),
    ];
    let name = format!("auditor-ct-{}", std::process::id());
    let _ = sh(&format!("podman rm -f -t 0 {name} >/dev/null 2>&1"));
    let mut run = podman_run(&pod, &image, &name, &profile, &net_opts, &extra, true);
    eprintln!("{run:?}");
    let out = run.output().expect("start podman");
    assert!(
        out.status.success(),
        "podman run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctr = Container { name };
    let probe_addr = format!("127.0.0.1:{host_port}");

    // Readiness as the kubelet sees it.
    let started = Instant::now();
    let ready = loop {
        if let Some((200, body)) =
            http_get(&probe_addr, &pod.readiness_path, Duration::from_secs(2))
        {
            break body;
        }
        if ctr.state("Running") != "true" {
            panic!("the agent exited before it was ready:\n{}", ctr.logs());
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!("{} not 200 after 60 s:\n{}", pod.readiness_path, ctr.logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{} 200 after {:.1} s: {ready}",
        pod.readiness_path,
        started.elapsed().as_secs_f64()
    );
    let (code, _) = http_get(&probe_addr, &pod.liveness_path, Duration::from_secs(2))
        .expect("liveness probe answers");
    assert_eq!(code, 200, "{}", pod.liveness_path);
    let (code, metrics) =
        http_get(&probe_addr, "/metrics", Duration::from_secs(2)).expect("/metrics answers");
    assert_eq!(code, 200);
    let up: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("auditor_up"))
        .collect();
    eprintln!("metrics: {up:?}");
    assert!(
        up.contains(&"auditor_up 1"),
        "auditor_up 1 in /metrics: {up:?}"
    );

    // Traffic of the simulated pod: DNS + TCP (named), UDP, a drop (timed-out connect).
    assert_eq!(
        py(&cg, &net.a, &dns_then_connect(&net.b4, 8080)).trim(),
        net.b4
    );
    py(&cg, &net.a, &udp_send(&net.b4, 40000, 5));
    let r = py(&cg, &net.a, &timed_out_connect(&net.b4, 9));
    assert!(
        r.trim() == "timeout" || r.trim() == "error 110",
        "expected a timed-out connect, got {r}"
    );

    // The periodic flush (the DaemonSet's default interval) writes them.
    let log = state.join("flows.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while find(&read_jsonl(&log), &[("dst_port", json!(8080))]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no TCP flow in {} after 20 s:\n{}",
            log.display(),
            ctr.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The last flow, right before the stop: only the SIGTERM flush can write it.
    py(&cg, &net.a, &udp_send(&net.b4, 40123, 1));
    let before = find(&read_jsonl(&log), &[("dst_port", json!(40123))]).len();
    let t = Instant::now();
    must(&format!("podman stop -t {} {}", pod.grace_secs, ctr.name));
    eprintln!(
        "podman stop took {:.1} s; the last flow was {} the log before the stop",
        t.elapsed().as_secs_f64(),
        if before == 0 {
            "not in"
        } else {
            "already in (a periodic flush got it)"
        }
    );
    let exit = ctr.state("ExitCode");
    let logs = ctr.logs();
    eprintln!(
        "agent log (tail):\n{}",
        logs.lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(exit, "0", "clean exit on SIGTERM:\n{logs}");
    assert!(
        logs.contains("SIGTERM"),
        "the agent logged the SIGTERM: {logs}"
    );
    assert!(
        logs.contains("auditor: recorded"),
        "the summary line: {logs}"
    );

    let flows = read_jsonl(&log);
    eprintln!("flows: {}", serde_json::to_string_pretty(&flows).unwrap());
    let b4 = json!(net.b4);
    let tcp = find(
        &flows,
        &[
            ("dst_ip", b4.clone()),
            ("dst_port", json!(8080)),
            ("protocol", json!("TCP")),
        ],
    );
    assert_eq!(sum(&tcp, "established"), 1, "the TCP connect: {flows:?}");
    assert_eq!(
        tcp[0]["dns_name"], "origin.media.test",
        "named by the DNS answer"
    );
    assert_eq!(tcp[0]["comm"], "python3", "hostPID: the process is named");
    assert_eq!(tcp[0]["cgroup_id"], json!(cg.id()));
    let dnsq = find(
        &flows,
        &[
            ("dst_ip", b4.clone()),
            ("dst_port", json!(53)),
            ("protocol", json!("UDP")),
        ],
    );
    assert!(!dnsq.is_empty(), "the DNS query: {flows:?}");
    let udp = find(
        &flows,
        &[
            ("dst_ip", b4.clone()),
            ("dst_port", json!(40000)),
            ("protocol", json!("UDP")),
        ],
    );
    assert!(!udp.is_empty(), "the UDP datagrams: {flows:?}");
    let dropped = find(&flows, &[("dst_ip", b4.clone()), ("dst_port", json!(9))]);
    assert_eq!(
        sum(&dropped, "timed_out"),
        1,
        "the timed-out connect: {dropped:?}"
    );
    assert!(
        dropped.iter().any(|r| r["drop_reason"] == "NETFILTER_DROP"),
        "the nftables drop with its reason: {dropped:?}"
    );
    let last = find(&flows, &[("dst_ip", b4), ("dst_port", json!(40123))]);
    assert!(
        !last.is_empty(),
        "the last flow, sent right before the stop, is flushed on SIGTERM: {flows:?}"
    );

    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("summary.json")).expect("summary.json written on stop"),
    )
    .expect("summary is JSON");
    eprintln!(
        "summary: attached {} degraded {} flows {}",
        summary["attached"], summary["degraded"], summary["flows"]
    );
    assert!(summary["flows"].as_u64().unwrap_or(0) >= 5, "{summary}");
    drop(ctr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's stock profile allows bpf only with CAP_SYS_ADMIN (like an older runtime's
/// RuntimeDefault): the agent must exit non-zero and say that seccomp is the cause.
#[test]
fn stock_seccomp_profile_fails_and_the_error_names_seccomp() {
    let Some(()) = container_prereqs("container: stock seccomp profile") else {
        return;
    };
    let dir = tmp_dir("stock");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let pod = pod_from_daemonset(&state, "sim-node-stock");
    let image = image(&pod);
    let cg = Cgroup::new("cts");
    let cg_in_container = Path::new("/sys/fs/cgroup").join(cg.path.file_name().unwrap());
    // --cgroup as in the test above: never touch the root cgroup of this shared machine.
    let extra = vec!["--cgroup".into(), cg_in_container.display().to_string()];
    let name = format!("auditor-cts-{}", std::process::id());
    let _ = sh(&format!("podman rm -f -t 0 {name} >/dev/null 2>&1"));
    let mut run = podman_run(
        &pod,
        &image,
        &name,
        Path::new(STOCK_SECCOMP),
        &["--network=none".into()],
        &extra,
        false,
    );
    let _ctr = Container { name };
    let t = Instant::now();
    let out = run.output().expect("start podman");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "exit {} after {:.1} s; stderr:\n{stderr}",
        out.status,
        t.elapsed().as_secs_f64()
    );
    assert!(
        !out.status.success(),
        "the agent must fail under {STOCK_SECCOMP}"
    );
    assert!(
        stderr.contains("seccomp"),
        "the error names seccomp: {stderr}"
    );
    assert!(
        stderr.contains("EPERM") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
