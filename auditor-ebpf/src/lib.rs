//! Types shared by the kernel programs and userspace: the kernel/user ABI.
//!
//! Every type is `#[repr(C)]` with explicit padding and only integer fields (no
//! `bool`, no enums), so both sides agree on the layout byte for byte. The
//! `user` feature adds the `aya::Pod` impls userspace needs to read maps.
#![no_std]

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// `FlowKey::direction`
pub const DIR_EGRESS: u8 = 0;
pub const DIR_INGRESS: u8 = 1;

/// `FlowStats::state`: outcome of the last connection attempt of the flow.
pub const STATE_CONNECTING: u8 = 1;
pub const STATE_ESTABLISHED: u8 = 2;
pub const STATE_REFUSED: u8 = 3;
pub const STATE_TIMED_OUT: u8 = 4;
pub const STATE_ACCEPTED: u8 = 5;
pub const STATE_ERROR: u8 = 6;
pub const STATE_SENT: u8 = 7;
pub const STATE_RECEIVED: u8 = 8;

/// `EventHeader::kind`
pub const EVENT_NEW_FLOW: u32 = 1;
pub const EVENT_OUTCOME: u32 = 2;
pub const EVENT_DROP: u32 = 3;
pub const EVENT_DNS: u32 = 4;
/// Number of slots in the `LOST` array (indexed by event kind).
pub const EVENT_KINDS: u32 = 5;

/// Bytes of a DNS message copied to userspace (the classic UDP DNS size).
pub const DNS_PAYLOAD: usize = 512;

/// A flow: one process (or, for inbound UDP, one cgroup) talking to one peer port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub cgroup_id: u64,
    /// Thread group id (the process id) of the process that owns the socket; 0 when unknown.
    pub tgid: u32,
    pub family: u16,
    pub protocol: u8,
    pub direction: u8,
    /// Initiator address; IPv4 in the first 4 bytes (network order).
    pub src_addr: [u8; 16],
    /// Responder address; IPv4 in the first 4 bytes (network order).
    pub dst_addr: [u8; 16],
    /// Responder port, host order.
    pub dst_port: u16,
    pub _pad: [u8; 6],
}

/// Counters of one flow, kept in the kernel's LRU map and read by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowStats {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Connection attempts, accepted connections, or datagrams.
    pub count: u64,
    pub established: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub errors: u64,
    pub syn_retransmits: u64,
    /// Initiator port of the first connection (host order).
    pub src_port: u16,
    pub state: u8,
    pub _pad: u8,
    /// Initiator port of the latest connection or datagram (host order).
    pub last_src_port: u16,
    pub _pad2: [u8; 2],
    /// Thread name of the first caller.
    pub comm: [u8; 16],
}

/// A kernel drop: the packet's 5-tuple and the `skb_drop_reason`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DropKey {
    pub reason: u32,
    pub family: u16,
    pub protocol: u8,
    /// 1 when the 5-tuple could be read from the packet.
    pub has_tuple: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropStats {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub count: u64,
}

/// Per-socket state of an outgoing TCP connect in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    pub key: FlowKey,
    pub syn_retransmits: u32,
    /// 1 after a RST was received in SYN_SENT; 2 after the SYN retries ran out (sock_ops path).
    pub reset: u32,
}

/// Who listens on a port: filled when a socket enters LISTEN (process context).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenKey {
    pub cgroup_id: u64,
    pub port: u16,
    pub family: u16,
    pub _pad: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenInfo {
    pub tgid: u32,
    pub _pad: [u8; 4],
    pub comm: [u8; 16],
}

/// A connection being accepted: the 4-tuple seen on the SYN, mapped to the listener's cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TupleKey {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u8; 2],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A UDP conversation seen from one socket: who spoke first decides whether a datagram
/// is a new flow or a reply (UDP has no handshake; a server's answers to a client's
/// ephemeral port must not count as flows of the server).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConvKey {
    pub cgroup_id: u64,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u8; 2],
    pub remote_addr: [u8; 16],
}

/// `ConvKey` value: which side sent the first datagram.
pub const CONV_LOCAL_FIRST: u8 = 1;
pub const CONV_REMOTE_FIRST: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}

/// EVENT_NEW_FLOW and EVENT_OUTCOME.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowEvent {
    pub header: EventHeader,
    pub key: FlowKey,
    pub src_port: u16,
    pub state: u8,
    pub _pad: u8,
    pub syn_retransmits: u32,
    /// Thread id of the caller (0 in softirq context).
    pub tid: u32,
    pub _pad2: u32,
    pub comm: [u8; 16],
}

/// EVENT_DROP: the first drop of a new (5-tuple, reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropEvent {
    pub header: EventHeader,
    pub key: DropKey,
}

/// EVENT_DNS: a DNS answer (UDP from port 53) delivered to a socket of a watched cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    pub family: u16,
    /// Local (querying) port, host order.
    pub dst_port: u16,
    /// Bytes of `payload` that are valid.
    pub len: u16,
    pub _pad: u16,
    /// Server address.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub payload: [u8; DNS_PAYLOAD],
}

/// Field offsets of the tracepoint records and of `struct sk_buff`, read by
/// userspace from tracefs format files and BTF at load time and handed to the
/// programs as the global `OFFSETS`, so one object works across kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    // sock:inet_sock_set_state
    pub iss_skaddr: u32,
    pub iss_oldstate: u32,
    pub iss_newstate: u32,
    pub iss_sport: u32,
    pub iss_dport: u32,
    pub iss_family: u32,
    pub iss_protocol: u32,
    pub iss_saddr: u32,
    pub iss_daddr: u32,
    pub iss_saddr_v6: u32,
    pub iss_daddr_v6: u32,
    // tcp:tcp_retransmit_skb
    pub rtx_skaddr: u32,
    pub rtx_state: u32,
    // tcp:tcp_receive_reset
    pub rst_skaddr: u32,
    // skb:kfree_skb
    pub kfs_skbaddr: u32,
    pub kfs_protocol: u32,
    pub kfs_reason: u32,
    // struct sk_buff (from BTF); 0 in `skb_head` means unknown: drops carry no 5-tuple.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// Drop reasons at or below this value are not drops (NOT_DROPPED_YET, CONSUMED).
    pub min_drop_reason: u32,
    /// `tcp_receive_reset`'s `sock_cookie` (0: the kernel's tracepoint has none).
    pub rst_cookie: u32,
}

/// Settings handed to the programs as the global `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// 1: record DNS answers.
    pub dns: u32,
    /// 1: record kernel drops.
    pub drops: u32,
    /// Drop reasons not recorded (benign frees): bit `r` of this 256-bit mask set = reason `r` ignored.
    pub ignore_reasons: [u64; 4],
    /// 1: every program returns at once (the "attached, doing nothing" baseline of the benchmarks).
    pub noop: u32,
    pub _pad: u32,
    /// Tracepoints record connects and listens only of tasks in this cgroup v2 (or below
    /// it); 0: every task. The cgroup programs are scoped by where they are attached.
    pub filter_cgroup_id: u64,
    /// Depth of `filter_cgroup_id` below the cgroup v2 root (the root is 0).
    pub filter_level: u32,
    pub _pad2: u32,
}

// ---------------------------------------------------------------- drill (auditor drill)
//
// The drill's programs live in their own object (`auditor-drill`, src/drill.rs): the
// recorder's object holds no program that can drop a packet.

/// Rule slots in the drill's `RULES` array.
pub const DRILL_MAX_RULES: u32 = 16;
/// `DrillRule::direction` bits.
pub const DRILL_EGRESS: u8 = 1;
pub const DRILL_INGRESS: u8 = 2;
/// `DrillStats` slots per rule: one per direction (`rule * 2 + 0` egress, `+ 1` ingress).
pub const DRILL_STATS_PER_RULE: u32 = 2;
/// Entries of the map of other peers the target talked to.
pub const DRILL_MAX_OTHERS: u32 = 1024;

/// One peer the drill blocks: a prefix, optionally one protocol and a port range of the
/// peer (destination port on egress, source port on ingress).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DrillRule {
    /// `AF_INET` or `AF_INET6`; 0: an unused slot (the list ends there).
    pub family: u16,
    /// Prefix length in bits (0-32 or 0-128).
    pub prefix_len: u8,
    /// 0: any protocol; else `IPPROTO_TCP` or `IPPROTO_UDP` (with the port range).
    pub protocol: u8,
    /// Peer port range, host order; `0..=65535` for any port.
    pub port_lo: u16,
    pub port_hi: u16,
    /// `DRILL_EGRESS | DRILL_INGRESS` bits.
    pub direction: u8,
    pub _pad: [u8; 7],
    /// Network order, the host bits zeroed; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// When the block holds, in `bpf_ktime_get_ns` time (CLOCK_MONOTONIC): packets matching
/// a rule are dropped while `start_ns <= now < end_ns`, and only counted outside it. The
/// kernel itself releases the block at `end_ns`, even if the drill process hangs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DrillWindow {
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What one rule saw in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DrillStats {
    /// Matching packets before the window (passed).
    pub before_packets: u64,
    /// Matching packets dropped in the window, and their bytes.
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Of those, TCP SYNs without ACK: connection attempts (the first and the retries).
    pub dropped_syns: u64,
    /// Matching packets after the window (passed), and their bytes.
    pub after_packets: u64,
    pub after_bytes: u64,
    /// First and last dropped packet; first packet after the window; 0: none.
    pub first_drop_ns: u64,
    pub last_drop_ns: u64,
    pub first_after_ns: u64,
    /// TCP SYNs (without ACK) after the window: new connections to the peer.
    pub after_syns: u64,
}

/// A peer the target talked to that no rule matched (egress), for "fell back to".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DrillPeer {
    pub family: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// Peer port, host order (0 for other protocols).
    pub port: u16,
    pub _pad2: u16,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DrillPeerStats {
    pub packets: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for DropStats {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for ListenInfo {}
    unsafe impl aya::Pod for TupleKey {}
    unsafe impl aya::Pod for ConvKey {}
    unsafe impl aya::Pod for Offsets {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for DrillRule {}
    unsafe impl aya::Pod for DrillWindow {}
    unsafe impl aya::Pod for DrillStats {}
    unsafe impl aya::Pod for DrillPeer {}
    unsafe impl aya::Pod for DrillPeerStats {}
}

// Layout checks: both sides compile these.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 56);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 88);
const _: () = assert!(core::mem::size_of::<DropKey>() == 48);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 16 + 56 + 16 + 16);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 16 + 8 + 8 + 32 + DNS_PAYLOAD);
const _: () = assert!(core::mem::size_of::<TupleKey>() == 40);
const _: () = assert!(core::mem::size_of::<ConvKey>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 64);
const _: () = assert!(core::mem::size_of::<DrillRule>() == 32);
const _: () = assert!(core::mem::size_of::<DrillWindow>() == 16);
const _: () = assert!(core::mem::size_of::<DrillStats>() == 80);
const _: () = assert!(core::mem::size_of::<DrillPeer>() == 24);
const _: () = assert!(core::mem::size_of::<DrillPeerStats>() == 24);
