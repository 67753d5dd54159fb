//! Figure C: `auditor collect` at scale. The fake API server (`fake-apiserver`, its own
//! process, HTTPS) lists N agent pods; each is a simulated agent on its own loopback
//! address (`127.0.1.i`) serving `/flows` with valid flow records in the order a real
//! agent's buffer has them (not by first_seen), reached through the fake's pod proxy as
//! in a cluster. One agent is slow (its answer trickles in over about 3 s), one is dead
//! (nothing listens: the proxy answers 503). The release `auditor collect` runs in a
//! fresh process at 25 and at 100 agents, same records per agent; peak RSS is its VmHWM.
//! Flat memory: the peak at 100 agents stays within 1.5x of the peak at 25 (4x the data).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration_tests::apiserver::ApiServer;
use serde_json::json;

use super::{met, Report};

const LINES_PER_AGENT: usize = 20_000;

/// One agent's `/flows` answer: records as a real agent writes them.
fn body(agent: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(LINES_PER_AGENT * 420);
    for j in 0..LINES_PER_AGENT {
        // first_seen out of order: buffers are in flush order, flows long-lived.
        let t = (j * 7919) % LINES_PER_AGENT;
        let _ = writeln!(
            out,
            "{{\"src_ip\":\"10.{}.{}.{}\",\"src_port\":{},\"dst_ip\":\"10.96.{}.{}\",\"dst_port\":{},\"protocol\":\"TCP\",\"direction\":\"egress\",\"state\":\"established\",\"pid\":{},\"comm\":\"ffmpeg\",\"cgroup_id\":{},\"cgroup\":\"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{agent:08x}_0000_4000_8000_{j:012x}.slice/cri-containerd-{agent:032x}{j:032x}.scope\",\"first_seen\":\"2026-11-28T10:{:02}:{:02}.{:03}Z\",\"last_seen\":\"2026-11-28T11:00:00.000Z\",\"count\":1,\"established\":1,\"src\":{{\"namespace\":\"media\",\"pod\":\"transcoder-{agent}-{j}\",\"workload\":\"Deployment/transcoder\"}}}}",
            1 + agent / 250,
            agent % 250,
            1 + j % 250,
            30000 + j % 30000,
            j % 200,
            1 + j % 250,
            1000 + j % 50,
            1000 + j,
            4000 + j,
            t / 1000 / 60 % 60,
            t / 1000 % 60,
            t % 1000,
        );
    }
    out
}

/// Serves `/flows` on `ip:port` until the process ends; `slow`: in 20 pieces, 150 ms apart.
fn agent(ip: String, port: u16, body: Arc<Vec<u8>>, slow: bool) -> Result<()> {
    let l = TcpListener::bind((ip.as_str(), port)).with_context(|| format!("bind {ip}:{port}"))?;
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().expect("clone socket"));
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                if slow {
                    for piece in body.chunks(body.len().div_ceil(20)) {
                        if s.write_all(piece).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(150));
                    }
                } else {
                    let _ = s.write_all(&body);
                }
                let _ = s.flush();
            });
        }
    });
    Ok(())
}

struct Run {
    agents: usize,
    secs: f64,
    cpu: f64,
    rss_mib: f64,
    records: usize,
    bytes: u64,
    report: String,
}

/// `auditor collect` over agents at `ips` (the last one dead).
fn run_collect(auditor: &Path, tmp: &Path, ips: &[String], port: u16) -> Result<Run> {
    let agents = ips.len();
    let fake = std::env::current_exe()?.with_file_name("fake-apiserver");
    if !fake.exists() {
        bail!(
            "{} missing: cargo build --release -p integration-tests --bins",
            fake.display()
        );
    }
    let dir = tmp.join(format!("collect-{agents}"));
    let mut api = ApiServer::start(&fake, &dir);
    for (i, ip) in ips.iter().enumerate() {
        api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("auditor-{i:03}"), "namespace": "auditor",
                "labels": {"app.kubernetes.io/name": "auditor", "app.kubernetes.io/component": "agent"}},
            "spec": {"nodeName": format!("node-{i:03}"), "containers": [{"name": "agent", "image": "auditor"}]},
            "status": {"phase": "Running", "podIP": ip}}));
    }
    let kc = api.kubeconfig("bench", "bench-token");
    let out = dir.join("merged.jsonl");
    let start = Instant::now();
    let mut child = Command::new(auditor)
        .args(["collect", "--kubeconfig"])
        .arg(&kc)
        .args([
            "--namespace",
            "auditor",
            "--port",
            &port.to_string(),
            "--since",
            "2026-11-28T00:00:00Z",
            "--timeout",
            "120s",
            "--output",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take();
    let pid = child.id() as i32;
    // Peak RSS: VmHWM of the collect process, sampled until it exits (wait4's ru_maxrss
    // would count the bench's own pages, shared with the child between fork and exec).
    let hwm = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let hwm = hwm.clone();
        std::thread::spawn(move || loop {
            let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return;
            };
            if let Some(kib) = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                hwm.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
            } else if st.contains("State:\tZ") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        })
    };
    let mut status = 0;
    // SAFETY: wait4 on our own child, into structs we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::wait4(pid, &mut status, 0, &mut ru) < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    let secs = start.elapsed().as_secs_f64();
    let _ = sampler.join();
    let mut report = String::new();
    if let Some(mut e) = stderr {
        e.read_to_string(&mut report)?;
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3) {
        bail!("collect at {agents} agents: expected exit 3 (the dead agent), got status {status}:\n{report}");
    }
    // Every record of every live agent, in first_seen order.
    let f = BufReader::new(std::fs::File::open(&out)?);
    let mut records = 0;
    let mut last = String::new();
    for l in f.lines() {
        let l = l?;
        let at = l
            .find("\"first_seen\":\"")
            .map(|i| l[i + 14..i + 38].to_owned())
            .unwrap_or_default();
        if at < last {
            bail!("merged log out of first_seen order at record {records}: {at} after {last}");
        }
        last = at;
        records += 1;
    }
    let want = (agents - 1) * LINES_PER_AGENT;
    if records != want {
        bail!("merged {records} records, expected {want}:\n{report}");
    }
    let bytes = std::fs::metadata(&out)?.len();
    let _ = std::fs::remove_file(&out);
    Ok(Run {
        agents,
        secs,
        cpu,
        rss_mib: hwm.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        records,
        bytes,
        report,
    })
}

pub fn figure(auditor: &Path, tmp: &Path, rep: &mut Report) -> Result<()> {
    let port = integration_tests::free_port();
    eprintln!("figure C: generating 100 agents x {LINES_PER_AGENT} records");
    let mut bodies = Vec::new();
    for i in 0..100 {
        bodies.push(Arc::new(body(i)));
    }
    // Agent 0 is slow; agent 99 (127.0.1.100) is dead: nothing listens there.
    for (i, b) in bodies.iter().enumerate().take(99) {
        agent(format!("127.0.1.{}", i + 1), port, b.clone(), i == 0)?;
    }
    let ip = |i: usize| format!("127.0.1.{}", i + 1);
    let mut runs = Vec::new();
    for agents in [25usize, 100] {
        // Agents 0..agents-1 that answer (0 is slow), then the dead address.
        let mut ips: Vec<String> = (0..agents - 1).map(ip).collect();
        ips.push(ip(99));
        runs.push(run_collect(auditor, tmp, &ips, port)?);
    }
    let (small, full) = (&runs[0], &runs[1]);
    let ratio = full.rss_mib / small.rss_mib;
    let mut sec = String::new();
    let _ = writeln!(sec, "## C. `auditor collect` at scale\n\nThe fake API server (`fake-apiserver`, own process, HTTPS) lists the agent pods; each agent is simulated on its own loopback address and serves {LINES_PER_AGENT} valid flow records (about {:.1} MiB, in flush order, not by first_seen), reached through the fake's pod proxy. One agent is slow (its answer trickles in over about 3 s), one is dead (the proxy answers 503; collect reports it and exits 3). Release `auditor collect` in a fresh process; peak RSS is the process's VmHWM, sampled every 20 ms; at most 16 agents fetched at a time, records through sorted runs of 1 MiB in a spool directory, merged from there. The merged log is checked: every record of every live agent, in first_seen order.\n", bodies[1].len() as f64 / 1048576.0);
    sec.push_str("| agents | records merged | merged log MiB | wall time s | CPU s (collect) | MiB/s | peak RSS MiB |\n|---|---|---|---|---|---|---|\n");
    for r in &runs {
        let _ = writeln!(
            sec,
            "| {} (1 slow, 1 dead) | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} |",
            r.agents,
            r.records,
            r.bytes as f64 / 1048576.0,
            r.secs,
            r.cpu,
            r.bytes as f64 / 1048576.0 / r.secs,
            r.rss_mib
        );
    }
    let _ = writeln!(sec, "\nPeak RSS at 100 agents / at 25: {ratio:.2} (target ≤ 1.5: flat in the number of agents and records).\n\nThe report of the 100-agent run:\n\n```\n{}```", full.report.lines().filter(|l| !l.contains(" flow records") || l.contains("node-000") || l.contains("from ")).map(|l| format!("{l}\n")).collect::<String>());
    rep.sections.push(sec);
    rep.main.push([
        "C. collect, 100 agents (1 slow, 1 dead)".into(),
        format!("25 agents: {:.1} MiB peak", small.rss_mib),
        format!(
            "100 agents: {:.1} MiB peak, {:.1} s",
            full.rss_mib, full.secs
        ),
        format!("{ratio:.2}x memory at 4x the data"),
        "peak RSS ≤ 1.5x".into(),
        met(ratio <= 1.5),
    ]);
    Ok(())
}
