//! The byte-counting TCP relay between the two ends, which can also hold every byte as a WAN would.

use super::*;

/// Forwards connections to `target`, counting every byte in both directions.
pub(crate) struct Relay {
    pub(crate) address: String,
    pub(crate) bytes: Arc<AtomicU64>,
}

impl Relay {
    pub(crate) fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let (counter, target) = (bytes.clone(), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let counter = counter.clone();
                    match one_way_delay() {
                        None => std::thread::spawn(move || {
                            let mut buf = vec![0u8; 256 * 1024];
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        }),
                        Some(delay) => forward_late(from, to, counter, delay),
                    };
                }
            }
        });
        Ok(Self { address, bytes })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Set to a number of milliseconds, the relay holds every byte that long in each direction: a
/// round trip then takes twice that, as across a WAN.
pub(crate) const DELAY: &str = "FERRY_BENCH_DELAY_MS";

pub(crate) fn one_way_delay() -> Option<Duration> {
    let ms: u64 = std::env::var(DELAY).ok()?.parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Forwards what `from` sends to `to`, each piece `delay` after it arrived.
pub(crate) fn forward_late(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: Arc<AtomicU64>,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    let (queue, arrivals) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0
                || queue
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, piece) in arrivals {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&piece).is_err() {
                break;
            }
            counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}
