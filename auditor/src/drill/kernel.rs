//! Loading the drill's programs, attaching them to the target cgroups, reading what they saw.
//!
//! The links belong to this process and are never pinned: dropping [`Block`], a return
//! from `auditor drill`, a signal or the process's death closes them, and the kernel
//! detaches the programs. bpf_link is what makes that true (kernel 5.7 or newer); an older
//! kernel would keep a legacy attachment after the process, so the drill refuses it.

use std::path::PathBuf;

use auditor_ebpf::{DrillPeer, DrillPeerStats, DrillRule, DrillStats, DrillWindow};
use aya::maps::{Array, HashMap as BpfHashMap};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};

use super::plan::Direction;
use super::DrillError;
use crate::probe;

/// The drill's object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/auditor-drill"));

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The loaded, attached block. Dropping it detaches every program.
pub struct Block {
    ebpf: Ebpf,
    rules: u32,
}

impl Block {
    pub fn attach(
        rules: &[DrillRule],
        window: DrillWindow,
        cgroups: &[PathBuf],
        direction: Direction,
    ) -> Result<Self, DrillError> {
        if OBJECT.is_empty() {
            return Err(probe::ProbeError::NoObject.into());
        }
        let missing = probe::missing_capabilities();
        if !missing.is_empty() {
            return Err(probe::ProbeError::Capabilities { missing }.into());
        }
        match aya::util::KernelVersion::current() {
            Ok(v) if v >= aya::util::KernelVersion::new(5, 7, 0) => {}
            Ok(v) => return Err(DrillError::Kernel(format!(
                "kernel {v:?} has no bpf_link for cgroup programs (5.7 or newer): a block attached without one would outlive the drill process, so the drill refuses to run"
            ))),
            Err(e) => return Err(DrillError::Kernel(format!("cannot tell the kernel version ({e}); the drill needs 5.7 or newer"))),
        }
        probe::raise_memlock();
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(probe::load_error)?;
        {
            let map = ebpf
                .map_mut("RULES")
                .ok_or(probe::ProbeError::MissingMap("RULES"))?;
            let mut arr = Array::<_, DrillRule>::try_from(map).map_err(kernel("RULES"))?;
            for (i, r) in rules.iter().enumerate() {
                arr.set(i as u32, r, 0).map_err(kernel("RULES"))?;
            }
        }
        let mut block = Block {
            ebpf,
            rules: rules.len() as u32,
        };
        block.set_window(window)?;
        let wanted: &[(&str, CgroupSkbAttachType)] = match direction {
            Direction::Egress => &[("drill_egress", CgroupSkbAttachType::Egress)],
            Direction::Ingress => &[("drill_ingress", CgroupSkbAttachType::Ingress)],
            Direction::Both => &[
                ("drill_egress", CgroupSkbAttachType::Egress),
                ("drill_ingress", CgroupSkbAttachType::Ingress),
            ],
        };
        for (name, attach_type) in wanted {
            let p: &mut CgroupSkb = probe::program(&mut block.ebpf, name)
                .map_err(|e| DrillError::Kernel(format!("{name}: {e}")))?;
            p.load()
                .map_err(|e| DrillError::Kernel(format!("load {name}: {}", probe::chain(&e))))?;
            for cg in cgroups {
                let f = std::fs::File::open(cg).map_err(|source| probe::ProbeError::Cgroup {
                    path: cg.clone(),
                    source,
                })?;
                // bpf_link: multi-attach, so the recorder's programs above keep running.
                p.attach(&f, *attach_type, CgroupAttachMode::Single)
                    .map_err(|e| {
                        DrillError::Kernel(format!(
                            "attach {name} to {}: {}",
                            cg.display(),
                            probe::chain(&e)
                        ))
                    })?;
            }
        }
        Ok(block)
    }

    /// Moves the window; `end_ns` at now or earlier releases the block at once.
    pub fn set_window(&mut self, w: DrillWindow) -> Result<(), DrillError> {
        let map = self
            .ebpf
            .map_mut("WINDOW")
            .ok_or(probe::ProbeError::MissingMap("WINDOW"))?;
        let mut arr = Array::<_, DrillWindow>::try_from(map).map_err(kernel("WINDOW"))?;
        arr.set(0, &w, 0).map_err(kernel("WINDOW"))
    }

    /// Per rule: egress and ingress counters.
    pub fn stats(&self) -> Result<Vec<[DrillStats; 2]>, DrillError> {
        let map = self
            .ebpf
            .map("STATS")
            .ok_or(probe::ProbeError::MissingMap("STATS"))?;
        let arr = Array::<_, DrillStats>::try_from(map).map_err(kernel("STATS"))?;
        (0..self.rules)
            .map(|i| {
                Ok([
                    arr.get(&(i * 2), 0).map_err(kernel("STATS"))?,
                    arr.get(&(i * 2 + 1), 0).map_err(kernel("STATS"))?,
                ])
            })
            .collect()
    }

    /// Other peers the target sent to (egress, no rule matched).
    pub fn others(&self) -> Result<Vec<(DrillPeer, DrillPeerStats)>, DrillError> {
        let map = self
            .ebpf
            .map("OTHERS")
            .ok_or(probe::ProbeError::MissingMap("OTHERS"))?;
        let m =
            BpfHashMap::<_, DrillPeer, DrillPeerStats>::try_from(map).map_err(kernel("OTHERS"))?;
        Ok(m.iter().filter_map(Result::ok).collect())
    }
}

fn kernel(map: &'static str) -> impl Fn(aya::maps::MapError) -> DrillError {
    move |e| DrillError::Kernel(format!("map {map}: {}", probe::chain(&e)))
}
