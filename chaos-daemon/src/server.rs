//! Serves the API (see [`crate::api`]) on the control socket. Engine calls make syscalls, so
//! they run on the blocking pool, one at a time behind a mutex. Every request is checked
//! against the access policy first; refusals of changes are audited like changes.

use std::{
    convert::Infallible,
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::{
    net::UnixListener,
    sync::{Notify, broadcast},
};

use crate::{
    access::{Access, Peer, RefusalLimit},
    api::{ApiError, Apply, Faults, History},
    engine::{Engine, EngineError},
    kernel::KernelError,
    state::HistoryReader,
    text::escape,
};

/// Largest request body: 10,000 faults in JSON fit well within it.
const MAX_BODY: usize = 16 << 20;
/// A client that stalls in its request headers or body is dropped after this, so it cannot
/// hold a connection (and a daemon file descriptor) forever.
pub(crate) const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most bytes of a refused request's path that are logged and recorded (escaped).
const MAX_PATH: usize = 128;

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

pub async fn serve(listener: UnixListener, shared: Arc<Shared>, mut shutdown: broadcast::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
        };
        let peer = Peer::of(stream.as_fd()).map_err(|e| tracing::warn!("SO_PEERCRED: {e}")).ok();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone(), peer.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
    peer: Option<Peer>,
) -> Result<Reply, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let mutating = method != Method::GET;
    let actor = peer.as_ref().map(Peer::actor).unwrap_or_default();
    if let Err(why) = shared.access.check(peer.as_ref(), mutating) {
        // A peer may be refused again and again: what it sent is escaped and bounded, and its
        // refusals are logged and recorded at a limited rate (see `RefusalLimit`).
        let uid = peer.as_ref().map(|p| p.uid);
        if let Some(unrecorded) = shared.refusals.admit(uid) {
            let path = escape(&path, MAX_PATH);
            let skipped = (unrecorded > 0).then(|| {
                let who = uid.map_or("peers without credentials".into(), |uid| format!("uid {uid}"));
                format!("{unrecorded} more requests from {who} not recorded (over the rate limit)")
            });
            if let Some(skipped) = &skipped {
                tracing::warn!(%actor, "refused: {skipped}");
            }
            tracing::warn!(%actor, %method, path, "{why}");
            // Reads refused are logged only; their count is recorded with the rest.
            if mutating || skipped.is_some() {
                let (action, audited) = (format!("{method} {path}"), why.clone());
                run(&shared.engine, move |e| {
                    if let Some(skipped) = skipped {
                        e.refused(&actor, "refusals", &skipped);
                    }
                    if mutating {
                        e.refused(&actor, &action, &audited);
                    }
                    Ok(())
                })
                .await;
            }
        }
        return Ok(error(StatusCode::FORBIDDEN, why));
    }
    let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Ok(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
        Err(_) => return Ok(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into())),
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let engine = &shared.engine;
    let reply = match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => run(engine, |e| Ok(e.status())).await,
        (&Method::GET, ["v1", "faults"]) => run(engine, |e| Ok(Faults { faults: e.list() })).await,
        (&Method::GET, ["v1", "faults", name]) => {
            let name = name.to_string();
            run(engine, move |e| e.get(&name)).await
        }
        (&Method::GET, ["v1", "history"]) => match history_limit(&query) {
            Ok(limit) => history(shared.history.clone(), limit).await,
            Err(why) => error(StatusCode::BAD_REQUEST, why),
        },
        (&Method::POST, ["v1", "faults"]) => match serde_json::from_slice::<Apply>(&body) {
            Ok(apply) => {
                run_status(engine, StatusCode::CREATED, move |e| {
                    e.apply(&apply, &actor).map(|faults| Faults { faults })
                })
                .await
            }
            Err(e) => {
                let why = format!("request body: {e}");
                let refused = why.clone();
                run(engine, move |e| {
                    e.refused(&actor, "apply", &refused);
                    Ok(())
                })
                .await;
                error(StatusCode::BAD_REQUEST, why)
            }
        },
        (&Method::DELETE, ["v1", "faults"]) => {
            run(engine, move |e| e.clear(&actor).map(|faults| Faults { faults })).await
        }
        (&Method::DELETE, ["v1", "faults", name]) => {
            let name = name.to_string();
            run(engine, move |e| e.remove(&[name], &actor).map(|mut v| v.remove(0))).await
        }
        (&Method::DELETE, ["v1", "experiments", name]) => {
            let name = name.to_string();
            run(engine, move |e| e.remove_experiment(&name, &actor).map(|faults| Faults { faults })).await
        }
        (_, ["v1", "status" | "faults" | "history"] | ["v1", "faults" | "experiments", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no endpoint {path} (see the API reference in docs/api.md)")),
    };
    if mutating && reply.status().is_success() {
        shared.changed.notify_one();
    }
    Ok(reply)
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

/// `limit=N` of `GET /v1/history`: default 100.
fn history_limit(query: &str) -> Result<usize, String> {
    match query.split('&').find_map(|kv| kv.strip_prefix("limit=")) {
        None => Ok(100),
        Some(n) => n.parse().map_err(|_| format!("limit: '{n}' is not a number")),
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
                EngineError::Kernel(_) | EngineError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if status.is_server_error() {
                tracing::error!("{e}");
            }
            error(status, e.to_string())
        }
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
