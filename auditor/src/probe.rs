//! Loading and attaching the kernel programs (the only module that talks to the BPF syscall).
//!
//! Each hook is attached on its own: a hook the kernel cannot give is reported as
//! a degradation (which outputs are then missing), not a crash, as long as
//! something useful is left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use auditor_ebpf::{Config, Offsets};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps, TracePoint,
};
use aya::{Ebpf, EbpfLoader};

use crate::btf::Btf;
use crate::tracefs;

/// The eBPF object built by `build.rs`; empty when it was built with `AYA_BUILD_SKIP=1`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/auditor-probes"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("missing capabilities {missing:?}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels before 5.8)")]
    Capabilities { missing: Vec<&'static str> },
    #[error("load the eBPF programs into the kernel (kernel {kernel}; the auditor needs 5.8 or newer with ring buffers and BTF-free tracepoints)")]
    Load {
        kernel: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// bpf(2) refused with EPERM while CAP_BPF is effective: not a missing capability
    /// but a seccomp filter (an older runtime's RuntimeDefault) or an LSM.
    #[error("load the eBPF programs: bpf(2) was refused with EPERM although CAP_BPF is in the effective set: {seccomp}. Use a RuntimeDefault profile from containerd >= 1.6.9 or Docker >= 23 (they allow bpf with CAP_BPF and perf_event_open with CAP_PERFMON), or a profile that does (deploy/SECURITY.md, \"seccomp\"); Debian's podman profile /usr/share/containers/seccomp.json allows bpf only with CAP_SYS_ADMIN")]
    Seccomp {
        /// The `Seccomp:` line of /proc/self/status, described.
        seccomp: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("open cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no hook could be attached: {0}")]
    NothingAttached(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("this auditor was built without its eBPF programs (AYA_BUILD_SKIP was set when it was compiled), so it cannot record: rebuild it without AYA_BUILD_SKIP, after `cargo xtask setup` has installed the eBPF toolchain and bpf-linker")]
    NoObject,
}

/// What to load and where to attach.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// cgroup v2 directory the cgroup programs attach to; `None`: no cgroup v2 (degraded).
    pub cgroup: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    pub max_flows: u32,
    pub dns: bool,
    pub drops: bool,
    /// Drop reasons (names as the kernel spells them) not recorded.
    pub ignore_drop_reasons: Vec<String>,
    /// Attach every program but make each return at once (benchmark baseline).
    pub noop: bool,
    /// Scope the tracepoints to this cgroup (id, depth below the v2 root) as well.
    pub filter_cgroup: Option<(u64, u32)>,
    /// Record TCP with the host-wide tracepoints even where cgroup sock_ops works
    /// (the fallback path; for comparison in the benchmarks and tests).
    pub tcp_tracepoints: bool,
}

/// `skb_drop_reason`s that come from the normal life of a socket, not from a policy or a
/// network fault: plain `kfree_skb()` on teardown, queues purged at close, duplicate or
/// stale TCP segments. Ignored by default (`--ignore-drop-reason`).
pub const BENIGN_DROP_REASONS: &[&str] = &[
    "NOT_SPECIFIED",
    "SOCKET_CLOSE",
    "QUEUE_PURGE",
    "TCP_CLOSE",
    "TCP_OLD_DATA",
    "TCP_OLD_SEQUENCE",
    "TCP_OLD_ACK",
    "TCP_OFOMERGE",
    "TCP_ABORT_ON_DATA",
    "UNIX_DISCONNECT",
    "UNIX_SKIP_OOB",
];

/// Loaded, attached programs. Dropping it detaches everything.
pub struct Probe {
    pub ebpf: Ebpf,
    /// Outputs that are missing and why, for the user.
    pub degraded: Vec<String>,
    /// `skb_drop_reason` names from this kernel.
    pub drop_reasons: BTreeMap<u32, String>,
    pub attached: Vec<String>,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the capabilities the auditor lacks (empty when it has them).
pub fn missing_capabilities() -> Vec<&'static str> {
    let Some(caps) = effective_caps() else {
        return vec![];
    };
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return vec![];
    }
    let mut missing = vec![];
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Whether an `io::Error` with EPERM is anywhere in `e`'s source chain.
fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The seccomp mode of this process, from the `Seccomp:` line of /proc/self/status.
fn seccomp_mode() -> String {
    let mode = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|v| v.trim().to_owned())
        });
    match mode.as_deref() {
        Some("2") => "the container's seccomp profile blocks it (a seccomp filter is active: Seccomp 2 in /proc/self/status)".into(),
        Some("1") => "seccomp strict mode blocks it (Seccomp 1 in /proc/self/status)".into(),
        Some("0") => "no seccomp filter is active (Seccomp 0 in /proc/self/status), so an LSM (SELinux, AppArmor, lockdown) refused it, not the seccomp profile".into(),
        _ => "most likely the container's seccomp profile blocks it (no Seccomp line in /proc/self/status to confirm it)".into(),
    }
}

/// Classifies a failed load: EPERM with CAP_BPF held names seccomp (see `ProbeError::Seccomp`).
pub(crate) fn load_error(source: aya::EbpfError) -> ProbeError {
    let has_bpf = effective_caps().is_some_and(|c| c & (1 << CAP_BPF) != 0);
    if has_bpf && is_eperm(&source) {
        return ProbeError::Seccomp {
            seccomp: seccomp_mode(),
            source: Box::new(source),
        };
    }
    ProbeError::Load {
        kernel: kernel_release(),
        source: Box::new(source),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads tracepoint layouts and BTF offsets; what is missing is recorded in `degraded`.
fn offsets(
    degraded: &mut Vec<String>,
    drop_reasons: &mut BTreeMap<u32, String>,
) -> (Offsets, bool) {
    let mut o = Offsets {
        min_drop_reason: 1,
        ..Default::default()
    };
    let tfs = match tracefs::find_tracefs() {
        Ok(p) => p,
        Err(e) => {
            degraded.push(format!(
                "{e}: the tracepoints are not attached: kernel drops are not recorded, refused connects are reported as errors, and TCP connections are recorded only through cgroup sock_ops"
            ));
            return (o, false);
        }
    };
    let mut ok = true;
    let mut missing: Vec<String> = Vec::new();
    fn field(
        missing: &mut Vec<String>,
        fmt: &tracefs::Format,
        path: &Path,
        name: &str,
        slot: &mut u32,
    ) {
        match fmt.offset(path, name) {
            Ok(v) => *slot = v,
            Err(e) => missing.push(e.to_string()),
        }
    }
    match tracefs::read_format(&tfs, "sock", "inet_sock_set_state") {
        Ok((p, f)) => {
            field(&mut missing, &f, &p, "skaddr", &mut o.iss_skaddr);
            field(&mut missing, &f, &p, "oldstate", &mut o.iss_oldstate);
            field(&mut missing, &f, &p, "newstate", &mut o.iss_newstate);
            field(&mut missing, &f, &p, "sport", &mut o.iss_sport);
            field(&mut missing, &f, &p, "dport", &mut o.iss_dport);
            field(&mut missing, &f, &p, "family", &mut o.iss_family);
            field(&mut missing, &f, &p, "protocol", &mut o.iss_protocol);
            field(&mut missing, &f, &p, "saddr", &mut o.iss_saddr);
            field(&mut missing, &f, &p, "daddr", &mut o.iss_daddr);
            field(&mut missing, &f, &p, "saddr_v6", &mut o.iss_saddr_v6);
            field(&mut missing, &f, &p, "daddr_v6", &mut o.iss_daddr_v6);
        }
        Err(e) => missing.push(e.to_string()),
    }
    if let Ok((p, f)) = tracefs::read_format(&tfs, "tcp", "tcp_retransmit_skb") {
        field(&mut missing, &f, &p, "skaddr", &mut o.rtx_skaddr);
        field(&mut missing, &f, &p, "state", &mut o.rtx_state);
    }
    if let Ok((p, f)) = tracefs::read_format(&tfs, "tcp", "tcp_receive_reset") {
        field(&mut missing, &f, &p, "skaddr", &mut o.rst_skaddr);
        // Newer kernels (5.x+) carry the socket cookie, which is what the sock_ops path keys on.
        if let Ok(v) = f.offset(&p, "sock_cookie") {
            o.rst_cookie = v;
        }
    }
    if let Ok((p, f)) = tracefs::read_format(&tfs, "skb", "kfree_skb") {
        field(&mut missing, &f, &p, "skbaddr", &mut o.kfs_skbaddr);
        field(&mut missing, &f, &p, "protocol", &mut o.kfs_protocol);
        field(&mut missing, &f, &p, "reason", &mut o.kfs_reason);
        *drop_reasons = tracefs::parse_drop_reasons(&f.print_fmt);
        // NOT_DROPPED_YET (0) and CONSUMED (1, where the kernel has it) are normal frees.
        o.min_drop_reason = drop_reasons
            .iter()
            .find(|(_, n)| n.as_str() == "CONSUMED")
            .map(|(k, _)| *k)
            .unwrap_or(1)
            .max(1);
    }
    if !missing.is_empty() {
        ok = false;
        degraded.push(format!(
            "{}: tracepoint programs are not attached",
            missing.join("; ")
        ));
    }
    let btf_path = Path::new("/sys/kernel/btf/vmlinux");
    match Btf::from_file(btf_path).and_then(|b| {
        Ok((b.member_offset("sk_buff", "head")?, b.member_offset("sk_buff", "network_header")?, b.member_offset("sk_buff", "transport_header")?))
    }) {
        Ok((h, n, t)) => {
            o.skb_head = h;
            o.skb_network_header = n;
            o.skb_transport_header = t;
        }
        Err(e) => degraded.push(format!("no BTF ({e}): kernel drops are recorded with their reason but without the packet's 5-tuple")),
    }
    (o, ok)
}

impl Probe {
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let missing = missing_capabilities();
        if !missing.is_empty() {
            return Err(ProbeError::Capabilities { missing });
        }
        raise_memlock();
        let mut degraded = Vec::new();
        let mut drop_reasons = BTreeMap::new();
        let (offs, tracepoints_ok) = offsets(&mut degraded, &mut drop_reasons);
        let mut ignore_reasons = [0u64; 4];
        for name in &opts.ignore_drop_reasons {
            match drop_reasons.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)) {
                Some((&r, _)) if r < 256 => ignore_reasons[(r / 64) as usize] |= 1 << (r % 64),
                _ if BENIGN_DROP_REASONS.contains(&name.as_str()) => {}
                _ => degraded.push(format!("--ignore-drop-reason {name}: this kernel has no such drop reason (see /sys/kernel/tracing/events/skb/kfree_skb/format); it is not filtered")),
            }
        }
        let (filter_cgroup_id, filter_level) = opts.filter_cgroup.unwrap_or((0, 0));
        let config = Config {
            dns: u32::from(opts.dns),
            drops: u32::from(opts.drops),
            ignore_reasons,
            noop: u32::from(opts.noop),
            _pad: 0,
            filter_cgroup_id,
            filter_level,
            _pad2: 0,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offs, true)
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .map_max_entries("FLOWS", opts.max_flows)
            .load(OBJECT)
            .map_err(load_error)?;

        let mut attached = Vec::new();
        let cgroup_dir = match &opts.cgroup {
            Some(cg) => Some((
                cg,
                std::fs::File::open(cg).map_err(|source| ProbeError::Cgroup {
                    path: cg.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        // TCP: cgroup sock_ops where it works (only the audited cgroup's sockets pay, a few
        // callbacks per connection); else the host-wide state-change tracepoint.
        let mut tcp_by_sock_ops = false;
        if let Some((cg, f)) = &cgroup_dir {
            if !opts.tcp_tracepoints {
                match attach_sock_ops(&mut ebpf, f) {
                    Ok(()) => {
                        tcp_by_sock_ops = true;
                        attached.push(format!("cgroup sock_ops on {}", cg.display()));
                    }
                    Err(e) => degraded.push(format!("cgroup sock_ops: {e}: TCP is recorded with the host-wide tracepoint sock:inet_sock_set_state instead (more CPU per connection)")),
                }
            }
        }
        if tracepoints_ok {
            for (prog, cat, name, what) in [
                (
                    "inet_sock_set_state",
                    "sock",
                    "inet_sock_set_state",
                    "TCP connections and accepts",
                ),
                (
                    "tcp_retransmit_skb",
                    "tcp",
                    "tcp_retransmit_skb",
                    "SYN retransmit counts",
                ),
                (
                    "tcp_receive_reset",
                    "tcp",
                    "tcp_receive_reset",
                    "refused connections (reported as errors instead)",
                ),
                ("kfree_skb", "skb", "kfree_skb", "kernel drops"),
            ] {
                if prog == "kfree_skb" && !opts.drops {
                    continue;
                }
                if tcp_by_sock_ops
                    && (prog == "inet_sock_set_state" || prog == "tcp_retransmit_skb")
                {
                    continue;
                }
                match attach_tracepoint(&mut ebpf, prog, cat, name) {
                    Ok(()) => attached.push(format!("tracepoint {cat}:{name}")),
                    Err(e) => degraded.push(format!(
                        "tracepoint {cat}:{name}: {e}: {what} are not recorded"
                    )),
                }
            }
        }
        if !tcp_by_sock_ops && !attached.iter().any(|a| a.contains("inet_sock_set_state")) {
            degraded.push("neither cgroup sock_ops nor the tracepoint sock:inet_sock_set_state is attached: TCP connections and inbound accepts are not recorded".into());
        }
        match &cgroup_dir {
            Some((cg, f)) => {
                for (prog, what) in [
                    ("udp_sendmsg4", "UDP/IPv4 datagrams"),
                    ("udp_sendmsg6", "UDP/IPv6 datagrams"),
                    ("udp_connect4", "connected UDP/IPv4 sockets"),
                    ("udp_connect6", "connected UDP/IPv6 sockets"),
                ] {
                    match attach_sock_addr(&mut ebpf, prog, f) {
                        Ok(()) => attached.push(format!("cgroup {prog} on {}", cg.display())),
                        Err(e) => degraded.push(format!("cgroup program {prog}: {e}: {what} are not recorded")),
                    }
                }
                match attach_ingress(&mut ebpf, f) {
                    Ok(()) => attached.push(format!("cgroup_skb ingress on {}", cg.display())),
                    Err(e) => degraded.push(format!("cgroup_skb ingress: {e}: DNS answers, inbound UDP and the cgroup of accepted connections are not recorded")),
                }
            }
            None => degraded.push("no cgroup v2 mount: UDP flows, DNS answers and accepted connections are not recorded; mount cgroup2 (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)".into()),
        }
        if attached.is_empty() {
            return Err(ProbeError::NothingAttached(degraded.join("; ")));
        }
        Ok(Self {
            ebpf,
            degraded,
            drop_reasons,
            attached,
        })
    }
}

pub(crate) fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct; failure only matters on kernels < 5.11.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with memcg accounting");
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, cat: &str, name: &str) -> Result<(), String> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| format!("load: {e}"))?;
    p.attach(cat, name).map_err(|e| {
        let has_perfmon = effective_caps().is_some_and(|c| c & (1 << CAP_PERFMON) != 0);
        if has_perfmon && is_eperm(&e) {
            // CRI-O's profile allowed perf_event_open only with CAP_SYS_ADMIN until late 2025.
            format!("attach: {}: perf_event_open(2) was refused with EPERM although CAP_PERFMON is in the effective set: {}; use a RuntimeDefault profile that allows perf_event_open with CAP_PERFMON (containerd >= 1.6.9, Docker >= 23; see deploy/SECURITY.md, \"seccomp\")", chain(&e), seccomp_mode())
        } else {
            format!("attach: {}", chain(&e))
        }
    })?;
    Ok(())
}

// Cgroup programs attach through bpf_link (kernel >= 5.7), which is always
// multi-attach and refuses any attach flag: `Single` means "no flags" there, and
// other programs on the same cgroup (a CNI's, a second auditor's) keep running.
fn attach_sock_addr(ebpf: &mut Ebpf, prog: &str, cg: &std::fs::File) -> Result<(), String> {
    let p: &mut CgroupSockAddr = program(ebpf, prog)?;
    p.load().map_err(|e| format!("load: {e}"))?;
    p.attach(cg, CgroupAttachMode::Single)
        .map_err(|e| format!("attach: {}", chain(&e)))?;
    Ok(())
}

fn attach_sock_ops(ebpf: &mut Ebpf, cg: &std::fs::File) -> Result<(), String> {
    let p: &mut SockOps = program(ebpf, "tcp_sockops")?;
    p.load().map_err(|e| format!("load: {e}"))?;
    p.attach(cg, CgroupAttachMode::Single)
        .map_err(|e| format!("attach: {}", chain(&e)))?;
    Ok(())
}

fn attach_ingress(ebpf: &mut Ebpf, cg: &std::fs::File) -> Result<(), String> {
    let p: &mut CgroupSkb = program(ebpf, "ingress")?;
    p.load().map_err(|e| format!("load: {e}"))?;
    p.attach(cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
        .map_err(|e| format!("attach: {}", chain(&e)))?;
    Ok(())
}

/// The program `name` of the object as its type `T`.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or("program missing from object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}

/// An error with its sources, "outer: inner: innermost".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod seccomp_tests {
    use super::*;

    #[test]
    fn eperm_from_map_creation_is_found_in_the_source_chain() {
        let e = aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "FLOWS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(is_eperm(&e));
        let e = aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "FLOWS".into(),
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
        assert!(!is_eperm(&e));
    }

    #[test]
    fn the_seccomp_error_says_what_to_do() {
        let e = ProbeError::Seccomp {
            seccomp: seccomp_mode(),
            source: Box::new(aya::EbpfError::NoBTF),
        };
        let msg = e.to_string();
        for want in [
            "EPERM",
            "CAP_BPF",
            "seccomp",
            "containerd >= 1.6.9",
            "Docker >= 23",
            "CAP_PERFMON",
        ] {
            assert!(msg.contains(want), "{want} in {msg}");
        }
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[test]
    fn the_embedded_object_is_the_ebpf_programs_or_a_build_that_says_it_has_none() {
        if !OBJECT.is_empty() {
            assert!(
                OBJECT.starts_with(b"\x7fELF"),
                "the embedded object is an ELF file"
            );
            return;
        }
        // Built with AYA_BUILD_SKIP=1: loading fails before touching the kernel.
        let opts = ProbeOptions {
            cgroup: None,
            ring_buffer_bytes: 1 << 20,
            max_flows: 1024,
            dns: true,
            drops: true,
            ignore_drop_reasons: Vec::new(),
            noop: false,
            filter_cgroup: None,
            tcp_tracepoints: false,
        };
        match Probe::load(&opts) {
            Err(e @ ProbeError::NoObject) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("AYA_BUILD_SKIP") && msg.contains("cargo xtask setup"),
                    "{msg}"
                );
            }
            Err(e) => panic!("expected NoObject, got {e}"),
            Ok(_) => panic!("an empty object loaded"),
        }
    }
}
