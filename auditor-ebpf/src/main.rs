//! Kernel programs of the auditor.
//!
//! Every program only observes: cgroup programs return 1 (allow), tracepoints
//! return 0. Flows are aggregated in LRU maps; only new flows, failed outcomes,
//! new drops and DNS answers cross the ring buffer, and every failed reserve is
//! counted in `LOST` (indexed by event kind).
#![no_std]
#![no_main]
// Atomic adds: the BPF target has no atomic types' fetch_add, but LLVM lowers this
// intrinsic to BPF_ATOMIC | BPF_ADD. The eBPF crate is always built with nightly.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on the BPF target"
)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use auditor_ebpf::*;
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock,
            bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops, tracepoint},
    maps::{Array, LruHashMap, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext, TracePointContext},
    EbpfContext,
};

// TCP states (include/net/tcp_states.h)
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    iss_skaddr: 8,
    iss_oldstate: 16,
    iss_newstate: 20,
    iss_sport: 24,
    iss_dport: 26,
    iss_family: 28,
    iss_protocol: 30,
    iss_saddr: 32,
    iss_daddr: 36,
    iss_saddr_v6: 40,
    iss_daddr_v6: 56,
    rtx_skaddr: 8,
    rtx_state: 24,
    rst_skaddr: 8,
    kfs_skbaddr: 8,
    kfs_protocol: 32,
    kfs_reason: 36,
    skb_head: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    min_drop_reason: 1,
    rst_cookie: 0,
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    dns: 1,
    drops: 1,
    ignore_reasons: [0; 4],
    noop: 0,
    _pad: 0,
    filter_cgroup_id: 0,
    filter_level: 0,
    _pad2: 0,
};

#[inline(always)]
fn off() -> Offsets {
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn cfg() -> Config {
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Whether the current task is in the recorded cgroup subtree (`--cgroup`), for the
/// tracepoints, which fire for every task of the host.
#[inline(always)]
fn current_in_scope() -> bool {
    let id = unsafe { core::ptr::read_volatile(&raw const CONFIG.filter_cgroup_id) };
    if id == 0 {
        return true;
    }
    let level = unsafe { core::ptr::read_volatile(&raw const CONFIG.filter_level) };
    unsafe { aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id(level as i32) == id }
}

/// The benchmarks' "attached but doing nothing" mode.
#[inline(always)]
fn noop() -> bool {
    unsafe { core::ptr::read_volatile(&raw const CONFIG.noop) != 0 }
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(65536, 0);

#[map]
static DROPS: LruHashMap<DropKey, DropStats> = LruHashMap::with_max_entries(16384, 0);

#[map]
static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(16384, 0);

#[map]
static LISTENERS: LruHashMap<ListenKey, ListenInfo> = LruHashMap::with_max_entries(4096, 0);

#[map]
static PENDING: LruHashMap<TupleKey, u64> = LruHashMap::with_max_entries(16384, 0);

#[map]
static UDP_CONV: LruHashMap<ConvKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// Who spoke first in a UDP conversation; records `side` when it is the first datagram.
/// Returns true when the other side spoke first (this datagram is a reply).
#[inline(always)]
fn udp_is_reply(key: &ConvKey, side: u8) -> bool {
    if let Some(first) = UDP_CONV.get_ptr(key) {
        return unsafe { *first } != side;
    }
    let _ = UDP_CONV.insert(key, &side, 1);
    false
}

#[map]
static LOST: Array<u64> = Array::with_max_entries(EVENT_KINDS, 0);

#[inline(always)]
fn count_lost(kind: u32) {
    if let Some(p) = LOST.get_ptr_mut(kind) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

#[inline(always)]
fn add(p: *mut u64, n: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Whether `a` is an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    let head = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    head == 0 && a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff
}

/// A dual-stack socket (AF_INET6, not V6ONLY) talking to an IPv4 peer has v4-mapped
/// addresses. Keys hold such a conversation as IPv4, as the packet hooks (which read the
/// IP version from the packet) and every reader of the flow log see it. Returns the
/// family to key with; the addresses are rewritten in place.
#[inline(always)]
fn unmap(family: u16, remote: &mut [u8; 16], local: &mut [u8; 16]) -> u16 {
    if family != AF_INET6 || !is_v4_mapped(remote) {
        return family;
    }
    let r = [remote[12], remote[13], remote[14], remote[15]];
    *remote = [0; 16];
    remote[..4].copy_from_slice(&r);
    // An unbound local address (::) becomes 0.0.0.0.
    let l = if is_v4_mapped(local) {
        [local[12], local[13], local[14], local[15]]
    } else {
        [0; 4]
    };
    *local = [0; 16];
    local[..4].copy_from_slice(&l);
    AF_INET
}

#[inline(always)]
fn comm() -> [u8; 16] {
    bpf_get_current_comm().unwrap_or([0; 16])
}

/// Sends a flow event; a full ring buffer is counted, never silent. A new flow's event
/// carries the `first_seen_ns` of its map entry as `ts_ns`, so userspace can tell which
/// incarnation of a flow (an LRU eviction and re-insert starts a new one) it has seen.
#[inline(always)]
fn emit_flow(
    kind: u32,
    ts_ns: u64,
    key: &FlowKey,
    src_port: u16,
    state: u8,
    syn_retransmits: u32,
    tid: u32,
    comm: &[u8; 16],
) {
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            unsafe {
                (*ev).header = EventHeader {
                    kind,
                    _pad: 0,
                    ts_ns,
                };
                (*ev).key = *key;
                (*ev).src_port = src_port;
                (*ev).state = state;
                (*ev)._pad = 0;
                (*ev).syn_retransmits = syn_retransmits;
                (*ev).tid = tid;
                (*ev)._pad2 = 0;
                (*ev).comm = *comm;
            }
            entry.submit(0);
        }
        None => count_lost(kind),
    }
}

/// Counts one new connection / datagram of `key`; emits EVENT_NEW_FLOW the first time.
#[inline(always)]
fn touch_flow(key: &FlowKey, src_port: u16, state: u8, tid: u32, comm: impl FnOnce() -> [u8; 16]) {
    let t = now();
    if let Some(s) = FLOWS.get_ptr_mut(key) {
        unsafe {
            add(&raw mut (*s).count, 1);
            (*s).last_seen_ns = t;
            (*s).state = state;
            (*s).last_src_port = src_port;
        }
        return;
    }
    // Only a new flow needs the process name (one helper call saved per connection).
    let comm = comm();
    let stats = FlowStats {
        first_seen_ns: t,
        last_seen_ns: t,
        count: 1,
        src_port,
        last_src_port: src_port,
        state,
        comm,
        ..Default::default()
    };
    // BPF_NOEXIST: a racing CPU that inserted first keeps its entry; count on it.
    if FLOWS.insert(key, &stats, 1).is_err() {
        if let Some(s) = FLOWS.get_ptr_mut(key) {
            unsafe { add(&raw mut (*s).count, 1) };
        }
        return;
    }
    emit_flow(EVENT_NEW_FLOW, t, key, src_port, state, 0, tid, &comm);
}

// ---------------------------------------------------------------- TCP

#[inline(always)]
unsafe fn read_addrs(
    ctx: &TracePointContext,
    o: &Offsets,
    family: u16,
    src: &mut [u8; 16],
    dst: &mut [u8; 16],
) {
    unsafe {
        if family == AF_INET {
            let s: [u8; 4] = ctx.read_at(o.iss_saddr as usize).unwrap_or([0; 4]);
            let d: [u8; 4] = ctx.read_at(o.iss_daddr as usize).unwrap_or([0; 4]);
            src[..4].copy_from_slice(&s);
            dst[..4].copy_from_slice(&d);
        } else {
            *src = ctx.read_at(o.iss_saddr_v6 as usize).unwrap_or([0; 16]);
            *dst = ctx.read_at(o.iss_daddr_v6 as usize).unwrap_or([0; 16]);
        }
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let _ = unsafe { try_inet_sock_set_state(&ctx) };
    0
}

unsafe fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let o = off();
    unsafe {
        // Ten state changes a connection, four of interest: decide on the states first,
        // before reading anything else (the cost per connection is in these reads).
        let old: u32 = ctx.read_at(o.iss_oldstate as usize)?;
        if old != TCP_CLOSE && old != TCP_SYN_SENT && old != TCP_SYN_RECV {
            return Ok(());
        }
        let new: u32 = ctx.read_at(o.iss_newstate as usize)?;
        let wanted = (old == TCP_CLOSE && (new == TCP_SYN_SENT || new == TCP_LISTEN))
            || old == TCP_SYN_SENT
            || (old == TCP_SYN_RECV && new == TCP_ESTABLISHED);
        if !wanted {
            return Ok(());
        }
        let protocol: u16 = ctx.read_at(o.iss_protocol as usize)?;
        if protocol != IPPROTO_TCP as u16 {
            return Ok(());
        }
        let family: u16 = ctx.read_at(o.iss_family as usize)?;
        if family != AF_INET && family != AF_INET6 {
            return Ok(());
        }
        let skaddr: u64 = ctx.read_at(o.iss_skaddr as usize)?;
        let sport: u16 = ctx.read_at(o.iss_sport as usize)?;
        let dport: u16 = ctx.read_at(o.iss_dport as usize)?;

        if old == TCP_CLOSE && new == TCP_SYN_SENT {
            // connect(2), in the caller's context.
            if !current_in_scope() {
                return Ok(());
            }
            let st = connect_started(family, sport, dport, |k| {
                read_addrs(ctx, &o, family, &mut k.src_addr, &mut k.dst_addr)
            });
            let _ = SOCKS.insert(&skaddr, &st, 0);
        } else if old == TCP_SYN_SENT {
            let Some(st) = SOCKS.get_ptr_mut(&skaddr) else {
                return Ok(());
            };
            let st = *st;
            let _ = SOCKS.remove(&skaddr);
            connect_outcome(&st, new, sport);
        } else if old == TCP_CLOSE && new == TCP_LISTEN {
            if !current_in_scope() {
                return Ok(());
            }
            listening(ctx, family, sport);
        } else if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
            // A child socket of a listener completed the handshake (softirq context).
            let mut tk = TupleKey {
                family,
                local_port: sport,
                remote_port: dport,
                ..Default::default()
            };
            read_addrs(ctx, &o, family, &mut tk.local_addr, &mut tk.remote_addr);
            tk.family = unmap(family, &mut tk.remote_addr, &mut tk.local_addr);
            accepted(&tk);
        }
    }
    Ok(())
}

/// connect(2) in the caller's context: counts the attempt on its flow and returns what
/// the end of the handshake needs (`addrs` fills the key's addresses).
#[inline(always)]
fn connect_started(
    family: u16,
    src_port: u16,
    dst_port: u16,
    addrs: impl FnOnce(&mut FlowKey),
) -> SockState {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut key = FlowKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        family,
        protocol: IPPROTO_TCP,
        direction: DIR_EGRESS,
        dst_port,
        ..Default::default()
    };
    addrs(&mut key);
    key.family = unmap(family, &mut key.dst_addr, &mut key.src_addr);
    touch_flow(&key, src_port, STATE_CONNECTING, pid_tgid as u32, comm);
    SockState {
        key,
        syn_retransmits: 0,
        reset: 0,
    }
}

/// The end of a handshake this host started: counts the outcome on the flow; a failure
/// crosses the ring buffer (the recorder alerts on it).
#[inline(always)]
unsafe fn connect_outcome(st: &SockState, new: u32, sport: u16) {
    let (state, kind) = if new == TCP_ESTABLISHED {
        (STATE_ESTABLISHED, 0)
    } else if st.reset == 1 {
        (STATE_REFUSED, EVENT_OUTCOME)
    } else if st.reset == 2 || st.syn_retransmits > 0 {
        (STATE_TIMED_OUT, EVENT_OUTCOME)
    } else {
        (STATE_ERROR, EVENT_OUTCOME)
    };
    let mut c = [0u8; 16];
    if let Some(s) = FLOWS.get_ptr_mut(&st.key) {
        unsafe {
            let field = match state {
                STATE_ESTABLISHED => &raw mut (*s).established,
                STATE_REFUSED => &raw mut (*s).refused,
                STATE_TIMED_OUT => &raw mut (*s).timed_out,
                _ => &raw mut (*s).errors,
            };
            add(field, 1);
            (*s).state = state;
            (*s).last_seen_ns = now();
            c = (*s).comm;
        }
    }
    if kind != 0 {
        emit_flow(
            kind,
            now(),
            &st.key,
            sport,
            state,
            st.syn_retransmits,
            0,
            &c,
        );
    }
}

/// A socket entered LISTEN (process context): remember its owner for the accepts.
#[inline(always)]
fn listening<C: aya_ebpf::EbpfContext>(ctx: &C, family: u16, port: u16) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let lk = ListenKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        port,
        family,
        _pad: [0; 4],
    };
    let info = ListenInfo {
        tgid: (pid_tgid >> 32) as u32,
        _pad: [0; 4],
        comm: comm(),
    };
    let _ = LISTENERS.insert(&lk, &info, 0);
    // Rare (one per listen(2)); shows up with `--log auditor=debug,aya_log=debug`.
    aya_log_ebpf::debug!(
        ctx,
        "listener on port {} (pid {}, cgroup {})",
        port,
        info.tgid,
        lk.cgroup_id
    );
}

/// A child socket of a listener completed the handshake (softirq context): the cgroup
/// comes from the SYN the ingress program saw, the process from the listener.
#[inline(always)]
fn accepted(tk: &TupleKey) {
    let Some(cg) = PENDING.get_ptr(tk) else {
        return;
    };
    let cgroup_id = unsafe { *cg };
    let _ = PENDING.remove(tk);
    let lk = ListenKey {
        cgroup_id,
        port: tk.local_port,
        family: tk.family,
        _pad: [0; 4],
    };
    // An IPv4 client of a dual-stack listener: the listener is keyed AF_INET6.
    let l = match LISTENERS.get_ptr(&lk) {
        None if tk.family == AF_INET => LISTENERS.get_ptr(&ListenKey {
            family: AF_INET6,
            ..lk
        }),
        l => l,
    };
    let (tgid, c) = match l {
        Some(l) => unsafe { ((*l).tgid, (*l).comm) },
        None => (0, [0u8; 16]),
    };
    let key = FlowKey {
        cgroup_id,
        tgid,
        family: tk.family,
        protocol: IPPROTO_TCP,
        direction: DIR_INGRESS,
        src_addr: tk.remote_addr,
        dst_addr: tk.local_addr,
        dst_port: tk.local_port,
        _pad: [0; 6],
    };
    touch_flow(&key, tk.remote_port, STATE_ACCEPTED, 0, move || c);
}

// ------------------------------------------------ TCP through sock_ops (preferred)
//
// Attached to the audited cgroup, so only sockets of that subtree run it, and only
// at a handful of points per connection: connect (process context), listen, the
// passive handshake's end, and, while a SYN is out, state changes and RTOs (the
// callbacks are switched on per socket at connect and off when the handshake ends).

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RTO_CB: u32 = 8;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_TCP_LISTEN_CB: u32 = 11;
const BPF_SOCK_OPS_RTO_CB_FLAG: i32 = 1;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;

/// Connections this host started and whose handshake is not over, by socket cookie.
#[map]
static CONNS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(16384, 0);

#[sock_ops]
pub fn tcp_sockops(ctx: SockOpsContext) -> u32 {
    if noop() {
        return 1;
    }
    unsafe { try_sockops(&ctx) };
    1
}

/// The socket's addresses from the context, one 32-bit load at a time (the verifier
/// refuses wider loads of these context fields).
#[inline(always)]
fn ops_addrs(ctx: &SockOpsContext, family: u16, local: &mut [u8; 16], remote: &mut [u8; 16]) {
    let ops = ctx.ops;
    unsafe {
        if family == AF_INET {
            let l = core::ptr::read_volatile(&raw const (*ops).local_ip4);
            let r = core::ptr::read_volatile(&raw const (*ops).remote_ip4);
            local[..4].copy_from_slice(&l.to_ne_bytes());
            remote[..4].copy_from_slice(&r.to_ne_bytes());
        } else {
            for i in 0..4 {
                let l = core::ptr::read_volatile(&raw const (*ops).local_ip6[i]);
                let r = core::ptr::read_volatile(&raw const (*ops).remote_ip6[i]);
                local[i * 4..i * 4 + 4].copy_from_slice(&l.to_ne_bytes());
                remote[i * 4..i * 4 + 4].copy_from_slice(&r.to_ne_bytes());
            }
        }
    }
}

#[inline(always)]
unsafe fn try_sockops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB
        && op != BPF_SOCK_OPS_STATE_CB
        && op != BPF_SOCK_OPS_RTO_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_TCP_LISTEN_CB
    {
        return;
    }
    let family = ctx.family() as u16;
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let local_port = ctx.local_port() as u16;
    // remote_port holds the port in network order in its upper half.
    let remote_port = u32::from_be(ctx.remote_port()) as u16;
    unsafe {
        match op {
            BPF_SOCK_OPS_TCP_CONNECT_CB => {
                let cookie = bpf_get_socket_cookie(ctx.as_ptr());
                let st = connect_started(family, local_port, remote_port, |k| {
                    ops_addrs(ctx, family, &mut k.src_addr, &mut k.dst_addr)
                });
                let _ = CONNS.insert(&cookie, &st, 0);
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG);
            }
            BPF_SOCK_OPS_STATE_CB => {
                // Only switched on while the SYN is out: the first change ends the handshake.
                let _ = ctx.set_cb_flags(0);
                if ctx.arg(0) != TCP_SYN_SENT {
                    return;
                }
                let cookie = bpf_get_socket_cookie(ctx.as_ptr());
                let Some(st) = CONNS.get_ptr(&cookie) else {
                    return;
                };
                let st = *st;
                let _ = CONNS.remove(&cookie);
                connect_outcome(&st, ctx.arg(1), local_port);
            }
            BPF_SOCK_OPS_RTO_CB => {
                let cookie = bpf_get_socket_cookie(ctx.as_ptr());
                let Some(st) = CONNS.get_ptr_mut(&cookie) else {
                    return;
                };
                if ctx.arg(2) != 0 {
                    // The retries ran out: the state change to CLOSE follows.
                    (*st).reset = if (*st).reset == 1 { 1 } else { 2 };
                    return;
                }
                (*st).syn_retransmits += 1;
                if let Some(s) = FLOWS.get_ptr_mut(&(*st).key) {
                    add(&raw mut (*s).syn_retransmits, 1);
                }
            }
            BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
                let mut tk = TupleKey {
                    family,
                    local_port,
                    remote_port,
                    ..Default::default()
                };
                ops_addrs(ctx, family, &mut tk.local_addr, &mut tk.remote_addr);
                tk.family = unmap(family, &mut tk.remote_addr, &mut tk.local_addr);
                accepted(&tk);
            }
            _ => listening(ctx, family, local_port),
        }
    }
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let o = off();
    unsafe {
        let Ok(state) = ctx.read_at::<i32>(o.rtx_state as usize) else {
            return 0;
        };
        if state as u32 != TCP_SYN_SENT {
            return 0;
        }
        let Ok(skaddr) = ctx.read_at::<u64>(o.rtx_skaddr as usize) else {
            return 0;
        };
        if let Some(st) = SOCKS.get_ptr_mut(&skaddr) {
            (*st).syn_retransmits += 1;
            if let Some(s) = FLOWS.get_ptr_mut(&(*st).key) {
                add(&raw mut (*s).syn_retransmits, 1);
            }
        }
    }
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let o = off();
    unsafe {
        let Ok(skaddr) = ctx.read_at::<u64>(o.rst_skaddr as usize) else {
            return 0;
        };
        if let Some(st) = SOCKS.get_ptr_mut(&skaddr) {
            (*st).reset = 1;
        }
        if o.rst_cookie != 0 {
            if let Ok(cookie) = ctx.read_at::<u64>(o.rst_cookie as usize) {
                if let Some(st) = CONNS.get_ptr_mut(&cookie) {
                    (*st).reset = 1;
                }
            }
        }
    }
    0
}

// ---------------------------------------------------------------- UDP

#[inline(always)]
unsafe fn udp_flow(ctx: &SockAddrContext, family: u16) {
    unsafe {
        let sa = &*ctx.sock_addr;
        if sa.protocol != IPPROTO_UDP as u32 {
            return;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        let mut key = FlowKey {
            cgroup_id: bpf_get_current_cgroup_id(),
            tgid: (pid_tgid >> 32) as u32,
            family,
            protocol: IPPROTO_UDP,
            direction: DIR_EGRESS,
            dst_port: u16::from_be(sa.user_port as u16),
            ..Default::default()
        };
        let sk = sa.__bindgen_anon_1.sk;
        let mut src_port = 0u16;
        if family == AF_INET {
            key.dst_addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
            if !sk.is_null() {
                key.src_addr[..4].copy_from_slice(&(*sk).src_ip4.to_ne_bytes());
                src_port = (*sk).src_port as u16;
            }
        } else {
            let d = sa.user_ip6;
            key.dst_addr[..4].copy_from_slice(&d[0].to_ne_bytes());
            key.dst_addr[4..8].copy_from_slice(&d[1].to_ne_bytes());
            key.dst_addr[8..12].copy_from_slice(&d[2].to_ne_bytes());
            key.dst_addr[12..].copy_from_slice(&d[3].to_ne_bytes());
            if !sk.is_null() {
                let s = (*sk).src_ip6;
                key.src_addr[..4].copy_from_slice(&s[0].to_ne_bytes());
                key.src_addr[4..8].copy_from_slice(&s[1].to_ne_bytes());
                key.src_addr[8..12].copy_from_slice(&s[2].to_ne_bytes());
                key.src_addr[12..].copy_from_slice(&s[3].to_ne_bytes());
                src_port = (*sk).src_port as u16;
            }
        }
        // A dual-stack socket sending to an IPv4 peer (a v4-mapped destination).
        key.family = unmap(family, &mut key.dst_addr, &mut key.src_addr);
        if src_port != 0 {
            let conv = ConvKey {
                cgroup_id: key.cgroup_id,
                family: key.family,
                local_port: src_port,
                remote_port: key.dst_port,
                _pad: [0; 2],
                remote_addr: key.dst_addr,
            };
            if udp_is_reply(&conv, CONV_LOCAL_FIRST) {
                return;
            }
        }
        touch_flow(&key, src_port, STATE_SENT, pid_tgid as u32, comm);
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    if noop() {
        return 1;
    }
    unsafe { udp_flow(&ctx, AF_INET) };
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    if noop() {
        return 1;
    }
    unsafe { udp_flow(&ctx, AF_INET6) };
    1
}

#[cgroup_sock_addr(connect4)]
pub fn udp_connect4(ctx: SockAddrContext) -> i32 {
    if noop() {
        return 1;
    }
    unsafe { udp_flow(&ctx, AF_INET) };
    1
}

#[cgroup_sock_addr(connect6)]
pub fn udp_connect6(ctx: SockAddrContext) -> i32 {
    if noop() {
        return 1;
    }
    unsafe { udp_flow(&ctx, AF_INET6) };
    1
}

// ---------------------------------------------------------------- ingress: accepts, inbound UDP, DNS

#[cgroup_skb]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    if noop() {
        return 1;
    }
    let _ = try_ingress(&ctx);
    1
}

/// Header bytes the ingress program copies (IPv4 with the longest options + TCP flags fit).
const HDR: usize = 128;

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Result<(), i64> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // A TCP socket that is not listening: nothing to do here (its connects and accepts
    // are the TCP hooks' job). Decided from the socket, without touching the packet: this
    // runs for every packet of the audited cgroup's established TCP connections.
    unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if !sk.is_null() {
            let full = bpf_sk_fullsock(sk);
            if !full.is_null()
                && (*full).protocol == IPPROTO_TCP as u32
                && (*full).state != TCP_LISTEN
            {
                return Ok(());
            }
        }
    }
    // The IP version comes from the packet, not the socket: a dual-stack (AF_INET6)
    // socket receives IPv4 packets too.
    // The headers in one helper call (up to 128 bytes, fewer for a short packet), then
    // parsed on the stack: one copy per packet instead of a load per field.
    let len = ctx.len() as usize;
    if len < 20 {
        return Ok(());
    }
    let n = ((if len > HDR { HDR } else { len }) - 1) & (HDR - 1);
    let n = n + 1;
    let mut h = [0u8; HDR];
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb as *const _,
            0,
            h.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if ret != 0 {
        return Ok(());
    }
    // Decide from the protocol (and, for TCP, the flags) before anything else: only
    // SYNs and UDP matter here.
    let v4 = h[0] >> 4 == 4;
    let (proto, l4) = if v4 {
        (h[9], ((h[0] & 0x0f) as usize * 4) & 0x3c)
    } else if h[0] >> 4 == 6 {
        (h[6], 40usize)
    } else {
        return Ok(());
    };
    if proto == IPPROTO_TCP {
        if l4 + 14 > n || h[(l4 + 13) & (HDR - 1)] & 0x12 != 0x02 {
            return Ok(());
        }
    } else if proto != IPPROTO_UDP || l4 + 8 > n {
        return Ok(());
    }
    let (fam, local, remote) = if v4 {
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        local[..4].copy_from_slice(&h[16..20]);
        remote[..4].copy_from_slice(&h[12..16]);
        (AF_INET, local, remote)
    } else {
        let mut local = [0u8; 16];
        let mut remote = [0u8; 16];
        local.copy_from_slice(&h[24..40]);
        remote.copy_from_slice(&h[8..24]);
        (AF_INET6, local, remote)
    };
    let sport = u16::from_be_bytes([h[l4 & (HDR - 1)], h[(l4 + 1) & (HDR - 1)]]);
    let dport = u16::from_be_bytes([h[(l4 + 2) & (HDR - 1)], h[(l4 + 3) & (HDR - 1)]]);
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb as *mut __sk_buff) };
    if proto == IPPROTO_TCP {
        // SYN without ACK (checked above): remember which cgroup's listener got it, for the accept.
        let tk = TupleKey {
            family: fam,
            local_port: dport,
            remote_port: sport,
            _pad: [0; 2],
            local_addr: local,
            remote_addr: remote,
        };
        let _ = PENDING.insert(&tk, &cgroup_id, 0);
    } else if proto == IPPROTO_UDP {
        if sport == 53 && cfg().dns != 0 {
            emit_dns(ctx, fam, cgroup_id, dport, l4 + 8, &remote, &local);
        } else {
            let conv = ConvKey {
                cgroup_id,
                family: fam,
                local_port: dport,
                remote_port: sport,
                _pad: [0; 2],
                remote_addr: remote,
            };
            if udp_is_reply(&conv, CONV_REMOTE_FIRST) {
                return Ok(());
            }
            let key = FlowKey {
                cgroup_id,
                tgid: 0,
                family: fam,
                protocol: IPPROTO_UDP,
                direction: DIR_INGRESS,
                src_addr: remote,
                dst_addr: local,
                dst_port: dport,
                _pad: [0; 6],
            };
            touch_flow(&key, sport, STATE_RECEIVED, 0, || [0; 16]);
        }
    }
    Ok(())
}

#[inline(always)]
fn emit_dns(
    ctx: &SkBuffContext,
    family: u16,
    cgroup_id: u64,
    dport: u16,
    payload_off: usize,
    server: &[u8; 16],
    local: &[u8; 16],
) {
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        count_lost(EVENT_DNS);
        return;
    };
    let ev = entry.as_mut_ptr();
    let avail = (ctx.len() as usize).saturating_sub(payload_off);
    let m = if avail > DNS_PAYLOAD {
        DNS_PAYLOAD
    } else {
        avail
    };
    unsafe {
        (*ev).header = EventHeader {
            kind: EVENT_DNS,
            _pad: 0,
            ts_ns: now(),
        };
        (*ev).cgroup_id = cgroup_id;
        (*ev).family = family;
        (*ev).dst_port = dport;
        (*ev)._pad = 0;
        (*ev).src_addr = *server;
        (*ev).dst_addr = *local;
        (*ev).len = 0;
        if m > 0 {
            // The verifier needs a length it can prove is in [1, 512].
            let n = ((m - 1) & (DNS_PAYLOAD - 1)) + 1;
            let dst = (&raw mut (*ev).payload).cast::<core::ffi::c_void>();
            let ret = aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                ctx.as_ptr().cast::<__sk_buff>() as *const _,
                payload_off as u32,
                dst,
                n as u32,
            );
            if ret == 0 {
                (*ev).len = n as u16;
            }
        }
    }
    entry.submit(0);
}

// ---------------------------------------------------------------- drops

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let _ = unsafe { try_kfree_skb(&ctx) };
    0
}

unsafe fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i32> {
    if cfg().drops == 0 {
        return Ok(());
    }
    let o = off();
    unsafe {
        let reason: u32 = ctx.read_at(o.kfs_reason as usize)?;
        if reason <= o.min_drop_reason {
            return Ok(());
        }
        let mask = cfg().ignore_reasons;
        let word = ((reason >> 6) & 3) as usize;
        if reason < 256 && (mask[word] >> (reason & 63)) & 1 == 1 {
            return Ok(());
        }
        // The tracepoint stores ntohs(skb->protocol): host order already.
        let eth_proto: u16 = ctx.read_at(o.kfs_protocol as usize)?;
        let family = match eth_proto {
            ETH_P_IP => AF_INET,
            ETH_P_IPV6 => AF_INET6,
            _ => return Ok(()),
        };
        let mut key = DropKey {
            reason,
            family,
            ..Default::default()
        };
        if o.skb_head != 0 {
            let skb: u64 = ctx.read_at(o.kfs_skbaddr as usize)?;
            let head: u64 = bpf_probe_read_kernel((skb + o.skb_head as u64) as *const u64)?;
            let nh: u16 = bpf_probe_read_kernel((skb + o.skb_network_header as u64) as *const u16)?;
            if nh != 0xffff {
                let ip = head + nh as u64;
                // One read for the IP header, one for the ports.
                let l4;
                if family == AF_INET {
                    let iph: [u8; 20] = bpf_probe_read_kernel(ip as *const [u8; 20])?;
                    key.protocol = iph[9];
                    key.src_addr[..4].copy_from_slice(&iph[12..16]);
                    key.dst_addr[..4].copy_from_slice(&iph[16..20]);
                    l4 = ip + ((iph[0] & 0x0f) as u64) * 4;
                } else {
                    let iph: [u8; 40] = bpf_probe_read_kernel(ip as *const [u8; 40])?;
                    key.protocol = iph[6];
                    key.src_addr.copy_from_slice(&iph[8..24]);
                    key.dst_addr.copy_from_slice(&iph[24..40]);
                    l4 = ip + 40;
                }
                if key.protocol == IPPROTO_TCP
                    || key.protocol == IPPROTO_UDP
                    || key.protocol == IPPROTO_SCTP
                {
                    let ports: [u8; 4] = bpf_probe_read_kernel(l4 as *const [u8; 4])?;
                    key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
                    key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
                    key.has_tuple = 1;
                } else {
                    // Not a transport we audit (ICMP, ...): leave it to other tools.
                    return Ok(());
                }
            }
        }
        let t = now();
        if let Some(s) = DROPS.get_ptr_mut(&key) {
            add(&raw mut (*s).count, 1);
            (*s).last_seen_ns = t;
            return Ok(());
        }
        let stats = DropStats {
            first_seen_ns: t,
            last_seen_ns: t,
            count: 1,
        };
        if DROPS.insert(&key, &stats, 1).is_err() {
            if let Some(s) = DROPS.get_ptr_mut(&key) {
                add(&raw mut (*s).count, 1);
            }
            return Ok(());
        }
        match EVENTS.reserve::<DropEvent>(0) {
            Some(mut entry) => {
                let ev = entry.as_mut_ptr();
                (*ev).header = EventHeader {
                    kind: EVENT_DROP,
                    _pad: 0,
                    ts_ns: t,
                };
                (*ev).key = key;
                entry.submit(0);
            }
            None => count_lost(EVENT_DROP),
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
