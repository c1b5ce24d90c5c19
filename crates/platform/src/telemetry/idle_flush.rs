//! Log lines written when a runtime worker runs out of work, not while it answers a request.
//!
//! Every answered request has its line (`rpc::answered`), made in tower-http's `on_response`
//! before hyper has the answer. Written straight to stdout (a file under the lab), its `write`
//! sat between the handler and the answer's own `writev`, in every service a request passes
//! through: four for a sync query, none for the echo floor. Measured with one request in
//! flight, it was most of what kept sync above its floor (docs/results.md).
//!
//! So, on a runtime worker that has gone idle once, a line at info or below is appended to a
//! buffer of the thread's own. The buffer is written to stdout in one `write` when the worker
//! is about to park (it has run out of tasks, so every answer its tasks made has already gone
//! to its socket), when it holds [`FLUSH_BYTES`], when a line comes and the oldest waiting one
//! is [`FLUSH_AGE`] old, and when the thread stops. A warning or an error is written at once,
//! after what waits before it. Every other thread (the main thread, the blocking pool, a
//! runtime not built by `process::run`) writes each line at once, as before.
//!
//! What this gives up: SIGKILL loses the info lines of a worker that had not gone idle: at most
//! its last busy stretch (well under a millisecond at the demo's pace), answers whose client
//! may already have them. A graceful stop loses nothing (each worker writes what it holds as
//! it stops). Lines of different workers may reach the file out of time order by as much;
//! each carries its timestamp.

use std::cell::RefCell;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// A worker's buffer is written once it holds this much, so a worker that never idles (a
/// saturated one) writes in blocks of this size.
pub const FLUSH_BYTES: usize = 16 * 1024;

/// A line waits at most this long for a later line to find it stale, on a worker that never
/// idles.
pub const FLUSH_AGE: Duration = Duration::from_millis(100);

/// Lines a thread holds back, and whether it may.
#[derive(Debug, Default)]
struct Pending {
    /// Set when the thread first parks as a runtime worker: only such a thread is sure to
    /// come back to [`worker_idle`].
    armed: bool,
    bytes: Vec<u8>,
    oldest: Option<Instant>,
}

/// What became of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Not held: the thread is no idle-flushed worker.
    No,
    /// Held until the worker idles.
    Held,
    /// Held, and what is held must be written now.
    WriteNow,
}

impl Pending {
    /// Takes `line` if this thread holds lines. A warning or an error is written at once,
    /// after the lines that came before it and in one write with them.
    fn keep(&mut self, line: &[u8], urgent: bool, now: Instant) -> Kept {
        if !self.armed {
            Kept::No
        } else if self.push(line, now) || urgent {
            Kept::WriteNow
        } else {
            Kept::Held
        }
    }

    /// Keeps `line`; true when what is kept must be written now.
    fn push(&mut self, line: &[u8], now: Instant) -> bool {
        let oldest = *self.oldest.get_or_insert(now);
        self.bytes.extend_from_slice(line);
        self.bytes.len() >= FLUSH_BYTES || now.duration_since(oldest) >= FLUSH_AGE
    }

    /// Writes what is kept in one `write_all`, and forgets it whatever the outcome: a sink
    /// that failed once is not retried with the same bytes, which would repeat the lines that
    /// did get through.
    fn write_to(&mut self, sink: &mut impl Write) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let written = sink.write_all(&self.bytes);
        self.bytes.clear();
        self.oldest = None;
        written
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
}

/// Writes `bytes` to stdout, reporting a failure where tracing-subscriber reports its own.
fn write_out(write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>) {
    if let Err(error) = write(&mut io::stdout().lock()) {
        eprintln!("cannot write log lines to stdout: {error}");
    }
}

/// For the runtime's `on_thread_park`: the worker has run out of work. Writes what it holds,
/// and from now on lets it hold lines.
pub fn worker_idle() {
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.armed = true;
            write_out(|stdout| pending.write_to(stdout));
        }
    });
}

/// For the runtime's `on_thread_stop`: writes what the thread holds, and holds no more.
pub fn thread_stopping() {
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.armed = false;
            write_out(|stdout| pending.write_to(stdout));
        }
    });
}

/// stdout, through the calling thread's buffer when it is an idle-flushed worker and the line
/// is at info or below.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleFlushedStdout;

/// One line's writer, from [`IdleFlushedStdout`].
#[derive(Debug)]
pub struct LineWriter {
    /// Warnings and errors are not held back.
    urgent: bool,
}

impl<'a> MakeWriter<'a> for IdleFlushedStdout {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

impl Write for LineWriter {
    /// tracing-subscriber hands over a whole formatted line in one call.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let kept = PENDING
            .try_with(|pending| {
                // Borrowed already: a line made while writing a line, written directly.
                let Ok(mut pending) = pending.try_borrow_mut() else {
                    return Kept::No;
                };
                let kept = pending.keep(line, self.urgent, Instant::now());
                if kept == Kept::WriteNow {
                    write_out(|stdout| pending.write_to(stdout));
                }
                kept
            })
            .unwrap_or(Kept::No);
        if kept == Kept::No {
            io::stdout().lock().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_until_the_buffer_fills() {
        let now = Instant::now();
        let mut pending = Pending::default();
        let line = [b'x'; 1000];
        let mut pushes = 0;
        while !pending.push(&line, now) {
            pushes += 1;
        }
        assert_eq!(pushes, FLUSH_BYTES / line.len());
        let mut sink = Vec::new();
        pending.write_to(&mut sink).expect("a Vec takes everything");
        assert_eq!(sink.len(), (pushes + 1) * line.len());
        assert!(pending.bytes.is_empty() && pending.oldest.is_none());
    }

    #[test]
    fn a_line_finds_the_oldest_stale() {
        let start = Instant::now();
        let mut pending = Pending::default();
        assert!(!pending.push(b"first\n", start));
        assert!(!pending.push(b"second\n", start + FLUSH_AGE / 2));
        assert!(pending.push(b"third\n", start + FLUSH_AGE));
        let mut sink = Vec::new();
        pending.write_to(&mut sink).expect("a Vec takes everything");
        assert_eq!(sink, b"first\nsecond\nthird\n");
        // The age counts from the first line after a write, not from the first ever.
        assert!(!pending.push(b"fourth\n", start + FLUSH_AGE * 3));
    }

    #[test]
    fn a_failed_write_is_not_repeated() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut pending = Pending::default();
        pending.push(b"lost\n", Instant::now());
        assert!(pending.write_to(&mut Broken).is_err());
        let mut sink = Vec::new();
        pending.write_to(&mut sink).expect("a Vec takes everything");
        assert!(sink.is_empty());
    }

    #[test]
    fn only_a_worker_that_went_idle_holds_lines_and_a_warning_takes_them_out() {
        let now = Instant::now();
        let mut pending = Pending::default();
        assert_eq!(pending.keep(b"at once\n", false, now), Kept::No);
        assert!(pending.bytes.is_empty());
        pending.armed = true;
        assert_eq!(pending.keep(b"info\n", false, now), Kept::Held);
        assert_eq!(pending.keep(b"warn\n", true, now), Kept::WriteNow);
        let mut sink = Vec::new();
        pending.write_to(&mut sink).expect("a Vec takes everything");
        assert_eq!(sink, b"info\nwarn\n");
    }
}
