//! Hand-over: a whole run given to the agent that holds the job's source, so file data flows
//! from agent to agent and never through the caller. The caller follows the run's events and
//! keeps it alive while its lease allows.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::endpoint::{EndpointError, Failure};
use ferry_engine::run::EngineError;
use ferry_engine::{Event, Halt, Scope, Summary};

use crate::client::{ClientError, Dial, Session, SessionReader, SessionWriter};
use crate::protocol::{JobOrder, Request, Response, brief};

/// A run that belongs on the agent holding the job's source, so file data flows from agent to
/// agent and never through the scheduler.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub dial: Dial,
    pub order: JobOrder,
}

/// How often a run handed over is told it may go on.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(500);
/// How long a run may go on unconfirmed when the halt has no deadline of its own.
const UNBOUNDED_VALIDITY: Duration = Duration::from_secs(30);

/// Hands a run over `scope` to the source's agent and follows it to its end: every event goes
/// to `on_event`, and the agent is kept going only while `halt` allows (it stops by itself
/// when the keep-alives stop, so a scheduler killed mid-run stops the run within a lease).
pub async fn hand_over(
    handoff: &Handoff,
    scope: &Scope,
    halt: &Halt,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> std::result::Result<Summary, EngineError> {
    let unreachable = |e| unreachable(handoff, e);
    let session = Session::connect(&handoff.dial, halt.presented_fence(), Arc::default())
        .await
        .map_err(unreachable)?;
    let mut order = handoff.order.clone();
    order.paths = match scope {
        Scope::Full => None,
        Scope::Paths(paths) => Some(paths.clone()),
    };
    let (mut reader, mut writer) = session.split();
    let request = Request::RunJob {
        order,
        valid_for_ms: validity(halt).as_millis() as u64,
    };
    writer.send(&request).await.map_err(unreachable)?;
    let keep_alive = tokio::spawn(keep_alive(writer, halt.clone()));
    let outcome = follow(handoff, &mut reader, halt, on_event).await;
    keep_alive.abort();
    outcome
}

/// The events of a batch of progress reports, or the first report that is not one, in brief.
fn progress_of(reports: Vec<Response>) -> std::result::Result<Vec<Event>, String> {
    reports
        .into_iter()
        .map(|report| match report {
            Response::Progress(event) => Ok(event),
            other => Err(brief(&other)),
        })
        .collect()
}

/// Tells the agent at every [`KEEP_ALIVE_EVERY`] how much longer the run may go on, or to
/// cancel it once `halt` says stop.
async fn keep_alive(mut writer: SessionWriter, halt: Halt) {
    loop {
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        let message = match halt.is_halted() {
            true => Request::Cancel,
            false => Request::KeepAlive {
                valid_for_ms: validity(&halt).as_millis() as u64,
            },
        };
        if writer.send(&message).await.is_err() || message == Request::Cancel {
            return;
        }
    }
}

/// How long the agent may run on without hearing from its caller again.
fn validity(halt: &Halt) -> Duration {
    halt.remaining().unwrap_or(UNBOUNDED_VALIDITY)
}

/// Follows a run's progress to its end.
async fn follow(
    handoff: &Handoff,
    reader: &mut SessionReader,
    halt: &Halt,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> std::result::Result<Summary, EngineError> {
    let job = handoff.order.job.clone();
    loop {
        match reader.receive().await {
            Ok(Response::Progress(event)) => on_event(event),
            Ok(Response::Batch(reports)) => match progress_of(reports) {
                Ok(events) => events.into_iter().for_each(&mut *on_event),
                Err(other) => {
                    break Err(EngineError::Agent {
                        job: job.clone(),
                        agent: handoff.dial.agent.clone(),
                        message: format!("unexpected answer in a batch of progress: {other}"),
                    });
                }
            },
            Ok(Response::RunDone { summary }) => break Ok(summary),
            Ok(Response::Failed(wire)) if halt.is_halted() => {
                tracing::debug!(?wire, "run handed over stopped");
                break Err(EngineError::Cancelled { job: job.clone() });
            }
            Ok(Response::Failed(wire)) => {
                break Err(EngineError::Agent {
                    job: job.clone(),
                    agent: handoff.dial.agent.clone(),
                    message: wire.message,
                });
            }
            Ok(other) => {
                let message = format!("unexpected answer {}", brief(&other));
                break Err(EngineError::Agent {
                    job: job.clone(),
                    agent: handoff.dial.agent.clone(),
                    message,
                });
            }
            Err(e) => break Err(unreachable(handoff, e)),
        }
    }
}

/// The error for a source agent that cannot be reached, or whose session broke.
fn unreachable(handoff: &Handoff, e: ClientError) -> EngineError {
    let source = format!("{}:{}", handoff.dial.agent, handoff.order.source);
    let error = EndpointError::new("reach", source, io::Error::other(e.to_string()));
    EngineError::Source {
        job: handoff.order.job.clone(),
        source: error.meaning(Failure::Unreachable),
    }
}
