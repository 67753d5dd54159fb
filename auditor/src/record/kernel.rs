//! What the recorder reads from the kernel, behind one trait: ring-buffer records, the
//! `FLOWS` and `DROPS` maps, and the `LOST` counters. The flush logic only sees this
//! trait, so the accounting and fault tests run on a fake (`record::fake`) without root.

use auditor_ebpf as abi;
use aya::maps::{Array, HashMap as BpfHashMap};

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

/// The real kernel: the loaded programs' maps, and the ring buffer (read by its own
/// thread, [`super::reader`]).
pub struct AyaKernel<'a> {
    pub probe: &'a mut Probe,
    pub events: &'a mut super::reader::Events,
}

impl KernelSource for AyaKernel<'_> {
    fn read_events(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> bool {
        self.events.read(max, f)
    }

    fn for_each_flow(&mut self, max: usize, f: &mut dyn FnMut(&abi::FlowKey, &abi::FlowStats)) {
        let Some(map) = self.probe.ebpf.map("FLOWS") else {
            return;
        };
        if let aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data) = map {
            use std::os::fd::{AsFd, AsRawFd};
            let fd = data.fd().as_fd().as_raw_fd();
            match lookup_batch(fd, max, f) {
                Ok(()) => return,
                // Read nothing: this kernel has no batch lookup for the map; walk it.
                Err(e) => tracing::debug!(error = %e, "no batch lookup; walking the flow map"),
            }
        }
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

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 4096;

/// Reads a hash map's entries with `BPF_MAP_LOOKUP_BATCH`: one system call per few
/// thousand entries instead of two per entry, bucket by bucket, so churn does not restart
/// the walk. At most `max` entries. An error before any entry was read is returned (the
/// caller walks the map instead); one after is the end of the walk.
fn lookup_batch(
    fd: i32,
    max: usize,
    f: &mut dyn FnMut(&abi::FlowKey, &abi::FlowStats),
) -> std::io::Result<()> {
    /// `union bpf_attr`'s `batch` member.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let (ks, vs) = (
        std::mem::size_of::<abi::FlowKey>(),
        std::mem::size_of::<abi::FlowStats>(),
    );
    let mut keys = vec![0u8; BATCH * ks];
    let mut values = vec![0u8; BATCH * vs];
    // The kernel's cursor: a bucket index for hash maps (u32; room for more).
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut first = true;
    let mut seen = 0usize;
    while seen < max {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::addr_of!(cursor_in) as u64
            },
            out_batch: std::ptr::addr_of_mut!(cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH.min(max - seen) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a batch attr whose buffers hold `count` keys and values of
        // the map's sizes and stay alive for the call; the kernel writes `count` back.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::addr_of_mut!(attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(BATCH);
        for i in 0..n {
            // SAFETY: the kernel wrote n whole entries; the types are plain data
            // (read unaligned from the byte buffers).
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * ks).cast::<abi::FlowKey>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * vs).cast::<abi::FlowStats>()),
                )
            };
            f(&k, &v);
        }
        seen += n;
        match err {
            None => {}
            // The last buckets were read.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) if first && n == 0 => return Err(e),
            Some(e) => {
                tracing::debug!(error = %e, entries = seen, "flow map batch lookup ended early");
                return Ok(());
            }
        }
        cursor_in = cursor_out;
        first = false;
    }
    Ok(())
}
