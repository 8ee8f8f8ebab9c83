//! Log lines out of the request path: a line is appended to a shared buffer that a
//! background thread, waking on a timer rather than per line, takes and writes in one go.
//!
//! A thread parked on a channel (tracing-appender's design) is woken by every line: a futex
//! wake, on a pinned core a context switch, and a `write` of that one line, several µs per
//! request with the access log on. Here a line is a copy into a buffer under a lock that
//! nothing holds for longer than one such copy or a swap of two `Vec`s; no syscall. The
//! writer thread wakes every [`TICK`] (or at once for a warning or an error), swaps the
//! buffer for its empty spare and writes what it took. A tick that brings no line puts the
//! writer to sleep until the next line wakes it, so an idle process has no timer firing 20
//! times a second, and a busy one is never woken per line. The two buffers are reused:
//! once they have grown, queuing a line allocates nothing, and no thread frees memory
//! another allocated. A queue of one `Vec` per line, freed by the writer, cost 1.4–1.5 µs a
//! line on the request thread (most likely the allocator's work on cross-thread frees;
//! `docs/performance.md`). When the reader of stderr stalls, lines queue up to
//! [`QUEUED_BYTES`] and are then dropped rather than stalling requests.

// The one `std::sync::Mutex` in triage (clippy.toml bars it elsewhere): it guards the
// queued bytes, and nothing holds it for longer than copying one line in or swapping two
// `Vec`s; never across an await, never for a write, never by a reload or the exporter.
#![expect(
    clippy::disallowed_types,
    reason = "held only for a line's copy or a swap; see the note above"
)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait for the writer thread (the log is a stream, not a journal).
pub const TICK: Duration = Duration::from_millis(50);
/// Bytes queued before new lines are dropped: two seconds of access log at 8k req/s.
pub const QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// A spare buffer larger than this after a write (a backlog drained) is let go.
const KEEP_CAPACITY: usize = 256 * 1024;
/// How long shutdown waits for the queued lines to be written: a stalled stderr must not
/// keep the process from exiting.
pub const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Where the subscriber's lines go (`MakeWriter`); cheap to clone.
#[derive(Clone)]
pub struct Lines {
    /// The lines queued since the writer last took them, whole, in order.
    queue: Arc<Mutex<Vec<u8>>>,
    writer: Thread,
    /// Set by the writer before it sleeps without a timer; whoever queues a line then
    /// clears it and wakes the writer.
    asleep: Arc<AtomicBool>,
}

/// Dropping it writes what is queued and stops the writer thread, waiting at most
/// [`FLUSH_WAIT`].
pub struct Flush {
    closing: Arc<AtomicBool>,
    writer: Thread,
    /// Disconnected when the writer thread has written everything and ended.
    finished: Receiver<()>,
}

/// Start the writer thread over `sink`.
pub fn spawn<W: Write + Send + 'static>(sink: W) -> std::io::Result<(Lines, Flush)> {
    spawn_with(sink, TICK)
}

fn spawn_with<W: Write + Send + 'static>(
    sink: W,
    tick: Duration,
) -> std::io::Result<(Lines, Flush)> {
    let queue = Arc::new(Mutex::new(Vec::new()));
    let lines = queue.clone();
    let closing = Arc::new(AtomicBool::new(false));
    let stop = closing.clone();
    let asleep = Arc::new(AtomicBool::new(false));
    let sleeping = asleep.clone();
    let (ended, finished) = sync_channel::<()>(0);
    let handle = thread::Builder::new()
        .name("triage-log".into())
        .spawn(move || {
            write_until_closed(&lines, sink, tick, &stop, &sleeping);
            drop(ended);
        })?;
    let writer = handle.thread().clone();
    Ok((
        Lines {
            queue,
            writer: writer.clone(),
            asleep,
        },
        Flush {
            closing,
            writer,
            finished,
        },
    ))
}

fn write_until_closed<W: Write>(
    lines: &Mutex<Vec<u8>>,
    mut out: W,
    tick: Duration,
    closing: &AtomicBool,
    asleep: &AtomicBool,
) {
    let mut spare = Vec::new();
    let mut drain = |out: &mut W| {
        // Only a swap under the lock; the write happens after it is released. A poisoned
        // lock (a panic mid-copy) still holds whole lines before the one being copied.
        {
            let mut queued = lines
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if queued.is_empty() {
                return false;
            }
            std::mem::swap(&mut *queued, &mut spare);
        }
        // A failing stderr has nowhere to report to; the lines are lost either way.
        let _ = out.write_all(&spare);
        let _ = out.flush();
        spare.clear();
        if spare.capacity() > KEEP_CAPACITY {
            spare = Vec::new();
        }
        true
    };
    let mut gather = true;
    loop {
        if gather {
            thread::park_timeout(tick);
        }
        gather = true;
        // Read before draining: a line sent before `closing` was set is drained below.
        let last = closing.load(Ordering::Acquire);
        let any = drain(&mut out);
        if last {
            return;
        }
        if any {
            continue;
        }
        // A tick without a line: sleep until one comes. Say so, then look once more. With
        // the fences here and in `Lines::send`, either this drain sees a line queued
        // meanwhile or its sender sees the flag (and wakes us).
        asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if drain(&mut out) {
            asleep.store(false, Ordering::Relaxed);
            continue;
        }
        while asleep.load(Ordering::Relaxed) && !closing.load(Ordering::Acquire) {
            thread::park();
        }
        // Woken by a line (or by shutdown): out at once, it may be a warning.
        gather = false;
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.writer.unpark();
        // Disconnected once the thread is done; past the wait it is left behind, stuck in
        // a `write`, and ends with the process.
        let _ = self.finished.recv_timeout(FLUSH_WAIT);
    }
}

/// One line as the subscriber writes it; handed over when dropped.
pub struct Line<'a> {
    to: &'a Lines,
    buf: Vec<u8>,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.to.send(&self.buf, self.urgent);
        }
    }
}

impl Lines {
    /// Queue one whole line (with its newline) for the writer thread; `urgent` wakes it at
    /// once. With [`QUEUED_BYTES`] already waiting (stderr stalled), the line is dropped;
    /// after shutdown it is never written.
    pub fn send(&self, line: &[u8], urgent: bool) {
        {
            let mut queued = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queued.len() + line.len() <= QUEUED_BYTES {
                queued.extend_from_slice(line);
            }
        }
        fence(Ordering::SeqCst); // pairs with the writer's, before it sleeps
        if urgent || self.asleep.load(Ordering::Relaxed) {
            self.asleep.store(false, Ordering::Relaxed);
            self.writer.unpark();
        }
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            to: self,
            buf: Vec::new(),
            urgent: false,
        }
    }

    /// Warnings and errors wake the writer at once: they are rare and may come just before
    /// the process dies.
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            to: self,
            buf: Vec::new(),
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Sender, channel};
    use std::time::Instant;

    /// A sink that hands every `write` it gets to the test.
    struct Sink(Sender<Vec<u8>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What reached the sink so far: its text and how many writes carried it.
    #[derive(Default)]
    struct Seen {
        text: String,
        writes: usize,
    }

    impl Seen {
        fn take(&mut self, from: &Receiver<Vec<u8>>) {
            while let Ok(bytes) = from.try_recv() {
                self.text.push_str(&String::from_utf8(bytes).unwrap());
                self.writes += 1;
            }
        }

        /// Wait (up to 5 s, a hang guard) until `text` has reached the sink.
        fn wait_for(&mut self, from: &Receiver<Vec<u8>>, text: &str) {
            let start = Instant::now();
            while !self.text.contains(text) {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "{text:?} never written"
                );
                thread::sleep(Duration::from_millis(1));
                self.take(from);
            }
        }
    }

    /// A sink whose writes block until the test drops the sender: a stderr pipe nobody
    /// reads.
    struct Stuck(Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(lines: &Lines, text: &str) {
        lines.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_go_out_together_in_order_and_none_is_left_at_shutdown() {
        let (tx, rx) = channel();
        let (lines, flush) = spawn(Sink(tx)).unwrap();
        for i in 0..1000 {
            line(&lines, &format!("line {i}\n"));
        }
        drop(flush);
        let mut seen = Seen::default();
        seen.take(&rx);
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(seen.text, want);
        // 1000 lines of ~9 bytes: one buffer's worth, written once or twice (a tick may
        // fall in the middle), never line by line.
        assert!(seen.writes <= 2, "{} writes for 1000 lines", seen.writes);
    }

    #[test]
    fn a_line_waits_for_the_tick_and_a_warning_does_not() {
        let (tx, rx) = channel();
        // A tick that never comes within the test: only a wake-up can write.
        let (lines, flush) = spawn_with(Sink(tx), Duration::from_secs(3600)).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("plain");
            tracing::warn!("warned");
        });
        let mut seen = Seen::default();
        seen.wait_for(&rx, "warned");
        // The info line went with the warning's wake-up, in order.
        assert!(
            seen.text.find("plain") < seen.text.find("warned"),
            "{}",
            seen.text
        );
        drop(flush);
    }

    #[test]
    fn a_line_goes_out_within_a_tick() {
        let (tx, rx) = channel();
        let (lines, _flush) = spawn(Sink(tx)).unwrap();
        line(&lines, "plain\n");
        Seen::default().wait_for(&rx, "plain");
    }

    #[test]
    fn a_stalled_reader_costs_lines_not_requests() {
        let (release, blocked) = channel::<()>();
        let (lines, flush) = spawn(Stuck(blocked)).unwrap();
        // Declared after `flush`, so dropped before it should the assertion below fail:
        // `flush` waits for the writer, which waits for this.
        let release = release;
        // Four queues' worth of 100-byte lines while the writer is stuck: the producer
        // must not block (5 s is a hang guard, not a timing target).
        let (done, finished) = channel();
        let producer = thread::spawn(move || {
            for i in 0..(QUEUED_BYTES / 100 * 4) {
                line(&lines, &format!("{i:0>99}\n"));
            }
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(5)).is_ok(),
            "writing lines blocked on the stalled sink"
        );
        producer.join().unwrap();
        drop(release);
        drop(flush);
    }

    /// A sink whose writes wait until the test drops the gate's sender, then count.
    struct Gated {
        gate: Receiver<()>,
        written: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.gate.recv();
            self.written.fetch_add(bytes.len(), Ordering::Relaxed);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_leaves_at_most_the_cap_queued() {
        let (release, gate) = channel::<()>();
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sink = Gated {
            gate,
            written: written.clone(),
        };
        let (lines, flush) = spawn_with(sink, Duration::from_millis(1)).unwrap();
        let sent = QUEUED_BYTES * 4;
        for i in 0..sent / 100 {
            line(&lines, &format!("{i:0>99}\n"));
        }
        drop(release);
        drop(flush);
        // At most the chunk the writer was stuck on and a full queue; the rest dropped.
        let written = written.load(Ordering::Relaxed);
        assert!(
            (QUEUED_BYTES - 100..=2 * QUEUED_BYTES).contains(&written),
            "{written} of {sent} bytes written"
        );
    }

    /// A sink that also tells, once, which thread writes to it (`/proc/thread-self`).
    struct Traced {
        to: Sender<Vec<u8>>,
        thread: Option<Sender<std::path::PathBuf>>,
    }

    impl Write for Traced {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Some(tell) = self.thread.take() {
                let _ = tell.send(std::fs::read_link("/proc/thread-self").unwrap());
            }
            let _ = self.to.send(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn context_switches(thread: &std::path::Path) -> u64 {
        let status =
            std::fs::read_to_string(std::path::Path::new("/proc").join(thread).join("status"))
                .unwrap();
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn an_idle_writer_sleeps_until_the_next_line() {
        let (tx, rx) = channel();
        let (tell, told) = channel();
        let sink = Traced {
            to: tx,
            thread: Some(tell),
        };
        // A 1 ms tick: a writer that kept ticking would switch hundreds of times below.
        let (lines, flush) = spawn_with(sink, Duration::from_millis(1)).unwrap();
        let mut seen = Seen::default();
        line(&lines, "first\n");
        seen.wait_for(&rx, "first");
        let writer = told.recv().unwrap();
        thread::sleep(Duration::from_millis(20)); // an empty tick: asleep from here on
        let before = context_switches(&writer);
        thread::sleep(Duration::from_millis(300));
        let slept = context_switches(&writer) - before;
        assert!(slept <= 2, "the idle writer woke {slept} times in 300 ms");

        // Every line still gets out, whenever it comes: just after a drain, about a tick
        // later, or long after (a lost wake-up would leave one queued for good).
        for i in 0..300u64 {
            let text = format!("line {i}\n");
            line(&lines, &text);
            seen.wait_for(&rx, &text);
            thread::sleep(Duration::from_micros(i % 7 * 300));
        }
        drop(flush);
    }

    #[test]
    fn shutdown_does_not_wait_on_a_stalled_reader() {
        let (release, blocked) = channel::<()>();
        let (lines, flush) = spawn_with(Stuck(blocked), Duration::from_millis(1)).unwrap();
        // Lines enough that the writer is stuck in a `write` of them.
        for i in 0..1000 {
            line(&lines, &format!("{i:0>99}\n"));
        }
        let (done, dropped) = channel();
        thread::spawn(move || {
            drop(flush);
            let _ = done.send(());
        });
        assert!(
            dropped.recv_timeout(FLUSH_WAIT * 5).is_ok(),
            "shutdown waited on the stalled sink"
        );
        drop(release);
    }
}
