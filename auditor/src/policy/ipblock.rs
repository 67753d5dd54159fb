//! `ipBlock` peers: a CIDR minus its `except` CIDRs, IPv4 or IPv6.
//!
//! Older API servers accepted CIDRs with host bits set (`10.1.2.3/16`); such a CIDR
//! means its network (`10.1.0.0/16`), which is how the network plugins read it.

use std::net::IpAddr;

use ipnet::IpNet;

/// The union of a rule's ipBlocks as sorted, disjoint address intervals per family, so
/// that matching an address is one binary search however many ipBlocks the rule has (a
/// suggested allowlist can carry tens of thousands of /32s; a linear scan made `suggest`'s
/// round trip quadratic in external peers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockIndex {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

/// The first and last address of `net`, as integers.
fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl BlockIndex {
    pub fn new<'a>(blocks: impl IntoIterator<Item = &'a IpBlock>) -> Self {
        let mut index = BlockIndex::default();
        for b in blocks {
            let (lo, hi) = bounds(&b.cidr);
            // Excepts of the other family never contain an address of this one.
            let mut holes: Vec<(u128, u128)> = b
                .except
                .iter()
                .filter(|e| e.max_prefix_len() == b.cidr.max_prefix_len())
                .map(bounds)
                .collect();
            holes.sort_unstable();
            let out = match b.cidr {
                IpNet::V4(_) => &mut index.v4,
                IpNet::V6(_) => &mut index.v6,
            };
            // `next`: the first address not yet covered or cut out; None past the end.
            let mut next = Some(lo);
            for (elo, ehi) in holes {
                let Some(from) = next else { break };
                if elo > from {
                    out.push((from, (elo - 1).min(hi)));
                }
                if ehi >= from {
                    next = ehi.checked_add(1);
                }
            }
            if let Some(from) = next.filter(|f| *f <= hi) {
                out.push((from, hi));
            }
        }
        for v in [&mut index.v4, &mut index.v6] {
            v.sort_unstable();
            let mut merged: Vec<(u128, u128)> = Vec::with_capacity(v.len());
            for &(lo, hi) in v.iter() {
                match merged.last_mut() {
                    Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            *v = merged;
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether any of the blocks contains `ip` (as [`IpBlock::contains`] for each).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v, x) = match ip {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        let i = v.partition_point(|&(lo, _)| lo <= x);
        i > 0 && x <= v[i - 1].1
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

/// Parses a CIDR, keeping only its network part.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/64)"))
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: parse_cidr(cidr).unwrap(),
            except: except.iter().map(|e| parse_cidr(e).unwrap()).collect(),
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[&str], &str, bool)] = &[
            ("10.0.0.0/8", &[], "10.200.1.1", true),
            ("10.0.0.0/8", &[], "11.0.0.1", false),
            ("10.0.0.0/8", &["10.1.0.0/16"], "10.1.2.3", false),
            ("10.0.0.0/8", &["10.1.0.0/16"], "10.2.2.3", true),
            ("10.1.2.3/16", &[], "10.1.200.1", true),
            ("10.1.2.3/16", &[], "10.2.0.1", false),
            ("10.0.0.0/8", &["10.1.2.3/16"], "10.1.9.9", false),
            ("fd00::/64", &[], "fd00::1", true),
            ("fd00::/64", &["fd00::/120"], "fd00::1", false),
            ("fd00::/64", &["fd00::/120"], "fd00::1:0", true),
            ("fd00::1234/64", &[], "fd00::99", true),
            ("fd00::/64", &[], "10.0.0.1", false),
            ("0.0.0.0/0", &[], "fd00::1", false),
            ("::/0", &[], "fd00::1", true),
            ("192.0.2.7/32", &[], "192.0.2.7", true),
            ("192.0.2.7/32", &[], "192.0.2.8", false),
        ];
        for (cidr, except, ip, want) in cases {
            assert_eq!(
                block(cidr, except).contains(ip.parse().unwrap()),
                *want,
                "{cidr} except {except:?} contains {ip}"
            );
        }
    }

    /// A small deterministic generator: the index must agree with the blocks one by one.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn index_agrees_with_each_block() {
        let mut rng = Lcg(42);
        for round in 0..300u32 {
            // Addresses in a small space (10.0.0.0/24 and fd00::/120) so that blocks,
            // excepts and probes overlap often; now and then the whole space.
            let mut blocks = Vec::new();
            for _ in 0..(rng.next() % 6) {
                let v6 = rng.next().is_multiple_of(3);
                let (base, max): (IpAddr, u8) = if v6 {
                    ("fd00::".parse().unwrap(), 128)
                } else {
                    ("10.0.0.0".parse().unwrap(), 32)
                };
                let len = if round.is_multiple_of(50) {
                    0
                } else {
                    max - 8 + (rng.next() % 9) as u8
                };
                let host = rng.next() as u8;
                let addr = match base {
                    IpAddr::V4(a) => IpAddr::from(Ipv4Addr::from(u32::from(a) | u32::from(host))),
                    IpAddr::V6(a) => IpAddr::from(Ipv6Addr::from(u128::from(a) | u128::from(host))),
                };
                let cidr = IpNet::new(addr, len).unwrap().trunc();
                let mut except = Vec::new();
                for _ in 0..(rng.next() % 4) {
                    let elen =
                        (len + 1 + (rng.next() % u64::from(max - len).max(1)) as u8).min(max);
                    if elen <= len {
                        continue;
                    }
                    let inner = match cidr.addr() {
                        IpAddr::V4(a) => {
                            IpAddr::from(Ipv4Addr::from(u32::from(a) | (rng.next() as u32 & 0xff)))
                        }
                        IpAddr::V6(a) => IpAddr::from(Ipv6Addr::from(
                            u128::from(a) | u128::from(rng.next() as u8),
                        )),
                    };
                    let e = IpNet::new(inner, elen).unwrap().trunc();
                    if cidr.contains(&e) {
                        except.push(e);
                    }
                }
                blocks.push(IpBlock { cidr, except });
            }
            let index = BlockIndex::new(&blocks);
            for probe in 0..=255u32 {
                for ip in [
                    IpAddr::from(Ipv4Addr::from(0x0a00_0000 | probe)),
                    IpAddr::from(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(probe))),
                    IpAddr::from(Ipv4Addr::from(0x0b00_0000 | probe)),
                ] {
                    let want = blocks.iter().any(|b| b.contains(ip));
                    assert_eq!(index.contains(ip), want, "{ip} in {blocks:?}: {index:?}");
                }
            }
        }
    }

    #[test]
    fn index_edges() {
        let all = BlockIndex::new(&[
            block("0.0.0.0/0", &["255.255.255.255/32"]),
            block("::/0", &["::/128"]),
        ]);
        assert!(all.contains("0.0.0.0".parse().unwrap()));
        assert!(!all.contains("255.255.255.255".parse().unwrap()));
        assert!(all.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        assert!(!all.contains("::".parse().unwrap()));
        let none = BlockIndex::new(&[]);
        assert!(none.is_empty() && !none.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidr() {
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
    }
}
