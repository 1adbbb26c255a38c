//! Whether file data is worth compressing on a connection: only while the network between the
//! two ends, not either end, limits the transfer.
//!
//! zstd's fastest level compresses text at roughly 300 MB/s on one core. Over loopback or a
//! 10 Gbit/s LAN raw data arrives sooner, and the CPU spent compressing is taken from reading,
//! hashing and encrypting; over 1 Gbit/s or a WAN compressed data arrives sooner. The kernel
//! keeps, per TCP connection (`TCP_INFO`), the bytes the peer acknowledged, how long the
//! connection had data in flight (busy), and how long of that the sender waited for the
//! receiver to make room (then the receiver is the slow end, and compressing would only make it
//! decompress too).
//!
//! Between two readings, 100 ms or more apart, the link was the limit when the connection was
//! busy nearly all the time and the receiver did not hold it back; what it delivered then is what
//! the link carries. The kernel's own delivery rate is not used: it is measured over a few
//! packets, and a token bucket (a rate-limited line, a policer) lets a burst of them through
//! at full speed after every pause, which made a 40 Mbit/s link look faster than the
//! compressor. Nor is what a connection delivers while the sender is busy elsewhere (reading,
//! hashing): that measures the sender, and over loopback it is below the compressor's speed.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::frame::Data;

/// A link that delivers more than this is faster than the compressor.
const FAST_LINK: u64 = 250_000_000;
/// How often the connection's measurements are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Thousandths of an interval with data in flight above which the link was the limit. A link
/// that limits the transfer has data in flight nearly all the time; a fast one, 60-70 % of it
/// (seen over loopback): TLS sends a batch as records while the next batch is made.
const BUSY_LINK: u64 = 850;
/// How many intervals the link's capacity is judged on: the last second's.
const RATE_WINDOW: usize = 10;

/// The kernel's counters of a connection at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Bytes the peer acknowledged since the connection opened.
    pub bytes_acked: u64,
    /// Microseconds, since the connection opened, it had data in flight.
    pub busy_us: u64,
    /// Microseconds, since the connection opened, the sender waited on the receiver's window.
    pub receiver_limited_us: u64,
}

/// Decides, from time to time, whether a connection's file data goes compressed.
pub struct LinkMeter {
    socket: RawFd,
    data: Data,
    last: Option<(Instant, Sample)>,
    /// What the link delivered, bytes per second, in the last intervals it was the limit (0
    /// for the others), the newest at `taken % RATE_WINDOW`.
    rates: [u64; RATE_WINDOW],
    taken: usize,
}

impl LinkMeter {
    /// Meters `socket`, which must outlive the meter (both belong to one session).
    pub fn new(socket: &impl AsRawFd) -> Self {
        Self {
            socket: socket.as_raw_fd(),
            data: Data::Raw,
            last: None,
            rates: [0; RATE_WINDOW],
            taken: 0,
        }
    }

    /// How the next frame's file data goes. Until the first measurement it goes raw: the
    /// first 100 ms cost little on a slow link and much CPU on a fast one.
    pub fn data(&mut self) -> Data {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|(at, _)| now.duration_since(at) < SAMPLE_EVERY)
        {
            return self.data;
        }
        let Some(sample) = measure(self.socket) else {
            return self.data;
        };
        if let Some((at, last)) = self.last {
            let interval = Interval::between(&last, &sample, now.duration_since(at));
            self.rates[self.taken % RATE_WINDOW] = interval.link_rate().unwrap_or(0);
            self.taken += 1;
            let capacity = self.capacity();
            let data = judge(&interval, capacity);
            if data != self.data {
                tracing::debug!(?data, capacity, ?interval, "file data compression changed");
            }
            self.data = data;
        }
        self.last = Some((now, sample));
        self.data
    }

    /// The most the link delivered in an interval it was the limit, in the last second.
    fn capacity(&self) -> u64 {
        self.rates.iter().copied().max().unwrap_or(0)
    }
}

/// What a connection did between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// Bytes per second the peer acknowledged.
    pub rate: u64,
    /// Of the time between the readings, the share with data in flight and the share the
    /// receiver held the sender back, in thousandths.
    pub busy: u64,
    pub receiver_bound: u64,
}

impl Interval {
    pub fn between(last: &Sample, now: &Sample, elapsed: Duration) -> Self {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let per_mille = |after: u64, before: u64| after.saturating_sub(before) * 1000 / micros;
        let acked = u128::from(now.bytes_acked.saturating_sub(last.bytes_acked));
        Self {
            rate: u64::try_from(acked * 1_000_000 / u128::from(micros)).unwrap_or(u64::MAX),
            busy: per_mille(now.busy_us, last.busy_us),
            receiver_bound: per_mille(now.receiver_limited_us, last.receiver_limited_us),
        }
    }

    /// What the link carried, if it was the limit: data was in flight most of the time and
    /// the receiver kept up.
    fn link_rate(&self) -> Option<u64> {
        (self.busy > BUSY_LINK && self.receiver_bound <= 500).then_some(self.rate)
    }
}

/// Compress while the link is the limit and carries less than the compressor. `capacity` is
/// the most it carried in an interval it was the limit lately: a burst at a slow moment does
/// not make a fast link slow.
pub fn judge(interval: &Interval, capacity: u64) -> Data {
    let slow_link = (1..FAST_LINK).contains(&capacity);
    match slow_link && interval.link_rate().is_some() {
        true => Data::Compress,
        false => Data::Raw,
    }
}

/// Where `TCP_INFO` keeps what is read here (Linux's `struct tcp_info`, a stable layout that
/// only grows at its end): read from bytes, as the `libc` crate's struct lacks the newer
/// fields.
const BYTES_ACKED: usize = 120;
const BUSY_TIME: usize = 168;
const RWND_LIMITED: usize = 176;
const TCP_INFO_LEN: usize = 184;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn measure(socket: RawFd) -> Option<Sample> {
    let mut info = [0u8; TCP_INFO_LEN];
    let mut len = TCP_INFO_LEN as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes at most `len`.
    let status = unsafe {
        libc::getsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // An older kernel fills fewer fields: then nothing is known.
    if status != 0 || (len as usize) < TCP_INFO_LEN {
        return None;
    }
    let u64_at = |at: usize| u64::from_ne_bytes(info[at..at + 8].try_into().expect("8 bytes"));
    Some(Sample {
        bytes_acked: u64_at(BYTES_ACKED),
        busy_us: u64_at(BUSY_TIME),
        receiver_limited_us: u64_at(RWND_LIMITED),
    })
}

/// Elsewhere nothing is measured, and data goes raw.
#[cfg(not(target_os = "linux"))]
fn measure(_: RawFd) -> Option<Sample> {
    None
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn interval(rate: u64, busy: u64, receiver_bound: u64) -> Interval {
        Interval {
            rate,
            busy,
            receiver_bound,
        }
    }

    /// What `judge` says of an interval, the link's capacity being what it carried then.
    fn judged(interval: Interval) -> Data {
        judge(&interval, interval.link_rate().unwrap_or(0))
    }

    #[test]
    fn only_a_slow_link_that_is_the_limit_is_worth_compressing() {
        // A 1 Gbit/s LAN, a WAN: data in flight all the time, the network is the limit.
        assert_eq!(judged(interval(117_000_000, 1000, 0)), Data::Compress);
        assert_eq!(judged(interval(2_000_000, 990, 100)), Data::Compress);
        // Loopback, 10 Gbit/s: faster than the compressor.
        assert_eq!(judged(interval(1_200_000_000, 1000, 0)), Data::Raw);
        // The receiver held the sender back for 800 of every 1000: it is the slow end.
        assert_eq!(judged(interval(90_000_000, 1000, 800)), Data::Raw);
        // Nothing delivered yet: nothing known.
        assert_eq!(judged(interval(0, 0, 0)), Data::Raw);
        // The sender was busy reading and hashing most of the time (loopback): what went
        // says how fast the sender is, not the link.
        assert_eq!(judged(interval(200_000_000, 100, 0)), Data::Raw);
    }

    #[test]
    fn an_interval_is_read_from_the_kernels_counters() {
        let last = Sample {
            bytes_acked: 1_000,
            busy_us: 10_000,
            receiver_limited_us: 0,
        };
        let now = Sample {
            bytes_acked: 501_000,
            busy_us: 90_000,
            receiver_limited_us: 20_000,
        };
        let between = Interval::between(&last, &now, Duration::from_millis(100));
        assert_eq!(between, interval(5_000_000, 800, 200));
    }

    #[test]
    fn a_stall_does_not_make_a_fast_link_slow() {
        // The link carried 8 GB/s a moment ago; after a stall (an end busy flushing to disk)
        // it is the limit again at 5 MB/s for one interval.
        let mut meter = LinkMeter::new(&TcpListener::bind("127.0.0.1:0").unwrap());
        meter.rates = [8_000_000_000, 5_000_000, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            judge(&interval(5_000_000, 1000, 0), meter.capacity()),
            Data::Raw
        );
    }

    #[test]
    fn a_loopback_connection_sends_its_data_raw() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            std::io::copy(&mut socket, &mut std::io::sink()).unwrap()
        });
        let mut socket = TcpStream::connect(address).unwrap();
        let mut meter = LinkMeter::new(&socket);
        let chunk = vec![7u8; 256 * 1024];
        let started = Instant::now();
        let mut decisions = Vec::new();
        while started.elapsed() < Duration::from_millis(350) {
            socket.write_all(&chunk).unwrap();
            decisions.push(meter.data());
        }
        drop(socket);
        assert!(reader.join().unwrap() > 0);
        let measured = meter.last.expect("TCP_INFO is readable on Linux").1;
        assert!(measured.bytes_acked > 0, "{measured:?}");
        assert_eq!(decisions.last(), Some(&Data::Raw), "{measured:?}");
    }
}
