//! `bench`: what the auditor costs, measured against this machine's own limit. Run by
//! `cargo xtask bench` as root; writes BENCHMARKS.md. See issue 7 for the figures and targets.
//!
//! `bench run --auditor PATH --out FILE [--reps N] [--policy-bench PATH]` runs every figure;
//! `bench gen ...` is a load generator (gen.rs), started by `run` in a cgroup and netns.
//!
//! Configurations, interleaved in every repetition (T0, T1, T2, T0, T1, T2, ...):
//! T0 no programs; T1 `--bench-noop` (every program attached, each returns at once);
//! T2 the full recorder with `--cgroup` on the load generators' cgroup; T2h the full
//! recorder host-wide (cgroup programs on the root cgroup).
//!
//! Everything made here (network namespaces, cgroup, nftables tables inside those
//! namespaces, processes, temp files) is owned by a guard and removed on drop, also when
//! a figure fails; traffic only goes over loopback and the veth pair made here.

mod cluster_view;
mod collect;
mod external;
mod gen;
mod peers;
mod soak;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration_tests::{Cgroup, NetPair};
use serde_json::Value;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") => gen::main(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("cluster-view") => cluster_view::main(&args[1..]),
        _ => bail!("usage: bench run --auditor PATH --out FILE [--reps N] [--policy-bench PATH] [--only FIGS] | bench cluster-view [--reps N] | bench gen KIND ..."),
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

// ---------- statistics ----------

#[derive(Clone, Copy, Debug)]
struct Spread {
    med: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn spread(v: &[f64]) -> Spread {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return Spread {
            med: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            n: 0,
        };
    }
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Spread {
        med,
        min: s[0],
        max: s[n - 1],
        n,
    }
}

/// `median (min–max)` with `d` decimals.
fn fmt(s: Spread, d: usize) -> String {
    if s.n == 0 {
        return "n/a".into();
    }
    format!("{:.d$} ({:.d$}–{:.d$})", s.med, s.min, s.max)
}

fn pct(ratio: Spread) -> String {
    if ratio.n == 0 {
        return "n/a".into();
    }
    let p = |r: f64| (r - 1.0) * 100.0;
    format!(
        "{:+.1}% ({:+.1}…{:+.1}%)",
        p(ratio.med),
        p(ratio.min),
        p(ratio.max)
    )
}

// ---------- machine and processes ----------

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Busy CPU time of the whole machine so far (all CPUs, everything but idle and iowait), seconds.
fn machine_busy_s() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 5 {
        return f64::NAN;
    }
    let total: f64 = f.iter().take(8).sum();
    (total - f[3] - f[4]) / clk_tck()
}

/// utime + stime of a process (all threads), seconds.
fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some(rest) = text.rfind(')').map(|i| &text[i + 2..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after the comm: state is [0]; utime is field 14 overall -> [11], stime [12]
    let g = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (g(11) + g(12)) / clk_tck()
}

/// VmRSS and VmHWM of a process, KiB.
fn proc_mem_kib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("spawn {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    mem: String,
    date: String,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = sh("uname -r").unwrap_or_default().trim().to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|k| format!("{:.0} GiB", k / 1048576.0))
        .unwrap_or_default();
    let date = sh("date -u +%Y-%m-%dT%H:%MZ")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Machine {
        cpu,
        cores,
        kernel,
        mem,
        date,
    }
}

/// A child process killed on drop.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------- the recorder ----------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cfg {
    T0,
    T1,
    T2,
    T2h,
    /// T2 with the fallback TCP hooks (host-wide tracepoints instead of cgroup sock_ops).
    T2t,
}

impl Cfg {
    fn name(self) -> &'static str {
        match self {
            Cfg::T0 => "T0 no programs",
            Cfg::T1 => "T1 --bench-noop",
            Cfg::T2 => "T2 auditor --cgroup",
            Cfg::T2h => "T2h auditor host-wide",
            Cfg::T2t => "T2t auditor --cgroup --tcp-tracepoints",
        }
    }
}

struct Recorder {
    /// bpf program and map ids that appeared while this recorder started (bpftool here shows no pids).
    progs: Vec<u64>,
    maps: Vec<u64>,
    proc: Proc,
    dir: PathBuf,
    output: PathBuf,
    summary: PathBuf,
}

impl Recorder {
    /// Starts `auditor record` for `cfg` (None for T0) with `extra` flags; waits until ready.
    fn start(env: &Env, cfg: Cfg, extra: &[&str]) -> Result<Option<Recorder>> {
        if cfg == Cfg::T0 {
            return Ok(None);
        }
        let dir = env.tmp.join(format!("rec-{}", env.seq()));
        std::fs::create_dir_all(&dir)?;
        let (output, summary, ready) = (
            dir.join("flows.jsonl"),
            dir.join("summary.json"),
            dir.join("ready"),
        );
        let mut cmd = Command::new(&env.auditor);
        cmd.arg("record")
            .arg("--output")
            .arg(&output)
            .arg("--summary")
            .arg(&summary)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--lock-file")
            .arg(dir.join("lock"))
            .args(["--log", "warn"]);
        match cfg {
            Cfg::T1 => {
                cmd.arg("--bench-noop").arg("--cgroup").arg(&env.cg.path);
            }
            Cfg::T2 => {
                cmd.arg("--cgroup").arg(&env.cg.path);
            }
            Cfg::T2t => {
                cmd.arg("--cgroup")
                    .arg(&env.cg.path)
                    .arg("--tcp-tracepoints");
            }
            _ => {}
        }
        cmd.args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr"))?);
        let (p0, m0) = (bpf_ids("prog"), bpf_ids("map"));
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", env.auditor.display()))?;
        let mut r = Recorder {
            progs: vec![],
            maps: vec![],
            proc: Proc(Some(child)),
            dir,
            output,
            summary,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Some(st) = r.proc.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "auditor record exited with {st} before ready: {}",
                    r.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!("auditor record not ready after 60 s: {}", r.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        r.progs = bpf_ids("prog")
            .into_iter()
            .filter(|i| !p0.contains(i))
            .collect();
        r.maps = bpf_ids("map")
            .into_iter()
            .filter(|i| !m0.contains(i))
            .collect();
        Ok(Some(r))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGINT (a clean stop: final flush, summary) and the summary.
    fn stop(self) -> Result<Value> {
        self.stop_within(Duration::from_secs(60))?
            .context("auditor record did not stop within 60 s of SIGINT")
    }

    /// SIGINT, and the summary if it stopped within `limit` (else SIGKILL and None).
    fn stop_within(mut self, limit: Duration) -> Result<Option<Value>> {
        let mut child = self.proc.0.take().context("recorder not running")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("auditor record exited with {status}: {}", self.stderr());
        }
        let text = std::fs::read_to_string(&self.summary).context("read summary")?;
        Ok(Some(
            serde_json::from_str(&text).context("summary is JSON")?,
        ))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        drop(self.proc.0.take().map(|c| Proc(Some(c))));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ids of the loaded bpf programs or maps.
fn bpf_ids(what: &str) -> Vec<u64> {
    let text = sh(&format!("bpftool {what} show -j")).unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(v)) => v
            .iter()
            .filter_map(|x| x.get("id").and_then(Value::as_u64))
            .collect(),
        _ => vec![],
    }
}

fn rec_cpu(r: &Option<Recorder>) -> f64 {
    r.as_ref().map(|r| proc_cpu_s(r.pid())).unwrap_or(0.0)
}

// ---------- the environment ----------

struct Env {
    auditor: PathBuf,
    exe: PathBuf,
    tmp: PathBuf,
    net: NetPair,
    netno: u8,
    cg: Cgroup,
    seq: std::cell::Cell<u32>,
}

const DROP_PORT: u16 = 7777;
const FLOW_PORTS: u32 = 1000;
const FLOW_PORT_BASE: u16 = 20000;
const FLOW_IPS: u32 = 1000;

impl Env {
    fn seq(&self) -> u32 {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        n
    }

    /// A load generator in the bench cgroup, in namespace `a`. Returns its JSON line.
    fn gen(&self, args: &[String]) -> Result<Value> {
        let child = self.spawn_gen(args, true)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "gen {:?} failed: {}",
                args,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim()).with_context(|| format!("gen output: {line}"))
    }

    fn spawn_gen(&self, args: &[String], in_cgroup: bool) -> Result<Child> {
        let mut cmd = Command::new("sh");
        if in_cgroup {
            cmd.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"",
                    self.cg.path.display(),
                    self.net.a
                ))
                .arg("sh");
        } else {
            cmd.arg("-c")
                .arg(format!("exec ip netns exec {} \"$@\"", self.net.b))
                .arg("sh");
        }
        cmd.arg(&self.exe)
            .arg("gen")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd.spawn()?)
    }

    fn drop_counter(&self) -> Result<u64> {
        let t = sh(&format!(
            "ip netns exec {} nft list table inet benchdrop",
            self.net.b
        ))?;
        let p = t
            .split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|x| x.parse().ok());
        p.context("no packets counter in the benchdrop table")
    }
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn cpu_of(v: &Value) -> f64 {
    (num(v, "utime_us") + num(v, "stime_us")) / 1e6
}

fn setup(auditor: PathBuf, tmp: PathBuf) -> Result<Env> {
    let exe = std::env::current_exe()?;
    // NetPair::new and Cgroup::new panic with the failing command; the panic unwinds
    // through the guards already made.
    let net = NetPair::new("bn");
    let cg = Cgroup::new("bench");
    let netno: u8 = net
        .a4
        .split('.')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .context("netpair address")?;
    for ns in [&net.a, &net.b] {
        sh(&format!("ip netns exec {ns} sysctl -qw net.ipv4.ip_local_port_range='20000 65000' net.ipv4.tcp_tw_reuse=1 net.ipv4.tcp_max_tw_buckets=4000000"))?;
    }
    // The flow space: FLOW_IPS addresses on b's loopback, routed from a through the veth.
    sh(&format!(
        "ip -n {} route add 10.{netno}.0.0/16 via {}",
        net.a, net.b4
    ))?;
    let mut batch = String::new();
    for i in 0..FLOW_IPS {
        let _ = writeln!(
            batch,
            "addr add 10.{netno}.{}.{}/32 dev lo",
            1 + i / 250,
            1 + i % 250
        );
    }
    let file = tmp.join("addrs.batch");
    std::fs::write(&file, batch)?;
    sh(&format!("ip -n {} -batch {}", net.b, file.display()))?;
    // The drop flood's target: UDP to DROP_PORT dropped by nftables in b, counted.
    net.nft(&net.b, &format!("table inet benchdrop {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  udp dport {DROP_PORT} counter drop\n }}\n}}\n"));
    Ok(Env {
        auditor,
        exe,
        tmp,
        net,
        netno,
        cg,
        seq: std::cell::Cell::new(0),
    })
}

// ---------- figures ----------

#[derive(Default)]
struct Report {
    main: Vec<[String; 6]>,
    sections: Vec<String>,
}

fn met(ok: bool) -> String {
    if ok {
        "met".into()
    } else {
        "**missed**".into()
    }
}

/// Figure 1: TCP connect/accept/close, loopback and veth.
fn fig_connect(env: &Env, reps: usize, secs: f64, rep: &mut Report) -> Result<()> {
    eprintln!("== figure 1: connection rate");
    let cfgs = [Cfg::T0, Cfg::T1, Cfg::T2, Cfg::T2h, Cfg::T2t];
    let paths = [
        ("loopback", "", "127.0.0.1"),
        ("veth (two netns)", env.net.b.as_str(), env.net.b4.as_str()),
    ];
    // (path, cfg) -> per rep: (rate, load cpu us/conn, auditor cpu us/conn, machine cpu us/conn)
    let mut m: BTreeMap<(usize, Cfg), Vec<[f64; 4]>> = BTreeMap::new();
    for r in 0..reps {
        for &cfg in &cfgs {
            let rec = Recorder::start(env, cfg, &[])?;
            for (pi, (_, ns, addr)) in paths.iter().enumerate() {
                let port = 10000 + (env.seq() as u16 % 300) * 16;
                let (m0, a0) = (machine_busy_s(), rec_cpu(&rec));
                let v = env.gen(&[
                    s("connect"),
                    s("--server-ns"),
                    s(ns),
                    s("--addr"),
                    s(addr),
                    s("--port"),
                    s(port),
                    s("--secs"),
                    s(secs),
                ])?;
                let (m1, a1) = (machine_busy_s(), rec_cpu(&rec));
                let c = num(&v, "conns");
                m.entry((pi, cfg)).or_default().push([
                    c / num(&v, "secs"),
                    cpu_of(&v) * 1e6 / c,
                    (a1 - a0) * 1e6 / c,
                    (m1 - m0) * 1e6 / c,
                ]);
            }
            if let Some(r) = rec {
                r.stop()?;
            }
        }
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let mut sec = String::from("## 1. Connection rate: TCP connect/accept/close\n\nOne client thread connects, the server thread accepts and closes at once, the client reads the EOF and closes (one connection at a time, both threads in one process, in the bench cgroup). Per run ");
    let _ = writeln!(sec, "{secs} s. Ratios and added CPU are computed per repetition against the T0 run of the same repetition.\n");
    sec.push_str("| path | config | connections/s | rate vs T0 | load CPU µs/conn | added load CPU µs/conn | auditor CPU µs/conn | machine CPU µs/conn |\n|---|---|---|---|---|---|---|---|\n");
    for (pi, (pname, _, _)) in paths.iter().enumerate() {
        let base = &m[&(pi, Cfg::T0)];
        for &cfg in &cfgs {
            let v = &m[&(pi, cfg)];
            let col = |k: usize| spread(&v.iter().map(|x| x[k]).collect::<Vec<_>>());
            let ratio = spread(
                &v.iter()
                    .zip(base)
                    .map(|(x, b)| x[0] / b[0])
                    .collect::<Vec<_>>(),
            );
            let added = spread(
                &v.iter()
                    .zip(base)
                    .map(|(x, b)| x[1] - b[1])
                    .collect::<Vec<_>>(),
            );
            let _ = writeln!(
                sec,
                "| {pname} | {} | {} | {} | {} | {} | {} | {} |",
                cfg.name(),
                fmt(col(0), 0),
                if cfg == Cfg::T0 {
                    "—".into()
                } else {
                    pct(ratio)
                },
                fmt(col(1), 2),
                if cfg == Cfg::T0 {
                    "—".into()
                } else {
                    fmt(added, 2)
                },
                fmt(col(2), 3),
                fmt(col(3), 2)
            );
            if cfg == Cfg::T2 || cfg == Cfg::T2h {
                let aud = col(2);
                let total_added = spread(
                    &v.iter()
                        .zip(base)
                        .map(|(x, b)| x[1] - b[1] + x[2])
                        .collect::<Vec<_>>(),
                );
                rep.main.push([
                    format!("1. connect/accept/close, {pname}, {}", cfg.name()),
                    format!(
                        "{} conn/s",
                        fmt(spread(&base.iter().map(|x| x[0]).collect::<Vec<_>>()), 0)
                    ),
                    format!("{} conn/s", fmt(col(0), 0)),
                    format!(
                        "rate {}; added CPU {} µs/conn (load {} + auditor {})",
                        pct(ratio),
                        fmt(total_added, 2),
                        fmt(added, 2),
                        fmt(aud, 3)
                    ),
                    "within 3%, < 1 µs/conn".into(),
                    met(ratio.med >= 0.97 && total_added.med < 1.0),
                ]);
            }
        }
    }
    rep.sections.push(sec);
    Ok(())
}

/// Figure 2: established streams over veth.
fn fig_streams(env: &Env, reps: usize, secs: f64, rep: &mut Report) -> Result<()> {
    eprintln!("== figure 2: established streams");
    let cfgs = [Cfg::T0, Cfg::T1, Cfg::T2];
    let kinds = [("UDP 1316-byte datagrams", "udp"), ("TCP stream", "tcp")];
    let mut m: BTreeMap<(usize, Cfg), Vec<[f64; 3]>> = BTreeMap::new();
    for r in 0..reps {
        for &cfg in &cfgs {
            let rec = Recorder::start(env, cfg, &[])?;
            for (ki, (_, proto)) in kinds.iter().enumerate() {
                let port = 5700 + env.seq() as u16 % 200;
                let a0 = rec_cpu(&rec);
                let v = env.gen(&[
                    s("stream"),
                    s("--proto"),
                    s(proto),
                    s("--server-ns"),
                    s(&env.net.b),
                    s("--addr"),
                    s(&env.net.b4),
                    s("--port"),
                    s(port),
                    s("--secs"),
                    s(secs),
                    s("--size"),
                    s(1316),
                ])?;
                let a1 = rec_cpu(&rec);
                let t = num(&v, "secs");
                m.entry((ki, cfg)).or_default().push([
                    num(&v, "received_bytes") * 8.0 / t / 1e6,
                    num(&v, "sent_bytes") * 8.0 / t / 1e6,
                    (a1 - a0) / t * 100.0,
                ]);
            }
            if let Some(r) = rec {
                r.stop()?;
            }
        }
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let mut sec = format!("## 2. Established streams over veth\n\nSender in namespace a, receiver in b, one process with both sockets, in the bench cgroup (so the cgroup programs run on both ends). As fast as the sender can for {secs} s; throughput is what the receiver got. UDP datagrams are 1316 bytes (7 MPEG-TS packets).\n\n");
    sec.push_str("| stream | config | received Mbit/s | vs T0 | sent Mbit/s | auditor CPU % of one core |\n|---|---|---|---|---|---|\n");
    for (ki, (kname, _)) in kinds.iter().enumerate() {
        let base = &m[&(ki, Cfg::T0)];
        for &cfg in &cfgs {
            let v = &m[&(ki, cfg)];
            let col = |k: usize| spread(&v.iter().map(|x| x[k]).collect::<Vec<_>>());
            let ratio = spread(
                &v.iter()
                    .zip(base)
                    .map(|(x, b)| x[0] / b[0])
                    .collect::<Vec<_>>(),
            );
            let _ = writeln!(
                sec,
                "| {kname} | {} | {} | {} | {} | {} |",
                cfg.name(),
                fmt(col(0), 0),
                if cfg == Cfg::T0 {
                    "—".into()
                } else {
                    pct(ratio)
                },
                fmt(col(1), 0),
                fmt(col(2), 2)
            );
            if cfg == Cfg::T2 {
                rep.main.push([
                    format!("2. {kname} over veth"),
                    format!(
                        "{} Mbit/s",
                        fmt(spread(&base.iter().map(|x| x[0]).collect::<Vec<_>>()), 0)
                    ),
                    format!("{} Mbit/s", fmt(col(0), 0)),
                    format!("throughput {}", pct(ratio)),
                    "within 1%".into(),
                    met(ratio.med >= 0.99),
                ]);
            }
        }
    }
    rep.sections.push(sec);
    Ok(())
}

/// Starts the UDP sink in namespace b (outside the bench cgroup) and waits until it is bound.
fn start_sink(env: &Env) -> Result<Proc> {
    let mut child = env.spawn_gen(
        &[
            s("sink"),
            s("--ports"),
            s(FLOW_PORTS),
            s("--port-base"),
            s(FLOW_PORT_BASE),
        ],
        false,
    )?;
    let out = child.stdout.take().context("sink stdout")?;
    let mut p = Proc(Some(child));
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if line.trim() != "ready" {
        let mut err = String::new();
        if let Some(e) = p.0.as_mut().and_then(|c| c.stderr.take()) {
            let _ = std::io::Read::read_to_string(&mut BufReader::new(e), &mut err);
        }
        bail!("sink did not start: {err}");
    }
    Ok(p)
}

/// Figure 3: pipeline capacity (new UDP flows/s).
fn fig_capacity(env: &Env, reps: usize, rep: &mut Report) -> Result<()> {
    eprintln!("== figure 3: pipeline capacity");
    let _sink = start_sink(env)?;
    let rates: [u64; 6] = [25_000, 50_000, 75_000, 100_000, 200_000, 0];
    const MAX_COUNT: u64 = 200_000;
    // rate index (usize::MAX for the T0 machine limit) -> per rep: (achieved rate, events, lost, flows in log)
    let mut m: BTreeMap<usize, Vec<[f64; 4]>> = BTreeMap::new();
    for r in 0..reps {
        // T0: the machine's own limit for this generator.
        let v = env.gen(&[
            s("flows"),
            s("--net"),
            s(env.netno),
            s("--count"),
            s(MAX_COUNT),
            s("--rate"),
            s(0),
        ])?;
        m.entry(usize::MAX)
            .or_default()
            .push([num(&v, "rate"), f64::NAN, f64::NAN, f64::NAN]);
        for (ri, &rate) in rates.iter().enumerate() {
            let count = if rate == 0 { MAX_COUNT } else { rate };
            let rec =
                Recorder::start(env, Cfg::T2, &["--flush-interval", "1s"])?.context("recorder")?;
            let v = env.gen(&[
                s("flows"),
                s("--net"),
                s(env.netno),
                s("--count"),
                s(count),
                s("--rate"),
                s(rate),
            ])?;
            let sum = rec.stop()?;
            let ev = sum
                .pointer("/events/new_flow")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let lost: f64 = 0.0
                + sum
                    .get("lost_events")
                    .and_then(Value::as_object)
                    .map(|o| o.values().filter_map(Value::as_f64).sum::<f64>())
                    .unwrap_or(0.0);
            m.entry(ri)
                .or_default()
                .push([num(&v, "rate"), ev, lost, num(&sum, "flows")]);
        }
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let mut sec = String::from("## 3. Pipeline capacity: new UDP flows per second\n\nOne process in the bench cgroup sends one 16-byte datagram to each of N destinations (address, port) it has not used before, paced at the offered rate for about 1 s (200,000 flows for the unpaced row); a sink in namespace b (outside the cgroup) drains them. Recorder: T2 with `--flush-interval 1s`, default ring buffer (1 MiB) and `--max-flows` (65536). Events are the recorder's `new_flow` ring-buffer records; lost are failed reserves (`lost_events`, all kinds), exact counts from the summary of each run.\n\n");
    sec.push_str("| offered flows/s | achieved flows/s | new_flow events received | lost events | runs with zero lost |\n|---|---|---|---|---|\n");
    let t0 = spread(&m[&usize::MAX].iter().map(|x| x[0]).collect::<Vec<_>>());
    let _ = writeln!(
        sec,
        "| T0, no recorder, unpaced (the machine's limit) | {} | — | — | — |",
        fmt(t0, 0)
    );
    let mut best_zero = 0.0f64;
    for (ri, &rate) in rates.iter().enumerate() {
        let v = &m[&ri];
        let col = |k: usize| spread(&v.iter().map(|x| x[k]).collect::<Vec<_>>());
        let zero = v.iter().filter(|x| x[2] == 0.0).count();
        if zero == v.len() {
            best_zero = best_zero.max(col(0).min);
        }
        let lost: Vec<String> = v.iter().map(|x| format!("{}", x[2])).collect();
        let _ = writeln!(
            sec,
            "| {} | {} | {} | {} (runs: {}) | {zero}/{} |",
            if rate == 0 {
                "unpaced".into()
            } else {
                rate.to_string()
            },
            fmt(col(0), 0),
            fmt(col(1), 0),
            fmt(col(2), 0),
            lost.join(", "),
            v.len()
        );
    }
    rep.main.push([
        "3. new-flow rate recorded with zero lost events".into(),
        format!("{} flows/s (T0 generator limit)", fmt(t0, 0)),
        format!("{best_zero:.0} flows/s"),
        "highest rate with zero lost in every run (see §3 for lost counts beyond)".into(),
        "≥ 50,000 flows/s".into(),
        met(best_zero >= 50_000.0),
    ]);
    rep.sections.push(sec);
    Ok(())
}

/// Figure 4: an nftables drop flood.
fn fig_drops(env: &Env, reps: usize, secs: f64, rep: &mut Report) -> Result<()> {
    eprintln!("== figure 4: drop flood");
    let cfgs = [Cfg::T0, Cfg::T2];
    // cfg -> per rep: [drops/s, machine CPU ns/drop, stream alone Mbit/s, stream under flood Mbit/s, flooder pps]
    let mut m: BTreeMap<Cfg, Vec<[f64; 4]>> = BTreeMap::new();
    let flood_args = |secs: f64| {
        vec![
            s("flood"),
            s("--addr"),
            s(&env.net.b4),
            s("--port"),
            s(DROP_PORT),
            s("--secs"),
            s(secs),
        ]
    };
    for r in 0..reps {
        for &cfg in &cfgs {
            let rec = Recorder::start(env, cfg, &[])?;
            // (a) flood alone
            let (d0, m0) = (env.drop_counter()?, machine_busy_s());
            env.gen(&flood_args(secs))?;
            let (d1, m1) = (env.drop_counter()?, machine_busy_s());
            let drops = (d1 - d0) as f64;
            // (b) stream alone, (c) stream under the flood
            let stream = |port: u16| {
                env.gen(&[
                    s("stream"),
                    s("--proto"),
                    s("tcp"),
                    s("--server-ns"),
                    s(&env.net.b),
                    s("--addr"),
                    s(&env.net.b4),
                    s("--port"),
                    s(port),
                    s("--secs"),
                    s(secs),
                ])
            };
            let alone = stream(5900 + env.seq() as u16 % 50)?;
            let flood = env.spawn_gen(&flood_args(secs + 0.4), true)?;
            std::thread::sleep(Duration::from_millis(200));
            let under = stream(5950 + env.seq() as u16 % 50);
            let fo = flood.wait_with_output();
            let under = under?;
            fo?;
            let mbps = |v: &Value| num(v, "received_bytes") * 8.0 / num(v, "secs") / 1e6;
            m.entry(cfg).or_default().push([
                drops / secs,
                (m1 - m0) * 1e9 / drops,
                mbps(&alone),
                mbps(&under),
            ]);
            if let Some(r) = rec {
                r.stop()?;
            }
        }
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let base = &m[&Cfg::T0];
    let mut sec = format!("## 4. Drops: nftables drop flood\n\nA UDP flood (64-byte datagrams, one socket, as fast as it can) from namespace a to port {DROP_PORT} of b, where an nftables rule drops it (its counter gives the exact drop count). (a) the flood alone for {secs} s: drops/s and the whole machine's busy CPU time per dropped packet (from /proc/stat); (b) a TCP stream a→b alone; (c) the same stream while the flood runs. The recorder is T2 (the kfree_skb tracepoint is host-wide in every configuration).\n\n");
    sec.push_str("| config | drops/s | machine CPU ns/drop | added ns/drop vs T0 | stream alone Mbit/s | stream under flood Mbit/s | under-flood vs T0 |\n|---|---|---|---|---|---|---|\n");
    for &cfg in &cfgs {
        let v = &m[&cfg];
        let col = |k: usize| spread(&v.iter().map(|x| x[k]).collect::<Vec<_>>());
        let added = spread(
            &v.iter()
                .zip(base)
                .map(|(x, b)| x[1] - b[1])
                .collect::<Vec<_>>(),
        );
        let ratio = spread(
            &v.iter()
                .zip(base)
                .map(|(x, b)| x[3] / b[3])
                .collect::<Vec<_>>(),
        );
        let t0 = cfg == Cfg::T0;
        let _ = writeln!(
            sec,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cfg.name(),
            fmt(col(0), 0),
            fmt(col(1), 0),
            if t0 { "—".into() } else { fmt(added, 0) },
            fmt(col(2), 0),
            fmt(col(3), 0),
            if t0 { "—".into() } else { pct(ratio) }
        );
        if !t0 {
            let drop_ratio = spread(
                &v.iter()
                    .zip(base)
                    .map(|(x, b)| x[0] / b[0])
                    .collect::<Vec<_>>(),
            );
            rep.main.push([
                "4. TCP stream during an nftables drop flood".into(),
                format!(
                    "{} Mbit/s; {} drops/s",
                    fmt(spread(&base.iter().map(|x| x[3]).collect::<Vec<_>>()), 0),
                    fmt(spread(&base.iter().map(|x| x[0]).collect::<Vec<_>>()), 0)
                ),
                format!("{} Mbit/s; {} drops/s", fmt(col(3), 0), fmt(col(0), 0)),
                format!(
                    "stream {}; drop rate {}; added {} ns CPU per drop",
                    pct(ratio),
                    pct(drop_ratio),
                    fmt(added, 0)
                ),
                "other traffic within 1%".into(),
                met(ratio.med >= 0.99),
            ]);
        }
    }
    rep.sections.push(sec);
    Ok(())
}

/// Kernel map memory of the maps a process holds (bpftool map show: bytes_memlock), bytes; and the FLOWS map alone.
fn map_memlock(ids: &[u64]) -> (f64, f64) {
    let Ok(text) = sh("bpftool map show -j") else {
        return (f64::NAN, f64::NAN);
    };
    let Ok(Value::Array(maps)) = serde_json::from_str::<Value>(&text) else {
        return (f64::NAN, f64::NAN);
    };
    let mut total = 0.0;
    let mut flows = 0.0;
    for mp in maps {
        let owned = mp
            .get("id")
            .and_then(Value::as_u64)
            .is_some_and(|i| ids.contains(&i));
        if !owned {
            continue;
        }
        let b = mp
            .get("bytes_memlock")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        total += b;
        if mp.get("name").and_then(Value::as_str) == Some("FLOWS") {
            flows = b;
        }
    }
    (total, flows)
}

/// Figure 5: memory with N live flows.
fn fig_memory(env: &Env, reps: usize, rep: &mut Report) -> Result<()> {
    eprintln!("== figure 5: memory");
    let _sink = start_sink(env)?;
    let sizes: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
    // size -> per rep: [rss0 KiB, rss KiB, hwm KiB, map total B, FLOWS map B, flows in summary]
    let mut m: BTreeMap<u64, Vec<[f64; 6]>> = BTreeMap::new();
    let mut stop_s: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for r in 0..reps {
        for &n in &sizes {
            let rec = Recorder::start(
                env,
                Cfg::T2,
                &[
                    "--max-flows",
                    "1048576",
                    "--flush-interval",
                    "1s",
                    "--no-dns",
                ],
            )?
            .context("recorder")?;
            std::thread::sleep(Duration::from_millis(300));
            let (rss0, _) = proc_mem_kib(rec.pid());
            env.gen(&[
                s("flows"),
                s("--net"),
                s(env.netno),
                s("--count"),
                s(n),
                s("--rate"),
                s(0),
                s("--ports"),
                s(FLOW_PORTS),
            ])?;
            // Wait until the flow log stops growing (the flushes have taken every flow in).
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut last = (0u64, Instant::now());
            std::thread::sleep(Duration::from_millis(1200));
            while Instant::now() < deadline {
                let len = std::fs::metadata(&rec.output).map(|x| x.len()).unwrap_or(0);
                if len != last.0 {
                    last = (len, Instant::now());
                } else if last.1.elapsed() > Duration::from_millis(1500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let (rss, hwm) = proc_mem_kib(rec.pid());
            let (maps, flows_map) = map_memlock(&rec.maps);
            let t = Instant::now();
            let flows = match rec.stop_within(Duration::from_secs(20))? {
                Some(sum) => num(&sum, "flows"),
                None => -1.0,
            };
            stop_s.entry(n).or_default().push(t.elapsed().as_secs_f64());
            m.entry(n)
                .or_default()
                .push([rss0, rss, hwm, maps, flows_map, flows]);
        }
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let mut sec = String::from("## 5. Memory with N live flows\n\nRecorder T2 with `--max-flows 1048576 --flush-interval 1s --no-dns`; N distinct UDP flows sent (unpaced) by one process in the bench cgroup; RSS read once the flow log stopped growing. The recorder is then stopped with SIGINT (final flush and summary) and given 20 s; \"flows in summary\" is −1 where it had not exited by then and was killed, and the stop time is reported. \"idle\" is the same recorder's RSS before the traffic (the baseline of the same run). Kernel maps: `bytes_memlock` of every map the recorder holds (`bpftool map show`); the LRU hash maps are preallocated, so their size follows `--max-flows`, not the live flows.\n\n");
    sec.push_str("| live flows | flows in summary | SIGINT to exit s | idle VmRSS MiB | VmRSS MiB | VmHWM MiB | (VmHWM − idle) B/flow | target MiB (50 + 200 B × N) | kernel maps MiB (FLOWS map) |\n|---|---|---|---|---|---|---|---|---|\n");
    let mib = |k: f64| k / 1024.0;
    for &n in &sizes {
        let v = &m[&n];
        let col = |k: usize| spread(&v.iter().map(|x| x[k]).collect::<Vec<_>>());
        let per = spread(
            &v.iter()
                .map(|x| (x[2] - x[0]) * 1024.0 / n as f64)
                .collect::<Vec<_>>(),
        );
        let target = 50.0 + 200.0 * n as f64 / 1048576.0;
        let hwm = col(2);
        let _ = writeln!(
            sec,
            "| {n} | {} | {} | {} | {} | {} | {} | {target:.1} | {} ({}) |",
            fmt(col(5), 0),
            fmt(spread(&stop_s[&n]), 1),
            fmt(
                Spread {
                    med: mib(col(0).med),
                    min: mib(col(0).min),
                    max: mib(col(0).max),
                    n: col(0).n
                },
                1
            ),
            fmt(
                Spread {
                    med: mib(col(1).med),
                    min: mib(col(1).min),
                    max: mib(col(1).max),
                    n: col(1).n
                },
                1
            ),
            fmt(
                Spread {
                    med: mib(hwm.med),
                    min: mib(hwm.min),
                    max: mib(hwm.max),
                    n: hwm.n
                },
                1
            ),
            fmt(per, 0),
            fmt(
                Spread {
                    med: col(3).med / 1048576.0,
                    min: col(3).min / 1048576.0,
                    max: col(3).max / 1048576.0,
                    n: col(3).n
                },
                1
            ),
            fmt(
                Spread {
                    med: col(4).med / 1048576.0,
                    min: col(4).min / 1048576.0,
                    max: col(4).max / 1048576.0,
                    n: col(4).n
                },
                1
            ),
        );
        rep.main.push([
            format!("5. recorder memory, {n} live flows"),
            format!("{:.1} MiB idle", mib(col(0).med)),
            format!(
                "VmHWM {} MiB",
                fmt(
                    Spread {
                        med: mib(hwm.med),
                        min: mib(hwm.min),
                        max: mib(hwm.max),
                        n: hwm.n
                    },
                    1
                )
            ),
            format!(
                "{} B/flow over idle; kernel maps {:.0} MiB",
                fmt(per, 0),
                col(3).med / 1048576.0
            ),
            format!("< {target:.1} MiB"),
            met(mib(hwm.max) < target),
        ]);
    }
    rep.sections.push(sec);
    Ok(())
}

/// Runs a command, returns (wall seconds, peak RSS KiB) from wait4.
fn timed(cmd: &mut Command) -> Result<(f64, f64)> {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: wait4 on our own child, into structs we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::wait4(pid, &mut status, 0, &mut ru) < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        ru
    };
    let el = start.elapsed().as_secs_f64();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) <= 1) {
        let mut err = String::new();
        if let Some(e) = child.stderr {
            let _ = std::io::Read::read_to_string(&mut BufReader::new(e), &mut err);
        }
        bail!("{cmd:?} failed (status {status}): {err}");
    }
    Ok((el, ru.ru_maxrss as f64))
}

/// `auditor diff` writing JSON to /dev/null (what figures 6 and E time).
const DIFF_JSON: &[&str] = &["diff", "--format", "json", "--output", "/dev/null"];

/// `auditor <args> --cluster <snap> --flows <flows>`: an offline command of figures 6 and E.
fn offline(auditor: &Path, args: &[&str], snap: &Path, flows: &Path) -> Command {
    let mut c = Command::new(auditor);
    c.args(args)
        .arg("--cluster")
        .arg(snap)
        .arg("--flows")
        .arg(flows);
    c
}

/// Figure 6: diff and suggest offline at scale, on the policy bench's generated files.
fn fig_offline(
    env: &Env,
    reps: usize,
    policy_bench: Option<&Path>,
    rep: &mut Report,
) -> Result<()> {
    eprintln!("== figure 6: offline scale");
    let Some(pb) = policy_bench else {
        rep.sections
            .push("## 6. Offline scale\n\nNot run: no `--policy-bench` binary given.\n".into());
        return Ok(());
    };
    // The generator lives in auditor/benches/policy.rs; run without `--bench` it writes the
    // files (cached in the temp dir) and runs its diff once in criterion's test mode.
    let out = Command::new(pb)
        .env("AUDITOR_BENCH_RECORDS", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !out.success() {
        bail!("{} (the generator) failed: {out}", pb.display());
    }
    let dir = std::env::temp_dir().join("auditor-bench-policy-1000000");
    let (snap, flows) = (dir.join("cluster.yaml"), dir.join("flows.jsonl"));
    if !snap.is_file() || !flows.is_file() {
        bail!(
            "the generator wrote no {} / {}",
            snap.display(),
            flows.display()
        );
    }
    let sugg = env.tmp.join("suggest-out");
    let mut m: BTreeMap<&str, Vec<[f64; 2]>> = BTreeMap::new();
    for r in 0..reps {
        let d = timed(&mut offline(&env.auditor, DIFF_JSON, &snap, &flows))?;
        m.entry("diff").or_default().push([d.0, d.1]);
        let _ = std::fs::remove_dir_all(&sugg);
        let sg = timed(
            Command::new(&env.auditor)
                .args(["suggest", "--cluster"])
                .arg(&snap)
                .arg("--flows")
                .arg(&flows)
                .arg("--output")
                .arg(&sugg),
        )?;
        m.entry("suggest (allowlist)")
            .or_default()
            .push([sg.0, sg.1]);
        let _ = std::fs::remove_dir_all(&sugg);
        let fx = timed(
            Command::new(&env.auditor)
                .args(["suggest", "--mode", "fix", "--cluster"])
                .arg(&snap)
                .arg("--flows")
                .arg(&flows)
                .arg("--output")
                .arg(&sugg),
        )?;
        m.entry("suggest --mode fix")
            .or_default()
            .push([fx.0, fx.1]);
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let _ = std::fs::remove_dir_all(&sugg);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|x| x.len() as f64 / 1048576.0)
            .unwrap_or(f64::NAN)
    };
    let mut sec = format!("## 6. Offline scale: diff and suggest\n\nThe policy benchmark's generator (`auditor/benches/policy.rs`): 50 namespaces, 10,000 pods, 1,000 NetworkPolicies, 200 Services, a {:.0} MiB snapshot and a flow log of 1,000,000 records ({:.0} MiB, about 100,000 distinct flows). Each command is the release `auditor` CLI in a fresh process, end to end on the files; peak RSS is `ru_maxrss` from wait4. `diff` writes JSON to /dev/null; `suggest` writes YAML to a directory.\n\n", size(&snap), size(&flows));
    sec.push_str("| command | wall time s | peak RSS MiB |\n|---|---|---|\n");
    for (k, v) in &m {
        let t = spread(&v.iter().map(|x| x[0]).collect::<Vec<_>>());
        let r = spread(&v.iter().map(|x| x[1] / 1024.0).collect::<Vec<_>>());
        let _ = writeln!(sec, "| `auditor {k}` | {} | {} |", fmt(t, 2), fmt(r, 0));
        rep.main.push([
            format!("6. offline `{k}`, 10k pods / 1k policies / 1M records"),
            "—".into(),
            format!("{} s, {} MiB", fmt(t, 2), fmt(r, 0)),
            "peak RSS from wait4".into(),
            "< 2 s and < 1 GiB".into(),
            met(t.med < 2.0 && r.max < 1024.0),
        ]);
    }
    rep.sections.push(sec);
    Ok(())
}

/// Where the kernel time goes: bpf stats (run_time_ns / run_cnt) per program, in a separate run.
fn bpf_profile(env: &Env, secs: f64, rep: &mut Report) -> Result<()> {
    eprintln!("== bpf stats (separate run)");
    let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
        }
    }
    let _restore = Restore(before);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enable kernel.bpf_stats_enabled")?;
    let mut sec = String::from("## Where the time goes: eBPF program run time (bpf stats, separate run)\n\n`kernel.bpf_stats_enabled=1` (restored afterwards), one run of each load with the recorder T2 (TCP through cgroup sock_ops) and, for the connection loads, T1 (every program returns at once: the floor of a run, mostly the stats' own clock reads) and T2t (TCP through the fallback tracepoints); `bpftool prog show` run_cnt and run_time_ns deltas of the recorder's programs. The stats themselves add a little to each run (two clock reads). Program dispatch (the tracepoint's record, the cgroup hook's walk) is not in these figures: T1 in §1 measures it.\n\n| load | config | operations | program | runs | runs/op | ns/run | ns/op |\n|---|---|---|---|---|---|---|---|\n");
    let mut seen_any = false;
    let mut ours = BTreeMap::new();
    for cfg in [Cfg::T1, Cfg::T2, Cfg::T2t] {
        let rec = Recorder::start(env, cfg, &[])?.context("recorder")?;
        let totals = profile_loads(
            env,
            secs,
            cfg.name(),
            &rec.progs,
            |unit| cfg == Cfg::T2 || unit == "conns",
            &mut sec,
            &mut seen_any,
        )?;
        rec.stop()?;
        if cfg == Cfg::T2 {
            ours = totals;
        }
    }
    if !seen_any {
        sec.push_str("\n(no program of the recorder ran: nothing to report)\n");
    }
    rep.sections.push(sec);
    peers::figure(env, secs, &ours, rep)?;
    Ok(())
}

/// Runs the bpf-stats loads (those whose unit `wanted` accepts) with the programs `ids`
/// attached: one table row per program that ran, one "all programs" row per load, into
/// `sec`. Returns the all-programs nanoseconds per operation of each load.
fn profile_loads(
    env: &Env,
    secs: f64,
    config: &str,
    ids: &[u64],
    wanted: impl Fn(&str) -> bool,
    sec: &mut String,
    seen_any: &mut bool,
) -> Result<BTreeMap<&'static str, f64>> {
    let mut totals = BTreeMap::new();
    let snap = || -> BTreeMap<String, (f64, f64)> {
        let text = sh("bpftool prog show -j").unwrap_or_default();
        let mut out = BTreeMap::new();
        if let Ok(Value::Array(progs)) = serde_json::from_str::<Value>(&text) {
            for p in progs {
                let owned = p
                    .get("id")
                    .and_then(Value::as_u64)
                    .is_some_and(|i| ids.contains(&i));
                if owned {
                    let name = p
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned();
                    let e = out.entry(name).or_insert((0.0, 0.0));
                    e.0 += p.get("run_cnt").and_then(Value::as_f64).unwrap_or(0.0);
                    e.1 += p.get("run_time_ns").and_then(Value::as_f64).unwrap_or(0.0);
                }
            }
        }
        out
    };
    let loads: Vec<(&'static str, Vec<String>, &str)> = vec![
        (
            "TCP connect/accept/close, veth",
            vec![
                s("connect"),
                s("--server-ns"),
                s(&env.net.b),
                s("--addr"),
                s(&env.net.b4),
                s("--port"),
                s(16000),
                s("--secs"),
                s(secs),
            ],
            "conns",
        ),
        (
            "TCP connect/accept/close, loopback",
            vec![
                s("connect"),
                s("--server-ns"),
                s(""),
                s("--addr"),
                s("127.0.0.1"),
                s("--port"),
                s(16100),
                s("--secs"),
                s(secs),
            ],
            "conns",
        ),
        (
            "UDP 1316-byte stream, veth",
            vec![
                s("stream"),
                s("--proto"),
                s("udp"),
                s("--server-ns"),
                s(&env.net.b),
                s("--addr"),
                s(&env.net.b4),
                s("--port"),
                s(6102),
                s("--secs"),
                s(secs),
            ],
            "datagrams",
        ),
        (
            "TCP stream, veth",
            vec![
                s("stream"),
                s("--proto"),
                s("tcp"),
                s("--server-ns"),
                s(&env.net.b),
                s("--addr"),
                s(&env.net.b4),
                s("--port"),
                s(6103),
                s("--secs"),
                s(secs),
            ],
            "MiB",
        ),
        (
            "UDP drop flood",
            vec![
                s("flood"),
                s("--addr"),
                s(&env.net.b4),
                s("--port"),
                s(DROP_PORT),
                s("--secs"),
                s(secs),
            ],
            "drops",
        ),
    ];
    for (name, args, unit) in loads {
        if !wanted(unit) {
            continue;
        }
        let d0 = env.drop_counter().unwrap_or(0);
        let a = snap();
        let v = env.gen(&args)?;
        let b = snap();
        let d1 = env.drop_counter().unwrap_or(0);
        let ops = match unit {
            "conns" => num(&v, "conns"),
            "datagrams" => num(&v, "sent_bytes") / 1316.0,
            "MiB" => num(&v, "received_bytes") / 1048576.0,
            _ => (d1 - d0) as f64,
        };
        let mut total = 0.0;
        for (prog, (cnt, ns)) in &b {
            let (c0, n0) = a.get(prog).copied().unwrap_or((0.0, 0.0));
            let (dc, dn) = (cnt - c0, ns - n0);
            if dc <= 0.0 {
                continue;
            }
            *seen_any = true;
            total += dn / ops;
            let _ = writeln!(
                sec,
                "| {name} | {config} | {ops:.0} {unit} | `{prog}` | {dc:.0} | {:.2} | {:.0} | {:.0} |",
                dc / ops,
                dn / dc,
                dn / ops
            );
        }
        let _ = writeln!(
            sec,
            "| {name} | {config} | | **all programs** | | | | **{total:.0}** |"
        );
        totals.insert(name, total);
    }
    Ok(totals)
}

fn run(args: &[String]) -> Result<()> {
    let auditor = PathBuf::from(arg(args, "--auditor").context("--auditor PATH")?);
    let out = PathBuf::from(arg(args, "--out").unwrap_or_else(|| "BENCHMARKS.md".into()));
    let reps: usize = arg(args, "--reps")
        .map(|x| x.parse())
        .transpose()?
        .unwrap_or(5);
    let secs: f64 = arg(args, "--secs")
        .map(|x| x.parse())
        .transpose()?
        .unwrap_or(1.5);
    let only = arg(args, "--only").unwrap_or_else(|| "1,2,3,4,5,6,e,c,v,s,p".into());
    let soak_secs: u64 = arg(args, "--soak-secs")
        .map(|x| x.parse())
        .transpose()?
        .unwrap_or(600);
    let policy_bench = arg(args, "--policy-bench").map(PathBuf::from);
    let command = arg(args, "--command").unwrap_or_else(|| "cargo xtask bench".into());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads eBPF programs and makes network namespaces: run it as root (cargo xtask bench)");
    }
    let tmp = std::env::temp_dir().join(format!("auditor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    struct RmDir(PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _tmp_guard = RmDir(tmp.clone());
    let mach = machine();
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let env = setup(auditor, tmp)?;
    let mut rep = Report::default();
    let want = |f: &str| only.split(',').any(|x| x == f);
    let mut failures = Vec::new();
    let mut attempt = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            eprintln!("!! {name} failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    };
    if want("1") {
        attempt("figure 1", fig_connect(&env, reps, secs, &mut rep));
    }
    if want("2") {
        attempt("figure 2", fig_streams(&env, reps, secs, &mut rep));
    }
    if want("3") {
        attempt("figure 3", fig_capacity(&env, reps, &mut rep));
    }
    if want("4") {
        attempt("figure 4", fig_drops(&env, reps, secs, &mut rep));
    }
    if want("5") {
        attempt("figure 5", fig_memory(&env, reps, &mut rep));
    }
    if want("6") {
        attempt(
            "figure 6",
            fig_offline(&env, reps, policy_bench.as_deref(), &mut rep),
        );
    }
    if want("e") {
        attempt(
            "figure E",
            external::figure(&env.auditor, &env.tmp, reps, &mut rep),
        );
    }
    if want("c") {
        attempt(
            "figure C",
            collect::figure(&env.auditor, &env.tmp, &mut rep),
        );
    }
    if want("v") {
        attempt("figure v", cluster_view::figure(reps, &mut rep));
    }
    if want("s") {
        attempt("figure S", soak::fig_soak(&env, soak_secs, &mut rep));
    }
    if want("p") {
        attempt("bpf stats", bpf_profile(&env, secs, &mut rep));
    }
    // The hand-written "## Findings" section of the previous report (what the numbers mean,
    // where the time goes) is carried over; everything else is regenerated.
    let notes = std::fs::read_to_string(&out).ok().and_then(|old| {
        let start = old.find("\n## Findings")? + 1;
        let end = old[start + 3..]
            .find("\n## ")
            .map(|i| start + 3 + i + 1)
            .unwrap_or(old.len());
        Some(old[start..end].trim_end().to_owned() + "\n")
    });
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n\nWhat the auditor costs, measured on this machine against its own limit (issue 7). Written by `{command}` (tests/src/bin/bench/); everything but the hand-written Findings section is regenerated by each run.\n");
    let _ = writeln!(md, "- Machine: {} × {} cores, {} RAM, Linux {}\n- Date: {}\n- Command: `{command}` ({reps} interleaved repetitions; the whole run took {:.0} s)\n- Load average (1, 5, 15 min) at the start: {}; at the end: {} (other work on this shared machine shows up as spread)\n- Every figure: median (min–max) over the repetitions; ratios are taken per repetition against the baseline measured in the same repetition, then summarised.\n- Configurations: T0 no programs; T1 `--bench-noop` (every program attached, each returns at once); T2 full `auditor record --cgroup <bench cgroup>`; T2h full recorder host-wide (no `--cgroup`); T2t as T2 with the fallback TCP hooks (`--tcp-tracepoints`).\n", mach.cpu, mach.cores, mach.mem, mach.kernel, mach.date, started.elapsed().as_secs_f64(), load0.split_whitespace().take(3).collect::<Vec<_>>().join(" "), std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    md.push_str("## Summary\n\n| figure | baseline | with auditor | difference | target | |\n|---|---|---|---|---|---|\n");
    for row in &rep.main {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');
    if let Some(n) = notes {
        md.push_str(&n);
        md.push('\n');
    }
    for s in &rep.sections {
        md.push_str(s);
        md.push('\n');
    }
    if !failures.is_empty() {
        md.push_str("## Failed in this run\n\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    std::fs::write(&out, md).with_context(|| format!("write {}", out.display()))?;
    eprintln!(
        "wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("{} part(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}
