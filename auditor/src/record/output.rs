//! The flow log sink: stdout or a file opened for appending, with a bounded buffer for
//! the records a failed write (a full disk, an I/O error) could not put on disk.
//!
//! Only whole lines reach the file: a write that fails part-way is cut back to the
//! length before it. What could not be written is kept (up to `--log-buffer-bytes`) and
//! retried at every flush, oldest first; what overflows the buffer is dropped oldest
//! first and counted. A rolling log (`--max-log-bytes`) rotates before a write that
//! would take the file past the limit, so each file stays within it (a single line
//! longer than the limit is the only exception).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::RecordError;

/// Whole lines waiting to be written, with how many records they hold.
struct Chunk {
    bytes: Vec<u8>,
    records: u64,
}

enum Sink {
    Stdout,
    File { path: PathBuf, file: File },
}

pub struct Output {
    sink: Sink,
    max_bytes: u64,
    /// Bytes the open file holds (tracked, so rotation needs no stat per write).
    len: u64,
    pending: VecDeque<Chunk>,
    pending_bytes: usize,
    max_pending: usize,
    /// Records dropped because the buffer was full (a loss: counted in the summary and
    /// `auditor_events_lost_total{kind="log_buffer"}`).
    pub overflowed_records: u64,
    /// Records put on disk.
    pub written_records: u64,
    /// The last write error, while writes fail.
    pub fault: Option<String>,
}

impl Output {
    /// Opens the flow log. A file that ends in a partial line (a killed earlier run) is
    /// cut back to its last complete line.
    pub fn open(path: &Path, max_bytes: u64, max_pending: usize) -> Result<Self, RecordError> {
        let mut out = Output {
            sink: Sink::Stdout,
            max_bytes,
            len: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            max_pending,
            overflowed_records: 0,
            written_records: 0,
            fault: None,
        };
        if path.as_os_str() == "-" {
            return Ok(out);
        }
        let io = |op, source| RecordError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io("open flow log", e))?;
        let mut len = file.metadata().map_err(|e| io("stat flow log", e))?.len();
        if len > 0 {
            let tail = len.min(1 << 20);
            file.seek(SeekFrom::Start(len - tail))
                .map_err(|e| io("read flow log", e))?;
            let mut buf = Vec::with_capacity(tail as usize);
            file.read_to_end(&mut buf)
                .map_err(|e| io("read flow log", e))?;
            if buf.last() != Some(&b'\n') {
                let keep = buf
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| len - tail + i as u64 + 1)
                    .unwrap_or(len - tail);
                tracing::warn!(path = %path.display(), removed_bytes = len - keep, "the flow log ends in a partial line (an earlier run was killed while writing); removing it");
                file.set_len(keep).map_err(|e| io("truncate flow log", e))?;
                len = keep;
            }
        }
        out.sink = Sink::File {
            path: path.to_owned(),
            file,
        };
        out.len = len;
        Ok(out)
    }

    /// Where the flow log goes, for messages.
    pub fn name(&self) -> PathBuf {
        match &self.sink {
            Sink::Stdout => "-".into(),
            Sink::File { path, .. } => path.clone(),
        }
    }

    /// Records buffered, not yet on disk.
    pub fn pending_records(&self) -> u64 {
        self.pending.iter().map(|c| c.records).sum()
    }

    /// Queues whole lines (`records` of them) and writes what it can, oldest first.
    pub fn push(&mut self, bytes: Vec<u8>, records: u64) {
        if !bytes.is_empty() {
            self.pending_bytes += bytes.len();
            self.pending.push_back(Chunk { bytes, records });
        }
        self.retry();
        self.trim_to_budget();
    }

    /// Past `max_pending`, drops whole lines from the front of the oldest chunks (only
    /// while they cannot be written: a healthy log empties the buffer at every push).
    fn trim_to_budget(&mut self) {
        let mut dropped = 0u64;
        while self.pending_bytes > self.max_pending {
            let Some(c) = self.pending.front_mut() else {
                break;
            };
            let excess = self.pending_bytes - self.max_pending;
            if excess >= c.bytes.len() {
                self.pending_bytes -= c.bytes.len();
                dropped += c.records;
                self.pending.pop_front();
                continue;
            }
            // Cut at the end of the line that covers the excess.
            let cut = c.bytes[excess - 1..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(c.bytes.len(), |i| excess + i);
            let lines = c.bytes[..cut].iter().filter(|b| **b == b'\n').count() as u64;
            c.bytes.drain(..cut);
            c.records -= lines.min(c.records);
            self.pending_bytes -= cut;
            dropped += lines;
            if c.bytes.is_empty() {
                self.pending.pop_front();
            }
        }
        if dropped > 0 {
            self.overflowed_records += dropped;
            tracing::warn!(
                records = dropped,
                "flow log buffer full while the log cannot be written: oldest records dropped (counted as lost, kind log_buffer)"
            );
        }
    }

    /// Writes the buffered lines, oldest first, until one write fails.
    pub fn retry(&mut self) {
        while let Some(c) = self.pending.pop_front() {
            match self.write_chunk(&c.bytes) {
                Ok(()) => {
                    self.pending_bytes -= c.bytes.len();
                    self.written_records += c.records;
                    if let Some(f) = self.fault.take() {
                        tracing::info!(path = %self.name().display(), was = f, "flow log writable again; writing the buffered records");
                    }
                }
                Err(e) => {
                    self.pending.push_front(c);
                    let msg = format!("write {}: {e}", self.name().display());
                    if self.fault.as_deref() != Some(msg.as_str()) {
                        tracing::error!(error = %e, path = %self.name().display(), buffered_records = self.pending_records(), "cannot write the flow log: recording goes on, records are buffered and retried at every flush");
                    }
                    self.fault = Some(msg);
                    return;
                }
            }
        }
    }

    /// One chunk of whole lines, all or nothing.
    fn write_chunk(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(buf).and_then(|_| o.flush())
            }
            Sink::File { .. } => {
                if self.max_bytes > 0
                    && self.len > 0
                    && self.len + buf.len() as u64 > self.max_bytes
                {
                    self.rotate()?;
                }
                let Sink::File { file, .. } = &mut self.sink else {
                    unreachable!("matched above")
                };
                let before = self.len;
                match file.write_all(buf).and_then(|_| file.flush()) {
                    Ok(()) => {
                        self.len += buf.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        // Only whole lines on disk: cut the partial write back.
                        if let Err(t) = file.set_len(before) {
                            tracing::warn!(error = %t, "could not cut back a partial write of the flow log");
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// A rolling log: the file becomes `<path>.1` (replacing the previous one) and a new
    /// file starts.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Sink::File { path, file } = &mut self.sink else {
            return Ok(());
        };
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        std::fs::rename(&*path, &rotated)?;
        *file = OpenOptions::new().append(true).create(true).open(&*path)?;
        tracing::info!(path = %path.display(), bytes = self.len, "flow log rotated to {}", PathBuf::from(rotated).display());
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowlog::{self, FlowRecord};

    fn lines(n: usize, tag: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(format!("{{\"{tag}\":{i}}}\n").as_bytes());
        }
        v
    }

    #[test]
    fn truncated_flow_log_is_repaired_on_open() {
        let p = std::env::temp_dir().join(format!("auditor-out-{}", std::process::id()));
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":").unwrap();
        let out = Output::open(&p, 0, 1 << 20).unwrap();
        assert_eq!(out.len, 8);
        drop(out);
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn rotation_keeps_every_file_within_the_limit_and_whole_lines() {
        let p = std::env::temp_dir().join(format!("auditor-roll-{}", std::process::id()));
        let rotated = PathBuf::from(format!("{}.1", p.display()));
        let _ = std::fs::remove_file(&p);
        let r: FlowRecord = serde_json::from_str(
            r#"{"src_ip":"10.0.0.1","dst_ip":"10.0.0.2","dst_port":80,"protocol":"TCP"}"#,
        )
        .unwrap();
        let mut out = Output::open(&p, 300, 1 << 20).unwrap();
        for round in 0..12 {
            let mut buf = Vec::new();
            flowlog::write_records(&mut buf, &[r.clone(), r.clone()]).unwrap();
            out.push(buf, 2);
            for f in [&p, &rotated] {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                assert!(
                    text.len() <= 300,
                    "round {round}: {} is {} bytes, over --max-log-bytes 300",
                    f.display(),
                    text.len()
                );
                assert!(text.is_empty() || text.ends_with('\n'));
                assert!(flowlog::parse_flow_log(f, text.as_bytes(), false).is_ok());
            }
        }
        assert!(rotated.exists(), "rotated past 300 bytes");
        assert_eq!(out.written_records, 24);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&rotated);
    }

    #[test]
    fn failed_writes_are_buffered_retried_and_overflow_counted() {
        // /dev/full fails every write with ENOSPC.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mut out = Output::open(full, 0, 1000).unwrap();
        out.push(lines(10, "a"), 10); // ~80 bytes
        assert!(out.fault.as_deref().unwrap().contains("No space left"));
        assert_eq!(out.pending_records(), 10);
        for _ in 0..30 {
            out.push(lines(10, "b"), 10);
        }
        // 1000 bytes hold about 120 lines: the rest was dropped oldest first, whole lines.
        assert_eq!(out.pending_records() + out.overflowed_records, 310);
        assert!(out.pending_bytes <= 1000);
        assert_eq!(out.written_records, 0);
        // One chunk larger than the whole buffer is cut to whole lines too.
        out.push(lines(500, "c"), 500);
        assert_eq!(out.pending_records() + out.overflowed_records, 810);
        assert!(out.pending_bytes <= 1000);
        let kept: Vec<u8> = out.pending.iter().flat_map(|c| c.bytes.clone()).collect();
        assert!(
            kept.ends_with(b"{\"c\":499}\n"),
            "the newest lines are kept"
        );
        assert_eq!(
            kept.iter().filter(|b| **b == b'\n').count() as u64,
            out.pending_records()
        );
        assert!(kept.starts_with(b"{\"c\":"), "whole lines");
    }
}
