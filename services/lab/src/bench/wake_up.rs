//! The machine's own wake-up cost while freshness is timed: two plain threads of the bench
//! passing one byte back and forth over loopback TCP, the cheapest way one thread can hand
//! work to another and hear back. The projection stage (JetStream's delivery to the read's
//! answer) crosses at least that twice over: nats-server wakes purchases-async, which wakes
//! the bench's reader. So this round trip's tail, taken under the same load at the same
//! moment, is the floor under the stage's tail that nothing in the services can go below.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::stages::StageSummary;
use crate::measure::{micros, micros_histogram};

/// Pings per second: enough for a p99 over a phase of a few seconds, too few to load the
/// machine it measures (each costs two wake-ups; the phase places 1,000 orders/s).
const PERIOD: Duration = Duration::from_millis(5);
/// Pings at most, whatever the phase's length (an hour of them at `PERIOD`).
const MAX_PINGS: u64 = 720_000;
/// A ping unanswered this long ends the probe rather than hanging the bench.
const PATIENCE: Duration = Duration::from_secs(10);

/// The round trips timed while the probe ran.
#[derive(Debug, Clone, Serialize)]
pub struct WakeUp {
    pub pings: u64,
    /// One byte to the other thread and back, from writing it to reading the answer.
    pub round_trip: StageSummary,
}

/// Pings until [`WakeUpProbe::finish`].
pub struct WakeUpProbe {
    stop: Arc<AtomicBool>,
    pinger: JoinHandle<std::io::Result<Histogram<u64>>>,
}

impl WakeUpProbe {
    /// Connects the two threads over an ephemeral loopback port and starts pinging.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // Connected through the listener's backlog before either thread starts, so a failure
        // leaves no thread behind waiting for a peer.
        let stream = TcpStream::connect(listener.local_addr()?)?;
        let (echoed, _) = listener.accept()?;
        std::thread::Builder::new()
            .name("wake-up-echo".into())
            .spawn(move || {
                // Ends when the pinger hangs up or stops answering.
                let _ = echo(echoed);
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let pinger = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("wake-up-ping".into())
                .spawn(move || ping(stream, &stop))?
        };
        Ok(Self { stop, pinger })
    }

    /// Stops pinging; what was timed, or why it could not be.
    pub fn finish(self) -> anyhow::Result<WakeUp> {
        self.stop.store(true, Ordering::Relaxed);
        let histogram = self
            .pinger
            .join()
            .map_err(|_| anyhow::anyhow!("the wake-up probe's thread panicked"))??;
        Ok(WakeUp {
            pings: histogram.len(),
            round_trip: StageSummary::of(&histogram),
        })
    }
}

fn prepare(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    prepare(&stream)?;
    let mut byte = [0_u8];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        stream.write_all(&byte)?;
    }
}

fn ping(mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<Histogram<u64>> {
    prepare(&stream)?;
    let mut histogram = micros_histogram();
    let mut byte = [1_u8];
    while !stop.load(Ordering::Relaxed) && histogram.len() < MAX_PINGS {
        std::thread::sleep(PERIOD);
        let sent = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        histogram.saturating_record(micros(sent.elapsed()));
    }
    Ok(histogram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_times_round_trips_at_its_period_until_it_is_finished() {
        let began = Instant::now();
        let probe = WakeUpProbe::start().expect("loopback is there");
        std::thread::sleep(Duration::from_millis(200));
        let wake_up = probe.finish().expect("the echo answered");
        // Every ping waits out the period first: the probe's own load stays bounded.
        let most = began.elapsed().as_millis() / PERIOD.as_millis() + 1;
        assert!(
            (1..=u64::try_from(most).unwrap_or(u64::MAX)).contains(&wake_up.pings),
            "{wake_up:?} in {most} periods"
        );
        let trip = &wake_up.round_trip;
        assert!(
            1 <= trip.p50_us && trip.p50_us <= trip.p99_us && trip.p99_us <= trip.max_us,
            "{wake_up:?}"
        );
    }
}
