//! Serves the API (see [`crate::api`]) on the control socket. Engine calls make syscalls, so
//! they run on the blocking pool, one at a time behind a mutex.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::UnixListener, sync::broadcast};

use crate::{
    api::{ApiError, Apply, Faults},
    engine::{Engine, EngineError},
    kernel::KernelError,
};

/// Largest request body: 10,000 faults in JSON fit well within it.
const MAX_BODY: usize = 16 << 20;

type Reply = Response<Full<Bytes>>;

/// Who is on the other end of a connection, for the log.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: u32,
    pid: Option<i32>,
}

pub async fn serve(listener: UnixListener, engine: Arc<Mutex<Engine>>, mut shutdown: broadcast::Receiver<()>) {
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
        let peer = stream.peer_cred().map(|c| Peer { uid: c.uid(), pid: c.pid() }).ok();
        let engine = engine.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, engine.clone(), peer));
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    engine: Arc<Mutex<Engine>>,
    peer: Option<Peer>,
) -> Result<Reply, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mutating = method != Method::GET;
    let reply = match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => run(&engine, |e| Ok(e.status())).await,
        (&Method::GET, ["v1", "faults"]) => run(&engine, |e| Ok(Faults { faults: e.list() })).await,
        (&Method::GET, ["v1", "faults", name]) => {
            let name = name.to_string();
            run(&engine, move |e| e.get(&name)).await
        }
        (&Method::POST, ["v1", "faults"]) => match serde_json::from_slice::<Apply>(&body) {
            Ok(apply) => {
                run_status(&engine, StatusCode::CREATED, move |e| {
                    e.apply(&apply.faults).map(|faults| Faults { faults })
                })
                .await
            }
            Err(e) => error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
        },
        (&Method::DELETE, ["v1", "faults"]) => run(&engine, |e| e.clear().map(|faults| Faults { faults })).await,
        (&Method::DELETE, ["v1", "faults", name]) => {
            let name = name.to_string();
            run(&engine, move |e| e.remove(&[name]).map(|mut v| v.remove(0))).await
        }
        (_, ["v1", "status" | "faults"] | ["v1", "faults", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no endpoint {path} (see the API reference in docs/api.md)")),
    };
    if mutating {
        let (uid, pid) = peer.map_or((None, None), |p| (Some(p.uid), p.pid));
        tracing::info!(?uid, ?pid, %method, path, status = reply.status().as_u16(), "control request");
    }
    Ok(reply)
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
                EngineError::Conflict(_) => StatusCode::CONFLICT,
                EngineError::Invalid(_) | EngineError::Kernel(KernelError::Compile(_)) => StatusCode::BAD_REQUEST,
                EngineError::NotFound(_) => StatusCode::NOT_FOUND,
                EngineError::Kernel(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn error(status: StatusCode, message: String) -> Reply {
    json(status, &ApiError { error: message })
}
