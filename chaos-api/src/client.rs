//! chaosctl's side of the control socket: one HTTP/1.1 request per connection.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::api::ApiError;

/// Why a request failed: the three answers a script needs to tell apart (see chaosctl's exit
/// codes).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `error` is part of the message, not a source: printed as a chain it would be said twice.
    #[error("cannot connect to chaos-daemon at {}: {error}{hint}", socket.display())]
    Unreachable { socket: PathBuf, error: std::io::Error, hint: &'static str },
    /// The daemon answered with an error status: its message says what was wrong (escaped as
    /// shown: it may quote what was sent).
    #[error("{}", crate::text::escape(message, 4096))]
    Refused { status: u16, message: String },
    /// No answer in time: the daemon is stopped, or stuck. The request is withdrawn (the
    /// connection closed), and the daemon does not act on a request whose client has gone.
    #[error(
        "chaos-daemon at {} did not answer within {after:?} (is it stopped? --timeout waits longer); the \
         request was withdrawn",
        socket.display()
    )]
    Timeout { socket: PathBuf, after: Duration },
    /// The exchange itself failed (the daemon went away mid-request, an answer it cannot have
    /// sent).
    #[error("talking to chaos-daemon: {0}")]
    Exchange(String),
}

pub struct Client<'a> {
    socket: &'a Path,
    timeout: Duration,
}

/// How long a request may wait for its answer, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl<'a> Client<'a> {
    pub fn new(socket: &'a Path) -> Self {
        Self { socket, timeout: DEFAULT_TIMEOUT }
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::GET, path, None::<&()>).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::DELETE, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        // Dropping the exchange closes the connection: the daemon sees it and drops the request.
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .unwrap_or_else(|_| Err(ClientError::Timeout { socket: self.socket.to_owned(), after: self.timeout }))
    }

    async fn exchange<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let stream = UnixStream::connect(self.socket).await.map_err(|error| {
            let hint = match error.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => " (is chaos-daemon running?)",
                std::io::ErrorKind::PermissionDenied => " (are you root or in the socket's group?)",
                _ => "",
            };
            ClientError::Unreachable { socket: self.socket.to_owned(), error, hint }
        })?;
        let exchange = |what: &str, e: &dyn std::fmt::Display| ClientError::Exchange(format!("{what}: {e}"));
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| exchange("handshake", &e))?;
        // Closed with the exchange, also when it is given up (timeout): the daemon then sees
        // the connection gone.
        let _conn = AbortOnDrop(tokio::spawn(conn).abort_handle());
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| exchange("encoding the request", &e))?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "chaos-daemon")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| exchange("building the request", &e))?;
        let resp = sender.send_request(req).await.map_err(|e| exchange("sending the request", &e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| exchange("reading the answer", &e))?.to_bytes();
        if !status.is_success() {
            let message = match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => e.error,
                Err(_) => format!("chaos-daemon answered {status}: {}", String::from_utf8_lossy(&bytes)),
            };
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        serde_json::from_slice(&bytes).map_err(|e| exchange(&format!("decoding the answer to {path}"), &e))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
