//! Figure E: `suggest` and `diff` against the number of distinct external peers. One
//! audited pod talks to N distinct external addresses on 443/TCP (N = 5k, 10k, 20k, 40k;
//! addresses drawn from four /8s so that few of them merge); the suggested allowlist then
//! holds about N ipBlocks, and its round trip checks N flows against them. Each command is
//! the release `auditor` in a fresh process; peak RSS from wait4. Linear growth means the
//! 40k time is about 8x the 5k time (taken per repetition, in the same run).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{fmt, met, offline, spread, timed, Report, DIFF_JSON};

const SIZES: [usize; 4] = [5_000, 10_000, 20_000, 40_000];

const SNAPSHOT: &str = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    name: media
    labels:
      kubernetes.io/metadata.name: media
- apiVersion: v1
  kind: Pod
  metadata:
    name: packager-0
    namespace: media
    labels:
      app: packager
  spec:
    nodeName: node0
    containers:
    - name: ffmpeg
      image: jrottenberg/ffmpeg:7.1-ubuntu
  status:
    phase: Running
    hostIP: 192.168.0.1
    podIP: 10.244.0.5
    podIPs:
    - ip: 10.244.0.5
";

/// N distinct addresses in 8/8, 45/8, 198/8, 203/8 (deterministic), one flow record each.
fn flows(n: usize) -> String {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut ips = BTreeSet::new();
    while ips.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let first = [8u32, 45, 198, 203][(x >> 60) as usize % 4];
        ips.insert(first << 24 | (x as u32 & 0x00ff_ffff));
    }
    let mut out = String::with_capacity(n * 160);
    for ip in ips {
        let a = std::net::Ipv4Addr::from(ip);
        let _ = writeln!(
            out,
            "{{\"src_ip\":\"10.244.0.5\",\"dst_ip\":\"{a}\",\"dst_port\":443,\"protocol\":\"TCP\",\"direction\":\"egress\",\"pid\":100,\"comm\":\"ffmpeg\",\"count\":1}}"
        );
    }
    out
}

pub fn figure(auditor: &Path, tmp: &Path, reps: usize, rep: &mut Report) -> Result<()> {
    eprintln!("== figure E: suggest and diff against distinct external peers");
    let dir = tmp.join("external");
    std::fs::create_dir_all(&dir)?;
    let snap = dir.join("cluster.yaml");
    std::fs::write(&snap, SNAPSHOT)?;
    let mut files = Vec::new();
    for n in SIZES {
        let f = dir.join(format!("flows-{n}.jsonl"));
        std::fs::write(&f, flows(n)).with_context(|| format!("write {}", f.display()))?;
        files.push((n, f));
    }
    let out = dir.join("suggested");
    // (command, n) -> [seconds, KiB] per repetition.
    let mut m: BTreeMap<(&str, usize), Vec<[f64; 2]>> = BTreeMap::new();
    for r in 0..reps {
        for (n, f) in &files {
            let _ = std::fs::remove_dir_all(&out);
            let s = timed(
                offline(auditor, &["suggest"], &snap, f)
                    .arg("--output")
                    .arg(&out),
            )?;
            m.entry(("suggest", *n)).or_default().push([s.0, s.1]);
            let d = timed(&mut offline(auditor, DIFF_JSON, &snap, f))?;
            m.entry(("diff", *n)).or_default().push([d.0, d.1]);
        }
        eprintln!("   rep {}/{reps} done", r + 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut sec = String::from("## E. Offline: `suggest` and `diff` against distinct external peers\n\nOne audited pod, N distinct external addresses on 443/TCP (four /8s, so few merge into wider prefixes), one flow record each. The suggested allowlist holds about N ipBlocks and its round trip checks every observed flow against them. Release `auditor` in a fresh process per command; peak RSS from wait4. \"x 5k\" is the time at N over the time at 5k, per repetition: 8 at 40k is linear.\n\n| command | N | wall time s | x 5k | peak RSS MiB |\n|---|---|---|---|---|\n");
    for cmd in ["suggest", "diff"] {
        let base: Vec<f64> = m[&(cmd, SIZES[0])].iter().map(|x| x[0]).collect();
        for n in SIZES {
            let v = &m[&(cmd, n)];
            let t = spread(&v.iter().map(|x| x[0]).collect::<Vec<_>>());
            let ratio = spread(
                &v.iter()
                    .zip(&base)
                    .map(|(x, b)| x[0] / b)
                    .collect::<Vec<_>>(),
            );
            let r = spread(&v.iter().map(|x| x[1] / 1024.0).collect::<Vec<_>>());
            let _ = writeln!(
                sec,
                "| `auditor {cmd}` | {n} | {} | {} | {} |",
                fmt(t, 3),
                fmt(ratio, 1),
                fmt(r, 0)
            );
            if n == SIZES[SIZES.len() - 1] {
                rep.main.push([
                    format!("E. offline `{cmd}`, 1 pod / {n} distinct external peers"),
                    format!("{} external peers: {} s", SIZES[0], fmt(spread(&base), 3)),
                    format!("{} s, {} MiB", fmt(t, 3), fmt(r, 0)),
                    format!("{}x the time at 8x the peers", fmt(ratio, 1)),
                    "≤ 5 s, linear (≤ 12x at 8x)".into(),
                    met(t.med <= 5.0 && ratio.med <= 12.0),
                ]);
            }
        }
    }
    rep.sections.push(sec);
    Ok(())
}
