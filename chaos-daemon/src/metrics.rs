//! Prometheus metrics on an optional TCP listener (`metrics_address`): `GET /metrics` in the
//! Prometheus text format (0.0.4), computed from the engine at each scrape: the counters are
//! those `chaosctl list` shows, summed from the kernel's per-CPU map at that moment. Nothing
//! runs between scrapes.

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

use crate::{
    api::{FaultState, FaultView},
    engine::Engine,
    kernel::Attachment,
    listen::{self, Deadlined, PeerKey},
    shaping::Backend,
    state::mono_ns,
};

/// What one scrape reports, taken under the engine's lock and encoded after it is released.
#[derive(Debug)]
pub struct Snapshot {
    faults: Vec<FaultView>,
    attachments: Vec<Attachment>,
    version: &'static str,
    kernel: String,
    delay_backend: &'static str,
    max_faults: usize,
    /// Listings of the kernel's TCP table by the SSH guard.
    guard_dumps: u64,
    /// CLOCK_MONOTONIC, as the faults' deadlines.
    now_ns: u64,
}

impl Snapshot {
    pub fn of(engine: &Engine) -> Self {
        Self {
            faults: engine.list(),
            attachments: engine.kernel().attachments(),
            version: env!("CARGO_PKG_VERSION"),
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            // Without the reason `chaosctl status` gives: a label value stays short and fixed.
            delay_backend: match engine.kernel().backend() {
                Ok(Backend::Edt) => "edt",
                Ok(Backend::Netem) => "netem",
                Err(_) => "none",
            },
            max_faults: engine.settings().max_faults,
            guard_dumps: crate::guard::dumps(),
            now_ns: mono_ns(),
        }
    }

    /// The Prometheus text format.
    pub fn encode(self) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// A fault's labels: its name, action, interface and experiment (the last two when it has them).
fn labels(f: &FaultView) -> Vec<(&'static str, &str)> {
    let mut labels = vec![("name", f.name.as_str()), ("action", f.spec.action.as_deref().unwrap_or_default())];
    labels.extend(f.spec.interface.as_deref().map(|i| ("interface", i)));
    labels.extend(f.experiment.as_deref().map(|e| ("experiment", e)));
    labels
}

/// One metric family: its description, then one sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A metric of one sample, without labels.
fn single(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Each fault counter: name, help, the only action that moves it (if not all), its value.
type FaultCounter = (&'static str, &'static str, Option<&'static str>, fn(&FaultView) -> u64);

const FAULT_COUNTERS: [FaultCounter; 6] = [
    ("chaos_fault_matched_packets", "Packets the fault acted on (connect-fail: connect calls)", None, |f| f.matched),
    ("chaos_fault_dropped_packets", "Of those, packets it dropped (connect-fail: calls failed)", None, |f| f.dropped),
    ("chaos_fault_duplicated_packets", "Copies the fault sent", Some("duplicate"), |f| f.duplicated),
    ("chaos_fault_corrupted_packets", "Packets the fault flipped a bit in", Some("corrupt"), |f| f.corrupted),
    ("chaos_fault_reset_packets", "Segments the fault answered with a RST", Some("reset"), |f| f.reset),
    ("chaos_fault_answered_queries", "DNS queries the fault answered itself", Some("dns"), |f| f.answered),
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let faults: Vec<(&FaultView, Vec<(&str, &str)>)> = self.faults.iter().map(|f| (f, labels(f))).collect();
        for (name, help, only, value) in FAULT_COUNTERS {
            let samples = faults
                .iter()
                .filter(|(f, _)| only.is_none() || f.spec.action.as_deref() == only)
                .map(|(f, l)| (l.as_slice(), ConstCounter::new(value(f))));
            family(e, name, help, MetricType::Counter, samples)?;
        }
        let active = |f: &FaultView| f.state == FaultState::Active;
        let help = "1 while the fault acts, 0 while it is scheduled (waiting for its start)";
        let samples = faults.iter().map(|(f, l)| (l.as_slice(), ConstGauge::new(i64::from(active(f)))));
        family(e, "chaos_fault_active", help, MetricType::Gauge, samples)?;
        let help = "Seconds until the fault ends (none for an unlimited fault)";
        let samples = faults.iter().filter_map(|(f, l)| {
            let left = f.deadline_ns?.saturating_sub(self.now_ns);
            Some((l.as_slice(), ConstGauge::new(Duration::from_nanos(left).as_secs_f64())))
        });
        family(e, "chaos_fault_remaining_seconds", help, MetricType::Gauge, samples)?;

        let running = self.faults.iter().filter(|f| active(f)).count();
        let samples = [("active", running), ("scheduled", self.faults.len() - running)]
            .map(|(state, n)| ([("state", state)], ConstGauge::new(n as i64)));
        family(e, "chaos_faults", "Faults, by state", MetricType::Gauge, samples)?;
        let help = "Rule slots in use in the kernel maps (one per fault, scheduled ones too)";
        single(e, "chaos_rule_slots", help, ConstGauge::new(self.faults.len() as i64))?;
        let help = "Rule slots the kernel maps hold";
        single(e, "chaos_max_rule_slots", help, ConstGauge::new(i64::from(chaos_common::MAX_RULES)))?;
        let help = "Most faults at once (max_faults in the config)";
        single(e, "chaos_max_faults", help, ConstGauge::new(self.max_faults as i64))?;
        let help = "Listings of the kernel's TCP table for the SSH guard (none while a fault touches no \
                    session the sock:inet_sock_set_state tracepoint follows)";
        single(e, "chaos_guard_session_dumps", help, ConstCounter::new(self.guard_dumps))?;
        let help = "1 for each hook of an interface (or cgroup) a program of the daemon is attached to";
        let samples = self.attachments.iter().map(|a| {
            (
                [("interface", a.interface.as_str()), ("hook", a.hook.as_str()), ("mode", a.mode.as_str())],
                ConstGauge::new(1),
            )
        });
        family(e, "chaos_attached", help, MetricType::Gauge, samples)?;
        let info = [("version", self.version), ("kernel", &self.kernel), ("delay_backend", self.delay_backend)];
        let help = "The daemon's version, the kernel's release and the delay backend (edt, netem or none)";
        single(e, "chaos_daemon", help, Info::new(info))
    }
}

/// Binds `metrics_address`, if set. A failure (the port taken, an address not on this host)
/// stops the daemon's start rather than leaving it without the metrics it was asked for.
pub async fn bind(address: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = address else { return Ok(None) };
    let listener = TcpListener::bind(address).await.with_context(|| format!("metrics_address: binding {address}"))?;
    tracing::info!("metrics at http://{address}/metrics");
    Ok(Some(listener))
}

/// Serves scrapes until `shutdown`.
pub async fn serve(listener: TcpListener, engine: Arc<Mutex<Engine>>, shutdown: broadcast::Receiver<()>) {
    let identify = |stream: &TcpStream| {
        let key = stream.peer_addr().map_or(PeerKey::Unknown, |a| PeerKey::Addr(a.ip()));
        ((), key)
    };
    let connection = move |stream: Deadlined<TcpStream>, ()| {
        let engine = engine.clone();
        async move {
            let service = service_fn(move |req| scrape(req, engine.clone()));
            if let Err(e) = listen::http1().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!("metrics connection: {e}");
            }
        }
    };
    listen::serve("metrics", listener, identify, listen::METRICS, connection, shutdown).await;
}

async fn scrape<B>(req: Request<B>, engine: Arc<Mutex<Engine>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    let path = req.uri().path();
    if path != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no endpoint {path}: metrics are at /metrics\n"),
        ));
    }
    if req.method() != Method::GET {
        let why = format!("{} is not allowed on /metrics (GET only)\n", req.method());
        let mut reply = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", why);
        reply.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET"));
        return Ok(reply);
    }
    // Counters are read with syscalls: on the blocking pool, like the control socket's requests.
    let text = tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot::of(&engine.lock().unwrap_or_else(|p| p.into_inner()));
        snapshot.encode().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    Ok(match text {
        Ok(text) => reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding the metrics: {e}\n")),
    })
}
