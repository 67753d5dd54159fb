//! The recorder's table of live flows: what it keeps about a flow between flushes
//! beyond the kernel's counters. A flow leaves the table once it has been written and
//! is gone from the kernel map (or was idle past `--flow-idle-timeout`), so the table
//! holds O(`--max-flows`) entries plus the flows that came and went within one interval.

use std::collections::HashMap;
use std::sync::Arc;

use crate::decode::Flow;

/// Who a flow belongs to: the same for every flow of a process in a cgroup, so it is
/// interned (one allocation per process and thread name, shared by all their flows).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Ident {
    /// The owning process: the flow key's, or the receiving socket's owner found in /proc.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub thread_comm: Option<String>,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
}

/// `Meta::flags`: the flow passes the filters.
pub const KEEP: u8 = 1;
/// `Meta::flags`: changed since the last record (counters or drops).
pub const DIRTY: u8 = 2;
/// `Meta::flags`: already counted in `auditor_flows_total`.
pub const COUNTED: u8 = 4;
/// `Meta::flags`: in the kernel map at this flush (cleared at the end of every flush).
pub const PRESENT: u8 = 8;
/// `Meta::flags`: at least one record of the flow was written (or buffered for writing).
pub const WRITTEN: u8 = 16;
/// `Meta::flags`: the current incarnation was found in the kernel map without its
/// new-flow event (the event was lost, or is still in the ring buffer).
pub const FROM_MAP: u8 = 32;
/// `Meta::flags`: already counted in `auditor_flows_blocked_although_allowed_total`.
pub const BLOCKED_COUNTED: u8 = 64;
/// `Meta::flags`: the slot is free (the flow left the table).
pub const FREE: u8 = 128;

/// Counters of a flow, in the order of the kernel's `FlowStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub count: u64,
    pub established: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub errors: u64,
    pub syn_retransmits: u64,
}

impl Counters {
    pub fn of(s: &auditor_ebpf::FlowStats) -> Self {
        Self {
            count: s.count,
            established: s.established,
            refused: s.refused,
            timed_out: s.timed_out,
            errors: s.errors,
            syn_retransmits: s.syn_retransmits,
        }
    }

    fn fields(&self) -> [u64; 6] {
        [
            self.count,
            self.established,
            self.refused,
            self.timed_out,
            self.errors,
            self.syn_retransmits,
        ]
    }

    pub fn is_zero(&self) -> bool {
        self.fields().iter().all(|v| *v == 0)
    }

    /// What is new since `written`; a counter that went down restarted from 0.
    pub fn since(&self, written: &Counters) -> Counters {
        let d = |n: u64, w: u64| if n >= w { n - w } else { n };
        Counters {
            count: d(self.count, written.count),
            established: d(self.established, written.established),
            refused: d(self.refused, written.refused),
            timed_out: d(self.timed_out, written.timed_out),
            errors: d(self.errors, written.errors),
            syn_retransmits: d(self.syn_retransmits, written.syn_retransmits),
        }
    }
}

/// What the recorder keeps about a flow between flushes (about 110 bytes).
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub ident: Arc<Ident>,
    /// The DNS name the flow's destination was looked up by, pinned when first found.
    pub dns_name: Option<Arc<super::state::DnsNames>>,
    /// Counters already written.
    pub written: Counters,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The kernel's `first_seen_ns` of the map entry this record knows (the incarnation).
    pub incarnation_ns: u64,
    /// Initiator port of the first connection; 0: not known.
    pub src_port: u16,
    /// Initiator port of the latest connection, from the kernel's counters; 0: not known.
    pub last_src_port: u16,
    /// The kernel's state code at the latest flush that found the flow in the map, or
    /// the state of its new-flow event.
    pub state: u8,
    pub flags: u8,
}

impl Meta {
    pub fn keep(&self) -> bool {
        self.flags & KEEP != 0
    }
}

pub struct Entry {
    pub flow: Flow,
    pub meta: Meta,
}

/// Live flows by index: entries in fixed-size chunks (growing never copies them or
/// doubles their memory), free slots reused, and an index from a 32-bit hash of the
/// flow to its entry, the rare flows whose hash is taken kept in an ordinary map.
pub struct FlowTable {
    chunks: Vec<Vec<Entry>>,
    slots: u32,
    live: u32,
    free: Vec<u32>,
    hasher: std::hash::RandomState,
    index: HashMap<u32, u32, std::hash::BuildHasherDefault<Mix32>>,
    collisions: HashMap<Flow, u32>,
}

const CHUNK: usize = 4096;

/// Hasher for keys that are already hashes: spreads a u32 over 64 bits.
#[derive(Default)]
pub struct Mix32(u64);

impl std::hash::Hasher for Mix32 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Default for FlowTable {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            slots: 0,
            live: 0,
            free: Vec::new(),
            hasher: std::hash::RandomState::new(),
            index: HashMap::default(),
            collisions: HashMap::new(),
        }
    }
}

impl FlowTable {
    fn hash(&self, flow: &Flow) -> u32 {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(flow);
        (h >> 32) as u32 ^ h as u32
    }

    pub fn get(&self, flow: &Flow) -> Option<u32> {
        let i = *self.index.get(&self.hash(flow))?;
        if self.entry(i).flow == *flow {
            Some(i)
        } else {
            self.collisions.get(flow).copied()
        }
    }

    /// Adds a flow that is not in the table yet.
    pub fn insert(&mut self, flow: Flow, meta: Meta) -> u32 {
        let i = match self.free.pop() {
            Some(i) => {
                *self.slot_mut(i) = Entry { flow, meta };
                i
            }
            None => {
                let i = self.slots;
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                self.chunks
                    .last_mut()
                    .expect("pushed above")
                    .push(Entry { flow, meta });
                self.slots += 1;
                i
            }
        };
        self.live += 1;
        match self.index.entry(self.hash(&flow)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.insert(flow, i);
            }
        }
        i
    }

    /// Takes entry `i` out of the table; its slot is reused by a later insert.
    pub fn remove(&mut self, i: u32) {
        let flow = self.entry(i).flow;
        if self.collisions.remove(&flow).is_none() {
            let h = self.hash(&flow);
            self.index.remove(&h);
            // A flow that collided with this one moves into the index.
            if let Some((&f, &j)) = self.collisions.iter().find(|(f, _)| self.hash(f) == h) {
                self.collisions.remove(&f);
                self.index.insert(h, j);
            }
        }
        let e = self.slot_mut(i);
        e.meta = Meta {
            flags: FREE,
            ..Default::default()
        };
        self.free.push(i);
        self.live -= 1;
    }

    fn slot_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    pub fn entry(&self, i: u32) -> &Entry {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    pub fn meta_mut(&mut self, i: u32) -> &mut Meta {
        &mut self.slot_mut(i).meta
    }

    pub fn meta_of(&self, flow: &Flow) -> Option<&Meta> {
        self.get(flow).map(|i| &self.entry(i).meta)
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.live as usize
    }

    /// Live entries with their index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, e)| e.meta.flags & FREE == 0)
            .map(|(i, e)| (i as u32, e))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.chunks
            .iter_mut()
            .flatten()
            .filter(|e| e.meta.flags & FREE == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowlog::{Direction, Protocol};
    use std::net::IpAddr;

    fn f(i: u32) -> Flow {
        Flow {
            cgroup_id: u64::from(i % 7),
            tgid: i / 65536,
            protocol: Protocol::Udp,
            direction: Direction::Egress,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: IpAddr::from(i.to_be_bytes()),
            dst_port: (i % 65536) as u16,
        }
    }

    #[test]
    fn flow_table_finds_every_flow_by_index() {
        // 300,000 flows: a few share a 32-bit hash, so the collision path is taken too.
        let mut t = FlowTable::default();
        for i in 0..300_000 {
            assert_eq!(t.insert(f(i), Meta::default()), i);
        }
        for i in (0..300_000).step_by(7) {
            assert_eq!(t.get(&f(i)), Some(i));
            assert_eq!(t.entry(i).flow, f(i));
        }
        assert_eq!(t.get(&f(300_001)), None);
        assert_eq!(t.iter().count(), 300_000);
        assert_eq!(t.index.len() + t.collisions.len(), 300_000);
    }

    #[test]
    fn removed_flows_leave_and_their_slots_are_reused() {
        let mut t = FlowTable::default();
        for round in 0..20u32 {
            // 10,000 new flows a round, the previous round's removed: the table never
            // grows past one round's worth of slots (plus a chunk).
            let ids: Vec<u32> = (0..10_000)
                .map(|i| t.insert(f(round * 10_000 + i), Meta::default()))
                .collect();
            assert_eq!(t.len(), 10_000);
            for (n, i) in ids.iter().enumerate() {
                assert_eq!(t.get(&f(round * 10_000 + n as u32)), Some(*i));
            }
            for i in ids {
                t.remove(i);
            }
            assert_eq!(t.len(), 0);
            assert_eq!(t.get(&f(round * 10_000)), None);
        }
        assert!(t.slots as usize <= 10_000 + CHUNK, "slots {}", t.slots);
        assert_eq!(t.index.len() + t.collisions.len(), 0);
        assert_eq!(t.iter().count(), 0);
    }
}
