//! The flow log: JSON lines, one aggregated flow record a line.
//!
//! This is the contract between `auditor record` (writer) and `diff`, `suggest`,
//! `report` and `collect` (readers). The schema is documented in `docs/flow-log.md`
//! next to this crate; keep both in step.
//!
//! Addresses are those the initiator used: for `egress` the local socket is the
//! source, for `ingress` the remote peer is the source and the local listener the
//! destination. A recorder writes one record per flow and flush interval in which the
//! flow was active; counts in a record cover that interval only, so readers that merge
//! records of the same flow add the counts up.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of the flow log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRecord {
    pub src_ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Outcome of the last connection attempt in this record (TCP), or `sent` / `received` (UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<FlowState>,
    /// Kernel drop reason (`skb_drop_reason` name, e.g. `NETFILTER_DROP`) of dropped packets of this flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub syn_retransmits: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Name of the process (thread group leader) that owns the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Name of the thread that made the call, when it differs from `comm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// DNS name the process asked for before it reached the peer (`dst_ip` for egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// The CNAME chain the answer for `dns_name` went through, in order, ending at the
    /// name that holds `dst_ip` (empty when the answer had no CNAME).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_cnames: Vec<String>,
    /// RFC 3339 UTC time of the first and last event of this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Connection attempts (TCP egress), accepted connections (TCP ingress) or datagrams (UDP).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub established: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timed_out: u64,
    /// Packets of this flow the kernel dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drops: u64,
    /// Kubernetes attribution, filled when the recorder knows the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Endpoint>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Kubernetes identity of one end of a flow, as the recorder knew it.
///
/// Unknown members are ignored (unlike the record's own fields): a later recorder may
/// say more about an identity without making older readers refuse its log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's `metadata.uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn from_ip_proto(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// SYN sent, no answer yet when the record was written.
    Connecting,
    Established,
    /// The peer answered the SYN with a reset (ECONNREFUSED).
    Refused,
    /// No answer to the SYN and its retransmits (ETIMEDOUT, or given up by the process).
    TimedOut,
    /// Accepted by a local listener.
    Accepted,
    /// Another socket error (see the recorder's log).
    Error,
    /// UDP datagrams sent.
    Sent,
    /// Packets seen only as kernel drops.
    Dropped,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowLogError {
    #[error("cannot read flow log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message} (expected a JSON object with at least src_ip, dst_ip, dst_port and protocol TCP|UDP|SCTP)")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: the last line is cut off (no newline and not valid JSON); the recorder was probably killed while writing. Remove the line or pass --skip-invalid")]
    Truncated { path: PathBuf, line: usize },
}

/// What reading a flow log produced.
#[derive(Debug, Default)]
pub struct FlowLog {
    /// Records with the 1-based line number they came from.
    pub records: Vec<(usize, FlowRecord)>,
    /// Lines skipped as invalid (only with `skip_invalid`), with the reason.
    pub skipped: Vec<(usize, String)>,
}

/// The bytes of an input file, or of standard input for `-` (flow logs and snapshots alike).
pub fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read(path)
    }
}

/// Reads a flow log. With `skip_invalid`, bad lines are counted in `skipped`
/// instead of failing the whole read. Blank lines are ignored.
pub fn read_flow_log(path: &Path, skip_invalid: bool) -> Result<FlowLog, FlowLogError> {
    let io = |source| FlowLogError::Io {
        path: path.to_owned(),
        source,
    };
    let data = read_input(path).map_err(io)?;
    parse_flow_log(path, &data, skip_invalid)
}

/// Parses flow-log bytes; `path` only names the source in errors.
pub fn parse_flow_log(
    path: &Path,
    data: &[u8],
    skip_invalid: bool,
) -> Result<FlowLog, FlowLogError> {
    let mut records = Vec::new();
    let skipped = visit_flow_log(path, data, skip_invalid, |n, _, r| records.push((n, r)))?;
    Ok(FlowLog { records, skipped })
}

/// Like [`parse_flow_log`] (same validation, same errors), but hands each record to `f`
/// with its 1-based line number and the byte range of its trimmed line in `data` instead
/// of collecting them, so that a reader of a large log need not keep every record.
/// Returns the skipped lines.
pub fn visit_flow_log(
    path: &Path,
    data: &[u8],
    skip_invalid: bool,
    mut f: impl FnMut(usize, std::ops::Range<usize>, FlowRecord),
) -> Result<Vec<(usize, String)>, FlowLogError> {
    let mut skipped = Vec::new();
    let ends_with_newline = data.last() == Some(&b'\n');
    let mut lines = data.split(|b| *b == b'\n').peekable();
    let mut n = 0;
    let mut offset = 0;
    while let Some(raw) = lines.next() {
        n += 1;
        let line_start = offset;
        offset += raw.len() + 1;
        let is_last =
            lines.peek().is_none() || (lines.peek() == Some(&&b""[..]) && ends_with_newline);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t.trim(),
            Err(e) => {
                let message = format!("not UTF-8 ({e})");
                if skip_invalid {
                    skipped.push((n, message));
                    continue;
                }
                return Err(FlowLogError::Line {
                    path: path.to_owned(),
                    line: n,
                    message,
                });
            }
        };
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<FlowRecord>(text) {
            Ok(r) => {
                let start = line_start + (text.as_ptr() as usize - raw.as_ptr() as usize);
                f(n, start..start + text.len(), r)
            }
            Err(e) => {
                if skip_invalid {
                    skipped.push((n, e.to_string()));
                } else if is_last && !ends_with_newline && e.is_eof() {
                    return Err(FlowLogError::Truncated {
                        path: path.to_owned(),
                        line: n,
                    });
                } else {
                    return Err(FlowLogError::Line {
                        path: path.to_owned(),
                        line: n,
                        message: e.to_string(),
                    });
                }
            }
        }
    }
    Ok(skipped)
}

/// Writes records as JSON lines; each line is written whole (one `write_all` per line).
pub fn write_records<W: Write>(w: &mut W, records: &[FlowRecord]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(256 * records.len());
    for r in records {
        serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    w.write_all(&buf)?;
    w.flush()
}

/// Reads records from any reader (used for stdin and tests).
pub fn read_from<R: BufRead>(
    name: &Path,
    mut r: R,
    skip_invalid: bool,
) -> Result<FlowLog, FlowLogError> {
    let mut data = Vec::new();
    r.read_to_end(&mut data)
        .map_err(|source| FlowLogError::Io {
            path: name.to_owned(),
            source,
        })?;
    parse_flow_log(name, &data, skip_invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","dst_port":80,"protocol":"TCP"}"#;

    #[test]
    fn minimal_line_parses() {
        let log = parse_flow_log(Path::new("f"), format!("{MIN}\n").as_bytes(), false).unwrap();
        assert_eq!(log.records.len(), 1);
        assert_eq!(log.records[0].1.dst_port, 80);
        assert_eq!(log.records[0].1.protocol, Protocol::Tcp);
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let data = format!("{MIN}\n{{\"src_ip\":\"10.0.0.1\",\"dst_ip\":\"10.0.0.2\",\"dst_port\":1,\"protocol\":\"UDP\",\"colour\":1}}\n");
        let err = parse_flow_log(Path::new("flows.jsonl"), data.as_bytes(), false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("flows.jsonl:2:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn identity_members_are_read_and_unknown_ones_ignored() {
        // A later recorder may say more about a pod; the record's own fields stay strict.
        let line = r#"{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","dst_port":80,"protocol":"TCP","src":{"namespace":"media","pod":"a-1","uid":"3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90","node":"node-a"}}"#;
        let log = parse_flow_log(Path::new("f"), format!("{line}\n").as_bytes(), false).unwrap();
        let src = log.records[0].1.src.clone().unwrap();
        assert_eq!(src.pod.as_deref(), Some("a-1"));
        assert_eq!(
            src.uid.as_deref(),
            Some("3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90")
        );
        let out = serde_json::to_string(&log.records[0].1).unwrap();
        assert!(
            out.contains(r#""uid":"3f0c2a4e-8b1d-4c6e-9a7f-2d5b8e1c4a90""#),
            "{out}"
        );
        assert!(!out.contains("node-a"), "{out}");
    }

    #[test]
    fn truncated_last_line_is_named() {
        let data = format!("{MIN}\n{}", &MIN[..30]);
        let err = parse_flow_log(Path::new("f"), data.as_bytes(), false).unwrap_err();
        assert!(
            matches!(err, FlowLogError::Truncated { line: 2, .. }),
            "{err}"
        );
        let log = parse_flow_log(Path::new("f"), data.as_bytes(), true).unwrap();
        assert_eq!((log.records.len(), log.skipped.len()), (1, 1));
    }

    #[test]
    fn visit_gives_line_numbers_and_spans() {
        let data = format!("\n  {MIN}  \n{MIN}\n");
        let mut seen = Vec::new();
        let skipped = visit_flow_log(Path::new("f"), data.as_bytes(), false, |n, span, _| {
            seen.push((n, span))
        })
        .unwrap();
        assert!(skipped.is_empty());
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, 2);
        assert_eq!(&data[seen[0].1.clone()], MIN);
        assert_eq!(seen[1].0, 3);
        assert_eq!(&data[seen[1].1.clone()], MIN);
    }

    #[test]
    fn round_trip() {
        let r: FlowRecord = serde_json::from_str(MIN).unwrap();
        let mut out = Vec::new();
        write_records(&mut out, &[r.clone(), r.clone()]).unwrap();
        let log = parse_flow_log(Path::new("f"), &out, false).unwrap();
        assert_eq!(
            log.records.into_iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![r.clone(), r]
        );
    }
}
