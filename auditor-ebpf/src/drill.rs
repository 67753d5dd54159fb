//! The drill's kernel programs (`auditor drill`): the only programs of the project that
//! drop packets, in an object of their own so the recorder's object holds none.
//!
//! `drill_egress` and `drill_ingress` are cgroup_skb programs that `auditor drill`
//! attaches to the target pods' cgroups only, through links its process owns (never
//! pinned): they are gone when the drill ends, on Ctrl-C and when the process dies.
//! A packet matching a rule of `RULES` is dropped only inside `WINDOW` (so the kernel
//! ends the block on time even if the process hangs); every other packet passes.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on the BPF target"
)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use auditor_ebpf::*;
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{Array, LruHashMap},
    programs::SkBuffContext,
    EbpfContext,
};

#[map]
static RULES: Array<DrillRule> = Array::with_max_entries(DRILL_MAX_RULES, 0);

#[map]
static WINDOW: Array<DrillWindow> = Array::with_max_entries(1, 0);

#[map]
static STATS: Array<DrillStats> =
    Array::with_max_entries(DRILL_MAX_RULES * DRILL_STATS_PER_RULE, 0);

#[map]
static OTHERS: LruHashMap<DrillPeer, DrillPeerStats> =
    LruHashMap::with_max_entries(DRILL_MAX_OTHERS, 0);

/// Header bytes copied per packet: an IPv4 header with the longest options plus the TCP
/// flags fit.
const HDR: usize = 128;

#[cgroup_skb(egress)]
pub fn drill_egress(ctx: SkBuffContext) -> i32 {
    decide(&ctx, DRILL_EGRESS)
}

#[cgroup_skb(ingress)]
pub fn drill_ingress(ctx: SkBuffContext) -> i32 {
    decide(&ctx, DRILL_INGRESS)
}

/// The parsed packet: the peer's address and port (destination on egress, source on
/// ingress), the protocol and whether it is a bare SYN.
struct Packet {
    family: u16,
    protocol: u8,
    port: u16,
    syn: bool,
    peer: [u8; 16],
}

/// 1 (pass) unless the packet matches a rule inside the window: then a drop that looks
/// like loss on the path. On egress that is 2, "drop and notify congestion": the kernel
/// turns it into NET_XMIT_DROP, so a UDP sendto still succeeds (a lost datagram) and TCP
/// retransmits, where 0 would fail the sender's call with EPERM, which no network does.
/// Egress programs may return 2 as their expected attach type is set (the section
/// `cgroup_skb/egress`). On ingress, 0: the packet never arrives.
#[inline(always)]
fn decide(ctx: &SkBuffContext, dir: u8) -> i32 {
    let Some(p) = parse(ctx, dir) else {
        return 1;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let len = ctx.len() as u64;
    let Some(rule) = matching_rule(&p, dir) else {
        if dir == DRILL_EGRESS {
            note_other(&p, now);
        }
        return 1;
    };
    let Some(w) = WINDOW.get(0) else {
        return 1;
    };
    let slot = rule * DRILL_STATS_PER_RULE + if dir == DRILL_EGRESS { 0 } else { 1 };
    let Some(s) = STATS.get_ptr_mut(slot) else {
        return 1;
    };
    unsafe {
        if now < w.start_ns {
            add(&raw mut (*s).before_packets, 1);
            1
        } else if now < w.end_ns {
            add(&raw mut (*s).dropped_packets, 1);
            add(&raw mut (*s).dropped_bytes, len);
            if p.syn {
                add(&raw mut (*s).dropped_syns, 1);
            }
            if (*s).first_drop_ns == 0 {
                (*s).first_drop_ns = now;
            }
            (*s).last_drop_ns = now;
            if dir == DRILL_EGRESS {
                2
            } else {
                0
            }
        } else {
            add(&raw mut (*s).after_packets, 1);
            add(&raw mut (*s).after_bytes, len);
            if p.syn {
                add(&raw mut (*s).after_syns, 1);
            }
            if (*s).first_after_ns == 0 {
                (*s).first_after_ns = now;
            }
            1
        }
    }
}

#[inline(always)]
unsafe fn add(p: *mut u64, n: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

/// The index of the first rule the packet matches.
#[inline(always)]
fn matching_rule(p: &Packet, dir: u8) -> Option<u32> {
    let mut i = 0u32;
    while i < DRILL_MAX_RULES {
        let r = RULES.get(i)?;
        if r.family == 0 {
            return None;
        }
        if r.family == p.family
            && r.direction & dir != 0
            && (r.protocol == 0
                || (r.protocol == p.protocol && p.port >= r.port_lo && p.port <= r.port_hi))
            && prefix_matches(&r.addr, &p.peer, r.prefix_len)
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn prefix_matches(net: &[u8; 16], addr: &[u8; 16], prefix_len: u8) -> bool {
    let mut bits = prefix_len as u32;
    let mut i = 0usize;
    while i < 16 {
        if bits == 0 {
            return true;
        }
        let mask: u8 = if bits >= 8 {
            0xff
        } else {
            0xffu8 << (8 - bits)
        };
        if addr[i] & mask != net[i] {
            return false;
        }
        bits = bits.saturating_sub(8);
        i += 1;
    }
    true
}

#[inline(always)]
fn note_other(p: &Packet, now: u64) {
    let key = DrillPeer {
        family: p.family,
        protocol: p.protocol,
        _pad: 0,
        port: p.port,
        _pad2: 0,
        addr: p.peer,
    };
    if let Some(s) = OTHERS.get_ptr_mut(&key) {
        unsafe {
            add(&raw mut (*s).packets, 1);
            (*s).last_ns = now;
        }
    } else {
        let v = DrillPeerStats {
            packets: 1,
            first_ns: now,
            last_ns: now,
        };
        let _ = OTHERS.insert(&key, &v, 0);
    }
}

/// The IP version is read from the packet itself (a dual-stack socket sends IPv4 packets
/// with the socket family AF_INET6). IPv6 extension headers are not walked: such a packet
/// matches only rules without a protocol.
#[inline(always)]
fn parse(ctx: &SkBuffContext, dir: u8) -> Option<Packet> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let len = ctx.len() as usize;
    if len < 20 {
        return None;
    }
    let n = ((if len > HDR { HDR } else { len }) - 1) & (HDR - 1);
    let n = n + 1;
    let mut h = [0u8; HDR];
    let ret = unsafe { bpf_skb_load_bytes(skb as *const _, 0, h.as_mut_ptr().cast(), n as u32) };
    if ret != 0 {
        return None;
    }
    let mut peer = [0u8; 16];
    let (family, protocol, l4) = match h[0] >> 4 {
        4 => {
            let at = if dir == DRILL_EGRESS { 16 } else { 12 };
            peer[..4].copy_from_slice(&h[at..at + 4]);
            (AF_INET, h[9], ((h[0] & 0x0f) as usize * 4) & 0x3c)
        }
        6 => {
            if n < 40 {
                return None;
            }
            let at = if dir == DRILL_EGRESS { 24 } else { 8 };
            peer.copy_from_slice(&h[at..at + 16]);
            (AF_INET6, h[6], 40usize)
        }
        _ => return None,
    };
    let mut port = 0u16;
    let mut syn = false;
    if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) && l4 + 4 <= n {
        let at = if dir == DRILL_EGRESS { l4 + 2 } else { l4 };
        port = u16::from_be_bytes([h[at & (HDR - 1)], h[(at + 1) & (HDR - 1)]]);
        if protocol == IPPROTO_TCP && l4 + 14 <= n {
            syn = h[(l4 + 13) & (HDR - 1)] & 0x12 == 0x02;
        }
    }
    Some(Packet {
        family,
        protocol,
        port,
        syn,
        peer,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
