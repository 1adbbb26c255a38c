//! Whether file data is worth compressing on a connection: only while the network between the
//! two ends, not either end, limits the transfer.
//!
//! zstd's fastest level compresses text at roughly 300 MB/s on one core. Over loopback or a
//! 10 Gbit/s LAN raw data arrives sooner, and the CPU spent compressing is taken from reading,
//! hashing and encrypting; over 1 Gbit/s or a WAN compressed data arrives sooner. The kernel
//! counts, per TCP connection (`TCP_INFO`), the bytes the peer acknowledged and how long the
//! sender waited for the receiver to make room (then the receiver is the slow end, and
//! compressing would only make it decompress too).
//!
//! The link's rate is what it delivered between two readings, 100 ms or more apart, not the
//! kernel's own delivery rate: that one is measured over a few packets, and a token bucket
//! (a rate-limited line, a policer) lets a burst of them through at full speed after every
//! pause, which made a 40 Mbit/s link look faster than the compressor.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::frame::Data;

/// A link that delivers more than this is faster than the compressor.
const FAST_LINK: u64 = 250_000_000;
/// How often the connection's measurements are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How many samples the link's capacity is judged on: the last second's.
const RATE_WINDOW: usize = 10;

/// The kernel's measurements of a connection at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Bytes the peer acknowledged since the connection opened.
    pub bytes_acked: u64,
    /// The sender had less to send than the link could carry lately: the link is faster
    /// than it shows.
    pub rate_app_limited: bool,
    /// Microseconds, since the connection opened, the sender waited on the receiver's window.
    pub receiver_limited_us: u64,
}

/// Decides, from time to time, whether a connection's file data goes compressed.
pub struct LinkMeter {
    socket: RawFd,
    data: Data,
    last: Option<(Instant, Sample)>,
    /// What the link delivered, bytes per second, between the last readings, the newest at
    /// `taken % RATE_WINDOW`.
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
            let elapsed = now.duration_since(at);
            let delivered = sample.bytes_acked.saturating_sub(last.bytes_acked);
            let rate = u128::from(delivered) * 1_000_000 / elapsed.as_micros().max(1);
            self.rates[self.taken % RATE_WINDOW] = u64::try_from(rate).unwrap_or(u64::MAX);
            self.taken += 1;
            let capacity = self.capacity();
            let data = judge(&last, &sample, elapsed, capacity);
            if data != self.data {
                tracing::debug!(?data, capacity, ?sample, "file data compression changed");
            }
            self.data = data;
        }
        self.last = Some((now, sample));
        self.data
    }

    /// The most the link delivered between two readings in the last second.
    fn capacity(&self) -> u64 {
        self.rates.iter().copied().max().unwrap_or(0)
    }
}

/// Compress while the link, used to the full, delivers less than the compressor, and the
/// receiver kept up for most of the time since the last sample. `capacity` is the most the
/// link delivered between two readings lately: a stall at either end makes one interval
/// slow, not the link.
pub fn judge(last: &Sample, now: &Sample, elapsed: Duration, capacity: u64) -> Data {
    let waited = now
        .receiver_limited_us
        .saturating_sub(last.receiver_limited_us);
    let receiver_bound = u128::from(waited) * 2 > elapsed.as_micros();
    let slow_link = (1..FAST_LINK).contains(&capacity) && !now.rate_app_limited;
    match slow_link && !receiver_bound {
        true => Data::Compress,
        false => Data::Raw,
    }
}

/// Where `TCP_INFO` keeps what is read here (Linux's `struct tcp_info`, a stable layout that
/// only grows at its end): read from bytes, as the `libc` crate's struct lacks the
/// application-limited bit.
const APP_LIMITED_BYTE: usize = 7;
const BYTES_ACKED: usize = 120;
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
        rate_app_limited: info[APP_LIMITED_BYTE] & 1 == 1,
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

    fn waited(receiver_limited_us: u64) -> Sample {
        Sample {
            bytes_acked: 0,
            rate_app_limited: false,
            receiver_limited_us,
        }
    }

    /// What `judge` says after 100 ms in which the link delivered `rate` bytes per second and
    /// the sender waited `now`'s time on the receiver.
    fn judged(rate: u64, now: Sample) -> Data {
        judge(&waited(0), &now, Duration::from_millis(100), rate)
    }

    #[test]
    fn only_a_slow_link_with_a_receiver_that_keeps_up_is_worth_compressing() {
        // A 1 Gbit/s LAN, a WAN: the network is the limit.
        assert_eq!(judged(117_000_000, waited(0)), Data::Compress);
        assert_eq!(judged(2_000_000, waited(10_000)), Data::Compress);
        // Loopback, 10 Gbit/s: faster than the compressor.
        assert_eq!(judged(1_200_000_000, waited(0)), Data::Raw);
        // The receiver held the sender back for 80 of the last 100 ms: it is the slow end.
        assert_eq!(judged(90_000_000, waited(80_000)), Data::Raw);
        // Nothing delivered yet: nothing known.
        assert_eq!(judged(0, waited(0)), Data::Raw);
        // The sender had too little to send: the link can carry more than it showed.
        let idle = Sample {
            rate_app_limited: true,
            ..waited(0)
        };
        assert_eq!(judged(20_000_000, idle), Data::Raw);
    }

    #[test]
    fn a_stall_does_not_make_a_fast_link_slow() {
        // The meter's last interval was slow (an end busy flushing to disk), on a link that
        // delivered 8 GB/s a moment ago: capacity is the window's best.
        let mut meter = LinkMeter::new(&TcpListener::bind("127.0.0.1:0").unwrap());
        meter.rates = [8_000_000_000, 5_000_000, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(judged(meter.capacity(), waited(0)), Data::Raw);
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
