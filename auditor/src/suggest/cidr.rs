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
    nets.sort();
    nets.dedup();
    // One sweep in address order. `out` stays sorted and disjoint, and no two neighbours in
    // it can merge; a merge replaces the top of `out` with the supernet, which may then
    // merge with the new neighbour below it. Linear after the sort (merging the first
    // mergeable neighbours and sorting again, until none are left, was quadratic).
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for net in nets {
        if out.last().is_some_and(|top| top.contains(&net)) {
            continue;
        }
        out.push(net);
        while out.len() >= 2 {
            let (a, b) = (out[out.len() - 2], out[out.len() - 1]);
            let Some(sup) = mergeable(a, b, max_v4, max_v6) else {
                break;
            };
            while out.last().is_some_and(|n| sup.contains(n)) {
                out.pop();
            }
            out.push(sup);
        }
    }
    out
}

/// The supernet `a` and `b` merge into, if they may: both halves of it, or no wider than
/// the family's limit.
fn mergeable(a: IpNet, b: IpNet, max_v4: u8, max_v6: u8) -> Option<IpNet> {
    let sup = common_supernet(a, b)?;
    let limit = match sup {
        IpNet::V4(_) => max_v4,
        IpNet::V6(_) => max_v6,
    };
    let lossless =
        a.prefix_len() == sup.prefix_len() + 1 && b.prefix_len() == sup.prefix_len() + 1 && a != b;
    (lossless || sup.prefix_len() >= limit).then_some(sup)
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The former algorithm, merge the first mergeable neighbours and sort again until
    /// none are left: the sweep must give the same prefixes.
    fn reference(ips: &BTreeSet<IpAddr>, max_v4: u8, max_v6: u8) -> Vec<IpNet> {
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

    #[test]
    fn sweep_agrees_with_the_fixpoint() {
        let mut x: u64 = 7;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        for round in 0..400 {
            let mut ips = BTreeSet::new();
            for _ in 0..(next() % 40) {
                // Mostly inside one /22 so that neighbours and halves meet; some IPv6.
                let ip: IpAddr = match next() % 5 {
                    0 => IpAddr::from(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(next() % 64))),
                    1 => IpAddr::from(Ipv4Addr::from(0xc633_6400 | (next() as u32 % 1024))),
                    _ => IpAddr::from(Ipv4Addr::from(0xcb00_7100 | (next() as u32 % 64))),
                };
                ips.insert(ip);
            }
            let v4 = [32u8, 31, 30, 28, 26, 24, 22, 16][round % 8];
            let v6 = [128u8, 126, 122][round % 3];
            assert_eq!(
                aggregate(&ips, v4, v6),
                reference(&ips, v4, v6),
                "{ips:?} /{v4} /{v6}"
            );
        }
    }

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
