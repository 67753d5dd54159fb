//! `cargo xtask demo`: real ffmpeg pipelines on a simulated node, recorded by the auditor,
//! diffed against NetworkPolicies enforced with nftables, fixed, and verified.
//!
//! Usage: demo [OUTPUT_DIR]   (as root; AUDITOR_BIN names the auditor binary)
use std::path::PathBuf;
use std::process::ExitCode;

use integration_tests::demo::{self, Options};

fn main() -> ExitCode {
    let out = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("out/demo"));
    let out = std::path::absolute(&out).unwrap_or(out);
    integration_tests::node::cleanup_stale("dm");
    integration_tests::node::exit_cleanly_on_signals();
    let o = demo::run(Options { out: out.clone(), auditor: integration_tests::auditor_bin(), tag: "dm".into(), verbose: true });
    let mut ok = true;
    println!();
    println!("{:<18} {:>6} {:>6} {:>9} {:>12} {:>7}", "round", "live", "HLS", "sidecar", "policy drops", "denied");
    for r in &o.rounds {
        println!(
            "{:<18} {:>6} {:>6} {:>9} {:>12} {:>7}",
            r.name,
            if r.live_ok { "ok" } else { "failed" },
            if r.hls_ok { "ok" } else { "failed" },
            if r.heartbeats { "ok" } else { "failed" },
            r.drops(),
            r.denied()
        );
    }
    let last = o.rounds.last().expect("three rounds");
    if !(last.live_ok && last.hls_ok && last.heartbeats && last.drops() == 0 && last.denied() == 0) {
        ok = false;
        println!("\nthe allowlist round still has failures or drops: see {}", last.dir.display());
    }
    if o.unobserved_probe_connected {
        ok = false;
        println!("\na connection nobody needed got through the allowlist");
    } else {
        println!("\nunobserved probe (transcoder -> origin:9000): denied, as it should be");
    }
    println!("flow logs, diffs and suggestions: {}", out.display());
    if let Some(r) = &o.report_dir {
        println!("report: {}", r.join("report.html").display());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
