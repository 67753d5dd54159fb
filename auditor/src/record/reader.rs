//! The ring buffer, read on a thread of its own.
//!
//! The kernel's ring buffer holds well under a second of events under churn (1 MiB is
//! about 10,000 events), while a flush of 65,536 flows takes longer than that. Read from
//! the recorder's loop, every event that arrived during a flush beyond the ring's size was
//! lost. This thread empties the ring as events come, in batches, into a bounded channel
//! that the loop reads at its own pace. When the loop falls behind by more than the
//! channel holds, the thread waits, the ring fills, and the kernel counts what it could not
//! reserve (`auditor_events_lost_total{kind="ringbuf"}`): memory stays bounded and nothing
//! is lost without being counted.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

/// Records per batch, and bytes (a flow event is about 104 bytes).
const BATCH_RECORDS: usize = 2048;
const BATCH_BYTES: usize = 256 << 10;
/// Batches the channel holds: at most 16 MiB of events waiting for the loop.
const CHANNEL_BATCHES: usize = 64;

/// Ring-buffer records, concatenated.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// Where each record ends in `data`.
    ends: Vec<u32>,
}

/// The receiving end: what the recorder's loop and flushes read.
pub struct Events {
    rx: mpsc::Receiver<Batch>,
    queue: VecDeque<Batch>,
    /// Records of `queue[0]` already handed over.
    pos: usize,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Events {
    /// Starts the reading thread. With `stall_until` (a testing aid) it reads nothing
    /// before then, so the ring overflows.
    pub fn start(ring: RingBuf<MapData>, stall_until: Option<Instant>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ring-reader".into())
                .spawn(move || read_loop(ring, tx, &stop, stall_until))?
        };
        Ok(Self {
            rx,
            queue: VecDeque::new(),
            pos: 0,
            stop,
            thread: Some(thread),
        })
    }

    /// Records are waiting to be handed over.
    fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Waits until records are waiting; false when the reading thread has ended.
    /// Cancel-safe (a `select!` branch).
    pub async fn ready(&mut self) -> bool {
        if self.pending() {
            return true;
        }
        match self.rx.recv().await {
            Some(b) => {
                self.queue.push_back(b);
                true
            }
            None => false,
        }
    }

    /// Hands up to `max` records to `f`, oldest first; true when it stopped because of
    /// `max`.
    pub fn read(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> bool {
        let mut n = 0;
        while n < max {
            let Some(b) = self.queue.front() else {
                match self.rx.try_recv() {
                    Ok(b) => {
                        self.queue.push_back(b);
                        continue;
                    }
                    Err(_) => return false,
                }
            };
            if self.pos >= b.ends.len() {
                self.queue.pop_front();
                self.pos = 0;
                continue;
            }
            let start = if self.pos == 0 {
                0
            } else {
                b.ends[self.pos - 1] as usize
            };
            let end = b.ends[self.pos] as usize;
            f(&b.data[start..end]);
            self.pos += 1;
            n += 1;
        }
        true
    }

    /// Stops the thread after it has emptied the ring once more, and keeps what it read
    /// (for the final flush). Bounded: gives up waiting after `timeout`.
    pub async fn stop(&mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let collect = async {
            while let Some(b) = self.rx.recv().await {
                self.queue.push_back(b);
            }
        };
        if tokio::time::timeout(timeout, collect).await.is_err() {
            tracing::warn!("the ring buffer reader did not stop in time");
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The thread: wait for the ring's fd, move what is there into batches, send them.
fn read_loop(
    mut ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    stop: &AtomicBool,
    stall_until: Option<Instant>,
) {
    if let Some(t) = stall_until {
        while Instant::now() < t && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let fd = ring.as_raw_fd();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a timeout so the stop flag is seen.
            unsafe { libc::poll(&mut p, 1, 100) };
        }
        loop {
            let mut b = Batch::default();
            while b.ends.len() < BATCH_RECORDS && b.data.len() < BATCH_BYTES {
                let Some(item) = ring.next() else { break };
                b.data.extend_from_slice(&item);
                b.ends.push(b.data.len() as u32);
            }
            if b.ends.is_empty() {
                break;
            }
            let full = b.ends.len() == BATCH_RECORDS || b.data.len() >= BATCH_BYTES;
            // Waits while the loop is behind by a whole channel: the ring then fills and
            // the kernel counts what it cannot reserve.
            if tx.blocking_send(b).is_err() {
                return;
            }
            if !full {
                break;
            }
        }
        if stopping {
            return;
        }
    }
}
