//! A raw HTTP/1.1 client for the control socket: one request per connection, nothing hidden,
//! so a test sees exactly what the daemon answered, and whether it answered in full.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// A complete answer: status, header block, and the body (as long as `Content-Length` said).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The message of an error body, if the body is exactly `{"error": "<non-empty>"}`.
    pub fn error(&self) -> Option<String> {
        let json = self.json();
        let object = json.as_object().filter(|o| o.len() == 1)?;
        object.get("error")?.as_str().filter(|e| !e.trim().is_empty()).map(str::to_owned)
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads until the daemon
/// closes it. Fails if the connection breaks or the answer is not a whole HTTP response.
pub fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
    let mut s = UnixStream::connect(socket)?;
    // A daemon that stops answering fails the test instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no complete answer: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = raw[end + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") { value.trim().parse::<usize>().ok() } else { None }
    });
    if let Some(length) = length {
        anyhow::ensure!(body.len() == length, "answer cut short: {} of {length} body bytes", body.len());
    }
    Ok(Answer { status, head, body })
}
