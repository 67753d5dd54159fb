//! One flush: drain the ring buffer, read the kernel's counters, write one record per
//! changed flow, let go of the flows that are done, and account for every loss.
//!
//! The accounting invariant (tested in `record::fake` and tests/tests/recorder.rs):
//! every flow incarnation the kernel created either reaches the flow log (from the map,
//! or from its new-flow event when the map evicted it before the flush), or is counted
//! as `flow_unseen` (its event was lost and the map evicted it before a flush read it).

use std::collections::HashMap;
use std::net::IpAddr;

use auditor_ebpf as abi;

use super::kernel::KernelSource;
use super::output::Output;
use super::state::{DropIndex, State};
use super::table::{Counters, DIRTY, FROM_MAP, KEEP, PRESENT, WRITTEN};
use super::{kind_name, Limits};
use crate::decode::{self, Event};
use crate::flowlog::{FlowRecord, FlowState, Protocol};
use crate::procfs;

/// Reads up to `max` ring-buffer records; true when more may be waiting.
pub fn drain(k: &mut dyn KernelSource, state: &mut State, max: usize) -> bool {
    k.read_events(max, &mut |item| match decode::decode(item) {
        Ok(ev) => {
            let kind = match &ev {
                Event::NewFlow(_) => abi::EVENT_NEW_FLOW,
                Event::Outcome(_) => abi::EVENT_OUTCOME,
                Event::Drop { .. } => abi::EVENT_DROP,
                Event::Dns(_) => abi::EVENT_DNS,
            };
            // Counted without allocating once the kind has its entry.
            let name = kind_name(kind);
            match state.summary.events.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    state.summary.events.insert(name.to_owned(), 1);
                }
            }
            state.on_event(ev);
        }
        Err(e) => {
            state.summary.decode_errors += 1;
            tracing::warn!(error = %e, "undecodable ring buffer record");
        }
    })
}

/// A flow whose counters changed at this flush: what its record needs.
struct Pending {
    idx: u32,
    /// Kernel state code (0 where not known).
    state: u8,
    delta: Counters,
}

/// A record of this flush, in the order they are written.
enum Item {
    /// A kernel drop of no known flow, built whole.
    Drop(u64, Box<FlowRecord>),
    /// The flow record of `pending[pos]`, rebuilt when written.
    Flow {
        last_ns: u64,
        pos: u32,
        enriched: Option<Box<Enriched>>,
    },
}

/// What a record got from the cluster view (kept between building and writing it).
struct Enriched {
    src_ip: IpAddr,
    src: Option<crate::flowlog::Endpoint>,
    dst: Option<crate::flowlog::Endpoint>,
}

/// Records are handed to the output in chunks of whole lines of about this size.
const WRITE_CHUNK: usize = 8 << 20;

/// Drains events, reads the kernel's counters, writes the changed flows, lets go of
/// the flows that are done and updates the loss counters.
pub fn flush(k: &mut dyn KernelSource, state: &mut State, out: &mut Output, limits: &Limits) {
    let started = std::time::Instant::now();
    // How long each step took, for `--log debug`.
    let mut steps: [(&str, f64); 6] = Default::default();
    let mut lap = {
        let mut last = started;
        move |name: &'static str, i: usize, steps: &mut [(&str, f64); 6]| {
            let now = std::time::Instant::now();
            steps[i] = (name, now.duration_since(last).as_secs_f64() * 1000.0);
            last = now;
        }
    };
    drain(k, state, limits.flush_drain_max);
    state.refresh_cluster();
    lap("drain_ms", 0, &mut steps);
    let now_ns = k.now_ns();
    let (mut pending, idle) = scan_flows(k, state, now_ns, limits);
    from_events(state, &mut pending);
    let (flow_drops, mut items) = scan_drops(k, state, &mut pending);
    lap("scan_ms", 1, &mut steps);
    build_items(state, &mut pending, &flow_drops, &mut items);
    lap("build_ms", 2, &mut steps);
    write_items(state, out, &pending, &flow_drops, items);
    let due = state.dedup.tick(state.started.elapsed());
    state.send_alerts(due);
    lap("write_ms", 3, &mut steps);
    let written: Vec<u32> = pending.iter().map(|p| p.idx).collect();
    for i in written {
        state.flows.meta_mut(i).flags |= WRITTEN;
    }
    let_go(k, state, &idle);
    account_losses(k, state, out);
    lap("let_go_ms", 4, &mut steps);
    release_freed_memory(state.new_since_flush);
    lap("trim_ms", 5, &mut steps);
    let m = &state.shared.metrics;
    m.flushes.inc();
    m.flush_seconds.set(started.elapsed().as_secs_f64());
    m.flows_in_memory.set(state.flows.len() as i64);
    tracing::debug!(
        flows_in_memory = state.flows.len(),
        new_flows = state.new_since_flush,
        records = pending.len(),
        steps = ?steps,
        "flushed"
    );
    state.new_since_flush = 0;
}

/// Hands the memory a big flush freed back to the kernel (glibc keeps freed heap memory
/// otherwise, and the agent's RSS would creep up to its busiest flush under churn).
fn release_freed_memory(new_flows: usize) {
    #[cfg(target_env = "gnu")]
    if new_flows > 4096 {
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = new_flows;
}

/// Streams the kernel's `FLOWS` map: what changed since the last record becomes a
/// `Pending`, and `written` moves on to the kernel's counters. Also returns the flows
/// idle past `--flow-idle-timeout` whose counters are all written.
fn scan_flows(
    k: &mut dyn KernelSource,
    state: &mut State,
    now_ns: u64,
    limits: &Limits,
) -> (Vec<Pending>, Vec<(u32, abi::FlowKey)>) {
    let mut pending = Vec::new();
    let mut idle = Vec::new();
    k.for_each_flow(limits.scan_max, &mut |key, s| {
        let Ok(flow) = decode::flow(key) else { return };
        let idx = state.meta_for(&flow, s.src_port, || Some(procfs::comm_str(&s.comm)));
        if state.flows.entry(idx).meta.incarnation_ns != s.first_seen_ns {
            // An incarnation whose new-flow event has not been seen: lost, or late.
            state.new_incarnation(idx, s.first_seen_ns);
            state.flows.meta_mut(idx).flags |= FROM_MAP;
            state.recovered_from_map += 1;
        }
        let m = state.flows.meta_mut(idx);
        m.flags |= PRESENT;
        m.state = s.state;
        let now = Counters::of(s);
        if now != m.written && m.flags & DIRTY == 0 {
            m.flags |= DIRTY;
            let delta = now.since(&m.written);
            m.written = now;
            pending.push(Pending {
                idx,
                state: s.state,
                delta,
            });
        } else if now == m.written
            && limits.idle_ns > 0
            && now_ns.saturating_sub(s.last_seen_ns) > limits.idle_ns
            && (m.flags & WRITTEN != 0 || m.flags & KEEP == 0)
        {
            idle.push((idx, *key));
        }
        if m.first_seen_ns == 0 {
            m.first_seen_ns = s.first_seen_ns;
        }
        m.last_seen_ns = m.last_seen_ns.max(s.last_seen_ns);
        if m.src_port == 0 && s.src_port != 0 {
            m.src_port = s.src_port;
        }
        if s.last_src_port != 0 {
            m.last_src_port = s.last_src_port;
        }
    });
    (pending, idle)
}

/// Flows known from their new-flow event that the kernel's map evicted before this
/// flush read them: written from the event's own data (one connection or datagram).
fn from_events(state: &mut State, pending: &mut Vec<Pending>) {
    let mut evicted = 0u64;
    for (idx, e) in state.flows.iter() {
        let m = &e.meta;
        if m.flags & (PRESENT | WRITTEN | DIRTY) == 0 && m.keep() && m.incarnation_ns != 0 {
            pending.push(Pending {
                idx,
                state: m.state,
                delta: Counters {
                    count: 1,
                    ..Default::default()
                },
            });
            evicted += 1;
        }
    }
    for p in pending.iter().skip(pending.len() - evicted as usize) {
        state.flows.meta_mut(p.idx).flags |= DIRTY;
    }
    state.summary.flows_from_events += evicted;
}

/// Reads the kernel's `DROPS` map: new drops are attributed to flows (through an index)
/// or become records of their own. Bookkeeping follows the map (keys it no longer has
/// are forgotten).
fn scan_drops(
    k: &mut dyn KernelSource,
    state: &mut State,
    pending: &mut Vec<Pending>,
) -> (HashMap<u32, (u64, u32)>, Vec<Item>) {
    let mut new_drops: Vec<(decode::Drop, u64, u64)> = Vec::new();
    let mut seen: HashMap<abi::DropKey, u64> = HashMap::with_capacity(state.drop_written.len());
    k.for_each_drop(&mut |key, s| {
        let before = state.drop_written.get(key).copied().unwrap_or(0);
        seen.insert(*key, s.count);
        // An LRU eviction and re-insert restarts the kernel counter.
        let delta = if s.count >= before {
            s.count - before
        } else {
            s.count
        };
        if delta == 0 {
            return;
        }
        if let Ok(d) = decode::drop_key(key) {
            new_drops.push((d, delta, s.last_seen_ns));
        }
    });
    state.drop_written = seen;
    let mut items = Vec::new();
    let mut flow_drops: HashMap<u32, (u64, u32)> = HashMap::new();
    if new_drops.is_empty() {
        return (flow_drops, items);
    }
    let index = DropIndex::build(state, new_drops.iter().map(|(d, _, _)| d));
    for (d, delta, last) in new_drops {
        state.summary.drops += delta;
        let reason = state.reason_name(d.reason);
        *state
            .summary
            .drops_by_reason
            .entry(reason.clone())
            .or_default() += delta;
        match index.attribute(state, &d) {
            Some(idx) => {
                let slot = flow_drops.entry(idx).or_default();
                slot.0 += delta;
                slot.1 = d.reason;
                let m = state.flows.meta_mut(idx);
                m.last_seen_ns = m.last_seen_ns.max(last);
                if m.flags & DIRTY == 0 {
                    m.flags |= DIRTY;
                    let present = m.flags & PRESENT != 0;
                    pending.push(Pending {
                        idx,
                        state: if present { m.state } else { 0 },
                        delta: Counters::default(),
                    });
                }
            }
            None if state.comms.is_empty() && state.cgroup_prefix.is_none() => {
                if let (Some((s, sp, dst, dp)), Some(p)) = (d.tuple, d.protocol) {
                    items.push(Item::Drop(
                        last,
                        Box::new(FlowRecord {
                            src_port: Some(sp),
                            state: Some(FlowState::Dropped),
                            drop_reason: Some(reason),
                            drops: delta,
                            first_seen: state.time(last),
                            last_seen: state.time(last),
                            ..empty_record(s, dst, dp, p)
                        }),
                    ));
                }
            }
            None => {
                *state.summary.unattributed_drops.entry(reason).or_default() += delta;
            }
        }
    }
    (flow_drops, items)
}

/// Changed flows -> items, in flow order (metrics and alerts); filtered-out and empty
/// flows are dropped from `pending`'s use here (they stay in `pending` for bookkeeping).
fn build_items(
    state: &mut State,
    pending: &mut [Pending],
    flow_drops: &HashMap<u32, (u64, u32)>,
    items: &mut Vec<Item>,
) {
    pending.sort_unstable_by(|a, b| {
        state
            .flows
            .entry(a.idx)
            .flow
            .cmp(&state.flows.entry(b.idx).flow)
    });
    for (pos, p) in pending.iter().enumerate() {
        let drops = flow_drops.get(&p.idx).copied();
        let m = state.flows.meta_mut(p.idx);
        m.flags &= !DIRTY;
        if !m.keep() || (p.delta.is_zero() && drops.is_none_or(|d| d.0 == 0)) {
            continue;
        }
        let last_ns = m.last_seen_ns;
        let flow = state.flows.entry(p.idx).flow;
        let mut rec = flow_record(state, p, drops);
        let verdict = state.enrich(&flow, &mut rec);
        state.count_metrics(p.idx, &flow, &rec, verdict.as_deref());
        let enriched = state.cluster.is_some().then(|| {
            Box::new(Enriched {
                src_ip: rec.src_ip,
                src: rec.src.clone(),
                dst: rec.dst.clone(),
            })
        });
        let alerts = crate::alerts::Alert::from_record(&rec, verdict);
        if !alerts.is_empty() {
            let now = state.started.elapsed();
            let send = state.dedup.push(now, alerts);
            state.send_alerts(send);
        }
        items.push(Item::Flow {
            last_ns,
            pos: pos as u32,
            enriched,
        });
    }
}

/// Serialises the items in time order, then by (source, destination, port, protocol,
/// pid), and hands them to the output in chunks of whole lines.
fn write_items(
    state: &mut State,
    out: &mut Output,
    pending: &[Pending],
    flow_drops: &HashMap<u32, (u64, u32)>,
    mut items: Vec<Item>,
) {
    {
        let key = |it: &Item| match it {
            Item::Drop(last, r) => (*last, sort_key(r)),
            Item::Flow {
                last_ns,
                pos,
                enriched,
            } => {
                let e = state.flows.entry(pending[*pos as usize].idx);
                let src = enriched.as_ref().map_or(e.flow.src_ip, |x| x.src_ip);
                (
                    *last_ns,
                    (
                        src,
                        e.flow.dst_ip,
                        e.flow.dst_port,
                        e.flow.protocol,
                        e.meta.ident.pid,
                    ),
                )
            }
        };
        items.sort_by_key(|a| key(a));
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut in_buf = 0u64;
    for it in items {
        let rec = match it {
            Item::Drop(_, r) => *r,
            Item::Flow { pos, enriched, .. } => {
                let p = &pending[pos as usize];
                let mut r = flow_record(state, p, flow_drops.get(&p.idx).copied());
                if let Some(e) = enriched {
                    r.src_ip = e.src_ip;
                    r.src = e.src;
                    r.dst = e.dst;
                }
                r
            }
        };
        let start = buf.len();
        // Serialising a record into memory cannot fail (plain data, string keys).
        if serde_json::to_writer(&mut buf, &rec).is_err() {
            buf.truncate(start);
            continue;
        }
        if state.serve_flows {
            let json = String::from_utf8_lossy(&buf[start..]);
            let last_seen = rec.last_seen.as_deref().unwrap_or_default();
            state.shared.keep_lines([(last_seen, json)]);
        }
        buf.push(b'\n');
        in_buf += 1;
        if buf.len() >= WRITE_CHUNK {
            out.push(std::mem::take(&mut buf), in_buf);
            state.summary.records_written += in_buf;
            in_buf = 0;
        }
    }
    state.summary.records_written += in_buf;
    out.push(buf, in_buf);
}

/// The record of a changed flow (before `enrich`).
fn flow_record(state: &mut State, p: &Pending, drops: Option<(u64, u32)>) -> FlowRecord {
    let dns = state.dns_name_of(p.idx);
    let dns_name = dns.as_ref().map(|n| n.query.clone());
    let dns_cnames = dns.map(|n| n.cnames.clone()).unwrap_or_default();
    let e = state.flows.entry(p.idx);
    let (flow, m) = (&e.flow, &e.meta);
    let delta = p.delta;
    let drops_n = drops.map_or(0, |d| d.0);
    let state_v = decode::state(p.state).map(|st| {
        if drops_n > 0 && st == FlowState::Connecting {
            FlowState::Dropped
        } else {
            st
        }
    });
    FlowRecord {
        src_ip: flow.src_ip,
        src_port: (m.src_port != 0).then_some(m.src_port),
        dst_ip: flow.dst_ip,
        dst_port: flow.dst_port,
        protocol: flow.protocol,
        direction: Some(flow.direction),
        state: state_v,
        drop_reason: drops
            .filter(|d| d.0 > 0)
            .map(|(_, reason)| state.reason_name(reason)),
        syn_retransmits: delta.syn_retransmits,
        pid: m.ident.pid,
        comm: m.ident.comm.clone(),
        thread_comm: m.ident.thread_comm.clone(),
        exe: m.ident.exe.clone(),
        cgroup_id: Some(flow.cgroup_id),
        cgroup: m.ident.cgroup.clone(),
        dns_name,
        dns_cnames,
        first_seen: state.time(m.first_seen_ns),
        last_seen: state.time(m.last_seen_ns),
        count: delta.count,
        established: delta.established,
        refused: delta.refused,
        timed_out: delta.timed_out,
        drops: drops_n,
        src: None,
        dst: None,
    }
}

/// Flows leave the table once they are written (or filtered out) and gone from the
/// kernel map; idle flows leave the kernel map too. Unused identities and expired DNS
/// names go with them.
fn let_go(k: &mut dyn KernelSource, state: &mut State, idle: &[(u32, abi::FlowKey)]) {
    let mut gone: Vec<u32> = Vec::new();
    for (i, e) in state.flows.iter() {
        let m = &e.meta;
        if m.flags & PRESENT == 0 {
            // Evicted by the kernel's LRU since the last flush: what it counted after
            // that flush (beyond what its event said) is lost.
            if m.keep() {
                state.summary.flow_map_evictions += 1;
            }
            gone.push(i);
        }
    }
    for &(i, key) in idle {
        k.remove_flow(&key);
        gone.push(i);
    }
    state.summary.flows_released += gone.len() as u64;
    for i in gone {
        state.flows.remove(i);
    }
    for e in state.flows.iter_mut() {
        e.meta.flags &= !PRESENT;
    }
    state.free_idents();
    state.expire_dns(std::time::Instant::now());
}

/// Updates the loss counters of the summary and /metrics from the kernel and the output.
fn account_losses(k: &mut dyn KernelSource, state: &mut State, out: &Output) {
    let lost = k.lost();
    for (kind, &n) in lost.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let slot = state
            .summary
            .lost_events
            .entry(kind_name(kind as u32).to_string())
            .or_default();
        if *slot != n {
            tracing::warn!(
                kind = kind_name(kind as u32),
                lost = n - *slot,
                total = n,
                "ring buffer full: events lost (flows still in the kernel map are recovered from it)"
            );
            *slot = n;
        }
    }
    let unseen = lost[abi::EVENT_NEW_FLOW as usize].saturating_sub(state.recovered_from_map);
    if unseen
        > state
            .summary
            .losses
            .get("flow_unseen")
            .copied()
            .unwrap_or(0)
    {
        tracing::warn!(
            total = unseen,
            "flows lost before the recorder saw them (new-flow event lost and the kernel map evicted the flow before a flush): raise --ring-buffer-bytes or --max-flows"
        );
    }
    let losses = [
        ("ringbuf", state.summary.lost_events.values().sum::<u64>()),
        ("flow_unseen", unseen),
        ("flow_map", state.summary.flow_map_evictions),
        ("decode", state.summary.decode_errors),
        ("log_buffer", out.overflowed_records),
    ];
    for (kind, n) in losses {
        state.summary.losses.insert(kind.to_string(), n);
        state.shared.metrics.set_lost(kind, n);
    }
    state.summary.records_buffered = out.pending_records();
    state.shared.set_fault(
        "flow_log",
        out.fault
            .as_ref()
            .map(|f| format!("{f}; {} records buffered", out.pending_records())),
    );
}

fn sort_key(r: &FlowRecord) -> (IpAddr, IpAddr, u16, Protocol, Option<u32>) {
    (r.src_ip, r.dst_ip, r.dst_port, r.protocol, r.pid)
}

fn empty_record(src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> FlowRecord {
    FlowRecord {
        src_ip: src,
        src_port: None,
        dst_ip: dst,
        dst_port: port,
        protocol,
        direction: None,
        state: None,
        drop_reason: None,
        syn_retransmits: 0,
        pid: None,
        comm: None,
        thread_comm: None,
        exe: None,
        cgroup_id: None,
        cgroup: None,
        dns_name: None,
        dns_cnames: Vec::new(),
        first_seen: None,
        last_seen: None,
        count: 0,
        established: 0,
        refused: 0,
        timed_out: 0,
        drops: 0,
        src: None,
        dst: None,
    }
}
