//! Any bytes as a DNS answer copied by the kernel (at most 512 bytes): parsing may fail, never panic,
//! and what it returns is bounded by the message.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = auditor::dns::parse_response(data) {
        // Each A/AAAA and CNAME comes from one answer record of at least 11 bytes.
        let an = u16::from_be_bytes([data[6], data[7]]) as usize;
        assert!(answer.addrs.len() + answer.cnames.len() <= an);
        assert!(answer.addrs.len() + answer.cnames.len() <= data.len() / 11);
    }
});
