//! Any bytes as a flow log: parsing may fail, never panic; spans stay inside the data.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for skip in [false, true] {
        let _ = auditor::flowlog::parse_flow_log(Path::new("fuzz.jsonl"), data, skip);
        let _ = auditor::flowlog::visit_flow_log(Path::new("fuzz.jsonl"), data, skip, |_, span, _| {
            assert!(span.end <= data.len() && data[span.start] == b'{' && data[span.end - 1] == b'}');
        });
        if let Ok(input) = auditor::diff::FlowInput::parse(Path::new("fuzz.jsonl"), data.to_vec(), skip) {
            let engine = auditor::policy::Engine::default();
            let mut out = Vec::new();
            let _ = auditor::diff::diff_to(&engine, &input, auditor::diff::Format::Json, &mut out);
            if !input.is_empty() {
                let _: serde_json::Value = serde_json::from_slice(&out).expect("diff output is JSON");
            }
        }
    }
});
