//! Any bytes as a ring buffer record from the kernel: decoding may fail, never panic;
//! a DNS record's payload is then parsed like the recorder does.
#![no_main]
use auditor::decode::{decode, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Event::Dns(dns)) = decode(data) {
        assert!(dns.payload.len() <= auditor_ebpf::DNS_PAYLOAD);
        let _ = auditor::dns::parse_response(&dns.payload);
    }
});
