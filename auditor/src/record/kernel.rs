//! What the recorder reads from the kernel, behind one trait: ring-buffer records, the
//! `FLOWS` and `DROPS` maps, and the `LOST` counters. The flush logic only sees this
//! trait, so the accounting and fault tests run on a fake (`record::fake`) without root.

use auditor_ebpf as abi;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};

use crate::probe::Probe;

/// The kernel side of the recorder.
pub trait KernelSource {
    /// Hands up to `max` ring-buffer records to `f`, oldest first. Returns true when it
    /// stopped because of `max` (more may be waiting).
    fn read_events(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> bool;
    /// The entries of the `FLOWS` map, at most `max` of them. Under churn the kernel's
    /// key walk restarts from the first key whenever the key it stood on was evicted, so
    /// an unbounded walk may never end; an entry may be handed over more than once.
    fn for_each_flow(&mut self, max: usize, f: &mut dyn FnMut(&abi::FlowKey, &abi::FlowStats));
    /// Every entry of the `DROPS` map.
    fn for_each_drop(&mut self, f: &mut dyn FnMut(&abi::DropKey, &abi::DropStats));
    /// Ring-buffer records the kernel could not reserve, by event kind (totals).
    fn lost(&mut self) -> [u64; abi::EVENT_KINDS as usize];
    /// Removes an idle flow from the `FLOWS` map (its counters were written).
    fn remove_flow(&mut self, key: &abi::FlowKey);
    /// The kernel's clock (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), in ns.
    fn now_ns(&self) -> u64;
}

/// The real kernel: the loaded programs' maps and the ring buffer.
pub struct AyaKernel<'a> {
    pub probe: &'a mut Probe,
    pub ring: &'a mut RingBuf<MapData>,
}

impl KernelSource for AyaKernel<'_> {
    fn read_events(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> bool {
        for _ in 0..max {
            match self.ring.next() {
                Some(item) => f(&item),
                None => return false,
            }
        }
        true
    }

    fn for_each_flow(&mut self, max: usize, f: &mut dyn FnMut(&abi::FlowKey, &abi::FlowStats)) {
        let Some(map) = self.probe.ebpf.map("FLOWS") else {
            return;
        };
        let Ok(flows) = BpfHashMap::<_, abi::FlowKey, abi::FlowStats>::try_from(map) else {
            return;
        };
        for (k, s) in flows.iter().flatten().take(max) {
            f(&k, &s);
        }
    }

    fn for_each_drop(&mut self, f: &mut dyn FnMut(&abi::DropKey, &abi::DropStats)) {
        let Some(map) = self.probe.ebpf.map("DROPS") else {
            return;
        };
        let Ok(drops) = BpfHashMap::<_, abi::DropKey, abi::DropStats>::try_from(map) else {
            return;
        };
        // Bounded like the flow walk (see `for_each_flow`).
        for (k, s) in drops.iter().flatten().take(1 << 20) {
            f(&k, &s);
        }
    }

    fn lost(&mut self) -> [u64; abi::EVENT_KINDS as usize] {
        let mut out = [0; abi::EVENT_KINDS as usize];
        if let Some(map) = self.probe.ebpf.map("LOST") {
            if let Ok(lost) = Array::<_, u64>::try_from(map) {
                for (k, slot) in out.iter_mut().enumerate() {
                    *slot = lost.get(&(k as u32), 0).unwrap_or(0);
                }
            }
        }
        out
    }

    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn remove_flow(&mut self, key: &abi::FlowKey) {
        if let Some(map) = self.probe.ebpf.map_mut("FLOWS") {
            if let Ok(mut flows) = BpfHashMap::<_, abi::FlowKey, abi::FlowStats>::try_from(map) {
                // Gone already (evicted by the LRU) is fine.
                let _ = flows.remove(key);
            }
        }
    }
}
