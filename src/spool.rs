//! The durable local spool: review items the broker could not confirm, kept on disk until it
//! can. Control plane, except [`Spool::append`], which a hold awaits before its 202.
//!
//! Layout: numbered segment files `<seq>.spool` in `--spool-dir`; records framed as
//! `u32 length | u32 crc32 | payload` (little endian). One writer thread owns the open
//! segment and does group commit: every append queued while it writes shares one
//! `fdatasync`, and each caller hears back only after that sync. The replayer publishes
//! closed segments oldest first, in order, and deletes a segment once every record in it was
//! confirmed; a crash replays that segment again (at-least-once: reviewers dedupe by review
//! id). A torn tail (a crash mid-write) fails its length or CRC check and is skipped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::amqp::Publisher;
use crate::metrics;

const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
    #[error("the spool cannot write: {0}")]
    Io(String),
    #[error("the spool is closed")]
    Closed,
}

/// One review item as spooled: enough to publish it again unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub routing_key: String,
    pub review_id: String,
    pub payload: Vec<u8>,
}

impl Item {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + self.routing_key.len() + self.review_id.len() + self.payload.len(),
        );
        for part in [self.routing_key.as_bytes(), self.review_id.as_bytes()] {
            out.extend_from_slice(&(part.len() as u16).to_le_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(mut b: &[u8]) -> Option<Item> {
        let mut take = || -> Option<String> {
            let len = u16::from_le_bytes([*b.first()?, *b.get(1)?]) as usize;
            let s = String::from_utf8(b.get(2..2 + len)?.to_vec()).ok()?;
            b = b.get(2 + len..)?;
            Some(s)
        };
        let routing_key = take()?;
        let review_id = take()?;
        Some(Item {
            routing_key,
            review_id,
            payload: b.to_vec(),
        })
    }
}

/// Frame a payload: length, CRC, bytes.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Every intact record of a segment, in order; stops at the first torn or corrupt one.
pub fn records(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + HEADER) else {
            return (out, true);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (out, true);
        };
        if crc32fast::hash(payload) != crc {
            return (out, true);
        }
        out.push(payload);
        at += HEADER + len;
    }
    (out, false)
}

/// Where the writer answers an append, after the sync.
type Done = oneshot::Sender<Result<(), SpoolError>>;

enum Command {
    Append(Vec<u8>, Done),
    /// Close the open segment so the replayer can take it.
    Rotate(oneshot::Sender<()>),
}

#[derive(Debug)]
pub struct Spool {
    tx: mpsc::UnboundedSender<Command>,
    dir: PathBuf,
    max_bytes: u64,
    bytes: Arc<AtomicU64>,
    items: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    /// Set when an append was refused for space; cleared when a replay frees some.
    full: AtomicBool,
    /// Notified by the writer thread whenever items land: the replay waits on it.
    wake: Arc<tokio::sync::Notify>,
}

impl Spool {
    /// Open (or create) the spool directory, count what is already in it, start the writer.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Arc<Spool>> {
        fs::create_dir_all(dir)?;
        let (mut items, mut bytes) = (0u64, 0u64);
        for (_, path) in segments(dir)? {
            let data = fs::read(&path)?;
            bytes += data.len() as u64;
            items += records(&data).0.len() as u64;
        }
        let next = segments(dir)?.last().map_or(1, |(seq, _)| seq + 1);
        let (tx, rx) = mpsc::unbounded_channel();
        let spool = Arc::new(Spool {
            tx,
            dir: dir.to_path_buf(),
            max_bytes,
            bytes: Arc::new(AtomicU64::new(bytes)),
            items: Arc::new(AtomicU64::new(items)),
            healthy: Arc::new(AtomicBool::new(true)),
            full: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        metrics::spool_items(items);
        let writer = Writer {
            dir: dir.to_path_buf(),
            seq: next,
            file: None,
            written: 0,
            max_bytes,
            bytes: spool.bytes.clone(),
            items: spool.items.clone(),
            healthy: spool.healthy.clone(),
            wake: spool.wake.clone(),
        };
        std::thread::Builder::new()
            .name("triage-spool".into())
            .spawn(move || writer.run(rx))?;
        Ok(spool)
    }

    /// Append durably: returns once the item is written and synced to disk.
    pub async fn append(&self, item: &Item) -> Result<(), SpoolError> {
        let record = frame(&item.encode());
        if self.bytes.load(Ordering::Relaxed) + record.len() as u64 > self.max_bytes {
            self.full.store(true, Ordering::Relaxed);
            return Err(SpoolError::Full(self.max_bytes));
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Append(record, done))
            .map_err(|_| SpoolError::Closed)?;
        let result = wait.await.map_err(|_| SpoolError::Closed)?;
        if let Err(SpoolError::Full(_)) = &result {
            self.full.store(true, Ordering::Relaxed);
        }
        result
    }

    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Writable and below its cap: holds can still be made durable here.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.full.load(Ordering::Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn rotate(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Rotate(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = name.strip_suffix(".spool")?.parse().ok()?;
            Some((seq, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

struct Writer {
    dir: PathBuf,
    seq: u64,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    bytes: Arc<AtomicU64>,
    items: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut rotations = Vec::new();
            let mut next = Some(first);
            // Group commit: take everything already queued into one write and one sync.
            while let Some(cmd) = next {
                match cmd {
                    Command::Append(record, done) => batch.push((record, done)),
                    Command::Rotate(done) => rotations.push(done),
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
            if !rotations.is_empty() {
                self.file = None;
                if self.written > 0 {
                    self.seq += 1;
                    self.written = 0;
                }
                for done in rotations {
                    let _ = done.send(());
                }
            }
        }
    }

    fn commit(&mut self, batch: Vec<(Vec<u8>, Done)>) {
        let mut accepted = Vec::with_capacity(batch.len());
        let mut buf = Vec::new();
        let mut total = self.bytes.load(Ordering::Relaxed);
        for (record, done) in batch {
            if total + record.len() as u64 > self.max_bytes {
                let _ = done.send(Err(SpoolError::Full(self.max_bytes)));
                continue;
            }
            total += record.len() as u64;
            buf.extend_from_slice(&record);
            accepted.push(done);
        }
        if accepted.is_empty() {
            return;
        }
        let n = accepted.len() as u64;
        let len = buf.len() as u64;
        match self.write(&buf) {
            Ok(()) => {
                self.healthy.store(true, Ordering::Relaxed);
                self.bytes.fetch_add(len, Ordering::Relaxed);
                let items = self.items.fetch_add(n, Ordering::Relaxed) + n;
                metrics::spool_items(items);
                // Here rather than in `append`: an item whose request went away while it
                // was written is in the spool all the same.
                self.wake.notify_one();
                for done in accepted {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // The open segment may now end in a torn record: start a fresh one.
                self.file = None;
                self.seq += 1;
                self.written = 0;
                self.healthy.store(false, Ordering::Relaxed);
                metrics::spool_error();
                tracing::error!(dir = %self.dir.display(), error = %e, "spool write failed");
                for done in accepted {
                    let _ = done.send(Err(SpoolError::Io(e.to_string())));
                }
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.written >= SEGMENT_BYTES {
            self.file = None;
            self.seq += 1;
            self.written = 0;
        }
        if self.file.is_none() {
            let path = self.dir.join(format!("{:020}.spool", self.seq));
            self.file = Some(OpenOptions::new().create(true).append(true).open(&path)?);
            // The new file's directory entry must survive a crash too.
            File::open(&self.dir)?.sync_all()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("no open segment"))?;
        file.write_all(buf)?;
        file.sync_data()?;
        self.written += buf.len() as u64;
        Ok(())
    }
}

/// Replay the spool into the broker whenever both are there: oldest segment first, each
/// record confirmed before the next, a segment deleted once all of it is confirmed.
pub fn start_replay(spool: Arc<Spool>, publisher: Arc<Publisher>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        // Records of each segment already confirmed by this process: a retry resumes after
        // them instead of publishing them again (which could keep a full queue full of
        // duplicates forever). A restart starts each segment over: at-least-once.
        let mut confirmed: HashMap<PathBuf, usize> = HashMap::new();
        loop {
            if spool.items() == 0 {
                // Only the writer changes that, and it wakes us (`notify_one` keeps the wake
                // for us if we are not waiting yet): no timer ticking while all is well.
                spool.wake.notified().await;
                continue;
            }
            if !publisher.is_connected() {
                tokio::select! {
                    () = spool.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
            match replay_once(&spool, &publisher, &mut confirmed).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, items = spool.items(), "spool replay paused");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

async fn replay_once(
    spool: &Spool,
    publisher: &Publisher,
    confirmed: &mut HashMap<PathBuf, usize>,
) -> Result<(), String> {
    spool.rotate().await;
    let dir = spool.dir.clone();
    let list = tokio::task::spawn_blocking(move || segments(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    for (_, path) in list {
        let p = path.clone();
        let data = tokio::task::spawn_blocking(move || fs::read(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let (recs, torn) = records(&data);
        if torn {
            tracing::warn!(segment = %path.display(), intact = recs.len(), "spool segment ends in a torn or corrupt record; skipping the rest");
        }
        let done = confirmed.entry(path.clone()).or_default();
        for rec in recs.iter().skip(*done) {
            *done += 1;
            let Some(item) = Item::decode(rec) else {
                tracing::warn!(segment = %path.display(), "undecodable spool record skipped");
                continue;
            };
            if let Err(e) = publisher
                .publish(&item.routing_key, &item.review_id, &item.payload)
                .await
            {
                *done -= 1;
                return Err(e.to_string());
            }
            metrics::review_published("confirmed");
            let left = spool
                .items
                .fetch_sub(1.min(spool.items()), Ordering::Relaxed)
                .saturating_sub(1);
            metrics::spool_items(left);
        }
        confirmed.remove(&path);
        let p = path.clone();
        tokio::task::spawn_blocking(move || fs::remove_file(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        spool.bytes.fetch_sub(
            (data.len() as u64).min(spool.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        spool.full.store(false, Ordering::Relaxed);
        tracing::info!(segment = %path.display(), items = recs.len(), left = spool.items(), "spooled review items delivered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_torn_tails_are_detected() {
        let a = Item {
            routing_key: "t.low_confidence".into(),
            review_id: "id-1".into(),
            payload: b"{\"a\":1}".to_vec(),
        };
        let b = Item {
            routing_key: "t.paused".into(),
            review_id: "id-2".into(),
            payload: vec![0, 255, 7],
        };
        let mut seg = frame(&a.encode());
        seg.extend(frame(&b.encode()));
        let (recs, torn) = records(&seg);
        assert!(!torn);
        assert_eq!(
            recs.iter()
                .map(|r| Item::decode(r).unwrap())
                .collect::<Vec<_>>(),
            vec![a.clone(), b]
        );
        // Cut anywhere inside the second record: the first survives, the tail is torn.
        let first_len = frame(&a.encode()).len();
        for cut in first_len + 1..seg.len() {
            let (recs, torn) = records(&seg[..cut]);
            assert_eq!(recs.len(), 1, "cut at {cut}");
            assert!(torn);
        }
        // A flipped bit fails the CRC.
        let mut bad = seg.clone();
        bad[first_len + HEADER + 2] ^= 1;
        assert_eq!(records(&bad).0.len(), 1);
    }
}
