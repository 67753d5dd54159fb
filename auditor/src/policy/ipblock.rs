//! `ipBlock` peers: a CIDR minus its `except` CIDRs, IPv4 or IPv6.
//!
//! Older API servers accepted CIDRs with host bits set (`10.1.2.3/16`); such a CIDR
//! means its network (`10.1.0.0/16`), which is how the network plugins read it.

use std::net::IpAddr;

use ipnet::IpNet;

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

    #[test]
    fn bad_cidr() {
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("banana").is_err());
    }
}
