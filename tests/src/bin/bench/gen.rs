//! Load generators, run as `bench gen <kind> ...` child processes (so each can be put in
//! a cgroup and a network namespace of its own). Every generator is a bounded loop (a
//! duration or a count) and prints one JSON line with what it did and the CPU time it
//! used (getrusage of the whole process: all its threads).
//!
//! A peer socket in another namespace is opened by switching this thread's network
//! namespace with setns(2) for the socket() call only: a socket stays in the namespace
//! it was created in.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Runs `f` with this thread in network namespace `ns` (a name under /run/netns); `""` = stay.
fn in_ns<T>(ns: &str, f: impl FnOnce() -> std::io::Result<T>) -> Result<T> {
    if ns.is_empty() {
        return f().context("open socket");
    }
    let own = File::open("/proc/thread-self/ns/net").context("open /proc/thread-self/ns/net")?;
    let target =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("open /run/netns/{ns}"))?;
    // SAFETY: setns on fds we own; only this thread changes namespace.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above, back to where we were.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns back: {}", std::io::Error::last_os_error());
    }
    r.with_context(|| format!("open socket in {ns}"))
}

/// User + system CPU time of this process so far, in microseconds.
fn cpu_us() -> (u64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

struct Args(Vec<String>);
impl Args {
    fn get(&self, name: &str) -> Result<&str> {
        let i = self
            .0
            .iter()
            .position(|a| a == name)
            .with_context(|| format!("missing {name}"))?;
        self.0
            .get(i + 1)
            .map(String::as_str)
            .with_context(|| format!("{name} needs a value"))
    }
    fn opt(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(str::to_owned)
            .unwrap_or_else(|_| default.to_owned())
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            Ok(s) => s
                .parse()
                .map_err(|_| anyhow::anyhow!("{name}: not a number: {s}")),
            Err(_) => Ok(default),
        }
    }
}

pub fn main(args: &[String]) -> Result<()> {
    let kind = args.first().context("gen: which generator?")?.clone();
    let a = Args(args[1..].to_vec());
    let out = match kind.as_str() {
        "connect" => connect(&a)?,
        "stream" => stream(&a)?,
        "flows" => flows(&a)?,
        "flood" => flood(&a)?,
        "sink" => return sink(&a),
        other => bail!("gen: unknown generator {other}"),
    };
    println!("{out}");
    Ok(())
}

fn secs(a: &Args) -> Result<Duration> {
    Ok(Duration::from_secs_f64(a.num("--secs", 2.0)?))
}

fn addr(a: &Args) -> Result<SocketAddr> {
    let ip: Ipv4Addr = a.get("--addr")?.parse().context("--addr")?;
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        a.num("--port", 5000u16)?,
    )))
}

/// TCP connect/accept/close: the server (in `--server-ns`) accepts and closes at once;
/// the client connects, reads the EOF and closes. One connection at a time.
fn connect(a: &Args) -> Result<Value> {
    let dst = addr(a)?;
    let server_ns = a.opt("--server-ns", "");
    // 16 listening ports, used in turn: 16 times the 4-tuples before a client port meets
    // the server's TIME_WAIT of an earlier connection.
    let mut dsts = Vec::new();
    for i in 0..16u16 {
        let mut d = dst;
        d.set_port(dst.port() + i);
        let listener = in_ns(&server_ns, || TcpListener::bind(d))?;
        std::thread::spawn(move || {
            for s in listener.incoming() {
                drop(s);
            }
        });
        dsts.push(d);
    }
    let dur = secs(a)?;
    let (u0, s0) = cpu_us();
    let start = Instant::now();
    let mut conns = 0u64;
    let mut errors = 0u64;
    let mut buf = [0u8; 16];
    while start.elapsed() < dur {
        for i in 0..64 {
            let dst = dsts[i % dsts.len()];
            match TcpStream::connect(dst) {
                Ok(mut s) => {
                    let _ = s.read(&mut buf);
                    conns += 1;
                }
                Err(_) => errors += 1,
            }
        }
        if errors > 10_000 {
            bail!("connect to {dst} keeps failing ({errors} errors)");
        }
    }
    let el = start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_us();
    Ok(
        json!({"conns": conns, "errors": errors, "secs": el, "utime_us": u1 - u0, "stime_us": s1 - s0}),
    )
}

/// An established stream: UDP datagrams of `--size` bytes or a TCP byte stream, as fast as
/// the sender can; the receiver (in `--server-ns`) counts what arrives.
fn stream(a: &Args) -> Result<Value> {
    let dst = addr(a)?;
    let server_ns = a.opt("--server-ns", "");
    let proto = a.opt("--proto", "udp");
    let size: usize = a.num("--size", 1316)?;
    let dur = secs(a)?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = vec![0x47u8; size.max(1)];
    let (u0, s0) = cpu_us();
    let start;
    let mut sent = 0u64;
    let receiver;
    if proto == "udp" {
        let rx = in_ns(&server_ns, || UdpSocket::bind(dst))?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (r, st) = (received.clone(), stop.clone());
        receiver = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    r.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        let tx = UdpSocket::bind("0.0.0.0:0")?;
        tx.connect(dst)?;
        start = Instant::now();
        while start.elapsed() < dur {
            for _ in 0..64 {
                if tx.send(&payload).is_ok() {
                    sent += payload.len() as u64;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(60));
    } else {
        let l = in_ns(&server_ns, || TcpListener::bind(dst))?;
        let r = received.clone();
        receiver = std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = vec![0u8; 1 << 18];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    r.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        let payload = vec![0x47u8; 1 << 17];
        let mut tx = TcpStream::connect(dst)?;
        start = Instant::now();
        while start.elapsed() < dur {
            tx.write_all(&payload)?;
            sent += payload.len() as u64;
        }
        tx.shutdown(std::net::Shutdown::Write)?;
    }
    let el = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let (u1, s1) = cpu_us();
    let rx = received.load(Ordering::Relaxed);
    Ok(
        json!({"sent_bytes": sent, "received_bytes": rx, "secs": el, "utime_us": u1 - u0, "stime_us": s1 - s0}),
    )
}

/// The i-th destination of the flow space: `--ips` addresses 10.<net>.(1 + i/250).(1 + i%250)
/// times `--ports` ports from `--port-base`.
fn flow_dst(net: u8, ports: u32, port_base: u16, i: u64) -> SocketAddr {
    let ip_i = (i / ports as u64) as u32;
    let port = port_base + (i % ports as u64) as u16;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, net, (1 + ip_i / 250) as u8, (1 + ip_i % 250) as u8),
        port,
    ))
}

/// New UDP flows: `--count` datagrams, each to a destination (address, port) not used
/// before, paced at `--rate` per second (0 = as fast as possible).
fn flows(a: &Args) -> Result<Value> {
    let net: u8 = a.num("--net", 0)?;
    let ports: u32 = a.num("--ports", 1000)?;
    let port_base: u16 = a.num("--port-base", 20000)?;
    let count: u64 = a.num("--count", 1000)?;
    let offset: u64 = a.num("--offset", 0)?;
    let rate: f64 = a.num("--rate", 0.0)?;
    let tx = UdpSocket::bind("0.0.0.0:0")?;
    let payload = [0u8; 16];
    let (u0, s0) = cpu_us();
    let start = Instant::now();
    let mut errors = 0u64;
    for i in 0..count {
        if rate > 0.0 && i % 64 == 0 {
            let due = Duration::from_secs_f64(i as f64 / rate);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        if tx
            .send_to(&payload, flow_dst(net, ports, port_base, offset + i))
            .is_err()
        {
            errors += 1;
        }
    }
    let el = start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_us();
    Ok(
        json!({"sent": count, "errors": errors, "secs": el, "rate": count as f64 / el, "utime_us": u1 - u0, "stime_us": s1 - s0}),
    )
}

/// A UDP flood to one (dropped) port, as fast as possible.
fn flood(a: &Args) -> Result<Value> {
    let dst = addr(a)?;
    let dur = secs(a)?;
    let size: usize = a.num("--size", 64)?;
    let tx = UdpSocket::bind("0.0.0.0:0")?;
    tx.connect(dst)?;
    let payload = vec![0u8; size];
    let (u0, s0) = cpu_us();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        for _ in 0..64 {
            if tx.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    let el = start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_us();
    Ok(json!({"sent": sent, "secs": el, "utime_us": u1 - u0, "stime_us": s1 - s0}))
}

/// Binds UDP ports `--port-base`..+`--ports` on every address and drains them until killed
/// (so the flow generators' datagrams are delivered, not dropped for want of a socket).
/// Prints `ready` once bound.
fn sink(a: &Args) -> Result<()> {
    let ports: u16 = a.num("--ports", 1000)?;
    let base: u16 = a.num("--port-base", 20000)?;
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: plain setrlimit on a struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(0) };
    if ep < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    let mut socks = Vec::with_capacity(ports as usize);
    for p in 0..ports {
        let s = UdpSocket::bind(("0.0.0.0", base + p))
            .with_context(|| format!("bind udp {}", base + p))?;
        s.set_nonblocking(true)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: socks.len() as u64,
        };
        // SAFETY: registering an fd we own.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
        socks.push(s);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 2048];
    // Bounded: the orchestrator kills it, and it leaves on its own after `--max-secs`.
    let deadline = Instant::now() + Duration::from_secs(a.num("--max-secs", 900)?);
    while Instant::now() < deadline {
        // SAFETY: evs is a valid buffer of 256 events.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 1000) };
        for e in evs.iter().take(n.max(0) as usize) {
            let s = &socks[e.u64 as usize];
            while s.recv(&mut buf).is_ok() {}
        }
    }
    Ok(())
}
