//! `cargo xtask demo`: real ffmpeg pipelines on a simulated node, recorded by the auditor,
//! diffed against NetworkPolicies enforced with nftables, fixed, and verified.
//!
//! Usage: demo [OUTPUT_DIR]   (as root; AUDITOR_BIN names the auditor binary)
use std::path::PathBuf;
use std::process::ExitCode;

use integration_tests::demo::{self, Options};

fn main() -> ExitCode {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("out/demo"));
    let out = std::path::absolute(&out).unwrap_or(out);
    // A failure or Ctrl-C unwinds (so every namespace, cgroup and process is removed on the
    // way out); say what happened in one line, without a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("\ndemo stopped: {msg}{at}\nremoving the simulated node...");
    }));
    integration_tests::node::cleanup_stale("dm");
    integration_tests::node::exit_cleanly_on_signals();
    let o = match std::panic::catch_unwind(|| {
        demo::run(Options {
            out: out.clone(),
            auditor: integration_tests::auditor_bin(),
            tag: "dm".into(),
            verbose: true,
        })
    }) {
        Ok(o) => o,
        Err(_) => {
            eprintln!("done: nothing left behind");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    println!();
    println!(
        "{:<18} {:>6} {:>6} {:>9} {:>12} {:>7}",
        "round", "live", "HLS", "sidecar", "policy drops", "denied"
    );
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
    if !(last.live_ok && last.hls_ok && last.heartbeats && last.drops() == 0 && last.denied() == 0)
    {
        ok = false;
        println!(
            "\nthe allowlist round still has failures or drops: see {}",
            last.dir.display()
        );
    }
    println!();
    println!(
        "{:<18} {:>9} {:>8} {:>14} {:>9}",
        "drill (5 s)", "outcome", "dropped", "back after", "pipeline"
    );
    for d in &o.drills {
        let t = &d.report["traffic"];
        println!(
            "{:<18} {:>9} {:>8} {:>14} {:>9}",
            d.name,
            d.report["outcome"].as_str().unwrap_or("?"),
            t["dropped_packets"].as_u64().unwrap_or(0),
            t["resumed_after_release_ms"]
                .as_u64()
                .map_or("never".to_owned(), |ms| format!(
                    "{:.1} s",
                    ms as f64 / 1000.0
                )),
            if d.pipeline_ok { "ok" } else { "failed" }
        );
        // A drill that tested nothing, or judged against what the pipeline did, is a
        // broken demo: a graceful drill with a dead pipeline, or the reverse.
        let outcome = d.report["outcome"].as_str();
        if outcome == Some("untested") || (outcome == Some("graceful")) != d.pipeline_ok {
            ok = false;
            println!(
                "  the drill's judgement does not match the pipeline: see {}",
                d.file.display()
            );
        }
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
