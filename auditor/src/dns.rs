//! DNS answers (RFC 1035) as copied by the kernel program: the query name, the
//! CNAME chain and the A/AAAA addresses with their TTLs. Pure and panic-free on
//! any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The name the process asked for (first question), without the trailing dot.
    pub query: String,
    /// CNAMEs in the order they appear.
    pub cnames: Vec<String>,
    /// Addresses with their TTL in seconds.
    pub addrs: Vec<(IpAddr, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS message shorter than its header")]
    Short,
    #[error("not a DNS response")]
    NotResponse,
    #[error("DNS message cut off at byte {0}")]
    Truncated(usize),
    #[error("DNS name compression loop at byte {0}")]
    Loop(usize),
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, DnsError> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(DnsError::Truncated(at))
}

/// Reads a possibly compressed name at `at`; returns it and the offset after it.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated(at))? as usize;
        if len & 0xc0 == 0xc0 {
            let ptr = (u16_at(msg, at)? & 0x3fff) as usize;
            if end.is_none() {
                end = Some(at + 2);
            }
            jumps += 1;
            if jumps > 32 || ptr >= msg.len() {
                return Err(DnsError::Loop(at));
            }
            at = ptr;
            continue;
        }
        if len == 0 {
            let after = end.unwrap_or(at + 1);
            return Ok((labels.join("."), after));
        }
        let label = msg
            .get(at + 1..at + 1 + len)
            .ok_or(DnsError::Truncated(at))?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        if labels.len() > 128 {
            return Err(DnsError::Loop(at));
        }
        at += 1 + len;
    }
}

/// Parses a DNS response message.
pub fn parse_response(msg: &[u8]) -> Result<DnsAnswer, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Short);
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let qd = u16_at(msg, 4)? as usize;
    let an = u16_at(msg, 6)? as usize;
    let mut at = 12;
    let mut query = String::new();
    for i in 0..qd {
        let (name, next) = read_name(msg, at)?;
        if i == 0 {
            query = name;
        }
        at = next + 4;
    }
    let mut out = DnsAnswer {
        query,
        cnames: Vec::new(),
        addrs: Vec::new(),
    };
    for _ in 0..an {
        let (_name, next) = match read_name(msg, at) {
            Ok(x) => x,
            // The kernel copies at most 512 bytes: keep what was complete.
            Err(DnsError::Truncated(_)) => break,
            Err(e) => return Err(e),
        };
        let Ok(rtype) = u16_at(msg, next) else { break };
        let ttl = match msg.get(next + 4..next + 8) {
            Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
            None => break,
        };
        let Ok(rdlen) = u16_at(msg, next + 8) else {
            break;
        };
        let rdata_at = next + 10;
        let Some(rdata) = msg.get(rdata_at..rdata_at + rdlen as usize) else {
            break;
        };
        match (rtype, rdata.len()) {
            (1, 4) => out.addrs.push((
                IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
                ttl,
            )),
            (28, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(rdata);
                out.addrs.push((IpAddr::V6(Ipv6Addr::from(a)), ttl));
            }
            (5, _) => {
                if let Ok((cname, _)) = read_name(msg, rdata_at) {
                    out.cnames.push(cname);
                }
            }
            _ => {}
        }
        at = rdata_at + rdlen as usize;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a response for `name` with a CNAME to `cname` (if any) and A/AAAA answers.
    pub fn build_response(name: &str, cname: Option<&str>, addrs: &[(IpAddr, u32)]) -> Vec<u8> {
        fn enc(n: &str, out: &mut Vec<u8>) {
            for l in n.split('.').filter(|l| !l.is_empty()) {
                out.push(l.len() as u8);
                out.extend_from_slice(l.as_bytes());
            }
            out.push(0);
        }
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        let count = addrs.len() + usize::from(cname.is_some());
        m[7] = count as u8;
        enc(name, &mut m);
        m.extend_from_slice(&[0, 1, 0, 1]);
        if let Some(c) = cname {
            m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
            let mut rd = Vec::new();
            enc(c, &mut rd);
            m.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            m.extend_from_slice(&rd);
        }
        for (ip, ttl) in addrs {
            m.extend_from_slice(&[0xc0, 12]);
            match ip {
                IpAddr::V4(a) => {
                    m.extend_from_slice(&[0, 1, 0, 1]);
                    m.extend_from_slice(&ttl.to_be_bytes());
                    m.extend_from_slice(&[0, 4]);
                    m.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    m.extend_from_slice(&[0, 28, 0, 1]);
                    m.extend_from_slice(&ttl.to_be_bytes());
                    m.extend_from_slice(&[0, 16]);
                    m.extend_from_slice(&a.octets());
                }
            }
        }
        m
    }

    #[test]
    fn parses_a_aaaa_cname() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let m = build_response(
            "Origin.Media.svc.cluster.local",
            Some("cdn.example"),
            &[(v4, 30), (v6, 40)],
        );
        let a = parse_response(&m).unwrap();
        assert_eq!(a.query, "origin.media.svc.cluster.local");
        assert_eq!(a.cnames, vec!["cdn.example".to_string()]);
        assert_eq!(a.addrs, vec![(v4, 30), (v6, 40)]);
    }

    #[test]
    fn never_panics_on_prefixes_and_garbage() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let m = build_response("a.b", Some("c.d"), &[(v4, 1)]);
        for n in 0..m.len() {
            let _ = parse_response(&m[..n]);
        }
        // self-pointing compression
        let mut bad = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        assert!(matches!(parse_response(&bad), Err(DnsError::Loop(_))));
        bad[2] = 0x01;
        assert_eq!(parse_response(&bad), Err(DnsError::NotResponse));
    }
}
