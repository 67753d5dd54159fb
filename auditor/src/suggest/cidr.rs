//! Aggregating observed external addresses into CIDRs.
//!
//! Lossless merges (two halves of a prefix, both observed in full) always happen. A merge
//! that covers unobserved addresses happens only when the resulting prefix is no wider than
//! the user allows (`--max-prefix`, `--max-prefix-v6`); the defaults (32 and 128) allow
//! no widening at all.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// The prefixes covering `ips`, sorted; never wider than `/max_v4` (`/max_v6`) unless the
/// observed addresses fill the prefix exactly.
pub fn aggregate(ips: &BTreeSet<IpAddr>, max_v4: u8, max_v6: u8) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = ips
        .iter()
        .map(|ip| IpNet::from(ip.to_canonical()))
        .collect();
    loop {
        nets.sort();
        nets.dedup();
        let mut merged = None;
        for i in 1..nets.len() {
            let (a, b) = (nets[i - 1], nets[i]);
            let Some(sup) = common_supernet(a, b) else {
                continue;
            };
            let limit = match sup {
                IpNet::V4(_) => max_v4,
                IpNet::V6(_) => max_v6,
            };
            let lossless = a.prefix_len() == sup.prefix_len() + 1
                && b.prefix_len() == sup.prefix_len() + 1
                && a != b;
            if lossless || sup.prefix_len() >= limit {
                merged = Some(sup);
                break;
            }
        }
        let Some(sup) = merged else { break };
        nets.retain(|n| !sup.contains(n));
        nets.push(sup);
    }
    nets
}

/// The smallest prefix containing both, `None` across address families.
fn common_supernet(a: IpNet, b: IpNet) -> Option<IpNet> {
    let mut len = a.prefix_len().min(b.prefix_len());
    loop {
        let sup = IpNet::new(a.addr(), len).ok()?.trunc();
        if sup.contains(&b) {
            return Some(sup);
        }
        if len == 0 {
            return None;
        }
        len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn strs(n: Vec<IpNet>) -> Vec<String> {
        n.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn table() {
        let cases: &[(&[&str], u8, &[&str])] = &[
            // default: no widening
            (
                &["203.0.113.80", "203.0.113.81", "203.0.113.90"],
                32,
                &["203.0.113.80/31", "203.0.113.90/32"],
            ),
            (
                &["203.0.113.81", "203.0.113.82"],
                32,
                &["203.0.113.81/32", "203.0.113.82/32"],
            ),
            // allowed widening up to /24, not past it
            (&["203.0.113.81", "203.0.113.82"], 24, &["203.0.113.80/30"]),
            (
                &["203.0.113.1", "203.0.114.1"],
                24,
                &["203.0.113.1/32", "203.0.114.1/32"],
            ),
            (
                &["203.0.113.1", "203.0.113.200", "198.51.100.7"],
                24,
                &["198.51.100.7/32", "203.0.113.0/24"],
            ),
            // all four of a /30: lossless
            (
                &["10.1.0.0", "10.1.0.1", "10.1.0.2", "10.1.0.3"],
                32,
                &["10.1.0.0/30"],
            ),
            // families never mix
            (&["10.0.0.1", "fd00::1"], 0, &["10.0.0.1/32", "fd00::1/128"]),
        ];
        for (ips, max, want) in cases {
            assert_eq!(
                strs(aggregate(&set(ips), *max, 128)),
                *want,
                "{ips:?} max /{max}"
            );
        }
    }

    #[test]
    fn every_address_covered_and_no_prefix_wider_than_allowed() {
        let ips = set(&[
            "192.0.2.1",
            "192.0.2.7",
            "192.0.2.130",
            "198.51.100.3",
            "2001:db8::1",
            "2001:db8::ff",
        ]);
        for max in [32u8, 30, 25, 24, 16] {
            let nets = aggregate(&ips, max, 120);
            for ip in &ips {
                assert!(
                    nets.iter().any(|n| n.contains(ip)),
                    "{ip} not covered at /{max}: {nets:?}"
                );
            }
            for n in &nets {
                let covered = ips.iter().filter(|ip| n.contains(*ip)).count() as u128;
                let size: u128 = 1u128 << (n.max_prefix_len() - n.prefix_len());
                let limit = if n.max_prefix_len() == 32 { max } else { 120 };
                assert!(
                    n.prefix_len() >= limit || covered == size,
                    "{n} wider than /{limit}"
                );
            }
        }
    }
}
