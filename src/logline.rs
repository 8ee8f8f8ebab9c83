//! Log lines out of the request path: a line is handed to a background thread that wakes on
//! a timer, not per line, and writes what has queued in one go.
//!
//! A thread parked on a channel (tracing-appender's design) is woken by every line: a futex
//! wake, on a pinned core a context switch, and a `write` of that one line, several µs per
//! request with the access log on. Here a line is a `try_send` into a bounded channel, no
//! syscall; the writer thread wakes every [`TICK`] (or at once for a warning or an error),
//! drains the channel and writes it through one buffer. A tick that brings no line puts the
//! writer to sleep until the next line wakes it, so an idle process has no timer firing 20
//! times a second, and a busy one is never woken per line. When the reader of stderr
//! stalls, lines queue up to [`QUEUED_LINES`] and are then dropped rather than stalling
//! requests.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{self, Thread};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait for the writer thread (the log is a stream, not a journal).
pub const TICK: Duration = Duration::from_millis(50);
/// Lines queued before new ones are dropped: two seconds of access log at 8k req/s.
pub const QUEUED_LINES: usize = 16 * 1024;
/// How long shutdown waits for the queued lines to be written: a stalled stderr must not
/// keep the process from exiting.
pub const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Where the subscriber's lines go (`MakeWriter`); cheap to clone.
#[derive(Clone)]
pub struct Lines {
    queue: SyncSender<Vec<u8>>,
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
    let (queue, lines) = sync_channel(QUEUED_LINES);
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
    lines: &Receiver<Vec<u8>>,
    sink: W,
    tick: Duration,
    closing: &AtomicBool,
    asleep: &AtomicBool,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let drain = |out: &mut std::io::BufWriter<W>| {
        let mut any = false;
        while let Ok(line) = lines.try_recv() {
            // A failing stderr has nowhere to report to; the lines are lost either way.
            let _ = out.write_all(&line);
            any = true;
        }
        if any {
            let _ = out.flush();
        }
        any
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
            self.to.send(std::mem::take(&mut self.buf), self.urgent);
        }
    }
}

impl Lines {
    /// Queue one whole line (with its newline) for the writer thread; `urgent` wakes it at
    /// once. Full (stderr stalled) or closed (shutting down): the line is dropped.
    pub fn send(&self, line: Vec<u8>, urgent: bool) {
        let _ = self.queue.try_send(line);
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
            for i in 0..(QUEUED_LINES * 4) {
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
        // More than the writer's 64 KiB buffer, so that it is stuck in a `write`.
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
