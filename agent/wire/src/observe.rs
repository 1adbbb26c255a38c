//! How a scheduler or an agent is watched from outside: Prometheus text at `/metrics`, liveness
//! at `/healthz` and readiness at `/readyz` on the port given with `--metrics-listen`, and
//! readiness and watchdog pings to systemd (`Type=notify`, `WatchdogSec=`).
//!
//! The port serves no file and takes no input beyond a request line, yet it is bound by a root
//! daemon: connections are few at a time, one that sends no request within
//! [`HEADER_DEADLINE`] is dropped, and each ends within [`CONNECTION_DEADLINE`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; more wait to be accepted.
const CONNECTIONS: usize = 16;
/// A connection whose request has not come by then is dropped, so idle ones hold no slot.
const HEADER_DEADLINE: Duration = Duration::from_secs(2);
/// A scrape that takes longer than this is cut.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Histogram buckets for durations: from a millisecond (a query) to an hour (a long run).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// What a process says of itself at `/healthz` and `/readyz`; `Err(why)` is a 503 with the why.
pub trait Probe: Send + Sync + 'static {
    /// Whether it works at all (its main loop turns); a supervisor restarts it otherwise.
    fn live(&self) -> Result<(), String>;
    /// Whether it can take work now; a rollout waits for it before going on to the next node.
    fn ready(&self) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("--metrics-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing the metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// Installs the process's metrics recorder and serves the port at `addr` from now on (a port
/// that cannot be bound fails the start). Returns the address bound, for `:0`.
pub async fn serve(addr: SocketAddr, probe: Arc<dyn Probe>) -> Result<SocketAddr, ObserveError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ObserveError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ObserveError::Bind { addr, source })?;
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install_recorder()?;
    metrics::gauge!("ferry_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    tokio::spawn(accept(listener, recorder, probe));
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn accept(listener: TcpListener, recorder: PrometheusHandle, probe: Arc<dyn Probe>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (recorder, probe) = (recorder.clone(), probe.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &recorder, probe.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
            drop(slot);
        });
    }
}

fn respond<B>(
    request: &Request<B>,
    recorder: &PrometheusHandle,
    probe: &dyn Probe,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            recorder.run_upkeep();
            let mut response = text(StatusCode::OK, recorder.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => verdict(probe.live()),
        "/readyz" => verdict(probe.ready()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not here: /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn verdict(outcome: Result<(), String>) -> Response<Full<Bytes>> {
    match outcome {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Tells systemd the service is ready (`Type=notify`); nothing without a notify socket.
pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the service is stopping, so it waits rather than counting a hang.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pets systemd's watchdog (`WatchdogSec=`): called only while the process is well, so a
/// process that hangs is restarted.
pub fn notify_watchdog() {
    notify(&[sd_notify::NotifyState::Watchdog]);
}

/// The interval to pet the watchdog at (half its timeout), if systemd set one.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    let enabled = sd_notify::watchdog_enabled(false, &mut usec);
    (enabled && usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "could not notify systemd");
    }
}
