//! Host lookups: the cgroup v2 mount, cgroup id -> path, and process names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Finds the cgroup v2 mount from a mounts table (`/proc/self/mounts` format).
/// Unified hierarchy (`/sys/fs/cgroup`) and hybrid (`/sys/fs/cgroup/unified`) alike.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (_dev, mnt, fstype) = (it.next()?, it.next()?, it.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(mnt.replace("\\040", " ")))
    })
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount_in(&std::fs::read_to_string("/proc/self/mounts").ok()?)
}

/// A cgroup v2 directory named on the command line, as the flow log prints cgroups
/// (`/kubepods.slice`, from the cgroup v2 root), under the mount
/// (`/sys/fs/cgroup/kubepods.slice`) or relative to it (`kubepods.slice`): its absolute
/// path and its path from the cgroup v2 root (`/` for the root itself). `None` when it is
/// no cgroup v2 directory.
pub fn cgroup_dir(root: &Path, arg: &Path) -> Option<(PathBuf, String)> {
    let abs = match arg.strip_prefix("/") {
        Ok(_) if arg.starts_with(root) => arg.to_owned(),
        Ok(rel) => root.join(rel),
        Err(_) => root.join(arg),
    };
    let rel = abs.strip_prefix(root).ok()?;
    if !abs.join("cgroup.procs").exists() {
        return None;
    }
    let rel = format!("/{}", rel.display());
    Some((
        abs,
        if rel == "/" {
            rel
        } else {
            rel.trim_end_matches('/').to_owned()
        },
    ))
}

/// The cgroup v2 id of a directory (its inode number).
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Resolves cgroup ids to paths relative to the cgroup v2 root ("/kubepods.slice/...").
///
/// Bounded: a rescan rebuilds the map from the cgroups that exist (deleted pods' cgroups
/// go), and an id a rescan did not find is remembered (up to `MISSING_MAX`), so flows of a
/// cgroup that is already gone do not walk the tree once each.
pub struct CgroupResolver {
    root: PathBuf,
    cache: HashMap<u64, String>,
    missing: std::collections::HashSet<u64>,
}

/// Ids remembered as not found; past it the set starts over.
const MISSING_MAX: usize = 4096;

impl CgroupResolver {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: HashMap::new(),
            missing: std::collections::HashSet::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of cgroup `id`, rescanning the tree once when it is not known yet.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        if self.missing.contains(&id) {
            return None;
        }
        self.rescan();
        let found = self.cache.get(&id).cloned();
        if found.is_none() {
            if self.missing.len() >= MISSING_MAX {
                self.missing.clear();
            }
            self.missing.insert(id);
        }
        found
    }

    fn rescan(&mut self) {
        self.cache.clear();
        let mut stack = vec![self.root.clone()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > 200_000 {
                break;
            }
            let Ok(md) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&self.root)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_default();
            self.cache
                .insert(md.ino(), if rel == "/" { "/".into() } else { rel });
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
}

/// Name and executable of a process, while it still exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub comm: Option<String>,
    pub exe: Option<String>,
}

pub fn proc_info(tgid: u32) -> ProcInfo {
    if tgid == 0 {
        return ProcInfo::default();
    }
    let base = PathBuf::from(format!("/proc/{tgid}"));
    ProcInfo {
        comm: std::fs::read_to_string(base.join("comm"))
            .ok()
            .map(|s| s.trim_end().to_owned()),
        exe: std::fs::read_link(base.join("exe"))
            .ok()
            .map(|p| p.display().to_string()),
    }
}

/// An address of a `/proc/net/{tcp,udp}[6]` table ("0100007F:1F90"): 32-bit words in
/// hex, each printed in host byte order.
pub fn proc_net_addr(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::from(b)
        }
        _ => return None,
    };
    Some((ip.to_canonical(), port))
}

/// Socket inodes bound to local `port` in a `/proc/<pid>/net/{tcp,udp}[6]` table, in the
/// states that receive new peers: LISTEN (0A) for TCP, unconnected (07) for UDP. With
/// `peer`, also a TCP connection from that address and port to `port` (an accepted
/// socket whose listener is closed: `ffmpeg -listen 1` closes it right after the accept).
pub fn sockets_on_port(table: &str, port: u16, tcp: bool, peer: Option<(IpAddr, u16)>) -> Vec<u64> {
    let want_state = if tcp { "0A" } else { "07" };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (_, p) = proc_net_addr(f.get(1)?)?;
            if p != port {
                return None;
            }
            let state = *f.get(3)?;
            let wanted = state == want_state
                || (tcp
                    && state != "06"
                    && peer.is_some_and(|(ip, pp)| {
                        proc_net_addr(f[2]).is_some_and(|r| r == (ip.to_canonical(), pp))
                    }));
            wanted.then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// The process in cgroup directory `cgroup_dir` that owns the socket receiving on `port`
/// (a TCP listener or a UDP socket) or, for TCP with `peer`, the connection accepted
/// from `peer`: the owner of an accepted connection or inbound UDP flow whose listener
/// started before the recorder did.
pub fn receiver_in_cgroup(
    cgroup_dir: &Path,
    port: u16,
    tcp: bool,
    peer: Option<(IpAddr, u16)>,
) -> Option<u32> {
    let procs = std::fs::read_to_string(cgroup_dir.join("cgroup.procs")).ok()?;
    let pids: Vec<u32> = procs
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .take(256)
        .collect();
    let mut inodes = Vec::new();
    let mut seen_ns = Vec::new();
    for pid in &pids {
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if seen_ns.contains(&ns) {
            continue;
        }
        seen_ns.push(ns);
        for t in if tcp {
            ["tcp", "tcp6"]
        } else {
            ["udp", "udp6"]
        } {
            if let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{t}")) {
                inodes.extend(sockets_on_port(&table, port, tcp, peer));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    pids.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .is_some_and(|rd| {
                rd.flatten().any(|e| {
                    std::fs::read_link(e.path())
                        .ok()
                        .and_then(|l| {
                            let l = l.to_string_lossy().into_owned();
                            l.strip_prefix("socket:[")?
                                .strip_suffix(']')?
                                .parse::<u64>()
                                .ok()
                        })
                        .is_some_and(|ino| inodes.contains(&ino))
                })
            })
    })
}

/// The processes in cgroup directory `dir` and its children (two levels: a pod's
/// containers), at most `max`.
pub fn pids_below(dir: &Path, max: usize) -> Vec<u32> {
    let mut dirs = vec![(dir.to_owned(), 0)];
    let mut pids = Vec::new();
    while let Some((d, depth)) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        if pids.len() >= max {
            pids.truncate(max);
            break;
        }
        if depth < 2 {
            if let Ok(rd) = std::fs::read_dir(&d) {
                let mut subs: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect();
                subs.sort();
                dirs.extend(subs.into_iter().rev().map(|p| (p, depth + 1)));
            }
        }
    }
    pids
}

/// Turns a NUL-padded kernel comm into a string.
pub fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|b| *b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_forgets_deleted_cgroups_and_does_not_rescan_for_missing_ids() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("aud-cgres-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("kubepods/pod-a")).unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let a = ino("kubepods/pod-a");
        let mut r = CgroupResolver::new(root.clone());
        assert_eq!(r.path(a).as_deref(), Some("/kubepods/pod-a"));
        assert_eq!(r.path(u64::MAX), None);
        assert!(r.missing.contains(&u64::MAX), "remembered as missing");
        // A new cgroup is found; the deleted one leaves the map at that rescan.
        std::fs::create_dir_all(root.join("kubepods/pod-b")).unwrap();
        let b = ino("kubepods/pod-b");
        std::fs::remove_dir(root.join("kubepods/pod-a")).unwrap();
        assert_eq!(r.path(b).as_deref(), Some("/kubepods/pod-b"));
        assert!(!r.cache.contains_key(&a), "a deleted cgroup is forgotten");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn finds_unified_and_hybrid() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn socket_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        assert_eq!(
            sockets_on_port(tcp, 8080, true, None),
            vec![12345],
            "only the LISTEN socket on 8080"
        );
        assert!(sockets_on_port(tcp, 8081, true, None).is_empty());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            sockets_on_port(tcp, 8080, true, Some((peer, 0xD431))),
            vec![12345, 777],
            "and the connection accepted from 127.0.0.1:54321"
        );
        assert_eq!(
            sockets_on_port(tcp, 8080, true, Some((peer, 0xD432))),
            vec![12345],
            "not one from another port"
        );
        let udp = "  sl  local_address rem_address   st\n 1: 00000000:1388 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2\n";
        assert_eq!(sockets_on_port(udp, 5000, false, None), vec![4242]);
        // A dual-stack socket's IPv4 peer in tcp6: v4-mapped, read as IPv4.
        let tcp6 = "  sl  local_address rem_address st\n 0: 0000000000000000FFFF00000200C80A:238C 0000000000000000FFFF00000100C80A:A000 01 00000000:00000000 00:00000000 00000000     0        0 99 1\n";
        let b: IpAddr = "10.200.0.1".parse().unwrap();
        assert_eq!(
            sockets_on_port(tcp6, 9100, true, Some((b, 0xA000))),
            vec![99]
        );
        assert_eq!(
            proc_net_addr("0000000000000000FFFF00000200C80A:238C"),
            Some(("10.200.0.2".parse().unwrap(), 9100))
        );
        assert_eq!(
            proc_net_addr("000080FE00000000FF0000000100FEFF:0050"),
            Some(("fe80::ff:fffe:1".parse().unwrap(), 80))
        );
        assert_eq!(proc_net_addr("garbage"), None);
    }

    #[test]
    fn own_listener_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let Some(root) = cgroup2_mount() else { return };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return;
        };
        let dir = root.join(rel.trim_start_matches('/'));
        if !dir.join("cgroup.procs").exists() {
            return;
        }
        assert_eq!(
            receiver_in_cgroup(&dir, port, true, None),
            Some(std::process::id())
        );
    }

    #[test]
    fn comm_trims_nul() {
        assert_eq!(comm_str(b"ffmpeg\0\0\0\0\0\0\0\0\0\0"), "ffmpeg");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
