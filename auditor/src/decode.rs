//! Raw kernel records -> typed events (pure).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use auditor_ebpf as abi;

use crate::flowlog::{Direction, FlowState, Protocol};
use crate::procfs::comm_str;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ring buffer record of {got} bytes is shorter than the {want} bytes of a {what}")]
    Short {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("ring buffer record of unknown kind {0}")]
    UnknownKind(u32),
    #[error("address family {0} is neither AF_INET nor AF_INET6")]
    Family(u16),
    #[error("IP protocol {0} is not TCP, UDP or SCTP")]
    Protocol(u8),
}

/// A flow key with plain Rust types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub protocol: Protocol,
    pub direction: Direction,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: u32,
    pub ts_ns: u64,
    pub flow: Flow,
    pub src_port: u16,
    pub state: Option<FlowState>,
    pub syn_retransmits: u32,
    pub tid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Drop {
    pub reason: u32,
    pub protocol: Option<Protocol>,
    /// (src, sport, dst, dport) when the packet could be parsed.
    pub tuple: Option<(IpAddr, u16, IpAddr, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub server: IpAddr,
    pub client: IpAddr,
    pub client_port: u16,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    NewFlow(FlowEvent),
    Outcome(FlowEvent),
    Drop { ts_ns: u64, drop: Drop },
    Dns(DnsEvent),
}

pub fn ip(family: u16, a: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        abi::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        abi::AF_INET6 => {
            let v6 = Ipv6Addr::from(*a);
            // A v4-mapped peer of a dual-stack socket is reported as IPv4.
            Ok(v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)))
        }
        f => Err(DecodeError::Family(f)),
    }
}

pub fn state(code: u8) -> Option<FlowState> {
    Some(match code {
        abi::STATE_CONNECTING => FlowState::Connecting,
        abi::STATE_ESTABLISHED => FlowState::Established,
        abi::STATE_REFUSED => FlowState::Refused,
        abi::STATE_TIMED_OUT => FlowState::TimedOut,
        abi::STATE_ACCEPTED => FlowState::Accepted,
        abi::STATE_ERROR => FlowState::Error,
        abi::STATE_SENT => FlowState::Sent,
        abi::STATE_RECEIVED => FlowState::Accepted,
        _ => return None,
    })
}

pub fn flow(k: &abi::FlowKey) -> Result<Flow, DecodeError> {
    Ok(Flow {
        cgroup_id: k.cgroup_id,
        tgid: k.tgid,
        protocol: Protocol::from_ip_proto(k.protocol).ok_or(DecodeError::Protocol(k.protocol))?,
        direction: if k.direction == abi::DIR_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        src_ip: ip(k.family, &k.src_addr)?,
        dst_ip: ip(k.family, &k.dst_addr)?,
        dst_port: k.dst_port,
    })
}

pub fn drop_key(k: &abi::DropKey) -> Result<Drop, DecodeError> {
    let tuple = if k.has_tuple != 0 {
        Some((
            ip(k.family, &k.src_addr)?,
            k.src_port,
            ip(k.family, &k.dst_addr)?,
            k.dst_port,
        ))
    } else {
        None
    };
    Ok(Drop {
        reason: k.reason,
        protocol: Protocol::from_ip_proto(k.protocol),
        tuple,
    })
}

/// Reads a `#[repr(C)]` ABI value from the front of `buf`.
fn read<T: Copy>(buf: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::Short {
            what,
            got: buf.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a plain-old-data ABI type; read_unaligned has no alignment needs.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Decodes one ring buffer record.
pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    let h: abi::EventHeader = read(buf, "event header")?;
    match h.kind {
        abi::EVENT_NEW_FLOW | abi::EVENT_OUTCOME => {
            let e: abi::FlowEvent = read(buf, "flow event")?;
            let fe = FlowEvent {
                kind: h.kind,
                ts_ns: h.ts_ns,
                flow: flow(&e.key)?,
                src_port: e.src_port,
                state: state(e.state),
                syn_retransmits: e.syn_retransmits,
                tid: e.tid,
                comm: comm_str(&e.comm),
            };
            Ok(if h.kind == abi::EVENT_NEW_FLOW {
                Event::NewFlow(fe)
            } else {
                Event::Outcome(fe)
            })
        }
        abi::EVENT_DROP => {
            let e: abi::DropEvent = read(buf, "drop event")?;
            Ok(Event::Drop {
                ts_ns: h.ts_ns,
                drop: drop_key(&e.key)?,
            })
        }
        abi::EVENT_DNS => {
            let e: abi::DnsEvent = read(buf, "DNS event")?;
            let n = (e.len as usize).min(abi::DNS_PAYLOAD);
            Ok(Event::Dns(DnsEvent {
                ts_ns: h.ts_ns,
                cgroup_id: e.cgroup_id,
                server: ip(e.family, &e.src_addr)?,
                client: ip(e.family, &e.dst_addr)?,
                client_port: e.dst_port,
                payload: e.payload[..n].to_vec(),
            }))
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) value as bytes.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
                .to_vec()
        }
    }

    #[test]
    fn decodes_flow_event_v4_and_mapped_v6() {
        let mut key = abi::FlowKey {
            cgroup_id: 7,
            tgid: 42,
            family: abi::AF_INET,
            protocol: 6,
            dst_port: 8080,
            ..Default::default()
        };
        key.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut ev = abi::FlowEvent {
            key,
            src_port: 5555,
            state: abi::STATE_CONNECTING,
            ..Default::default()
        };
        ev.header.kind = abi::EVENT_NEW_FLOW;
        ev.comm[..6].copy_from_slice(b"ffmpeg");
        let Event::NewFlow(f) = decode(&bytes(&ev)).unwrap() else {
            panic!("kind")
        };
        assert_eq!(f.flow.dst_ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(f.flow.protocol, Protocol::Tcp);
        assert_eq!(f.comm, "ffmpeg");
        assert_eq!(f.state, Some(FlowState::Connecting));

        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(
            ip(abi::AF_INET6, &mapped).unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let mut h = vec![0u8; 16];
        h[0] = 99;
        assert_eq!(decode(&h), Err(DecodeError::UnknownKind(99)));
        let mut ev = abi::FlowEvent::default();
        ev.header.kind = abi::EVENT_OUTCOME;
        ev.key.family = 99;
        ev.key.protocol = 6;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Family(99)));
    }
}
