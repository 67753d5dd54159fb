//! Figure S: the DaemonSet soak. The recorder with default settings (plus `--listen`)
//! under 30,000 new UDP flows per second for `--soak-secs` (600 by default): VmRSS over
//! time (peak, and the spread of the second half, which must be flat), `/healthz`
//! latency probed every 200 ms by a separate thread, and the loss counters at the end.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{fmt, num, proc_mem_kib, s, spread, Cfg, Env, Recorder, Report, FLOW_PORTS};

const RATE: u64 = 30_000;

/// One HTTP/1.0 `GET` with the liveness probe's 3 s timeout: the whole answer, or None.
fn get(addr: &str, path: &str) -> Option<String> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut c = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(3)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).ok()?;
    buf.starts_with(b"HTTP/1.")
        .then(|| String::from_utf8_lossy(&buf).into_owned())
}

/// One `GET /healthz`: latency in ms, or None without an answer within 3 s (the
/// DaemonSet's liveness probe timeout).
fn probe(addr: &str) -> Option<f64> {
    let t = Instant::now();
    get(addr, "/healthz").map(|_| t.elapsed().as_secs_f64() * 1000.0)
}

/// `auditor_flushes_total` from one `GET /metrics`.
fn flushes(addr: &str) -> Option<u64> {
    get(addr, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix("auditor_flushes_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// The flush interval of the recorder's default settings; a flush may come at most twice
/// that after the one before.
const FLUSH_INTERVAL_S: f64 = 5.0;
/// "Flat": VmRSS in the second half moves within this band.
const FLAT_MIB: f64 = 16.0;

pub fn fig_soak(env: &Env, secs: u64, rep: &mut Report) -> Result<()> {
    eprintln!("== figure S: soak, {RATE} new flows/s for {secs} s");
    let _sink = super::start_sink(env)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let rec = Recorder::start(env, Cfg::T2, &["--listen", &addr])?.context("recorder")?;
    let pid = rec.pid();
    let count = RATE * secs;
    let mut gen = env.spawn_gen(
        &[
            s("flows"),
            s("--net"),
            s(env.netno),
            s("--count"),
            s(count),
            s("--rate"),
            s(RATE),
            s("--ports"),
            s(FLOW_PORTS),
        ],
        true,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut unanswered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match probe(&addr) {
                    Some(ms) => lat.push(ms),
                    None => unanswered += 1,
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (lat, unanswered)
        })
    };
    // When auditor_flushes_total went up, scraped every 250 ms: the gaps between flushes.
    let scraper = {
        let stop = stop.clone();
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut last: Option<(u64, Instant)> = None;
            let mut max_gap = 0.0f64;
            let mut gaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = flushes(&addr) {
                    let now = Instant::now();
                    match last {
                        Some((m, at)) if n > m => {
                            max_gap = max_gap.max(now.duration_since(at).as_secs_f64());
                            gaps += 1;
                            last = Some((n, now));
                        }
                        None => last = Some((n, now)),
                        _ => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (max_gap, gaps)
        })
    };
    // (seconds since start, VmRSS MiB), every 10 s.
    let mut rss: Vec<(f64, f64)> = Vec::new();
    let start = Instant::now();
    let mut peak_hwm = 0.0f64;
    while gen.try_wait()?.is_none() {
        let (r, hwm) = proc_mem_kib(pid);
        rss.push((start.elapsed().as_secs_f64(), r / 1024.0));
        peak_hwm = peak_hwm.max(hwm / 1024.0);
        std::thread::sleep(Duration::from_secs(10));
    }
    let (r, hwm) = proc_mem_kib(pid);
    rss.push((start.elapsed().as_secs_f64(), r / 1024.0));
    peak_hwm = peak_hwm.max(hwm / 1024.0);
    let out = gen.wait_with_output()?;
    let g: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .context("generator output")?;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, unanswered) = prober.join().unwrap_or_default();
    let (max_gap, gaps) = scraper.join().unwrap_or_default();
    let sum = rec.stop()?;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let half = start.elapsed().as_secs_f64() / 2.0;
    let second: Vec<f64> = rss.iter().filter(|x| x.0 >= half).map(|x| x.1).collect();
    let sp = spread(&second);
    let flat = sp.max - sp.min;
    let mut sec = String::new();
    let _ = writeln!(sec, "## S. Soak: {RATE} new flows/s for {secs} s with default settings\n\nRecorder T2 with default settings (`--max-flows 65536`, 5 s flushes, 1 MiB ring buffer, `--flow-idle-timeout 10m`) plus `--listen`; one generator in the bench cgroup sends one datagram to each of {count} destinations (address, port) it has not used before, paced at {RATE}/s (achieved {:.0}/s). VmRSS sampled every 10 s; `/healthz` probed every 200 ms from another thread with a 3 s timeout (the liveness probe's).\n", num(&g, "rate"));
    let _ = writeln!(sec, "| measure | value | target |\n|---|---|---|");
    let _ = writeln!(sec, "| peak VmHWM | {peak_hwm:.1} MiB | ≤ 128 MiB |");
    let _ = writeln!(
        sec,
        "| VmRSS in the second half: median (min–max) | {} MiB; max − min {flat:.1} MiB | flat (max − min ≤ {FLAT_MIB:.0} MiB) |",
        fmt(sp, 1)
    );
    let _ = writeln!(
        sec,
        "| longest time between two flushes (/metrics scraped every 250 ms) | {max_gap:.2} s ({gaps} flushes seen) | ≤ {:.0} s (2 × the interval) |",
        2.0 * FLUSH_INTERVAL_S
    );
    let _ = writeln!(sec, "| /healthz latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms ({} probes, {unanswered} unanswered within 3 s) | answered |", q(0.5), q(0.99), lat.last().copied().unwrap_or(f64::NAN), lat.len());
    let _ = writeln!(
        sec,
        "| flows recorded (summary) | {} | = flows sent − losses |",
        sum["flows"]
    );
    let _ = writeln!(sec, "| losses (summary) | `{}` | counted |", sum["losses"]);
    let _ = writeln!(
        sec,
        "| flows written from their event (map evicted them first) | {} | |",
        sum["flows_from_events"]
    );
    let _ = writeln!(
        sec,
        "\nVmRSS over time (s: MiB): {}\n",
        rss.iter()
            .map(|(t, m)| format!("{t:.0}: {m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    rep.main.push([
        format!("S. soak: {RATE} new flows/s for {secs} s"),
        "—".into(),
        format!(
            "peak {peak_hwm:.0} MiB, second half ±{flat:.0} MiB; /healthz p99 {:.0} ms; flushes ≤ {max_gap:.1} s apart",
            q(0.99)
        ),
        format!("{unanswered} probes unanswered"),
        format!("peak ≤ 128 MiB, flat (±{FLAT_MIB:.0}); /healthz answered; flushes ≤ {:.0} s apart", 2.0 * FLUSH_INTERVAL_S),
        super::met(
            peak_hwm <= 128.0
                && flat <= FLAT_MIB
                && unanswered == 0
                && max_gap <= 2.0 * FLUSH_INTERVAL_S,
        ),
    ]);
    rep.sections.push(sec);
    Ok(())
}
