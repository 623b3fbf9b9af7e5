//! Serves the API (see [`crate::api`]) on the control socket. Engine calls make syscalls, so
//! they run on the blocking pool, one at a time behind a mutex. Every request is checked
//! against the access policy first; refusals of changes are audited like changes.

use std::{
    convert::Infallible,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{Notify, broadcast},
};

use crate::{
    access::{Access, Peer, RefusalLimit},
    api::{ApiError, Apply, AuditAction, Experiments, Faults, History},
    engine::{Engine, EngineError},
    kernel::KernelError,
    listen::{self, Deadlined, PeerKey, READ_TIMEOUT},
    routes::{self, Route, RouteError},
    state::Actor,
    state::HistoryReader,
    text::escape,
};

/// Largest request body: 10,000 faults in JSON fit well within it.
const MAX_BODY: usize = 16 << 20;
/// The most bytes of a refused request's path that are logged and recorded (escaped).
const MAX_RECORDED_PATH: usize = 128;

type Reply = Response<Full<Bytes>>;

/// What every request handler shares.
pub struct Shared {
    pub engine: Arc<Mutex<Engine>>,
    /// The audit trail, read without the engine.
    pub history: HistoryReader,
    pub access: Access,
    /// How often each peer uid's refusals are logged and recorded.
    pub refusals: RefusalLimit,
    /// Woken after every change, so the lifecycle task recomputes its next wake-up.
    pub changed: Arc<Notify>,
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>, shutdown: broadcast::Receiver<()>) {
    let identify = |stream: &UnixStream| {
        let peer = Peer::of(stream.as_fd()).map_err(|e| tracing::warn!("SO_PEERCRED: {e}")).ok();
        let key = peer.as_ref().map_or(PeerKey::Unknown, |p| PeerKey::Uid(p.uid));
        (peer, key)
    };
    let connection = move |stream: Deadlined<UnixStream>, peer: Option<Peer>| {
        let shared = shared.clone();
        // Valid while the connection is served, which outlives every request on it.
        let fd = stream.get_ref().as_raw_fd();
        async move {
            let service = service_fn(move |req| handle(req, shared.clone(), peer.clone(), fd));
            if let Err(e) = listen::http1().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!("connection: {e}");
            }
        }
    };
    listen::serve("control socket", listener, identify, listen::CONTROL, connection, shutdown).await;
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
    peer: Option<Peer>,
    fd: RawFd,
) -> Result<Reply, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let mutating = method != Method::GET;
    let actor = peer.as_ref().map(Peer::actor).unwrap_or_default();
    if let Err(why) = shared.access.check(peer.as_ref(), mutating) {
        // A peer may be refused again and again: what it sent is escaped and bounded, and its
        // refusals are logged and recorded at a limited rate (see `RefusalLimit`).
        let uid = peer.as_ref().map(|p| p.uid);
        if let Some(unrecorded) = shared.refusals.admit(uid) {
            let path = escape(&path, MAX_RECORDED_PATH);
            let skipped = (unrecorded > 0).then(|| {
                let who = uid.map_or("peers without credentials".into(), |uid| format!("uid {uid}"));
                format!("{unrecorded} more requests from {who} not recorded (over the rate limit)")
            });
            if let Some(skipped) = &skipped {
                tracing::warn!(%actor, "refused: {skipped}");
            }
            tracing::warn!(%actor, %method, path, "{why}");
            // Reads refused are logged only; their count is recorded with the rest.
            let mut refusals: Vec<(AuditAction, String)> =
                skipped.map(|s| (AuditAction::Refusals, s)).into_iter().collect();
            if mutating {
                refusals.push((AuditAction::Request(format!("{method} {path}")), why.clone()));
            }
            record_refused(&shared.engine, actor, refusals).await;
        }
        return Ok(error(StatusCode::FORBIDDEN, why));
    }
    // Read whole before any answer, also a refusal: a client still sending its body would
    // otherwise find the connection closed instead of reading why.
    let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Ok(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
        Err(_) => return Ok(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into())),
    };
    let route = match routes::route(&method, &path, query.as_deref()) {
        Ok(route) => route,
        Err(e) => {
            let status = match e {
                RouteError::NotFound(_) => StatusCode::NOT_FOUND,
                RouteError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
                RouteError::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            return Ok(error(status, e.to_string()));
        }
    };
    // A client that gave up (its timeout, Ctrl-C) while the daemon could not answer (stopped,
    // busy) must not have its change made later, when no one is waiting for it.
    if route.mutating() && peer_gone(fd) {
        let why = "the client closed its connection before the request was served";
        tracing::warn!(%actor, %method, path, "{why}: not done");
        record_refused(&shared.engine, actor, vec![(AuditAction::Request(format!("{method} {path}")), why.into())])
            .await;
        return Ok(error(StatusCode::BAD_REQUEST, why.into()));
    }
    let engine = &shared.engine;
    let reply = match route {
        Route::Status => status(engine).await,
        Route::ListFaults => run(engine, |e| Ok(Faults { faults: e.list() })).await,
        Route::GetFault(name) => run(engine, move |e| e.get(&name)).await,
        Route::History { limit } => history(shared.history.clone(), limit).await,
        Route::Apply => match serde_json::from_slice::<Apply>(&body) {
            Ok(apply) => {
                run_status(engine, StatusCode::CREATED, move |e| {
                    e.apply(&apply, &actor).map(|faults| Faults { faults })
                })
                .await
            }
            Err(e) => {
                let why = format!("request body: {e}");
                record_refused(engine, actor, vec![(AuditAction::Apply, why.clone())]).await;
                error(StatusCode::BAD_REQUEST, why)
            }
        },
        Route::Clear => run(engine, move |e| e.clear(&actor).map(|faults| Faults { faults })).await,
        Route::RemoveFault(name) => run(engine, move |e| e.remove(&[name], &actor).map(|mut v| v.remove(0))).await,
        Route::ListExperiments => run(engine, |e| Ok(Experiments { experiments: e.experiments() })).await,
        Route::RemoveExperiment(name) => {
            run(engine, move |e| e.remove_experiment(&name, &actor).map(|faults| Faults { faults })).await
        }
    };
    if mutating && reply.status().is_success() {
        shared.changed.notify_one();
    }
    Ok(reply)
}

/// Records refused requests, `(action, why)` each, in the audit trail (if any).
async fn record_refused(engine: &Arc<Mutex<Engine>>, actor: Actor, refusals: Vec<(AuditAction, String)>) {
    if refusals.is_empty() {
        return;
    }
    run(engine, move |e| {
        for (action, why) in refusals {
            e.refused(&actor, action, &why);
        }
        Ok(())
    })
    .await;
}

/// Whether the peer of a Unix stream socket has closed it (both ways: POLLHUP). One that only
/// shut down its sending side still reads the answer.
fn peer_gone(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: one pollfd, valid for the call; a zero timeout does not block.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLHUP != 0
}

/// The newest `limit` events (at most `history_limit`), read from the file on the blocking pool
/// without the engine's lock: a long history does not hold up changes or `status`.
async fn history(reader: HistoryReader, limit: usize) -> Reply {
    // Two at a time: memory grows with `limit` for each read, and any reader may ask.
    static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let _turn = READS.acquire().await.expect("never closed");
    // Serialized there too: 10,000 events are megabytes, not for the runtime's few threads.
    let read = move || reader.read(limit).map(|events| serde_json::to_vec(&History { events }).unwrap_or_default());
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(body)) => reply(StatusCode::OK, body),
        Ok(Err(e)) => {
            tracing::error!("reading the audit trail: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the audit trail: {e}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")),
    }
}

async fn run<T, F>(engine: &Arc<Mutex<Engine>>, f: F) -> Reply
where
    T: Serialize + Send + 'static,
    F: FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
{
    run_status(engine, StatusCode::OK, f).await
}

async fn run_status<T, F>(engine: &Arc<Mutex<Engine>>, ok: StatusCode, f: F) -> Reply
where
    T: Serialize + Send + 'static,
    F: FnOnce(&mut Engine) -> Result<T, EngineError> + Send + 'static,
{
    let engine = engine.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut engine)
    })
    .await;
    match result {
        Ok(Ok(value)) => json(ok, &value),
        Ok(Err(e)) => {
            let status = match &e {
                EngineError::Conflict(_) | EngineError::Protected(_) => StatusCode::CONFLICT,
                EngineError::Invalid(_) | EngineError::Kernel(KernelError::Compile(_)) => StatusCode::BAD_REQUEST,
                EngineError::NotFound(_) => StatusCode::NOT_FOUND,
                EngineError::Kernel(KernelError::Unsupported(_)) => StatusCode::UNPROCESSABLE_ENTITY,
                EngineError::Kernel(_) | EngineError::State(_) | EngineError::BadState(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            if status.is_server_error() {
                tracing::error!("{e}");
            }
            error(status, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")),
    }
}

/// The engine's status, and which CRI socket answers: that is asked once the engine's lock is
/// let go, as a socket that does not answer takes its timeout (a second).
async fn status(engine: &Arc<Mutex<Engine>>) -> Reply {
    let engine = engine.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (mut status, sockets) = {
            let engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            (engine.status(), engine.settings().cri_sockets.clone())
        };
        status.scoping.insert("pod (CRI)".into(), crate::pods::status(&sockets));
        status
    })
    .await;
    match result {
        Ok(status) => json(StatusCode::OK, &status),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    reply(status, serde_json::to_vec(value).unwrap_or_default())
}

/// A JSON body already serialized.
fn reply(status: StatusCode, body: Vec<u8>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn error(status: StatusCode, message: String) -> Reply {
    json(status, &ApiError { error: message })
}
