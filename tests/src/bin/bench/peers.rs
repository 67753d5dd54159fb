//! Peers side by side, in the same run as the recorder's bpf stats (issue 13 point 5):
//! bpftrace scripts of our own doing what the peers' tools do, with the same loads and the
//! same bpf stats (run_time_ns / run_cnt of the programs each bpftrace loaded).
//! - a tcplife-like logger on `sock:inet_sock_set_state` (per-socket start time, one line
//!   per closed connection), the shape of bpftrace's tcplife.bt, which needs kprobes;
//! - the same keeping its per-socket state but printing nothing: the floor for a tracer
//!   that keeps per-connection state on that tracepoint;
//! - a tcpdrop-like logger on `skb:kfree_skb` (reason filter, one line per drop): the
//!   tracepoint bpftrace's tcpdrop.bt uses; the shipped script needs kernel headers here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{bpf_ids, met, profile_loads, Env, Report};

const LIFE: &str = r#"tracepoint:sock:inet_sock_set_state / args->protocol == 6 / {
  if (args->newstate == 2 || args->newstate == 3) { @start[args->skaddr] = nsecs; }
  if (args->newstate == 7) {
    $s = @start[args->skaddr];
    if ($s) {
      printf("%s:%d %s:%d %d us\n", ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, (nsecs - $s) / 1000);
      delete(@start[args->skaddr]);
    }
  }
}"#;

const LIFE_QUIET: &str = r#"tracepoint:sock:inet_sock_set_state / args->protocol == 6 / {
  if (args->newstate == 2 || args->newstate == 3) { @start[args->skaddr] = nsecs; }
  if (args->newstate == 7) {
    $s = @start[args->skaddr];
    if ($s) { @us = (nsecs - $s) / 1000; delete(@start[args->skaddr]); }
  }
}"#;

/// Reason 2 is SKB_DROP_REASON_NOT_SPECIFIED (0 and 1 are not drops).
const DROPS: &str = r#"tracepoint:skb:kfree_skb / args->reason > 2 / {
  printf("drop reason %d protocol %d at %p\n", args->reason, args->protocol, args->location);
}"#;

struct Bpftrace {
    child: Child,
    progs: Vec<u64>,
}

impl Bpftrace {
    /// Starts `bpftrace -e script`; returns once its probes are attached.
    fn start(script: &str) -> Result<Bpftrace> {
        let before: BTreeSet<u64> = bpf_ids("prog").into_iter().collect();
        let mut child = Command::new("bpftrace")
            .arg("-e")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn bpftrace (`cargo xtask setup` installs it)")?;
        let out = child.stdout.take().context("bpftrace stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads until "Attaching N probes...", then drains (the logger's lines) to the end.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Attaching") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("bpftrace did not attach its probes within 60 s ({status})");
        }
        std::thread::sleep(Duration::from_millis(300));
        let progs = bpf_ids("prog")
            .into_iter()
            .filter(|i| !before.contains(i))
            .collect::<Vec<_>>();
        if progs.is_empty() {
            bail!("bpftrace attached but no new bpf program is listed by bpftool");
        }
        Ok(Bpftrace { child, progs })
    }

    fn stop(mut self) -> Result<()> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        Ok(())
    }
}

const CONNS: [&str; 2] = [
    "TCP connect/accept/close, veth",
    "TCP connect/accept/close, loopback",
];
const DROP_LOAD: &str = "UDP drop flood";

/// `ours`: the recorder T2's all-programs ns per operation per load, from the same run.
pub fn figure(
    env: &Env,
    secs: f64,
    ours: &BTreeMap<&'static str, f64>,
    rep: &mut Report,
) -> Result<()> {
    eprintln!("== peers: bpftrace loggers under the same loads (bpf stats)");
    let mut sec = String::from("## P. Peers side by side: bpftrace loggers (bpf stats, same run as the section above)\n\nThe same loads and the same bpf stats as the section above, with a bpftrace script attached instead of the recorder (bpftrace 0.17 from Debian; scripts in tests/src/bin/bench/peers.rs): `tcplife-like` logs one line per closed connection from `sock:inet_sock_set_state` keeping a per-socket start time (bpftrace's own tcplife.bt needs kprobes); `tcplife-like, no output` keeps the same per-socket state and prints nothing; `tcpdrop-like` logs one line per drop from `skb:kfree_skb` with a reason (the tracepoint tcpdrop.bt uses; the shipped script needs kernel headers here). The tracepoint scripts run host-wide, as the tools do.\n\n| load | config | operations | program | runs | runs/op | ns/run | ns/op |\n|---|---|---|---|---|---|---|---|\n");
    let mut seen = false;
    let mut theirs: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (label, script, unit) in [
        ("tcplife-like", LIFE, "conns"),
        ("tcplife-like, no output", LIFE_QUIET, "conns"),
        ("tcpdrop-like", DROPS, "drops"),
    ] {
        let bt = Bpftrace::start(script).with_context(|| format!("bpftrace {label}"))?;
        let totals = profile_loads(
            env,
            secs,
            label,
            &bt.progs,
            |u| u == unit,
            &mut sec,
            &mut seen,
        );
        bt.stop()?;
        for (load, ns) in totals? {
            theirs.insert((label, load), ns);
        }
    }
    rep.sections.push(sec);
    let get = |m: Option<&f64>| m.copied().unwrap_or(f64::NAN);
    for load in CONNS {
        let us = get(ours.get(load));
        let quiet = get(theirs.get(&("tcplife-like, no output", load)));
        let logger = get(theirs.get(&("tcplife-like", load)));
        rep.main.push([
            format!(
                "P. program time per connection, {}, auditor T2 vs bpftrace (same run)",
                load.trim_start_matches("TCP connect/accept/close, ")
            ),
            format!("tcplife-like {logger:.0} ns; no output {quiet:.0} ns"),
            format!("{us:.0} ns"),
            format!("{:.1}x below the no-output script", quiet / us),
            "≤ 1000 ns, ≥ 3x below the no-output script".into(),
            met(us <= 1000.0 && quiet / us >= 3.0),
        ]);
    }
    let us = get(ours.get(DROP_LOAD));
    let drop = get(theirs.get(&("tcpdrop-like", DROP_LOAD)));
    rep.main.push([
        "P. program time per dropped packet, auditor T2 vs bpftrace tcpdrop-like (same run)".into(),
        format!("{drop:.0} ns"),
        format!("{us:.0} ns"),
        format!("{:.1}x below", drop / us),
        "≤ 120 ns".into(),
        met(us <= 120.0),
    ]);
    let _ = writeln!(rep.sections.last_mut().expect("pushed"));
    Ok(())
}
