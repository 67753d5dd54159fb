//! Host lookups: the cgroup v2 mount, cgroup id -> path, and process names.

use std::collections::HashMap;
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

/// The cgroup v2 id of a directory (its inode number).
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Resolves cgroup ids to paths relative to the cgroup v2 root ("/kubepods.slice/...").
pub struct CgroupResolver {
    root: PathBuf,
    cache: HashMap<u64, String>,
}

impl CgroupResolver {
    pub fn new(root: PathBuf) -> Self {
        Self { root, cache: HashMap::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of cgroup `id`, rescanning the tree once when it is not known yet.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        self.rescan();
        self.cache.get(&id).cloned()
    }

    fn rescan(&mut self) {
        let mut stack = vec![self.root.clone()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > 200_000 {
                break;
            }
            let Ok(md) = std::fs::metadata(&dir) else { continue };
            let rel = dir.strip_prefix(&self.root).map(|r| format!("/{}", r.display())).unwrap_or_default();
            self.cache.insert(md.ino(), if rel == "/" { "/".into() } else { rel });
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
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
        comm: std::fs::read_to_string(base.join("comm")).ok().map(|s| s.trim_end().to_owned()),
        exe: std::fs::read_link(base.join("exe")).ok().map(|p| p.display().to_string()),
    }
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
    fn finds_unified_and_hybrid() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn comm_trims_nul() {
        assert_eq!(comm_str(b"ffmpeg\0\0\0\0\0\0\0\0\0\0"), "ffmpeg");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }
}
