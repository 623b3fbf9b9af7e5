//! The SSH guard's session map (see chaos-ebpf's `sessions`): the tracepoint program keeps the
//! established TCP sessions on the guarded ports in `SESSIONS`, so an apply needs no dump of the
//! kernel's TCP table to know that a fault touches none of them.
//!
//! The tracepoint is global: the map holds the sessions of every network namespace, and may
//! hold stale ones (a session that closed between the seeding dump and its write). It is a
//! superset of the daemon's namespace's sessions, and the guard treats it as one: when a fault
//! could touch one of its entries, the guard dumps and decides on the dump.
//!
//! Loaded at the first apply that needs it, not at start: a daemon whose faults never come near
//! the guarded ports never runs it on every TCP state change of the host. Nothing is pinned:
//! the map is only right while the program runs, and a new daemon fills a new one.

use std::{net::SocketAddr, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::TracePoint,
};
use chaos_common::{
    FIELD_ABSENT, GUARD_PORTS_CAPACITY, PROG_SESSIONS, SESSION_RECORD_MAX, SessionConf, SessionKey, map_names,
};

use super::map;
use crate::guard::Families;

const CATEGORY: &str = "sock";
const EVENT: &str = "inet_sock_set_state";
/// Where tracefs is, newest first (aya's `attach` looks in the same places).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Whether the guard follows sessions by the tracepoint: not yet tried, on, or off and why.
pub enum Follow {
    NotYet,
    On(Box<Followed>),
    Off(String),
}

pub struct Followed {
    sessions: HashMap<MapData, SessionKey, u8>,
    overflow: Array<MapData, u32>,
}

impl Follow {
    /// For status.
    pub fn describe(&self) -> String {
        match self {
            Follow::NotYet => format!("tracepoint {CATEGORY}:{EVENT}, loaded at the first apply that needs it"),
            Follow::On(f) if f.overflowed() => "dump (the tracepoint's session map is full)".into(),
            Follow::On(_) => format!("tracepoint {CATEGORY}:{EVENT}"),
            Follow::Off(why) => format!("dump ({why})"),
        }
    }
}

impl Followed {
    /// The sessions in the map, as (local, remote), IPv4-mapped addresses as IPv4; `None` once
    /// it overflowed (some session may be missing) or when it cannot be read.
    pub fn list(&self) -> Option<Vec<(SocketAddr, SocketAddr)>> {
        if self.overflowed() {
            return None;
        }
        let keys: Result<Vec<SessionKey>, _> = self.sessions.keys().collect();
        let keys = keys.map_err(|e| tracing::warn!("reading {}: {e}", map_names::SESSIONS)).ok()?;
        Some(keys.iter().map(ends).collect())
    }

    fn overflowed(&self) -> bool {
        self.overflow.get(&0, 0).map_or(true, |v| v != 0)
    }
}

/// A key's (local, remote) ends.
fn ends(k: &SessionKey) -> (SocketAddr, SocketAddr) {
    let ip = |words: [u32; 4]| {
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        std::net::IpAddr::from(bytes).to_canonical()
    };
    (SocketAddr::new(ip(k.local), k.local_port), SocketAddr::new(ip(k.remote), k.remote_port))
}

/// A session's key, as the program makes it (the inverse of [`ends`]).
fn key(local: SocketAddr, remote: SocketAddr) -> SessionKey {
    let words = |ip: std::net::IpAddr| {
        let v6 = match ip {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
            std::net::IpAddr::V6(a) => a,
        };
        let b = v6.octets();
        std::array::from_fn(|i| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]))
    };
    SessionKey {
        family: if remote.ip().to_canonical().is_ipv4() {
            chaos_common::Family::V4 as u8
        } else {
            chaos_common::Family::V6 as u8
        },
        _pad: 0,
        local_port: local.port(),
        remote_port: remote.port(),
        _pad2: 0,
        local: words(local.ip()),
        remote: words(remote.ip()),
    }
}

/// Starts following the sessions on `ports`: configures the program (offsets, ports), attaches
/// it, then seeds the map with one dump, so that the map holds every session established
/// before the attach as well as after. The error says why it cannot run here.
pub fn start(ebpf: &mut Ebpf, ports: &[u16]) -> Result<Followed, String> {
    if ports.len() > GUARD_PORTS_CAPACITY as usize {
        return Err(format!("more than {GUARD_PORTS_CAPACITY} guarded ports"));
    }
    let started = std::time::Instant::now();
    let tracefs = tracefs()?;
    let path = tracefs.join(format!("events/{CATEGORY}/{EVENT}/format"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut conf = parse_format(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mut guarded: HashMap<MapData, u16, u8> = map(ebpf, map_names::GUARD_PORTS).map_err(|e| err("map", &e))?;
    for p in ports {
        guarded.insert(p, 1, 0).map_err(|e| err(map_names::GUARD_PORTS, &e))?;
    }
    let mut config: Array<MapData, SessionConf> = map(ebpf, map_names::SESSION_CONF).map_err(|e| err("map", &e))?;
    conf.ready = 1;
    config.set(0, conf, 0).map_err(|e| err(map_names::SESSION_CONF, &e))?;
    let mut sessions: HashMap<MapData, SessionKey, u8> = map(ebpf, map_names::SESSIONS).map_err(|e| err("map", &e))?;
    let overflow = map(ebpf, map_names::SESSION_OVERFLOW).map_err(|e| err("map", &e))?;

    let program: &mut TracePoint = ebpf
        .program_mut(PROG_SESSIONS)
        .ok_or_else(|| format!("no program {PROG_SESSIONS} in the object"))?
        .try_into()
        .map_err(|e| err(PROG_SESSIONS, &e))?;
    program
        .load()
        .map_err(|e| err(&format!("loading {PROG_SESSIONS}"), &super::backend::verifier_error(PROG_SESSIONS, e)))?;
    // The link stays with the program, which the daemon's `Ebpf` keeps until it exits.
    let link = program.attach(CATEGORY, EVENT).map_err(|e| err(&format!("attaching to {CATEGORY}:{EVENT}"), &e))?;
    // After the attach: a session established from now on is the program's to add.
    let seeded = seed(&mut sessions, ports).inspect_err(|_| {
        // The guard dumps from now on: the program would only cost each state change.
        let _ = program.detach(link);
    })?;
    let took = started.elapsed();
    tracing::info!(seeded, ?took, "the SSH guard follows sessions by the {CATEGORY}:{EVENT} tracepoint");
    Ok(Followed { sessions, overflow })
}

/// Writes the established sessions on `ports` into `sessions`; returns how many it listed.
fn seed(sessions: &mut HashMap<MapData, SessionKey, u8>, ports: &[u16]) -> Result<usize, String> {
    let all = Families { v4: true, v6: true };
    let listed =
        crate::guard::session_ends(ports, all).map_err(|e| format!("listing the sessions to seed the map: {e}"))?;
    for (local, remote) in &listed {
        // NOEXIST: the program's entry (or its removal) is newer than this dump's row.
        const BPF_NOEXIST: u64 = 1;
        match sessions.insert(key(*local, *remote), 1, BPF_NOEXIST) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("seeding {}: {e}", map_names::SESSIONS)),
        }
    }
    Ok(listed.len())
}

/// tracefs's directory, mounted at /sys/kernel/tracing when nothing is (as bpftool does):
/// tracefs has one instance, so the mount shows the same events wherever it is.
fn tracefs() -> Result<&'static Path, String> {
    let found = || TRACEFS.iter().map(Path::new).find(|p| p.join("events").is_dir());
    if let Some(p) = found() {
        return Ok(p);
    }
    nix::mount::mount(Some("nodev"), TRACEFS[0], Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| format!("tracefs is not mounted, and mounting it at {} failed: {e}", TRACEFS[0]))?;
    tracing::info!("mounted tracefs at {}", TRACEFS[0]);
    found().ok_or_else(|| "tracefs has no events directory".into())
}

/// The offsets of the fields the program reads, from the tracepoint's `format` file (lines
/// such as `field:__u16 sport; offset:24; size:2; signed:0;`). A field missing or of another
/// size than the program reads is an error; only `protocol` may be missing (before 4.17ish).
pub fn parse_format(text: &str) -> Result<SessionConf, String> {
    let field = |name: &str, size: u32| -> Result<Option<u32>, String> {
        for line in text.lines() {
            let mut parts = line.trim().split(';').map(str::trim);
            let Some(decl) = parts.next().and_then(|d| d.strip_prefix("field:")) else { continue };
            let declared = decl.split_whitespace().last().unwrap_or_default();
            if declared.split('[').next() != Some(name) {
                continue;
            }
            let mut value = |key: &str| -> Result<u32, String> {
                let v = parts.next().and_then(|p| p.strip_prefix(key)).and_then(|v| v.parse().ok());
                v.ok_or_else(|| format!("field {name}: cannot read its {key}"))
            };
            let (offset, found) = (value("offset:")?, value("size:")?);
            if found != size {
                return Err(format!("field {name} has {found} bytes, the program reads {size}"));
            }
            if offset + size > SESSION_RECORD_MAX {
                return Err(format!("field {name} at offset {offset}, past {SESSION_RECORD_MAX}"));
            }
            return Ok(Some(offset));
        }
        Ok(None)
    };
    let need = |name: &str, size: u32| field(name, size)?.ok_or_else(|| format!("no field {name}"));
    Ok(SessionConf {
        oldstate: need("oldstate", 4)?,
        newstate: need("newstate", 4)?,
        sport: need("sport", 2)?,
        dport: need("dport", 2)?,
        protocol: field("protocol", 2)?.unwrap_or(FIELD_ABSENT),
        saddr_v6: need("saddr_v6", 16)?,
        daddr_v6: need("daddr_v6", 16)?,
        ready: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6.x, with `protocol`.
    const FORMAT_6: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu\"";

    #[test]
    fn offsets_come_from_the_format_file() {
        let c = parse_format(FORMAT_6).unwrap();
        let want = SessionConf {
            oldstate: 16,
            newstate: 20,
            sport: 24,
            dport: 26,
            protocol: 30,
            saddr_v6: 40,
            daddr_v6: 56,
            ready: 0,
        };
        assert_eq!(c, want);
        // Without `protocol` (the first kernels with the tracepoint), the rest moves up.
        let old = FORMAT_6.replace("\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n", "");
        assert_eq!(parse_format(&old).unwrap().protocol, FIELD_ABSENT);
    }

    #[test]
    fn a_missing_or_resized_field_is_an_error_naming_it() {
        let no_dport = FORMAT_6.replace("__u16 dport;", "__u16 dst_port;");
        assert_eq!(parse_format(&no_dport).unwrap_err(), "no field dport");
        let wide = FORMAT_6.replace("sport;\toffset:24;\tsize:2", "sport;\toffset:24;\tsize:4");
        assert_eq!(parse_format(&wide).unwrap_err(), "field sport has 4 bytes, the program reads 2");
        let far = FORMAT_6.replace("offset:56;", "offset:250;");
        assert!(parse_format(&far).unwrap_err().contains("daddr_v6 at offset 250"));
    }

    #[test]
    fn keys_round_trip_with_ipv4_mapped() {
        for (l, r) in [("10.0.0.1:22", "10.0.0.2:40000"), ("[fd00::1]:22", "[fd00::2]:40000")] {
            let (l, r): (SocketAddr, SocketAddr) = (l.parse().unwrap(), r.parse().unwrap());
            let k = key(l, r);
            assert_eq!(ends(&k), (l, r));
            assert_eq!(
                k.family,
                if l.is_ipv4() { chaos_common::Family::V4 as u8 } else { chaos_common::Family::V6 as u8 }
            );
        }
        // As the tracepoint gives an IPv4 session: ::ffff:a.b.c.d in wire order.
        let k = key("10.0.0.1:22".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        let b: Vec<u8> = k.remote.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2]);
    }
}
