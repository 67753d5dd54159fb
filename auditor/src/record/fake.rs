//! A fake kernel for the recorder's accounting and fault tests (no root): an LRU flow
//! map of `max_flows` entries that inserts and emits new-flow events as the eBPF
//! `touch_flow` does, a ring buffer of `ring_events` records that counts what it
//! cannot hold in `LOST`, and a drop map.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use auditor_ebpf as abi;

use super::flush::{drain, flush};
use super::kernel::KernelSource;
use super::output::Output;
use super::state::State;
use super::Limits;

pub struct FakeKernel {
    pub now: u64,
    max_flows: usize,
    ring_events: usize,
    flows: HashMap<abi::FlowKey, (abi::FlowStats, u64)>,
    /// LRU order: touch sequence -> key.
    lru: BTreeMap<u64, abi::FlowKey>,
    seq: u64,
    ring: VecDeque<Vec<u8>>,
    lost: [u64; abi::EVENT_KINDS as usize],
    drops: HashMap<abi::DropKey, abi::DropStats>,
}

fn bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: a repr(C) ABI value viewed as bytes (test only).
    unsafe {
        std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec()
    }
}

/// A UDP flow key: one distinct flow per `n`.
pub fn udp_key(n: u32) -> abi::FlowKey {
    let mut k = abi::FlowKey {
        cgroup_id: 1,
        tgid: 4242,
        family: abi::AF_INET,
        protocol: abi::IPPROTO_UDP,
        direction: abi::DIR_EGRESS,
        dst_port: 1000 + (n % 60000) as u16,
        ..Default::default()
    };
    k.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
    let hi = n / 60000;
    k.dst_addr[..4].copy_from_slice(&[10, 1, (hi >> 8) as u8, hi as u8]);
    k
}

impl FakeKernel {
    pub fn new(max_flows: usize, ring_events: usize) -> Self {
        Self {
            now: 1_000_000_000,
            max_flows,
            ring_events,
            flows: HashMap::new(),
            lru: BTreeMap::new(),
            seq: 0,
            ring: VecDeque::new(),
            lost: [0; abi::EVENT_KINDS as usize],
            drops: HashMap::new(),
        }
    }

    /// One datagram of flow `key`, as `touch_flow` counts it.
    pub fn touch(&mut self, key: abi::FlowKey) {
        self.now += 1_000;
        self.seq += 1;
        if let Some((s, seq)) = self.flows.get_mut(&key) {
            s.count += 1;
            s.last_seen_ns = self.now;
            self.lru.remove(seq);
            *seq = self.seq;
            self.lru.insert(self.seq, key);
            return;
        }
        if self.flows.len() >= self.max_flows {
            let (&old, &victim) = self.lru.iter().next().expect("map is full");
            self.lru.remove(&old);
            self.flows.remove(&victim);
        }
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"ffmpeg");
        let stats = abi::FlowStats {
            first_seen_ns: self.now,
            last_seen_ns: self.now,
            count: 1,
            state: abi::STATE_SENT,
            src_port: 40000,
            last_src_port: 40000,
            comm,
            ..Default::default()
        };
        self.flows.insert(key, (stats, self.seq));
        self.lru.insert(self.seq, key);
        let mut ev = abi::FlowEvent {
            key,
            src_port: 40000,
            state: abi::STATE_SENT,
            comm,
            ..Default::default()
        };
        ev.header.kind = abi::EVENT_NEW_FLOW;
        ev.header.ts_ns = self.now;
        self.emit(abi::EVENT_NEW_FLOW, bytes(&ev));
    }

    fn emit(&mut self, kind: u32, rec: Vec<u8>) {
        if self.ring.len() >= self.ring_events {
            self.lost[kind as usize] += 1;
        } else {
            self.ring.push_back(rec);
        }
    }

    pub fn map_len(&self) -> usize {
        self.flows.len()
    }
}

impl KernelSource for FakeKernel {
    fn read_events(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> bool {
        for _ in 0..max {
            match self.ring.pop_front() {
                Some(r) => f(&r),
                None => return false,
            }
        }
        !self.ring.is_empty()
    }

    fn for_each_flow(&mut self, max: usize, f: &mut dyn FnMut(&abi::FlowKey, &abi::FlowStats)) {
        for (k, (s, _)) in self.flows.iter().take(max) {
            f(k, s);
        }
    }

    fn for_each_drop(&mut self, f: &mut dyn FnMut(&abi::DropKey, &abi::DropStats)) {
        for (k, s) in &self.drops {
            f(k, s);
        }
    }

    fn lost(&mut self) -> [u64; abi::EVENT_KINDS as usize] {
        self.lost
    }

    fn remove_flow(&mut self, key: &abi::FlowKey) {
        if let Some((_, seq)) = self.flows.remove(key) {
            self.lru.remove(&seq);
        }
    }

    fn now_ns(&self) -> u64 {
        self.now
    }
}

/// A recorder on a fake kernel, writing to a temporary flow log.
pub struct Rig {
    pub kernel: FakeKernel,
    pub state: State,
    pub out: Output,
    pub limits: Limits,
    pub path: PathBuf,
}

impl Rig {
    pub fn new(name: &str, max_flows: usize, ring_events: usize) -> Self {
        let path =
            std::env::temp_dir().join(format!("auditor-fake-{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Rig {
            kernel: FakeKernel::new(max_flows, ring_events),
            state: State::new(crate::serve::Shared::new(10), Duration::from_secs(60)),
            out: Output::open(&path, 0, 1 << 20).expect("temp flow log"),
            limits: Limits {
                loop_drain_max: 4096,
                flush_drain_max: ring_events * 2,
                idle_ns: 0,
                early_flush_after: usize::MAX,
                scan_max: max_flows * 2,
            },
            path,
        }
    }

    pub fn drain(&mut self) {
        while drain(
            &mut self.kernel,
            &mut self.state,
            self.limits.loop_drain_max,
        ) {}
    }

    pub fn flush(&mut self) {
        flush(
            &mut self.kernel,
            &mut self.state,
            &mut self.out,
            &self.limits,
        );
    }

    /// Distinct (dst_ip, dst_port) of the flow log.
    pub fn logged(&self) -> BTreeSet<(String, u64)> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                (
                    v["dst_ip"].as_str().unwrap_or_default().to_string(),
                    v["dst_port"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    pub fn loss(&self, kind: &str) -> u64 {
        self.state.summary.losses.get(kind).copied().unwrap_or(0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Generates `per_interval` new flows per interval for `intervals` intervals, the
/// reader draining every `drain_every` flows; returns flows generated.
fn churn(rig: &mut Rig, per_interval: u32, intervals: u32, drain_every: u32) -> u64 {
    let mut n = 0u32;
    for _ in 0..intervals {
        for _ in 0..per_interval {
            rig.kernel.touch(udp_key(n));
            n += 1;
            if n.is_multiple_of(drain_every) {
                rig.drain();
            }
        }
        rig.flush();
    }
    u64::from(n)
}

#[test]
fn every_flow_is_logged_beyond_the_map_size() {
    // 1.5x and 10x the map's size per interval; the reader keeps up with the events.
    for factor in [15u32, 100] {
        let mut rig = Rig::new(&format!("beyond{factor}"), 1000, 100_000);
        let generated = churn(&mut rig, 1000 * factor / 10, 3, 100);
        let logged = rig.logged().len() as u64;
        assert_eq!(
            logged, generated,
            "{factor}/10 x --max-flows per interval: every flow reaches the log"
        );
        assert_eq!(rig.loss("flow_unseen"), 0);
        assert!(
            rig.state.summary.flows_from_events > 0,
            "some flows were written from their event (the map evicted them)"
        );
        assert_eq!(rig.state.summary.flows as u64, generated);
    }
}

#[test]
fn flows_lost_in_the_kernel_are_counted_exactly() {
    // A ring buffer of 50 records read every 400 flows, a map of 1000: events are lost,
    // and of those flows the map evicts some before the flush. generated == logged + unseen.
    for factor in [15u32, 100] {
        let mut rig = Rig::new(&format!("lost{factor}"), 1000, 50);
        let generated = churn(&mut rig, 1000 * factor / 10, 3, 400);
        let logged = rig.logged().len() as u64;
        let unseen = rig.loss("flow_unseen");
        assert!(rig.kernel.lost[abi::EVENT_NEW_FLOW as usize] > 0);
        assert!(
            unseen > 0,
            "at {factor}/10 x some flows lost both their event and their map entry"
        );
        assert_eq!(
            logged + unseen,
            generated,
            "{factor}/10 x: logged {logged} + unseen {unseen} == generated {generated}"
        );
        // The summary and /metrics say the same.
        let text = rig.state.shared.metrics.render();
        for (kind, n) in &rig.state.summary.losses {
            let needle = format!("auditor_events_lost_total{{kind=\"{kind}\"}} {n}");
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
    }
}

#[test]
fn late_events_are_not_counted_as_lost() {
    // The flush finds flows in the map whose events are still in the ring buffer (read
    // only after the scan): they are recovered, then the late events take that back.
    let mut rig = Rig::new("late", 10_000, 100_000);
    rig.limits.flush_drain_max = 0;
    for n in 0..500 {
        rig.kernel.touch(udp_key(n));
    }
    rig.flush();
    assert_eq!(rig.state.recovered_from_map, 500);
    rig.drain();
    assert_eq!(rig.state.recovered_from_map, 0);
    rig.flush();
    assert_eq!(rig.loss("flow_unseen"), 0);
    assert_eq!(rig.logged().len(), 500);
}

#[test]
fn memory_follows_the_map_not_the_flows_ever_seen() {
    let mut rig = Rig::new("memory", 500, 100_000);
    let mut n = 0;
    for _ in 0..20 {
        for _ in 0..1500 {
            rig.kernel.touch(udp_key(n));
            n += 1;
            if n % 100 == 0 {
                rig.drain();
            }
        }
        rig.flush();
        assert!(
            rig.state.flows.len() <= 500,
            "after a flush the table holds at most the map's flows: {}",
            rig.state.flows.len()
        );
        assert!(rig.state.idents.len() <= 1);
    }
    assert_eq!(rig.logged().len() as u32, n);
    assert_eq!(
        rig.state.summary.flows_released,
        u64::from(n) - rig.state.flows.len() as u64
    );
}

#[test]
fn idle_flows_leave_the_kernel_map_and_come_back_as_new() {
    let mut rig = Rig::new("idle", 1000, 1000);
    rig.limits.idle_ns = 5_000_000_000;
    for n in 0..10 {
        rig.kernel.touch(udp_key(n));
    }
    rig.drain();
    rig.flush();
    assert_eq!(rig.kernel.map_len(), 10);
    rig.kernel.now += 6_000_000_000;
    rig.kernel.touch(udp_key(0)); // still active
    rig.flush(); // writes flow 0's new datagram; the 9 others are idle
    assert_eq!(rig.kernel.map_len(), 1);
    assert_eq!(rig.state.flows.len(), 1);
    rig.kernel.touch(udp_key(5));
    rig.drain();
    rig.flush();
    let text = std::fs::read_to_string(&rig.path).unwrap();
    let port5 = text
        .lines()
        .filter(|l| l.contains("\"dst_port\":1005"))
        .count();
    assert_eq!(
        port5, 2,
        "written once, then again as a new flow after it came back"
    );
    assert_eq!(rig.loss("flow_unseen"), 0);
}
