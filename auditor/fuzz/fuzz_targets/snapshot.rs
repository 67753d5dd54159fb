//! Any bytes as a cluster snapshot: parsing and indexing may fail, never panic.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = auditor::cluster::parse_snapshot(Path::new("fuzz.yaml"), data) {
        if let Ok(engine) = auditor::policy::Engine::build(&snap) {
            // Evaluate a few flows between the addresses the snapshot knows.
            let ips: Vec<_> = engine.pods().iter().flat_map(|p| p.ips.iter().copied()).take(8).collect();
            for &s in &ips {
                for &d in &ips {
                    let _ = engine.evaluate(s, d, 80, auditor::flowlog::Protocol::Tcp);
                }
            }
        }
    }
});
