//! Merging every node's flow records in bounded memory. Each node's answer is validated
//! line by line as it streams in and kept in a run of at most [`RUN_BYTES`]; a full run is
//! sorted and written to a spool file. When every node is in, the runs are merged (at most
//! [`FAN_IN`] open at a time, more in passes) straight into the output. Memory is about
//! `concurrency x RUN_BYTES` plus one read buffer per merged run, whatever the number of
//! nodes or records; disk holds one copy of the records.
//!
//! The order is the merged log's contract: `first_seen`, then node, then the line within
//! the node's answer; records without `first_seen` last. Each spooled line starts with a
//! fixed-width key that sorts that way as bytes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::flowlog;

/// Records of one node kept in memory before they go to a sorted run on disk.
pub const RUN_BYTES: usize = 1 << 20;
/// Runs merged at once (each holds a file descriptor and a read buffer).
pub const FAN_IN: usize = 64;
const READ_BUFFER: usize = 32 << 10;
/// `missing(1) first_seen_ns(20) node(6) line(12)` then a tab.
const KEY_LEN: usize = 1 + 20 + 6 + 12;

/// The spool directory of one collection, removed when dropped.
pub struct Spool {
    dir: PathBuf,
    seq: u64,
}

impl Spool {
    pub fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("auditor-collect-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Spool { dir, seq: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn next_path(&mut self) -> PathBuf {
        self.seq += 1;
        self.dir.join(format!("run-{:06}", self.seq))
    }

    /// Merges `runs` into `out` (the JSON of each record, one line each); returns how many.
    pub fn merge(&mut self, mut runs: Vec<PathBuf>, out: &mut dyn Write) -> std::io::Result<u64> {
        while runs.len() > FAN_IN {
            let group: Vec<PathBuf> = runs.drain(..FAN_IN).collect();
            let path = self.next_path();
            let mut w = BufWriter::new(std::fs::File::create(&path)?);
            merge_into(&group, &mut w, true)?;
            w.flush()?;
            for g in &group {
                let _ = std::fs::remove_file(g);
            }
            runs.push(path);
        }
        merge_into(&runs, out, false)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn merge_into(runs: &[PathBuf], out: &mut dyn Write, keep_key: bool) -> std::io::Result<u64> {
    let mut readers = Vec::with_capacity(runs.len());
    for r in runs {
        readers.push(BufReader::with_capacity(
            READ_BUFFER,
            std::fs::File::open(r)?,
        ));
    }
    let mut heap = BinaryHeap::with_capacity(readers.len());
    let read = |r: &mut BufReader<std::fs::File>| -> std::io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        Ok((r.read_until(b'\n', &mut line)? > 0).then_some(line))
    };
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(l) = read(r)? {
            heap.push(Reverse((l, i)));
        }
    }
    let mut n = 0;
    while let Some(Reverse((line, i))) = heap.pop() {
        let body = if keep_key {
            &line[..]
        } else {
            &line[KEY_LEN + 1..]
        };
        out.write_all(body)?;
        n += 1;
        if let Some(l) = read(&mut readers[i])? {
            heap.push(Reverse((l, i)));
        }
    }
    Ok(n)
}

/// One node's answer, as it streams in.
pub struct NodeRun {
    node: u32,
    /// The tail of the last chunk, up to its first newline not yet seen.
    pending: Vec<u8>,
    /// Lines of the answer seen so far.
    lines: usize,
    run: Vec<(Box<[u8]>, Box<str>)>,
    run_bytes: usize,
    run_limit: usize,
    /// This node's sorted runs on disk.
    pub runs: Vec<PathBuf>,
    pub records: usize,
    /// (line, why) of lines that are not flow records (skipped).
    pub bad: Vec<(usize, String)>,
}

impl NodeRun {
    /// `node`: its rank in node order.
    pub fn new(node: u32) -> Self {
        Self::with_run_limit(node, RUN_BYTES)
    }

    pub fn with_run_limit(node: u32, run_limit: usize) -> Self {
        NodeRun {
            node,
            pending: Vec::new(),
            lines: 0,
            run: Vec::new(),
            run_bytes: 0,
            run_limit,
            runs: Vec::new(),
            records: 0,
            bad: Vec::new(),
        }
    }

    /// A chunk of the answer.
    pub fn push(&mut self, spool: &mut Spool, chunk: &[u8]) -> std::io::Result<()> {
        let Some(last_nl) = chunk.iter().rposition(|b| *b == b'\n') else {
            self.pending.extend_from_slice(chunk);
            return Ok(());
        };
        if self.pending.is_empty() {
            self.lines_of(spool, &chunk[..=last_nl])?;
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(&chunk[..=last_nl]);
            self.lines_of(spool, &joined)?;
        }
        self.pending.extend_from_slice(&chunk[last_nl + 1..]);
        Ok(())
    }

    /// The answer is complete: the last line (if it had no newline) and the last run.
    pub fn finish(&mut self, spool: &mut Spool) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let mut rest = std::mem::take(&mut self.pending);
            rest.push(b'\n');
            self.lines_of(spool, &rest)?;
        }
        self.spill(spool)
    }

    /// Drops what was kept (the answer failed part way).
    pub fn discard(&mut self) {
        for r in self.runs.drain(..) {
            let _ = std::fs::remove_file(r);
        }
        self.run.clear();
        self.records = 0;
        self.bad.clear();
    }

    /// Complete lines (`data` ends with a newline).
    fn lines_of(&mut self, spool: &mut Spool, data: &[u8]) -> std::io::Result<()> {
        let base = self.lines;
        let node = self.node;
        let mut kept = Vec::new();
        let name = Path::new("");
        let skipped = flowlog::visit_flow_log(name, data, true, |line, span, rec| {
            let at = rec
                .first_seen
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64);
            let key = format!(
                "{}{:020}{:06}{:012}",
                u8::from(at.is_none()),
                at.unwrap_or(0),
                node,
                base + line
            );
            let text = String::from_utf8_lossy(&data[span]).into_owned();
            kept.push((key.into_bytes().into_boxed_slice(), text.into_boxed_str()));
        })
        .unwrap_or_default();
        self.lines += data.iter().filter(|b| **b == b'\n').count();
        for (line, why) in skipped {
            self.bad.push((base + line, why));
        }
        for (k, t) in kept {
            self.records += 1;
            self.run_bytes += k.len() + t.len() + 48;
            self.run.push((k, t));
            if self.run_bytes >= self.run_limit {
                self.spill(spool)?;
            }
        }
        Ok(())
    }

    fn spill(&mut self, spool: &mut Spool) -> std::io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.run.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let path = spool.next_path();
        let mut w = BufWriter::new(std::fs::File::create(&path)?);
        for (k, t) in self.run.drain(..) {
            w.write_all(&k)?;
            w.write_all(b"\t")?;
            w.write_all(t.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        self.run_bytes = 0;
        self.run.shrink_to(1024);
        self.runs.push(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(port: u16, first_seen: Option<&str>) -> String {
        let fs = first_seen
            .map(|t| format!(",\"first_seen\":\"{t}\""))
            .unwrap_or_default();
        format!("{{\"src_ip\":\"10.0.0.1\",\"dst_ip\":\"10.0.0.2\",\"dst_port\":{port},\"protocol\":\"TCP\"{fs}}}")
    }

    #[test]
    fn many_small_runs_merge_in_order_across_passes() {
        let mut spool = Spool::new().unwrap();
        // 3 nodes, records in reverse time order, split at odd places, tiny runs: many
        // runs per node and more runs than FAN_IN, so the merge takes two passes.
        let mut nodes: Vec<NodeRun> = (0..3).map(|n| NodeRun::with_run_limit(n, 300)).collect();
        for (n, node) in nodes.iter_mut().enumerate() {
            let mut body = String::new();
            for i in (0..200u16).rev() {
                let t = format!("2026-11-28T10:{:02}:{:02}Z", i / 60, i % 60);
                body.push_str(&rec(1000 + i, Some(&t)));
                body.push('\n');
                if i == 100 {
                    body.push_str("{not json\n\n");
                }
            }
            body.push_str(&rec(9000 + n as u16, None)); // no first_seen, no newline
            for chunk in body.as_bytes().chunks(37) {
                node.push(&mut spool, chunk).unwrap();
            }
            node.finish(&mut spool).unwrap();
            assert_eq!(node.records, 201);
            assert_eq!(node.bad.len(), 1, "{:?}", node.bad);
            assert_eq!(node.bad[0].0, 101, "line numbers count across chunks");
        }
        let runs: Vec<PathBuf> = nodes.iter().flat_map(|n| n.runs.clone()).collect();
        assert!(runs.len() > FAN_IN, "{} runs", runs.len());
        let mut out = Vec::new();
        assert_eq!(spool.merge(runs, &mut out).unwrap(), 603);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 603);
        // Same first_seen on each node: node 0, 1, 2 in turn; the three without last.
        assert!(lines[0].contains("\"dst_port\":1000,"), "{}", lines[0]);
        assert!(lines[1].contains("\"dst_port\":1000,") && lines[2].contains("\"dst_port\":1000,"));
        let ports: Vec<&str> = lines[600..]
            .iter()
            .map(|l| &l[l.find("dst_port").unwrap()..][..14])
            .collect();
        assert_eq!(
            ports,
            ["dst_port\":9000", "dst_port\":9001", "dst_port\":9002"]
        );
        let times: Vec<&str> = lines[..600]
            .iter()
            .map(|l| &l[l.find("first_seen").unwrap()..])
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "sorted by first_seen"
        );
        let dir = spool.dir().to_owned();
        drop(spool);
        assert!(!dir.exists(), "the spool is removed");
    }
}
