//! Attribution, first step: a cgroup path -> container runtime, container id, pod UID
//! and QoS class. Pure: the caller reads the path (cgroup id -> `/sys/fs/cgroup/...`
//! or `/proc/<pid>/cgroup`) and joins the result with the pods it watches.
//!
//! Layouts understood (kubelet names the pod cgroup, the runtime the container one):
//!
//! | driver   | pod cgroup                                                   | container cgroup                              |
//! |----------|--------------------------------------------------------------|-----------------------------------------------|
//! | systemd  | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope`, `docker-<id>.scope` |
//! | cgroupfs | `/kubepods/burstable/pod<uid>`                               | `<id>` (containerd, dockerd), `crio-<id>`      |
//! | mixed    | `/system.slice/containerd.service/kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>` (one segment) | |
//!
//! - Guaranteed pods sit right under `kubepods` (`kubepods-pod<uid_>.slice`,
//!   `/kubepods/pod<uid>`); Burstable and BestEffort under their QoS level.
//! - The same names appear in cgroup v2 (`0::` line) and in each v1 hierarchy, so v1,
//!   hybrid and v2 paths go through one parser; [`parse_proc_cgroup`] picks the line.
//! - Prefixes above the pod are allowed: a kind node seen from its host
//!   (`/docker/<node>/kubepods/...`), kind's own `kubelet.slice/kubelet-kubepods-...`,
//!   a kubelet with `--cgroup-root`.
//! - Segments below the container cgroup (`crio-<id>.scope/container`, cgroups a
//!   container made itself) belong to that container.
//! - The systemd driver writes the pod UID with `_` for `-`; it is given back with `-`.
//!   Static pods have a 32-hex-digit UID (a config hash), others a UUID.
//! - With the cgroupfs driver containerd and dockerd both name the container cgroup by
//!   its bare id, so the runtime is [`Runtime::Unknown`]; the pod's
//!   `status.containerStatuses[].containerID` (`containerd://<id>`) settles it, see
//!   [`ContainerRef::matches_status_id`].
//!
//! Paths of no pod and no container (`/system.slice/sshd.service`, `/`, the QoS-level
//! cgroups themselves) are `Ok(None)`. A path that is a pod's by its names but whose
//! UID or container segment is malformed is an error, so that the caller can keep the
//! flow with its raw cgroup path and say why it has no pod.

use std::fmt;

/// The container runtime that named a container cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A bare 64-hex-digit id (cgroupfs driver): containerd or dockerd.
    Unknown,
}

impl Runtime {
    /// The scheme of `status.containerStatuses[].containerID` for this runtime.
    pub fn status_scheme(self) -> Option<&'static str> {
        match self {
            Runtime::Containerd => Some("containerd"),
            Runtime::CriO => Some("cri-o"),
            Runtime::Docker => Some("docker"),
            Runtime::Unknown => None,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        })
    }
}

/// Kubernetes pod QoS class, as the kubelet's cgroup hierarchy shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spelled as in `status.qosClass`.
        f.write_str(match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        })
    }
}

/// A container cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// 64 lowercase hex digits.
    pub id: String,
    /// CRI-O's `crio-conmon-<id>.scope`: the container's monitor process, not the
    /// container itself.
    pub monitor: bool,
}

impl ContainerRef {
    /// Whether a pod's `status.containerStatuses[].containerID` (`containerd://<id>`,
    /// `cri-o://<id>`, `docker://<id>`) names this container. An [`Runtime::Unknown`]
    /// runtime matches any scheme.
    pub fn matches_status_id(&self, status_id: &str) -> bool {
        let Some((scheme, id)) = status_id.split_once("://") else {
            return false;
        };
        id == self.id && self.runtime.status_scheme().is_none_or(|s| s == scheme)
    }
}

/// A pod's cgroup or one of its containers'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodCgroup {
    /// `metadata.uid`, with dashes.
    pub uid: String,
    pub qos: QosClass,
    /// `None` for the pod-level cgroup itself.
    pub container: Option<ContainerRef>,
}

/// What a cgroup path belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CgroupOwner {
    /// A Kubernetes pod (or one of its containers).
    Pod(PodCgroup),
    /// A container outside Kubernetes (`docker run` on a host that `auditor record`
    /// watches): `/system.slice/docker-<id>.scope`, `/docker/<id>`.
    Container(ContainerRef),
}

impl CgroupOwner {
    pub fn pod(&self) -> Option<&PodCgroup> {
        match self {
            CgroupOwner::Pod(p) => Some(p),
            CgroupOwner::Container(_) => None,
        }
    }

    pub fn container(&self) -> Option<&ContainerRef> {
        match self {
            CgroupOwner::Pod(p) => p.container.as_ref(),
            CgroupOwner::Container(c) => Some(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    #[error("cgroup {path:?}: pod cgroup {segment:?} has pod UID {uid:?}, expected a UUID or 32 hex digits")]
    PodUid {
        path: String,
        segment: String,
        uid: String,
    },
    #[error("cgroup {path:?}: {segment:?} under pod {uid} is no container cgroup this parser knows (expected cri-containerd-<id>.scope, crio-<id>.scope, crio-conmon-<id>.scope, docker-<id>.scope or a bare <id>, with a 64-hex-digit id)")]
    Container {
        path: String,
        segment: String,
        uid: String,
    },
    #[error("/proc/<pid>/cgroup line {line}: {text:?} is not `hierarchy-id:controllers:path`")]
    ProcLine { line: usize, text: String },
}

/// Attributes one cgroup path (as in `/proc/<pid>/cgroup`, or a directory under the
/// cgroup mount with the mount point stripped).
pub fn parse_cgroup_path(path: &str) -> Result<Option<CgroupOwner>, AttributeError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        let parent = i.checked_sub(1).and_then(|p| segments.get(p)).copied();
        let grandparent = i.checked_sub(2).and_then(|p| segments.get(p)).copied();
        let Some(pod) = pod_segment(segment, parent, grandparent) else {
            continue;
        };
        let uid = normalize_uid(pod.raw_uid).ok_or_else(|| AttributeError::PodUid {
            path: path.to_owned(),
            segment: (*segment).to_owned(),
            uid: pod.raw_uid.to_owned(),
        })?;
        let container_segment = match pod.inline_container {
            Some(c) => Some(c),
            None => segments.get(i + 1).copied(),
        };
        let container = match container_segment {
            None => None,
            Some(c) => Some(
                container_segment_ref(c).ok_or_else(|| AttributeError::Container {
                    path: path.to_owned(),
                    segment: c.to_owned(),
                    uid: uid.clone(),
                })?,
            ),
        };
        return Ok(Some(CgroupOwner::Pod(PodCgroup {
            uid,
            qos: pod.qos,
            container,
        })));
    }
    Ok(standalone_container(&segments).map(CgroupOwner::Container))
}

/// Attributes a process from the contents of `/proc/<pid>/cgroup`: the cgroup v2 line
/// (`0::/path`) first, then the v1 lines in order (hybrid and v1 hosts, where the v2
/// line is absent or says `/`). The first line that names a pod or container wins; an
/// error is returned only when no line names one and some line was malformed.
pub fn parse_proc_cgroup(contents: &str) -> Result<Option<CgroupOwner>, AttributeError> {
    let mut unified = Vec::new();
    let mut legacy = Vec::new();
    for (n, text) in contents.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let mut fields = text.splitn(3, ':');
        let (Some(hierarchy), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(AttributeError::ProcLine {
                line: n + 1,
                text: text.to_owned(),
            });
        };
        if hierarchy == "0" {
            unified.push(path);
        } else {
            legacy.push(path);
        }
    }
    let mut first_error = None;
    for path in unified.into_iter().chain(legacy) {
        match parse_cgroup_path(path) {
            Ok(Some(owner)) => return Ok(Some(owner)),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

struct PodSegment<'a> {
    raw_uid: &'a str,
    qos: QosClass,
    /// The container part of a `slice:prefix:name` segment.
    inline_container: Option<&'a str>,
}

/// Recognizes a pod-level cgroup name; `None` when the segment is not one.
fn pod_segment<'a>(
    segment: &'a str,
    parent: Option<&str>,
    grandparent: Option<&str>,
) -> Option<PodSegment<'a>> {
    // systemd's "slice:prefix:name" cgroup spec, created literally by a runtime in
    // cgroupfs mode (kind, mismatched kubelet/containerd drivers).
    let (slice_part, inline_container) = match segment.split_once(':') {
        Some((slice, rest)) => (slice, Some(rest)),
        None => (segment, None),
    };
    if let Some(name) = slice_part.strip_suffix(".slice") {
        let (prefix, raw_uid) = name.rsplit_once("-pod")?;
        let qos = if prefix.ends_with("kubepods-besteffort") {
            QosClass::BestEffort
        } else if prefix.ends_with("kubepods-burstable") {
            QosClass::Burstable
        } else if prefix == "kubepods" || prefix.ends_with("-kubepods") {
            QosClass::Guaranteed
        } else {
            return None;
        };
        return Some(PodSegment {
            raw_uid,
            qos,
            inline_container,
        });
    }
    if inline_container.is_some() {
        return None;
    }
    // cgroupfs driver: kubepods/[besteffort|burstable/]pod<uid>
    let raw_uid = segment.strip_prefix("pod")?;
    let qos = match (parent?, grandparent) {
        ("kubepods", _) => QosClass::Guaranteed,
        ("burstable", Some("kubepods")) => QosClass::Burstable,
        ("besteffort", Some("kubepods")) => QosClass::BestEffort,
        _ => return None,
    };
    Some(PodSegment {
        raw_uid,
        qos,
        inline_container: None,
    })
}

/// `metadata.uid` from a cgroup name: a UUID (dashes, or underscores from the systemd
/// driver) or a static pod's 32-hex-digit hash. Lowercased.
fn normalize_uid(raw: &str) -> Option<String> {
    let uid: String = raw
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let is_hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    let is_uuid = {
        let groups: Vec<&str> = uid.split('-').collect();
        groups.len() == 5
            && groups
                .iter()
                .zip([8usize, 4, 4, 4, 12])
                .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    (is_hash || is_uuid).then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A container cgroup name under a pod, in any runtime's spelling.
fn container_segment_ref(segment: &str) -> Option<ContainerRef> {
    // `prefix:name` (from a `slice:prefix:name` segment).
    if let Some((prefix, id)) = segment.split_once(':') {
        let runtime = match prefix {
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => return None,
        };
        return is_container_id(id).then(|| ContainerRef {
            runtime,
            id: id.to_owned(),
            monitor: false,
        });
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let (runtime, monitor, id) = if let Some(id) = name.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, false, id)
    } else if let Some(id) = name.strip_prefix("crio-conmon-") {
        (Runtime::CriO, true, id)
    } else if let Some(id) = name.strip_prefix("crio-") {
        (Runtime::CriO, false, id)
    } else if let Some(id) = name.strip_prefix("docker-") {
        (Runtime::Docker, false, id)
    } else if name.len() == segment.len() {
        // A bare id never carries `.scope`.
        (Runtime::Unknown, false, name)
    } else {
        return None;
    };
    is_container_id(id).then(|| ContainerRef {
        runtime,
        id: id.to_owned(),
        monitor,
    })
}

/// A docker container outside Kubernetes: `docker-<id>.scope` (systemd driver) or
/// `docker/<id>` (cgroupfs driver). The innermost one wins.
fn standalone_container(segments: &[&str]) -> Option<ContainerRef> {
    let mut found = None;
    for (i, segment) in segments.iter().enumerate() {
        let id = if let Some(name) = segment.strip_suffix(".scope") {
            name.strip_prefix("docker-")
        } else if i > 0 && segments.get(i - 1) == Some(&"docker") {
            Some(*segment)
        } else {
            None
        };
        if let Some(id) = id.filter(|id| is_container_id(id)) {
            found = Some(ContainerRef {
                runtime: Runtime::Docker,
                id: id.to_owned(),
                monitor: false,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "8a1c0e0c2f3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    const CID2: &str = "f00dfeedcafe0123456789abcdef0123456789abcdef0123456789abcdef0123";
    const UID: &str = "3f0c2a9e-7b1d-4c55-9e3a-1d2b3c4d5e6f";
    const UID_: &str = "3f0c2a9e_7b1d_4c55_9e3a_1d2b3c4d5e6f";
    const STATIC_UID: &str = "6c8e3e1fd5a43b1c0e9f6a7b8c9d0e1f";

    fn pod(uid: &str, qos: QosClass, c: Option<(Runtime, &str, bool)>) -> Option<CgroupOwner> {
        Some(CgroupOwner::Pod(PodCgroup {
            uid: uid.to_owned(),
            qos,
            container: c.map(|(runtime, id, monitor)| ContainerRef {
                runtime,
                id: id.to_owned(),
                monitor,
            }),
        }))
    }

    fn docker(id: &str) -> Option<CgroupOwner> {
        Some(CgroupOwner::Container(ContainerRef {
            runtime: Runtime::Docker,
            id: id.to_owned(),
            monitor: false,
        }))
    }

    #[test]
    fn layouts() {
        use QosClass::*;
        use Runtime::*;
        let cases: Vec<(&str, String, Option<CgroupOwner>)> = vec![
            (
                "containerd, systemd driver, burstable (v2)",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Burstable, Some((Containerd, CID, false))),
            ),
            (
                "containerd, systemd driver, besteffort",
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, BestEffort, Some((Containerd, CID, false))),
            ),
            (
                "containerd, systemd driver, guaranteed (no QoS level)",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Guaranteed, Some((Containerd, CID, false))),
            ),
            (
                "containerd, cgroupfs driver, burstable",
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                pod(UID, Burstable, Some((Unknown, CID, false))),
            ),
            (
                "containerd, cgroupfs driver, guaranteed",
                format!("/kubepods/pod{UID}/{CID}"),
                pod(UID, Guaranteed, Some((Unknown, CID, false))),
            ),
            (
                "cgroup v1 cgroupfs, besteffort",
                format!("/kubepods/besteffort/pod{UID}/{CID}"),
                pod(UID, BestEffort, Some((Unknown, CID, false))),
            ),
            (
                "CRI-O, systemd driver",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"),
                pod(UID, Burstable, Some((CriO, CID, false))),
            ),
            (
                "CRI-O conmon scope",
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope"),
                pod(UID, BestEffort, Some((CriO, CID, true))),
            ),
            (
                "CRI-O with crun's nested `container` cgroup",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/container"),
                pod(UID, Guaranteed, Some((CriO, CID, false))),
            ),
            (
                "CRI-O, cgroupfs driver",
                format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
                pod(UID, Burstable, Some((CriO, CID, false))),
            ),
            (
                "docker (cri-dockerd), systemd driver, cgroup v1",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope"),
                pod(UID, Burstable, Some((Docker, CID, false))),
            ),
            (
                "kind node: slice:prefix:name under containerd.service",
                format!("/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"),
                pod(UID, Burstable, Some((Containerd, CID, false))),
            ),
            (
                "kind node: guaranteed, slice:prefix:name",
                format!("/system.slice/containerd.service/kubepods-pod{UID_}.slice:cri-containerd:{CID}"),
                pod(UID, Guaranteed, Some((Containerd, CID, false))),
            ),
            (
                "kind node: kubelet.slice prefix",
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, BestEffort, Some((Containerd, CID, false))),
            ),
            (
                "kind node seen from its host (cgroup v1, docker parent)",
                format!("/docker/{CID2}/kubepods/burstable/pod{UID}/{CID}"),
                pod(UID, Burstable, Some((Unknown, CID, false))),
            ),
            (
                "kind node seen from its host (cgroup v2, docker scope parent)",
                format!("/system.slice/docker-{CID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, BestEffort, Some((Containerd, CID, false))),
            ),
            (
                "kubelet --cgroup-root=/kubelet",
                format!("/kubelet/kubepods/besteffort/pod{UID}/{CID}"),
                pod(UID, BestEffort, Some((Unknown, CID, false))),
            ),
            (
                "static pod: 32-hex UID",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope"),
                pod(STATIC_UID, Burstable, Some((Containerd, CID, false))),
            ),
            (
                "pod-level cgroup, systemd",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
                pod(UID, Burstable, None),
            ),
            (
                "pod-level cgroup, cgroupfs, trailing slash",
                format!("/kubepods/besteffort/pod{UID}/"),
                pod(UID, BestEffort, None),
            ),
            (
                "uppercase UID is lowercased",
                format!("/kubepods/pod{}/{CID}", UID.to_uppercase()),
                pod(UID, Guaranteed, Some((Unknown, CID, false))),
            ),
            (
                "docker outside Kubernetes, systemd driver",
                format!("/system.slice/docker-{CID}.scope"),
                docker(CID),
            ),
            ("docker outside Kubernetes, cgroupfs driver", format!("/docker/{CID}"), docker(CID)),
            ("root", "/".to_owned(), None),
            ("empty", String::new(), None),
            ("a system service", "/system.slice/sshd.service".to_owned(), None),
            ("a user session", "/user.slice/user-1000.slice/session-3.scope".to_owned(), None),
            ("the kubepods slice", "/kubepods.slice".to_owned(), None),
            (
                "a QoS-level slice",
                "/kubepods.slice/kubepods-besteffort.slice".to_owned(),
                None,
            ),
            ("a QoS-level cgroupfs dir", "/kubepods/burstable".to_owned(), None),
            ("containerd.service itself", "/system.slice/containerd.service".to_owned(), None),
            (
                "a pod-like name not under kubepods",
                format!("/pods/pod{UID}/{CID}"),
                None,
            ),
            (
                "a slice ending in -pod<x> that is not kubelet's",
                format!("/system.slice/foo-pod{UID_}.slice"),
                None,
            ),
            ("docker with a short id", "/docker/abc123".to_owned(), None),
        ];
        for (name, path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), Ok(want), "{name}: {path}");
        }
    }

    #[test]
    fn malformed_pod_paths_are_errors() {
        let cases: Vec<(&str, String)> = vec![
            (
                "UID too short",
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{CID}.scope"),
            ),
            (
                "UID not hex",
                "/kubepods/besteffort/podzzzzzzzz-7b1d-4c55-9e3a-1d2b3c4d5e6f".to_owned(),
            ),
            ("empty UID", "/kubepods/pod/".to_owned()),
            (
                "container id too short",
                format!("/kubepods/burstable/pod{UID}/{}", &CID[..12]),
            ),
            (
                "unknown runtime prefix",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/libpod-{CID}.scope"),
            ),
            (
                "uppercase container id",
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{}.scope", CID.to_uppercase()),
            ),
            (
                "unknown inline prefix",
                format!("/system.slice/containerd.service/kubepods-pod{UID_}.slice:runc:{CID}"),
            ),
        ];
        for (name, path) in cases {
            let got = parse_cgroup_path(&path);
            assert!(got.is_err(), "{name}: {path}: got {got:?}");
            // The message names the path, for the log line that keeps the flow.
            let message = got.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(&path), "{name}: {message}");
        }
    }

    #[test]
    fn proc_cgroup_files() {
        let v2 = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n");
        let hybrid = format!(
            "12:memory:/kubepods/besteffort/pod{UID}/{CID}\n\
             11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n\
             0::/\n"
        );
        let host = "0::/system.slice/sshd.service\n";
        let cases: Vec<(&str, &str, Option<CgroupOwner>)> = vec![
            (
                "v2",
                &v2,
                pod(
                    UID,
                    QosClass::Burstable,
                    Some((Runtime::Containerd, CID, false)),
                ),
            ),
            (
                "hybrid: v2 line says /, v1 lines name the pod",
                &hybrid,
                pod(
                    UID,
                    QosClass::BestEffort,
                    Some((Runtime::Unknown, CID, false)),
                ),
            ),
            ("host process", host, None),
            ("empty file", "", None),
        ];
        for (name, contents, want) in cases {
            assert_eq!(parse_proc_cgroup(contents), Ok(want), "{name}");
        }
        assert!(matches!(
            parse_proc_cgroup("garbage\n"),
            Err(AttributeError::ProcLine { line: 1, .. })
        ));
        // One malformed line does not hide a good one.
        let mixed = format!("0::/kubepods/pod1234/x\n1:name=systemd:/kubepods/pod{UID}/{CID}\n");
        assert_eq!(
            parse_proc_cgroup(&mixed),
            Ok(pod(
                UID,
                QosClass::Guaranteed,
                Some((Runtime::Unknown, CID, false))
            ))
        );
        assert!(parse_proc_cgroup("0::/kubepods/pod1234/x\n").is_err());
    }

    #[test]
    fn status_ids() {
        let c = ContainerRef {
            runtime: Runtime::Containerd,
            id: CID.to_owned(),
            monitor: false,
        };
        assert!(c.matches_status_id(&format!("containerd://{CID}")));
        assert!(!c.matches_status_id(&format!("cri-o://{CID}")));
        assert!(!c.matches_status_id(&format!("containerd://{CID2}")));
        assert!(!c.matches_status_id(CID));
        let bare = ContainerRef {
            runtime: Runtime::Unknown,
            ..c
        };
        assert!(bare.matches_status_id(&format!("docker://{CID}")));
        assert!(bare.matches_status_id(&format!("containerd://{CID}")));
    }

    #[test]
    fn never_panics_on_odd_input() {
        let odd = [
            "::::",
            "/kubepods.slice/-pod.slice",
            "/kubepods.slice/kubepods-pod.slice:",
            "/kubepods.slice/kubepods-pod.slice::",
            "/kubepods/pod",
            "pod",
            "/\u{0}/kubepods/\u{e9}",
            "/kubepods.slice/kubepods-pod\u{e9}\u{e9}\u{e9}.slice/\u{e9}.scope",
            ".scope",
            "/docker/",
        ];
        for path in odd {
            let _ = parse_cgroup_path(path);
            let _ = parse_proc_cgroup(path);
        }
    }
}
