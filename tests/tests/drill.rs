//! `auditor drill` on a simulated node: the block hits exactly the chosen flows (other pods
//! and other peers unaffected, measured), ends on time, is gone after a SIGKILL of the drill
//! process, and judges real ffmpeg pipelines: one that waits out the block recovers
//! (graceful), one with a 1 s read timeout dies (failed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration_tests::node::{cleanup_stale, Node, Pod};
use integration_tests::*;
use serde_json::Value;

/// One drill at a time: each scenario times packets, and the machine has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

struct Drill {
    child: Child,
    stderr: PathBuf,
    started: Instant,
}

impl Drill {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let stderr = dir.join(format!("drill-{}.stderr", args.len()));
        let f = std::fs::File::create(&stderr).expect("stderr file");
        let child = Command::new(auditor_bin())
            .arg("drill")
            .args(args)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn auditor drill");
        Drill {
            child,
            stderr,
            started: Instant::now(),
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the drill's log says `what`.
    fn wait_for(&mut self, what: &str, limit: Duration) {
        let t = Instant::now();
        while !self.stderr_text().contains(what) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "drill exited ({st}) before {what:?}:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                t.elapsed() < limit,
                "no {what:?} within {limit:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(mut self, limit: Duration) -> (i32, Duration, String) {
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return (
                    st.code().unwrap_or(-1),
                    self.started.elapsed(),
                    self.stderr_text(),
                );
            }
            if self.started.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "drill still running after {limit:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Drill {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node: `media/packager` (the target), `media/other` (a bystander), and two storage
/// pods, `origin` (the dependency to block) and `backup`.
fn node(tag: &str) -> (Node, PathBuf, PathBuf) {
    cleanup_stale(tag);
    let mut node = Node::new(tag);
    node.add_pod("media", "packager", 10, &[("app", "packager")], &[], None);
    node.add_pod("media", "other", 11, &[("app", "other")], &[], None);
    node.add_pod(
        "storage",
        "origin",
        20,
        &[("app", "origin")],
        &[("http", 8080, "TCP")],
        None,
    );
    node.add_pod(
        "storage",
        "backup",
        21,
        &[("app", "backup")],
        &[("http", 8080, "TCP")],
        None,
    );
    let dir = std::env::temp_dir().join(format!("auditor-drill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let snap = dir.join("cluster.yaml");
    std::fs::write(&snap, node.snapshot_yaml("")).expect("snapshot");
    (node, dir, snap)
}

/// An HTTP GET from a pod, 1 s to connect and answer.
fn get(node: &Node, from: &Pod, to: &Pod) -> bool {
    node.run_in(
        from,
        &format!(
            "python3 -c \"import urllib.request,sys; urllib.request.urlopen('http://{}:8080/', timeout=1).read()\"",
            to.ip
        ),
    )
    .0
}

fn serve_http(node: &mut Node, pod: &Pod, dir: &Path) {
    let www = dir.join(format!("www-{}", pod.name));
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "ok\n").expect("index");
    node.spawn_in(
        pod,
        &format!(
            "python3 -m http.server 8080 --bind 0.0.0.0 --directory {}",
            www.display()
        ),
        None,
    );
    let p = pod.clone();
    let t = Instant::now();
    while !node
        .run_in(
            &p,
            &format!(
                "python3 -c \"import socket; socket.create_connection(('{}', 8080), 1)\"",
                p.ip
            ),
        )
        .0
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "http server in {}",
            p.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Programs attached to a cgroup, as bpftool lists them.
fn attached(cgroup: &Path) -> String {
    must(&format!("bpftool cgroup show {}", cgroup.display()))
}

fn pod_slice(pod: &Pod) -> PathBuf {
    pod.cgroup.parent().expect("pod slice").to_path_buf()
}

#[test]
fn drill_blocks_exactly_the_chosen_flows_and_ends_on_time() {
    let Some(()) = privileged("drill exact") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut node, dir, snap) = node("dr1");
    let packager = node.pod("media", "packager").clone();
    let other = node.pod("media", "other").clone();
    let origin = node.pod("storage", "origin").clone();
    let backup = node.pod("storage", "backup").clone();
    serve_http(&mut node, &origin, &dir);
    serve_http(&mut node, &backup, &dir);
    assert!(get(&node, &packager, &origin) && get(&node, &other, &origin));

    let out = dir.join("drill.json");
    let mut drill = Drill::start(
        &dir,
        &[
            "--cluster",
            snap.to_str().unwrap(),
            "--pod",
            "media/packager",
            "--peer",
            "pod/storage/origin",
            "--port",
            "8080",
            "--protocol",
            "tcp",
            "--duration",
            "4s",
            "--baseline",
            "0s",
            "--observe",
            "3s",
            "--i-mean-it",
            "--format",
            "json",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    drill.wait_for("blocking now", Duration::from_secs(10));
    let slice = pod_slice(&packager);
    let progs = attached(&slice);
    assert!(
        progs.contains("drill_egress"),
        "attached to the pod: {progs}"
    );
    assert!(
        !attached(&pod_slice(&other)).contains("drill_"),
        "nothing on the bystander pod"
    );
    // While it holds: only packager -> origin:8080 fails.
    let blocked = !get(&node, &packager, &origin);
    let to_backup = get(&node, &packager, &backup);
    let bystander = get(&node, &other, &origin);
    eprintln!("during the block: packager->origin blocked={blocked}, packager->backup ok={to_backup}, other->origin ok={bystander}");
    assert!(blocked, "packager -> origin:8080 is blocked");
    assert!(to_backup, "packager -> backup still works");
    assert!(bystander, "other -> origin still works");
    drill.wait_for("released", Duration::from_secs(8));
    let released_at = drill.started.elapsed();
    assert!(
        get(&node, &packager, &origin),
        "works again after the release"
    );
    let (code, took, log) = drill.wait(Duration::from_secs(15));
    eprintln!("drill: exit {code} after {took:?} (released at {released_at:?})\n{log}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("drill.json"))
        .expect("drill json");
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(code, 0, "graceful: it came back after the release");
    assert_eq!(r["outcome"], "graceful");
    assert_eq!(r["duration_ms"], 4000);
    assert!(
        took < Duration::from_secs(4 + 3 + 3),
        "ended on time: {took:?}"
    );
    let t = &r["traffic"];
    assert!(
        t["dropped_connection_attempts"].as_u64().unwrap() >= 1,
        "{t}"
    );
    assert!(
        t["last_drop_ms"].as_u64().unwrap() < 4000,
        "no drop after the window: {t}"
    );
    assert!(t["connections_after"].as_u64().unwrap() >= 1, "{t}");
    assert!(t["resumed_after_release_ms"].as_u64().is_some(), "{t}");
    let others: Vec<&str> = r["other_peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["peer"].as_str())
        .collect();
    assert!(
        others.contains(&format!("{}:8080/TCP", backup.ip).as_str()),
        "the backup it talked to meanwhile: {others:?}"
    );
    assert!(
        !attached(&slice).contains("drill_"),
        "detached after the drill: {}",
        attached(&slice)
    );
}

#[test]
fn drill_is_gone_after_sigkill_and_refuses_without_confirmation() {
    let Some(()) = privileged("drill sigkill") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut node, dir, snap) = node("dr2");
    let packager = node.pod("media", "packager").clone();
    let origin = node.pod("storage", "origin").clone();
    serve_http(&mut node, &origin, &dir);
    let args = [
        "--cluster",
        snap.to_str().unwrap(),
        "--workload",
        "media/packager",
        "--peer",
        origin.ip.as_str(),
        "--duration",
        "60s",
    ];
    // Without --i-mean-it: the plan, exit 2, nothing attached.
    let (code, _, log) = Drill::start(&dir, &args).wait(Duration::from_secs(10));
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains("without --i-mean-it") && log.contains(&origin.ip),
        "{log}"
    );
    assert!(get(&node, &packager, &origin));

    let mut with = args.to_vec();
    with.push("--i-mean-it");
    let mut drill = Drill::start(&dir, &with);
    drill.wait_for("blocking now", Duration::from_secs(10));
    assert!(!get(&node, &packager, &origin), "blocked");
    let killed = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(drill.child.id() as i32, libc::SIGKILL) };
    let _ = drill.child.wait();
    let mut back = false;
    while killed.elapsed() < Duration::from_secs(3) {
        if get(&node, &packager, &origin) {
            back = true;
            break;
        }
    }
    eprintln!("after SIGKILL: traffic back after {:?}", killed.elapsed());
    assert!(back, "the block died with the drill process");
    assert!(!attached(&pod_slice(&packager)).contains("drill_"));
    assert!(
        !must("bpftool prog show").contains("drill_egress"),
        "no drill program left in the kernel"
    );
}

#[test]
fn ffmpeg_that_waits_out_the_block_is_graceful_and_one_with_a_short_timeout_fails() {
    let Some(()) = privileged("drill ffmpeg") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut node, dir, snap) = node("dr3");
    let packager = node.pod("media", "packager").clone();
    let origin = node.pod("storage", "origin").clone();
    let mut results = Vec::new();
    for (port, client_opts) in [(8080u16, ""), (8081, "-rw_timeout 1000000")] {
        // A live MPEG-TS over HTTP from origin (ffmpeg as the server), pulled by ffmpeg in
        // the packager pod.
        node.spawn_in(
            &origin,
            &format!("ffmpeg -hide_banner -loglevel error -nostdin -re -f lavfi -i testsrc=size=160x120:rate=25 -c:v mpeg2video -b:v 300k -f mpegts -listen 1 http://0.0.0.0:{port}"),
            None,
        );
        let t = Instant::now();
        while !must(&format!(
            "ip netns exec {} ss -Hltn sport = :{port}",
            origin.netns
        ))
        .contains("LISTEN")
        {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "ffmpeg listens on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = dir.join(format!("client-{port}.log"));
        node.spawn_in(
            &packager,
            &format!("ffmpeg -hide_banner -loglevel warning -nostdin {client_opts} -i http://{}:{port} -t 30 -f null -", origin.ip),
            Some(&log),
        );
        std::thread::sleep(Duration::from_secs(1));
        let out = dir.join(format!("drill-{port}.json"));
        let drill = Drill::start(
            &dir,
            &[
                "--cluster",
                snap.to_str().unwrap(),
                "--pod",
                "media/packager",
                "--peer",
                "pod/storage/origin",
                "--port",
                &port.to_string(),
                "--direction",
                "both",
                "--duration",
                "3s",
                "--baseline",
                "1s",
                "--observe",
                "6s",
                "--recover-within",
                "5s",
                "--i-mean-it",
                "--format",
                "json",
                "--output",
                out.to_str().unwrap(),
            ],
        );
        let (code, _, stderr) = drill.wait(Duration::from_secs(20));
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(&out)
                .unwrap_or_else(|e| panic!("drill-{port}.json: {e}\n{stderr}")),
        )
        .expect("json");
        eprintln!(
            "ffmpeg {client_opts:?}: exit {code}, {} — {}\n  traffic {}\n  processes {}\n  client log: {}",
            r["outcome"],
            r["why"],
            r["traffic"],
            r["processes"],
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        );
        results.push((code, r));
    }
    let (code, r) = &results[0];
    assert_eq!((*code, r["outcome"].as_str()), (0, Some("graceful")), "{r}");
    assert!(
        r["processes"]["at_start"].to_string().contains("ffmpeg"),
        "{r}"
    );
    assert!(r["traffic"]["before_packets"].as_u64().unwrap() > 0, "{r}");
    assert!(r["traffic"]["dropped_packets"].as_u64().unwrap() > 0, "{r}");
    let (code, r) = &results[1];
    assert_eq!((*code, r["outcome"].as_str()), (1, Some("failed")), "{r}");
    assert!(
        r["why"].as_str().unwrap().contains("ffmpeg"),
        "names the process: {r}"
    );
}

/// A block looks like loss on the path, not like a local error: a UDP sender in the target
/// pod keeps getting success from sendto while its datagrams are dropped (as when a
/// network drops them), and none reaches the receiver during the window.
#[test]
fn a_blocked_udp_sender_sees_no_error_and_its_datagrams_are_lost() {
    let Some(()) = privileged("drill udp") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut node, dir, snap) = node("dr4");
    let packager = node.pod("media", "packager").clone();
    let origin = node.pod("storage", "origin").clone();
    // The receiver counts datagrams by the second they arrived in, from its start.
    let rx = dir.join("rx.txt");
    node.spawn_in(
        &origin,
        &format!(
            "python3 -c \"import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',5004))\nf=open('{}','w')\nwhile True:\n  s.recv(2048); f.write('%.3f\\n' % time.monotonic()); f.flush()\"",
            rx.display()
        ),
        None,
    );
    std::thread::sleep(Duration::from_millis(500));
    // The sender: 100 datagrams a second for 6 s, counting failed sendto calls.
    let sent = dir.join("tx.txt");
    let sender = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} python3 -c \"import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nok=err=0\nlast=''\nfor i in range(600):\n  try:\n    s.sendto(b'x'*1000,('{}',5004)); ok+=1\n  except OSError as e:\n    err+=1; last=str(e)\n  time.sleep(0.01)\nopen('{}','w').write('%d %d %s' % (ok,err,last))\"",
            node.in_pod(&packager),
            origin.ip,
            sent.display()
        ))
        .spawn()
        .expect("sender");
    std::thread::sleep(Duration::from_millis(500));
    let out = dir.join("drill-udp.json");
    let drill = Drill::start(
        &dir,
        &[
            "--cluster",
            snap.to_str().unwrap(),
            "--pod",
            "media/packager",
            "--peer",
            "pod/storage/origin",
            "--port",
            "5004",
            "--protocol",
            "udp",
            "--duration",
            "3s",
            "--baseline",
            "1s",
            "--observe",
            "1s",
            "--recover-within",
            "1s",
            "--i-mean-it",
            "--format",
            "json",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let (code, _, stderr) = drill.wait(Duration::from_secs(15));
    let mut sender = sender;
    assert!(sender.wait().expect("sender").success());
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("drill-udp.json: {e}\n{stderr}")),
    )
    .expect("json");
    let tx = std::fs::read_to_string(&sent).expect("sender result");
    let mut it = tx.split(' ');
    let ok: u64 = it.next().unwrap().parse().unwrap();
    let err: u64 = it.next().unwrap().parse().unwrap();
    let received = std::fs::read_to_string(&rx)
        .unwrap_or_default()
        .lines()
        .count() as u64;
    let t = &r["traffic"];
    let dropped = t["dropped_packets"].as_u64().unwrap();
    eprintln!("sendto ok {ok}, failed {err} ({tx}); received {received}; drill exit {code}: {t}");
    assert_eq!(err, 0, "sendto never failed during the block: {tx}");
    assert_eq!(ok, 600);
    // About 300 of the 600 fell in the 3 s window; every one is either dropped or received.
    assert!((200..=400).contains(&dropped), "{t}");
    assert_eq!(
        received + dropped,
        600,
        "each datagram arrived or was dropped: {t}"
    );
    assert_eq!((code, r["outcome"].as_str()), (0, Some("graceful")), "{r}");
}
