//! A DNS lab: a real `dnsmasq` answering a test's names in the server namespace (`b`) of a
//! [`Lab`], and resolvers in the client namespace (`a`): glibc through `getent` and Python's
//! `socket.getaddrinfo`, `dig`, and raw UDP queries from this process for counts.
//!
//! Resolvers read a resolv.conf and an nsswitch.conf of the lab's own, bind-mounted over the
//! host's in a mount namespace of their own (`unshare --mount`, private propagation), so the
//! host's files are never touched. Every object is owned by a guard whose `Drop` removes it.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    ops::Deref,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Lab, Netns,
    lab::{B4, B6},
    unique,
};

/// A name and its addresses, served as an A and an AAAA record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Record {
    /// `Record::new("shop.example.test", "10.53.0.1", "fd00:53::1")`; panics on a bad address.
    pub fn new(name: &str, v4: &str, v6: &str) -> Self {
        Self {
            name: name.to_owned(),
            v4: v4.parse().expect("an IPv4 address"),
            v6: v6.parse().expect("an IPv6 address"),
        }
    }

    /// Its address of `family`.
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.v4.into(),
            Family::V6 => self.v6.into(),
        }
    }
}

/// An address family to resolve for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The query type a lookup of this family sends.
    pub fn qtype(self) -> QType {
        match self {
            Self::V4 => QType::A,
            Self::V6 => QType::Aaaa,
        }
    }
}

/// A DNS query type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum QType {
    A,
    Aaaa,
    Txt,
    Mx,
}

impl QType {
    pub fn code(self) -> u16 {
        match self {
            Self::A => 1,
            Self::Mx => 15,
            Self::Txt => 16,
            Self::Aaaa => 28,
        }
    }

    /// As dig and chaosctl's `--qtype` write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Txt => "TXT",
            Self::Mx => "MX",
        }
    }
}

/// A DNS response code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    Other(u8),
}

impl Rcode {
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Self::NoError,
            1 => Self::FormErr,
            2 => Self::ServFail,
            3 => Self::NxDomain,
            4 => Self::NotImp,
            5 => Self::Refused,
            c => Self::Other(c),
        }
    }

    /// As dig writes it (and chaosctl's `--rcode` takes it); `None` for another name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::NoError, Self::FormErr, Self::ServFail, Self::NxDomain, Self::NotImp, Self::Refused]
            .into_iter()
            .find(|r| r.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::NoError => "NOERROR",
            Self::FormErr => "FORMERR",
            Self::ServFail => "SERVFAIL",
            Self::NxDomain => "NXDOMAIN",
            Self::NotImp => "NOTIMP",
            Self::Refused => "REFUSED",
            Self::Other(_) => "other",
        }
    }
}

/// What one query got: a reply (its response code and the A and AAAA addresses of its answer
/// section), or nothing in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dig {
    Reply { rcode: Rcode, addresses: Vec<IpAddr> },
    Timeout,
}

impl Dig {
    /// An answer of `addresses` (NOERROR).
    pub fn answer(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        Self::Reply { rcode: Rcode::NoError, addresses: addresses.into_iter().collect() }
    }

    /// A reply with `rcode` and no addresses.
    pub fn error(rcode: Rcode) -> Self {
        Self::Reply { rcode, addresses: Vec::new() }
    }

    pub fn rcode(&self) -> Option<Rcode> {
        match self {
            Self::Reply { rcode, .. } => Some(*rcode),
            Self::Timeout => None,
        }
    }
}

/// Why `getent ahostsv4|ahostsv6` found no address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Getent {
    /// Exit code 2: getaddrinfo failed (NXDOMAIN, SERVFAIL, a timeout alike: getent does not
    /// tell them apart).
    NotFound,
    /// Any other exit code, with its stderr.
    Failed(i32, String),
}

/// A `socket.gaierror` of getaddrinfo(3), by its code (glibc's values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gai {
    /// EAI_NONAME (-2): the name does not exist (NXDOMAIN).
    NoName,
    /// EAI_AGAIN (-3): a temporary failure (SERVFAIL, REFUSED, a timeout).
    Again,
    /// EAI_FAIL (-4): a non-recoverable failure.
    Fail,
    /// EAI_NODATA (-5): the name exists without an address of the family asked.
    NoData,
    Other {
        code: i32,
        message: String,
    },
}

impl Gai {
    fn from_code(code: i32, message: String) -> Self {
        match code {
            -2 => Self::NoName,
            -3 => Self::Again,
            -4 => Self::Fail,
            -5 => Self::NoData,
            code => Self::Other { code, message },
        }
    }
}

/// What [`Resolver::batch`] got: replies per response code, timeouts, and replies that could
/// not be read as the answer to their query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub sent: u32,
    pub rcodes: BTreeMap<Rcode, u32>,
    pub timeouts: u32,
    pub malformed: u32,
}

impl Batch {
    /// Replies with `rcode`.
    pub fn count(&self, rcode: Rcode) -> u32 {
        self.rcodes.get(&rcode).copied().unwrap_or(0)
    }
}

/// A query dnsmasq logged (`--log-queries`): it reached the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedQuery {
    /// As dnsmasq writes it: `A`, `AAAA`, `TXT`...
    pub qtype: String,
    /// As the query wrote it (case kept).
    pub name: String,
    pub from: IpAddr,
}

/// A [`Lab`] whose host `b` runs dnsmasq on [`B4`] and [`B6`]: the client is host `a`. Derefs
/// to the lab (`lab.a`, `lab.a_if`).
pub struct DnsLab {
    // Field order is drop order: the server stops before its namespace goes.
    pub server: Dnsmasq,
    pub lab: Lab,
}

impl DnsLab {
    /// The lab, with dnsmasq serving `records` (and NXDOMAIN for every other name).
    pub fn new(records: &[Record]) -> anyhow::Result<Self> {
        let lab = Lab::new()?;
        let listen: [IpAddr; 2] = [B4.parse()?, B6.parse()?];
        let server = Dnsmasq::start(&lab.b, &listen, records)?;
        Ok(Self { server, lab })
    }

    /// A resolver on the client (`a`) asking the server at `server` ([`B4`] or [`B6`]).
    pub fn resolver(&self, server: &str) -> anyhow::Result<Resolver> {
        Resolver::new(&self.lab.a, server.parse()?)
    }
}

impl Deref for DnsLab {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

/// A dnsmasq in a namespace, with its configuration, hosts file, pid file and query log in a
/// temporary directory of its own; stopped (and the directory removed) on drop.
pub struct Dnsmasq {
    child: Option<Child>,
    pub dir: PathBuf,
    ns: Netns,
    listen: Vec<IpAddr>,
    records: Vec<Record>,
    /// Queries of our own (readiness, reload and log markers) are numbered with it.
    marks: std::cell::Cell<u32>,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns`, answering on `listen` (port 53, addresses of `ns`) from
    /// `records` only: no upstream servers, NXDOMAIN for any other name. Returns once it answers.
    pub fn start(ns: &Netns, listen: &[IpAddr], records: &[Record]) -> anyhow::Result<Self> {
        anyhow::ensure!(!listen.is_empty(), "dnsmasq needs an address to listen on");
        let dir = std::env::temp_dir().join(unique("chaos-dns-"));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            child: None,
            ns: Netns::at(ns.path()),
            listen: listen.to_vec(),
            records: records.to_vec(),
            marks: Default::default(),
            dir,
        };
        server.write_hosts()?;
        let mut config = format!(
            "# No /etc/dnsmasq.conf, /etc/resolv.conf or /etc/hosts: the lab's names only.\n\
             no-resolv\nno-hosts\naddn-hosts={}\n\
             # Every name is local: one not in the hosts file is NXDOMAIN, never forwarded.\n\
             local=/#/\n\
             bind-interfaces\n\
             # Root keeps its rights: the log and pid file are in a directory of root's.\n\
             user=root\ngroup=root\n\
             pid-file={}\nlog-queries\nlog-facility={}\n",
            server.hosts().display(),
            server.dir.join("dnsmasq.pid").display(),
            server.log_path().display(),
        );
        for addr in listen {
            config.push_str(&format!("listen-address={addr}\n"));
        }
        let conf = server.dir.join("dnsmasq.conf");
        std::fs::write(&conf, config)?;

        let netns = File::open(ns.path()).map_err(|e| anyhow::anyhow!("{}: {e}", ns.path().display()))?;
        let mut cmd = Command::new("dnsmasq");
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(File::create(server.dir.join("dnsmasq.out"))?)
            .stderr(File::create(server.dir.join("dnsmasq.err"))?);
        // SAFETY: setns is an async-signal-safe system call; the file was opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(())
            });
        }
        server.child = Some(cmd.spawn().map_err(|e| {
            anyhow::anyhow!("starting dnsmasq: {e} (install it: apt-get install dnsmasq-base dnsutils)")
        })?);

        // Ready when every address answers a query (whatever the code: the name is ours).
        let deadline = Instant::now() + Duration::from_secs(10);
        for &addr in listen {
            loop {
                let name = server.mark("ready");
                if let Dig::Reply { .. } = server.ask(addr, &name, QType::A)? {
                    break;
                }
                if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    server.child = None;
                    anyhow::bail!("dnsmasq exited with {status}: {}", server.output());
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "dnsmasq did not answer on {addr} in 10 s: {}",
                    server.output()
                );
            }
        }
        Ok(server)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The hosts file dnsmasq reads its records from (`addn-hosts`: reread on SIGHUP, unlike
    /// the configuration file's `host-record`s).
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Gives `name` these addresses (adding it if new), has dnsmasq reread its hosts file
    /// (SIGHUP), and returns once it serves them.
    pub fn set(&mut self, name: &str, v4: &str, v6: &str) -> anyhow::Result<()> {
        let record = Record::new(name, v4, v6);
        match self.records.iter_mut().find(|r| r.name.eq_ignore_ascii_case(name)) {
            Some(r) => *r = record.clone(),
            None => self.records.push(record.clone()),
        }
        self.write_hosts()?;
        let pid =
            nix::unistd::Pid::from_raw(self.pid().ok_or_else(|| anyhow::anyhow!("dnsmasq is not running"))? as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = self.ask(self.listen[0], name, QType::A)?;
            let aaaa = self.ask(self.listen[0], name, QType::Aaaa)?;
            if a == Dig::answer([record.v4.into()]) && aaaa == Dig::answer([record.v6.into()]) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "dnsmasq still answers {a:?} {aaaa:?} for {name} 10 s after SIGHUP"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_hosts(&self) -> anyhow::Result<()> {
        let text: String = self.records.iter().map(|r| format!("{} {}\n{} {}\n", r.v4, r.name, r.v6, r.name)).collect();
        std::fs::write(self.hosts(), text)?;
        Ok(())
    }

    /// A name of our own, unique in this server's log.
    fn mark(&self, what: &str) -> String {
        self.marks.set(self.marks.get() + 1);
        format!("{what}-{}.chaos-lab.invalid", self.marks.get())
    }

    /// One query to `addr` from inside the server's namespace (not through the client's
    /// interface, so no fault there touches it).
    fn ask(&self, addr: IpAddr, name: &str, qtype: QType) -> anyhow::Result<Dig> {
        let sock = udp_socket(&self.ns, addr)?;
        Ok(exchange(&sock, SocketAddr::new(addr, 53), name, qtype, random_ids(1)[0], Duration::from_millis(200))?
            .unwrap_or(Dig::Timeout))
    }

    /// dnsmasq's log: its start, its reloads and every query it received.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every query dnsmasq logged as received, the lab's own (from the server's addresses)
    /// left out. First waits until dnsmasq has logged everything it received before the call:
    /// until a query of ours sent now appears in the log.
    pub fn queries(&self) -> Vec<LoggedQuery> {
        let marker = self.mark("sync");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.ask(self.listen[0], &marker, QType::A).expect("a query to dnsmasq");
            let log = self.log();
            if log.contains(&format!(" {marker} from ")) {
                return log
                    .lines()
                    .filter_map(parse_logged)
                    .filter(|q| !self.listen.contains(&q.from) && !q.name.ends_with(".chaos-lab.invalid"))
                    .collect();
            }
            assert!(Instant::now() < deadline, "dnsmasq did not log {marker} in 10 s");
        }
    }

    /// How many queries for `name` (case ignored) reached dnsmasq from a client.
    pub fn received(&self, name: &str) -> usize {
        self.queries().iter().filter(|q| q.name.trim_end_matches('.').eq_ignore_ascii_case(name)).count()
    }

    /// Its stdout and stderr and the end of its log, for messages.
    fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "stdout: {}\nstderr: {}\nlog (end):\n{}",
            read("dnsmasq.out"),
            read("dnsmasq.err"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// `... dnsmasq[12968]: query[AAAA] shop.example.test from fd00:200::1`
fn parse_logged(line: &str) -> Option<LoggedQuery> {
    let rest = &line[line.find(": query[")? + ": query[".len()..];
    let (qtype, rest) = rest.split_once("] ")?;
    let (name, from) = rest.split_once(" from ")?;
    Some(LoggedQuery { qtype: qtype.to_owned(), name: name.to_owned(), from: from.trim().parse().ok()? })
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    eprintln!("cleanup: dnsmasq ignored SIGTERM for 5 s, killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if std::thread::panicking() {
            eprintln!("dnsmasq:\n{}", self.output());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Host names from DNS only: not the host's /etc/hosts, nor systemd-resolved or mDNS modules.
const NSSWITCH: &str = "hosts: dns\n";

/// Runs `$3...` with the lab's resolv.conf (`$1`) and nsswitch.conf (`$2`) bind-mounted over the
/// host's, in the mount namespace `unshare --mount` made (private propagation: nothing reaches
/// the host's). nscd's socket directory, if any, is hidden so glibc asks DNS itself; and the
/// UTS namespace's host name has no dot, so glibc derives no search domain from it.
const ISOLATE: &str = r#"set -e
mount --bind "$1" /etc/resolv.conf
mount --bind "$2" /etc/nsswitch.conf
if [ -d /var/run/nscd ]; then mount -t tmpfs tmpfs /var/run/nscd; fi
echo dnslab > /proc/sys/kernel/hostname
shift 2
exec "$@""#;

/// `socket.getaddrinfo(name, None, family, SOCK_STREAM)` (flags 0: no AI_V4MAPPED, no
/// AI_ADDRCONFIG), its addresses or its gaierror as JSON.
const GETADDRINFO: &str = r#"import json, socket, sys
try:
    infos = socket.getaddrinfo(sys.argv[1], None, int(sys.argv[2]), socket.SOCK_STREAM)
    print(json.dumps({"ok": [i[4][0] for i in infos]}))
except socket.gaierror as e:
    print(json.dumps({"error": e.errno, "message": e.strerror}))
"#;

/// Resolvers in a namespace asking one server: glibc's (getent, Python's getaddrinfo) through
/// a resolv.conf of their own, dig, and raw queries sent from this process.
pub struct Resolver {
    ns: Netns,
    pub server: IpAddr,
    dir: PathBuf,
}

impl Resolver {
    /// Resolvers in `ns` whose server is `server` (port 53).
    pub fn new(ns: &Netns, server: IpAddr) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("chaos-resolv-"));
        std::fs::create_dir_all(&dir)?;
        let resolver = Self { ns: Netns::at(ns.path()), server, dir };
        // No search line and a dotless host name: a failed name is not tried again with a
        // domain appended, so each lookup sends one query per type.
        std::fs::write(resolver.resolv_conf(), format!("nameserver {server}\noptions timeout:1 attempts:1\n"))?;
        std::fs::write(resolver.dir.join("nsswitch.conf"), NSSWITCH)?;
        Ok(resolver)
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// `program args...` in the namespace, with this resolver's resolv.conf and nsswitch.conf
    /// (see [`ISOLATE`]). The namespace is entered with `nsenter --net` (not `ip netns exec`,
    /// which would mount its own /etc/netns files and /sys).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns.path().display()))
            .args(["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", ISOLATE, "sh"])
            .arg(self.resolv_conf())
            .arg(self.dir.join("nsswitch.conf"))
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs [`Self::command`] to its end (SIGTERM after 20 s); its exit code, stdout, stderr.
    fn run(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let out = crate::daemon::run_to_end(self.command(program, args));
        let code = out.status.code().unwrap_or_else(|| panic!("{program} {args:?} was killed: {:?}", out.status));
        (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `getent ahostsv4|ahostsv6 name`: its addresses (once each, in its order), or why none.
    /// ahostsv6 asks with AI_V4MAPPED: a name without AAAA gives its A addresses as
    /// `::ffff:a.b.c.d`.
    pub fn getent(&self, name: &str, family: Family) -> Result<Vec<IpAddr>, Getent> {
        let db = match family {
            Family::V4 => "ahostsv4",
            Family::V6 => "ahostsv6",
        };
        match self.run("getent", &[db, name]) {
            (0, out, _) => {
                let mut addrs = Vec::new();
                for line in out.lines() {
                    let word = line.split_whitespace().next().unwrap_or_default();
                    let addr: IpAddr = word.parse().unwrap_or_else(|e| panic!("getent {db} {name}: {line:?}: {e}"));
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                Ok(addrs)
            }
            (2, _, _) => Err(Getent::NotFound),
            (code, _, err) => Err(Getent::Failed(code, err)),
        }
    }

    /// getaddrinfo(3) of `name` for `family` (by Python's `socket.getaddrinfo`, SOCK_STREAM, no
    /// flags): its addresses, or its error.
    pub fn getaddrinfo(&self, name: &str, family: Family) -> Result<Vec<IpAddr>, Gai> {
        let af = match family {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        };
        let (code, out, err) = self.run("python3", &["-c", GETADDRINFO, name, &af.to_string()]);
        assert_eq!(code, 0, "python3 getaddrinfo {name}: {err}");
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("python3 getaddrinfo {name}: {e}: {out} {err}"));
        if let Some(list) = v["ok"].as_array() {
            return Ok(list.iter().map(|a| a.as_str().and_then(|a| a.parse().ok()).expect("an address")).collect());
        }
        let code = v["error"].as_i64().unwrap_or_else(|| panic!("python3 getaddrinfo {name}: {out}"));
        Err(Gai::from_code(code as i32, v["message"].as_str().unwrap_or_default().to_owned()))
    }

    /// `dig +tries=1 +time=1 @server name qtype`: the response code and the A and AAAA
    /// addresses of the answer, or [`Dig::Timeout`] when no reply came in a second.
    pub fn dig(&self, name: &str, qtype: QType) -> Dig {
        let at = format!("@{}", self.server);
        let args = ["+tries=1", "+time=1", "+noall", "+comments", "+answer", &at, name, qtype.name()];
        let (code, out, err) = self.run("dig", &args);
        match code {
            0 => parse_dig(&out).unwrap_or_else(|| panic!("dig {args:?}: no status in: {out}{err}")),
            // "no servers could be reached"
            9 => Dig::Timeout,
            _ => panic!("dig {args:?} exited with {code}: {out}{err}"),
        }
    }

    /// One raw UDP query from this process (in the namespace) with a random id, waiting up to
    /// `timeout` for its reply. A reply that is not an answer to the query fails the test.
    pub fn query(&self, name: &str, qtype: QType, timeout: Duration) -> Dig {
        let sock = udp_socket(&self.ns, self.server).expect("a UDP socket in the namespace");
        exchange(&sock, SocketAddr::new(self.server, 53), name, qtype, random_ids(1)[0], timeout)
            .unwrap_or_else(|e| panic!("query {name} {}: {e}", qtype.name()))
            .unwrap_or(Dig::Timeout)
    }

    /// One raw query over TCP (a new connection from the namespace; the query written at once,
    /// after its two-byte length), waiting up to `timeout` for its reply once connected. The
    /// connection is reset when done (SO_LINGER 0): a query a fault lost leaves no segments
    /// retransmitted behind. A reply that is not an answer to the query fails the test.
    pub fn tcp_query(&self, name: &str, qtype: QType, timeout: Duration) -> Dig {
        tcp_exchange(&self.ns, SocketAddr::new(self.server, 53), name, qtype, timeout)
            .unwrap_or_else(|e| panic!("TCP query {name} {}: {e}", qtype.name()))
    }

    /// `n` raw UDP queries, one after another, for `names` in turn, each with a random id and
    /// up to `timeout` for its reply (a late reply to an earlier query is told apart by its
    /// id and ignored): counts per response code. About 0.1 ms a query when answered.
    pub fn batch(&self, names: &[&str], qtype: QType, n: u32, timeout: Duration) -> Batch {
        assert!(!names.is_empty(), "a batch needs a name");
        let sock = udp_socket(&self.ns, self.server).expect("a UDP socket in the namespace");
        let server = SocketAddr::new(self.server, 53);
        let mut batch = Batch { sent: n, ..Batch::default() };
        for (i, id) in random_ids(n as usize).into_iter().enumerate() {
            match exchange(&sock, server, names[i % names.len()], qtype, id, timeout) {
                Ok(Some(reply)) => *batch.rcodes.entry(reply.rcode().expect("a reply")).or_default() += 1,
                Ok(None) => batch.timeouts += 1,
                Err(_) => batch.malformed += 1,
            }
        }
        batch
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A UDP socket made in `ns`, of `server`'s family.
fn udp_socket(ns: &Netns, server: IpAddr) -> anyhow::Result<UdpSocket> {
    let any: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    Ok(ns.enter(move || UdpSocket::bind(any))??)
}

/// `n` random query ids.
fn random_ids(n: usize) -> Vec<u16> {
    let mut ids = vec![0u16; n];
    let mut filled = 0;
    let bytes = n * 2;
    while filled < bytes {
        // SAFETY: writes at most the rest of the buffer, which is ours.
        let got = unsafe { libc::getrandom(ids.as_mut_ptr().cast::<u8>().add(filled).cast(), bytes - filled, 0) };
        assert!(got > 0, "getrandom: {}", std::io::Error::last_os_error());
        filled += got as usize;
    }
    ids
}

/// Sends one query and waits up to `timeout` for its reply: `None` when none came, an error
/// when the reply with its id is not an answer to it.
fn exchange(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &str,
    qtype: QType,
    id: u16,
    timeout: Duration,
) -> anyhow::Result<Option<Dig>> {
    sock.send_to(&encode_query(id, name, qtype.code()), server)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        let (len, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let reply = &buf[..len];
        // Not from the server, or a late reply to an earlier query: not ours.
        if from != server || len < 2 || u16::from_be_bytes([reply[0], reply[1]]) != id {
            continue;
        }
        return decode_reply(reply, name, qtype.code()).map(Some);
    }
}

/// One query over a TCP connection to `server` made in `ns` (RFC 7766: each message after its
/// length): its reply, or [`Dig::Timeout`] when none came within `timeout` of the query.
fn tcp_exchange(ns: &Netns, server: SocketAddr, name: &str, qtype: QType, timeout: Duration) -> anyhow::Result<Dig> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(server);
    let sock = ns.enter(move || Socket::new(domain, Type::STREAM, Some(Protocol::TCP)))??;
    sock.set_linger(Some(Duration::ZERO))?;
    sock.connect_timeout(&server.into(), Duration::from_secs(5))?;
    let mut stream = TcpStream::from(sock);
    let id = random_ids(1)[0];
    let query = encode_query(id, name, qtype.code());
    // One write, so one segment that starts with the length (as resolvers send it).
    let mut message = u16::try_from(query.len())?.to_be_bytes().to_vec();
    message.extend(query);
    stream.write_all(&message)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(Dig::Timeout),
        Err(e) => return Err(e.into()),
    }
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply)?;
    anyhow::ensure!(reply.len() >= 2 && u16::from_be_bytes([reply[0], reply[1]]) == id, "a reply with another id");
    decode_reply(&reply, name, qtype.code())
}

/// A query for `name` (dotted, a trailing dot optional) of type `qtype`, class IN, with RD set.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(18 + name.len());
    p.extend(id.to_be_bytes());
    // Flags: RD. One question, no other records.
    p.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        assert!(label.len() < 64, "label too long: {label}");
        p.push(label.len() as u8);
        p.extend(label.as_bytes());
    }
    p.push(0);
    p.extend(qtype.to_be_bytes());
    p.extend(1u16.to_be_bytes());
    p
}

/// Reads a reply to the query for `name` of type `qtype`: a response (QR set) whose question
/// is that one (the name's case ignored); its code and the A and AAAA records of its answer.
pub fn decode_reply(buf: &[u8], name: &str, qtype: u16) -> anyhow::Result<Dig> {
    anyhow::ensure!(buf.len() >= 12, "a reply of {} bytes", buf.len());
    anyhow::ensure!(buf[2] & 0x80 != 0, "not a response (QR clear)");
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        buf.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| anyhow::anyhow!("truncated at {at}"))
    };
    let rcode = Rcode::from_code(buf[3] & 0x0f);
    let (qdcount, ancount) = (u16_at(4)?, u16_at(6)?);
    anyhow::ensure!(qdcount == 1, "{qdcount} questions in the reply");
    let (qname, mut at) = read_name(buf, 12)?;
    anyhow::ensure!(
        qname.eq_ignore_ascii_case(name.trim_end_matches('.')),
        "the reply's question is {qname:?}, the query's {name:?}"
    );
    anyhow::ensure!(u16_at(at)? == qtype && u16_at(at + 2)? == 1, "the reply's question type or class differs");
    at += 4;
    let mut addresses = Vec::new();
    for _ in 0..ancount {
        at = read_name(buf, at)?.1;
        let (rtype, rdlen) = (u16_at(at)?, usize::from(u16_at(at + 8)?));
        let data = buf.get(at + 10..at + 10 + rdlen).ok_or_else(|| anyhow::anyhow!("truncated record"))?;
        match (rtype, rdlen) {
            (1, 4) => addresses.push(IpAddr::from(<[u8; 4]>::try_from(data)?)),
            (28, 16) => addresses.push(IpAddr::from(<[u8; 16]>::try_from(data)?)),
            (1 | 28, _) => anyhow::bail!("an address record of {rdlen} bytes"),
            _ => {}
        }
        at += 10 + rdlen;
    }
    Ok(Dig::Reply { rcode, addresses })
}

/// The name at `at` (compression pointers followed), dotted, and where the record goes on.
fn read_name(buf: &[u8], mut at: usize) -> anyhow::Result<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *buf.get(at).ok_or_else(|| anyhow::anyhow!("truncated name"))?;
        match len {
            0 => return Ok((labels.join("."), end.unwrap_or(at + 1))),
            l if l & 0xc0 == 0xc0 => {
                let next = *buf.get(at + 1).ok_or_else(|| anyhow::anyhow!("truncated pointer"))?;
                end.get_or_insert(at + 2);
                at = usize::from(l & 0x3f) << 8 | usize::from(next);
            }
            l => {
                let label =
                    buf.get(at + 1..at + 1 + usize::from(l)).ok_or_else(|| anyhow::anyhow!("truncated label"))?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + usize::from(l);
            }
        }
    }
    anyhow::bail!("a name with a pointer loop")
}

/// dig's `+noall +comments +answer` output: the last header's status and the A and AAAA
/// records of the answer section.
fn parse_dig(out: &str) -> Option<Dig> {
    let mut rcode = None;
    let mut addresses = Vec::new();
    for line in out.lines() {
        if let Some(at) = line.find("status: ") {
            let word = line[at + "status: ".len()..].split(',').next()?.trim();
            rcode = Some(Rcode::from_name(word).unwrap_or(Rcode::Other(u8::MAX)));
            // A second reply (a retry over TCP) replaces the first.
            addresses.clear();
            continue;
        }
        if line.starts_with(';') {
            continue;
        }
        // name ttl class type data
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [_, _, _, "A" | "AAAA", data] = words.as_slice() {
            addresses.push(data.parse().ok()?);
        }
    }
    Some(Dig::Reply { rcode: rcode?, addresses })
}

/// The records of a lab: `name → 10.53.0.i / fd00:53::i` for i = 1, 2, ...
pub fn records(names: &[&str]) -> Vec<Record> {
    names
        .iter()
        .zip(1..)
        .map(|(name, i)| Record::new(name, &format!("10.53.0.{i}"), &format!("fd00:53::{i}")))
        .collect()
}

/// Whether `path` is mounted over in this process's mount namespace (a leak check).
pub fn mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_output_is_read() {
        let out = ";; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 65172\n\
                   ;; flags: qr aa rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1\n\n\
                   ;; OPT PSEUDOSECTION:\n; EDNS: version: 0, flags:; udp: 1232\n;; ANSWER SECTION:\n\
                   shop.example.test.\t0\tIN\tA\t10.9.0.1\nshop.example.test.\t0\tIN\tAAAA\tfd00::1\n\n";
        assert_eq!(parse_dig(out), Some(Dig::answer(["10.9.0.1".parse().unwrap(), "fd00::1".parse().unwrap()])));
        let out = ";; ->>HEADER<<- opcode: QUERY, status: SERVFAIL, id: 1\n";
        assert_eq!(parse_dig(out), Some(Dig::error(Rcode::ServFail)));
        assert_eq!(parse_dig(";; no servers could be reached\n"), None);
    }

    #[test]
    fn a_query_and_its_reply_round_trip() {
        let mut q = encode_query(0x1234, "Shop.Example.test.", 28);
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        // The reply: QR, AA, RD, RA, rcode 0; one answer, its name a pointer to the question's.
        q[2] = 0x85;
        q[3] = 0x80;
        q[7] = 1;
        q.extend([0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 0, 0, 16]);
        q.extend("2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(decode_reply(&q, "shop.example.test", 28).unwrap(), Dig::answer(["2001:db8::7".parse().unwrap()]));
        assert!(decode_reply(&q, "api.example.test", 28).is_err());
        assert!(decode_reply(&q, "shop.example.test", 1).is_err());
    }

    #[test]
    fn dnsmasq_log_lines_are_read() {
        let line = "Dec  2 11:45:55 dnsmasq[12968]: query[AAAA] SHOP.example.test from fd00:201::1";
        let q = parse_logged(line).unwrap();
        assert_eq!((q.qtype.as_str(), q.name.as_str()), ("AAAA", "SHOP.example.test"));
        assert_eq!(q.from, "fd00:201::1".parse::<IpAddr>().unwrap());
        assert_eq!(parse_logged("Dec  2 11:45:55 dnsmasq[1]: /tmp/h shop.example.test is 10.9.0.1"), None);
    }
}
