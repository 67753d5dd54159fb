//! Harness for the privileged integration tests: network namespaces joined by a
//! veth pair, a cgroup v2 directory for the processes under test, and the
//! `auditor record` process itself. Everything made here is removed on drop.
//!
//! Traffic only ever goes between the namespaces a test made itself.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod apiserver;
pub mod demo;
pub mod enforce;
pub mod node;
pub mod prometheus;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Skips the test (returns `None` and prints why) unless we are root with tracefs, cgroup v2 and `ip`.
pub fn privileged(name: &str) -> Option<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {name}: needs root (run through `cargo xtask test`)");
        return None;
    }
    if cgroup2_root().is_none() {
        eprintln!("SKIPPED {name}: no cgroup v2 mount");
        return None;
    }
    if !Path::new("/sys/kernel/tracing/events").is_dir()
        && !Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        eprintln!("SKIPPED {name}: tracefs is not mounted (cargo xtask setup mounts it)");
        return None;
    }
    Some(())
}

pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (_d, m, t) = (it.next()?, it.next()?, it.next()?);
        (t == "cgroup2").then(|| PathBuf::from(m))
    })
}

pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("spawn `{cmd}`: {e}"));
    out
}

/// Runs a shell command and panics with its output when it fails.
pub fn must(cmd: &str) -> String {
    let out = sh(cmd);
    if !out.status.success() {
        panic!(
            "`{cmd}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two network namespaces `a` and `b` joined by a veth pair.
/// a = 10.<net>.0.1 / fd00:<net>::1, b = 10.<net>.0.2 / fd00:<net>::2.
pub struct NetPair {
    pub a: String,
    pub b: String,
    pub a4: String,
    pub b4: String,
    pub a6: String,
    pub b6: String,
}

impl NetPair {
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst) + 1;
        let pid = std::process::id() % 10000;
        let net = 200 + (n % 50);
        let a = format!("aud{pid}{tag}a{n}");
        let b = format!("aud{pid}{tag}b{n}");
        let (va, vb) = (format!("va{pid}{n}"), format!("vb{pid}{n}"));
        let p = NetPair {
            a4: format!("10.{net}.0.1"),
            b4: format!("10.{net}.0.2"),
            a6: format!("fd00:{net}::1"),
            b6: format!("fd00:{net}::2"),
            a,
            b,
        };
        must(&format!("ip netns add {}", p.a));
        must(&format!("ip netns add {}", p.b));
        must(&format!(
            "ip link add {va} netns {} type veth peer name {vb} netns {}",
            p.a, p.b
        ));
        for (ns, dev, v4, v6) in [(&p.a, &va, &p.a4, &p.a6), (&p.b, &vb, &p.b4, &p.b6)] {
            must(&format!("ip -n {ns} link set lo up"));
            must(&format!("ip -n {ns} addr add {v4}/24 dev {dev}"));
            must(&format!("ip -n {ns} addr add {v6}/64 dev {dev} nodad"));
            must(&format!("ip -n {ns} link set {dev} up"));
            // Short SYN retry budget so a silently dropped connect times out in ~3 s.
            must(&format!(
                "ip netns exec {ns} sysctl -qw net.ipv4.tcp_syn_retries=1"
            ));
        }
        p
    }

    /// Installs an nftables ruleset in namespace `ns`.
    pub fn nft(&self, ns: &str, rules: &str) {
        let path = std::env::temp_dir().join(format!(
            "aud-nft-{}-{}.nft",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, rules).expect("write nft rules");
        must(&format!("ip netns exec {ns} nft -f {}", path.display()));
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns pids {} | xargs -r kill -9; ip netns pids {} | xargs -r kill -9",
            self.a, self.b
        ));
        let _ = sh(&format!("ip netns del {}; ip netns del {}", self.a, self.b));
    }
}

/// A cgroup v2 directory for the processes under test.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(tag: &str) -> Self {
        let root = cgroup2_root().expect("cgroup v2");
        let path = root.join(format!(
            "auditor-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.path).expect("cgroup dir").ino()
    }

    /// A shell prefix that runs the rest of the command in namespace `ns` inside this cgroup.
    pub fn exec_in(&self, ns: &str) -> String {
        // Join the cgroup first: `ip netns exec` mounts a fresh /sys without the cgroup mounts.
        format!(
            "sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {ns} \"$@\"' sh",
            self.path.display()
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = sh(&format!("kill -9 {pid}"));
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A background process killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(cmd: &str) -> Bg {
    Bg(Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{cmd}`: {e}")))
}

/// Waits until `port` accepts TCP connections in namespace `ns`.
pub fn wait_tcp(ns: &str, addr: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let probe = format!(
            "ip netns exec {ns} python3 -c \"import socket;s=socket.create_connection(('{addr}',{port}),timeout=0.5);s.close()\""
        );
        if sh(&probe).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr}:{port} in {ns} after 10 s");
}

pub fn auditor_bin() -> PathBuf {
    std::env::var_os("AUDITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/auditor"))
}

/// A running `auditor record`.
pub struct Recorder {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub summary: PathBuf,
    pub stderr: PathBuf,
}

impl Recorder {
    pub fn start(args: &[&str]) -> Self {
        Self::start_at(None, args)
    }

    /// Like `start`, with the flow log at `log` (default: in the recorder's temp dir).
    pub fn start_at(log: Option<PathBuf>, args: &[&str]) -> Self {
        Self::launch(log, &[], args)
    }

    /// Like `start`, with these environment variables set (as a pod spec's `env`).
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::launch(None, env, args)
    }

    fn launch(log: Option<PathBuf>, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "auditor-it-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let log = log.unwrap_or_else(|| dir.join("flows.jsonl"));
        let summary = dir.join("summary.json");
        let ready = dir.join("ready");
        let stderr = dir.join("stderr.log");
        let child = Command::new(auditor_bin())
            .arg("record")
            .arg("--output")
            .arg(&log)
            .arg("--summary")
            .arg(&summary)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--lock-file")
            .arg(dir.join("lock"))
            .args(if args.contains(&"--flush-interval") {
                &[][..]
            } else {
                &["--flush-interval", "200ms"][..]
            })
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", auditor_bin().display()));
        let mut r = Recorder {
            child: Some(child),
            dir,
            log,
            summary,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "auditor record exited with {status} before it was ready:\n{}",
                    r.stderr_text()
                );
            }
            if Instant::now() > deadline {
                panic!("auditor record not ready after 30 s:\n{}", r.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Kills the recorder with SIGKILL (no flush, no summary).
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the recorder process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops with SIGINT (a clean stop) and returns the flow log lines and the summary.
    pub fn stop(mut self) -> (Vec<Value>, Value) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().expect("wait for auditor");
        assert!(
            status.success(),
            "auditor record exited with {status}:\n{}",
            self.stderr_text()
        );
        let flows = read_jsonl(&self.log);
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.summary).expect("summary written"))
                .expect("summary is JSON");
        (flows, summary)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(f) = std::fs::File::open(path) else {
        return vec![];
    };
    BufReader::new(f)
        .lines()
        .map(|l| l.expect("read flow log"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(&l)
                .unwrap_or_else(|e| panic!("flow log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Records matching every `(field, value)` pair (values compared as JSON).
pub fn find<'a>(flows: &'a [Value], pairs: &[(&str, Value)]) -> Vec<&'a Value> {
    flows
        .iter()
        .filter(|f| pairs.iter().all(|(k, v)| f.get(*k) == Some(v)))
        .collect()
}

/// Sum of a counter over records.
pub fn sum(records: &[&Value], field: &str) -> u64 {
    records
        .iter()
        .map(|r| r.get(field).and_then(Value::as_u64).unwrap_or(0))
        .sum()
}

/// A Python one-liner run in the test cgroup inside `ns`; returns stdout.
pub fn py(cg: &Cgroup, ns: &str, code: &str) -> String {
    let file = std::env::temp_dir().join(format!(
        "aud-py-{}-{}.py",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&file, code).expect("write script");
    let out = must(&format!("{} python3 {}", cg.exec_in(ns), file.display()));
    let _ = std::fs::remove_file(file);
    out
}

/// A plain HTTP/1.0 GET on loopback: (status code, body), or None when there is no
/// answer within `timeout`.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind loopback")
}

/// A Python script: asks `dns` for origin.media.test (A), connects to the answer on
/// `port` with an HTTP/1.0 GET, and prints the address.
pub fn dns_then_connect(dns: &str, port: u16) -> String {
    dns_name_then_connect(dns, "origin.media.test", port)
}

/// The same for `name`; the address is the answer's last record (after any CNAMEs).
pub fn dns_name_then_connect(dns: &str, name: &str, port: u16) -> String {
    format!(
        r#"import socket, struct, time
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
for l in '{name}'.split('.'):
    q += bytes([len(l)]) + l.encode()
q += b'\0' + struct.pack('>HH', 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
for attempt in range(20):
    try:
        u.sendto(q, ('{dns}', 53))
        a, _ = u.recvfrom(512)
        break
    except socket.timeout:
        time.sleep(0.2)
ip = socket.inet_ntoa(a[-4:])
t = socket.create_connection((ip, {port}), timeout=5)
t.sendall(b'GET / HTTP/1.0\r\n\r\n')
t.recv(100)
t.close()
print(ip)
"#
    )
}
