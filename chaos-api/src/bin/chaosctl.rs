//! chaosctl: applies, lists and removes faults through chaos-daemon's control socket.

use std::path::PathBuf;

use anyhow::Context as _;
use chaos_api::{
    api::{
        Apply, DEFAULT_SOCKET, Event, ExperimentView, Experiments, FaultState, FaultView, Faults, History, Status,
        unix_ms,
    },
    client::{Client, ClientError},
    schedule::ScheduleSpec,
    select::SelectorSpec,
    spec::{DurationSpec, FaultSpec, PortSpec, QTypeSpec, RateSpec},
};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

// Beside this file, not a binary of its own (cargo takes src/bin/NAME/main.rs for one).
#[path = "chaosctl/live.rs"]
mod live;

#[derive(Parser)]
#[command(name = "chaosctl", version, about = "Control chaos-daemon's network faults")]
struct Cli {
    /// chaos-daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", env = "CHAOS_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// How long to wait for each answer (e.g. 30s, 2m): a daemon that does not answer in time
    /// (stopped, stuck) is given up on, and drops the request instead of acting on it later.
    #[arg(long, global = true, env = "CHAOS_TIMEOUT", default_value = "30s", value_parser = timeout)]
    timeout: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply one fault from flags, or every fault of a file (all or none): TOML [[fault]]
    /// tables, or Chaos Mesh NetworkChaos or DNSChaos YAML.
    // Written out: clap's own usage line lists the flags given (`--socket` from the
    // environment too) as if they were required.
    #[command(override_usage = APPLY_USAGE)]
    Apply(Box<ApplyArgs>),
    /// The audit trail: every change, who made it and how it ended (oldest first).
    History {
        /// How many of the newest events.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List active faults with their counters.
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove faults by name, or every fault of an experiment.
    #[command(alias = "remove", override_usage = RM_USAGE)]
    Rm {
        #[arg(required_unless_present = "experiment", value_parser = name)]
        names: Vec<String>,
        /// Remove every fault of this experiment.
        #[arg(short, long, conflicts_with = "names", value_parser = name)]
        experiment: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove every fault (scheduled ones too).
    Clear {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Follow faults as they run: counters, packets per second and time left, refreshed until
    /// Ctrl-C.
    Watch {
        /// Only these faults (default: all).
        #[arg(value_parser = name)]
        names: Vec<String>,
        /// Time between refreshes, e.g. 1s, 500ms.
        #[arg(short = 'n', long, default_value = "1s", value_parser = interval)]
        interval: std::time::Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
        /// table (redrawn in place on a terminal) or json (one object per refresh and line).
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Kernel features found, interfaces attached.
    Status {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print the completion script for a shell (the packages install bash's, zsh's and fish's).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (from these definitions, with examples) into a directory, for
    /// packaging (`cargo xtask man` writes them for a source build).
    #[command(hide = true)]
    Manpage { dir: PathBuf },
}

const APPLY_USAGE: &str = "chaosctl apply [--socket PATH] -i INTERFACE ACTION [OPTIONS]
       chaosctl apply [--socket PATH] --netns PATH|--pid PID|--container ID|--pod NS/NAME ACTION [OPTIONS]
       chaosctl apply [--socket PATH] --cgroup PATH --connect-fail [OPTIONS]
       chaosctl apply [--socket PATH] -e NAME -n NS|-A|-l SELECTOR [--mode MODE] ACTION [OPTIONS]
       chaosctl apply [--socket PATH] -f FILE [OPTIONS]
ACTION: --loss PERCENT, --gemodel \"P R..\", --partition, --delay DURATION, --rate RATE, --duplicate PERCENT,
        --corrupt PERCENT, --reset or --dns REPLY";

const RM_USAGE: &str = "chaosctl rm [--socket PATH] [OPTIONS] NAME...
       chaosctl rm [--socket PATH] [OPTIONS] -e EXPERIMENT";

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(ClapArgs)]
struct ApplyArgs {
    /// A TOML file with [[fault]] tables (the flags' fields), or Chaos Mesh NetworkChaos or
    /// DNSChaos YAML (.yaml, .yml, or a top-level `kind:`).
    #[arg(
        short = 'f',
        long = "file",
        conflicts_with_all = [
            "name", "interface", "netns", "pid", "container", "pod", "cgroup", "loss", "gemodel", "partition", "delay",
            "rate", "duplicate", "corrupt", "reset", "connect_fail", "dns", "namespace", "all_namespaces", "selector",
            "mode", "value", "schedule", "history_limit"
        ]
    )]
    file: Option<PathBuf>,
    /// Act in this node's pods of this namespace (repeatable): the fault is then a template
    /// applied in each pod selected (its --interface inside the pod, default eth0).
    #[arg(short = 'n', long, value_name = "NS", conflicts_with_all = ["netns", "pid", "container", "pod", "cgroup"])]
    namespace: Vec<String>,
    /// As --namespace, in every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "netns", "pid", "container", "pod", "cgroup"])]
    all_namespaces: bool,
    /// Act in this node's pods with these labels (kubectl's syntax: app=web,tier!=db,env in (a,b));
    /// in namespace default unless -n or -A says otherwise.
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with_all = ["netns", "pid", "container", "pod", "cgroup"])]
    selector: Option<String>,
    /// How many of the selected pods: one, all (default), fixed, fixed-percent or
    /// random-max-percent (as Chaos Mesh), with --value.
    #[arg(long, conflicts_with_all = ["netns", "pid", "container", "pod", "cgroup"])]
    mode: Option<String>,
    /// The number (fixed) or percentage (the percent modes) --mode takes.
    #[arg(long, requires = "mode")]
    value: Option<String>,
    /// Run the experiment again at each tick (each run lasts --for): a cron line, e.g. "0 2 * * 1-5",
    /// a descriptor (@hourly, @daily...) or "@every 5m". Needs --experiment.
    #[arg(long, value_name = "CRON")]
    schedule: Option<String>,
    /// With --schedule: how many of its last runs the daemon keeps to show (default 10).
    #[arg(long, value_name = "N", requires = "schedule")]
    history_limit: Option<u32>,
    /// Fault name (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Interface to act on (with --netns or --pid: the one inside that namespace, default eth0).
    #[arg(
        short,
        long,
        required_unless_present_any = [
            "file", "netns", "pid", "container", "pod", "connect_fail", "namespace", "all_namespaces", "selector", "mode"
        ]
    )]
    interface: Option<String>,
    /// Act on an interface of another network namespace (a container's), by path, e.g.
    /// /run/netns/x or /proc/PID/ns/net: directions are as seen from inside it.
    #[arg(long, conflicts_with = "pid")]
    netns: Option<String>,
    /// As --netns, naming a process in that namespace.
    #[arg(long, conflicts_with = "container", allow_negative_numbers = true)]
    pid: Option<i64>,
    /// As --netns, naming a container by its id or a unique prefix (12+ hex digits, as
    /// `crictl ps` or `docker ps` shows).
    #[arg(long, conflicts_with = "netns")]
    container: Option<String>,
    /// As --netns, naming a Kubernetes pod on this node: NAMESPACE/NAME (found in the container
    /// runtime's state, no API server needed).
    #[arg(long, conflicts_with_all = ["netns", "pid", "container"])]
    pod: Option<String>,
    /// Only the packets of this cgroup's processes (and below) on the interface: a cgroup v2
    /// path, under its mount or from its root as /proc/PID/cgroup shows it.
    #[arg(long, conflicts_with_all = ["netns", "pid", "container", "pod"])]
    cgroup: Option<String>,
    /// Drop this percentage of matching packets, e.g. 20 or 20% (with --delay or --rate too).
    #[arg(long, value_name = "PERCENT", conflicts_with = "partition", allow_negative_numbers = true)]
    loss: Option<String>,
    /// Gilbert–Elliott loss, as netem's `loss gemodel`: "P [R [1-H [1-K]]]" in percent.
    #[arg(long, value_name = "\"P [R [1-H [1-K]]]\"", conflicts_with_all = ["loss", "partition"])]
    gemodel: Option<String>,
    /// Send this percentage of matching packets twice.
    #[arg(long, value_name = "PERCENT", allow_negative_numbers = true)]
    duplicate: Option<String>,
    /// Flip one payload bit in this percentage of matching TCP/UDP packets.
    #[arg(long, value_name = "PERCENT", allow_negative_numbers = true)]
    corrupt: Option<String>,
    /// With --corrupt: broken (default; receivers drop the packet) or fixed (the application
    /// gets the damaged bytes).
    #[arg(long, requires = "corrupt")]
    checksum: Option<String>,
    /// Answer matching TCP segments with a RST from their peer: connections are reset, new
    /// ones refused.
    #[arg(long)]
    reset: bool,
    /// With --reset: all (default) or new (only refuse new connections).
    #[arg(long, requires = "reset")]
    connections: Option<String>,
    /// Fail the --cgroup's connect() calls to matching destinations at once, no packet sent.
    #[arg(long, requires = "cgroup")]
    connect_fail: bool,
    /// With --connect-fail: the errno, e.g. ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, or a number;
    /// before Linux 5.18 only EPERM. Default: ECONNREFUSED, or EPERM where the kernel can give
    /// no other (`chaosctl status` says which; `list` shows the one applied).
    #[arg(long, requires = "connect_fail")]
    errno: Option<String>,
    /// Answer or lose matching DNS queries (UDP and TCP to port 53 unless --dport says
    /// otherwise): error (at once, with --rcode), spoof (with the --spoof addresses, TTL 0),
    /// random (random addresses) or drop (the client times out). Over TCP a matching query is
    /// dropped, whatever the reply.
    #[arg(long, value_name = "REPLY")]
    dns: Option<String>,
    /// With --dns: the names whose queries it acts on (repeatable, or comma-separated):
    /// api.example.com, *.example.com (names below it), api.* (names starting with the label
    /// api), * (every name, the default). Quote the * from the shell.
    #[arg(long, value_name = "PATTERN", requires = "dns", value_delimiter = ',')]
    domain: Vec<String>,
    /// With --dns error: the response code, SERVFAIL (default), NXDOMAIN or REFUSED.
    #[arg(long, requires = "dns")]
    rcode: Option<String>,
    /// With --dns spoof: the address answered (repeatable: one IPv4 for A queries, one IPv6 for
    /// AAAA queries; other types get an empty answer).
    #[arg(long, value_name = "ADDR", requires = "dns", value_delimiter = ',')]
    spoof: Vec<String>,
    /// With --dns: only queries of this type (repeatable, or comma-separated): A, AAAA, CNAME,
    /// MX, TXT, NS, SOA, PTR, SRV, HTTPS, SVCB, CAA, ANY or a number; at most 8 (default: all).
    #[arg(long, value_name = "TYPE", requires = "dns", value_delimiter = ',')]
    qtype: Vec<String>,
    /// With --dns: the percentage of matching queries acted on, e.g. 30 or 30% (default 100).
    #[arg(long, value_name = "PERCENT", requires = "dns", allow_negative_numbers = true)]
    percent: Option<String>,
    /// Drop every matching packet.
    #[arg(long, conflicts_with_all = ["delay", "rate"])]
    partition: bool,
    /// Delay matching packets by this much, e.g. 50ms.
    #[arg(long, value_name = "DURATION")]
    delay: Option<String>,
    /// Vary the delay by up to this much, e.g. 10ms.
    #[arg(long, value_name = "DURATION", requires = "delay")]
    jitter: Option<String>,
    /// Percent by which each packet follows the previous one: its loss, copy or corruption
    /// (bursts; the rate stays as given), or with --delay its jitter (netem's correlation).
    #[arg(long, value_name = "PERCENT", allow_negative_numbers = true)]
    correlation: Option<String>,
    /// How jitter is spread: uniform (default) or normal.
    #[arg(long, requires = "jitter")]
    distribution: Option<String>,
    /// With --delay: this percentage of packets skips the delay, overtaking delayed ones.
    #[arg(long, value_name = "PERCENT", requires = "delay", allow_negative_numbers = true)]
    reorder: Option<String>,
    /// With --reorder: percent by which a packet's reorder draw repeats the last one's.
    #[arg(long, value_name = "PERCENT", requires = "reorder", allow_negative_numbers = true)]
    reorder_correlation: Option<String>,
    /// With --reorder: only after this many packets in a row were delayed may one skip (netem's
    /// gap; default 1).
    #[arg(long, value_name = "PACKETS", requires = "reorder", allow_negative_numbers = true)]
    gap: Option<i64>,
    /// Limit matching traffic to this rate, e.g. 10mbit (tc's units).
    #[arg(long)]
    rate: Option<String>,
    /// Bytes that may pass at once above the rate, e.g. 32kb.
    #[arg(long, requires = "rate")]
    burst: Option<String>,
    /// ingress, egress (default) or both (both mirrors the addresses and ports for replies).
    /// With --dns: egress for the queries this host sends, ingress for those it receives (not both).
    #[arg(short, long)]
    direction: Option<String>,
    /// tcp, udp, icmp or any (default; with --dns, any is UDP and TCP).
    #[arg(short, long)]
    protocol: Option<String>,
    /// ipv4, ipv6 or any (default; implied by --src/--dst).
    #[arg(long)]
    family: Option<String>,
    /// Source CIDR or address.
    #[arg(long)]
    src: Option<String>,
    /// Destination CIDR or address.
    #[arg(long)]
    dst: Option<String>,
    /// Source port or range lo-hi.
    #[arg(long)]
    sport: Option<String>,
    /// Destination port or range lo-hi (default: any; 53 with --dns).
    #[arg(long)]
    dport: Option<String>,
    /// How long the fault lasts (30s, 5m, 1h30m, or unlimited if the daemon allows it).
    /// Default: the daemon's max_duration.
    #[arg(long = "for", visible_alias = "duration", value_name = "DURATION")]
    duration: Option<String>,
    /// Start after this long (30s, 5m...) instead of at once.
    #[arg(long, value_name = "DURATION")]
    start_after: Option<String>,
    /// Name the batch as an experiment, removed together with `rm -e NAME` (required with a
    /// selector or --schedule).
    #[arg(short, long)]
    experiment: Option<String>,
    /// Apply even if a fault would touch a protected flow (an SSH session, a configured
    /// destination).
    #[arg(long)]
    force: bool,
    /// Block until the faults end, showing their progress, then print their final counters.
    /// Ctrl-C removes the faults still running (exit code 130).
    #[arg(long)]
    wait: bool,
    /// table or json: the applied faults (with --wait, their ends).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    /// The file's faults form this experiment (the --experiment flag overrides it).
    experiment: Option<String>,
    /// The pods the faults (then templates) act in, as the API's `selector`.
    selector: Option<SelectorSpec>,
    /// The pods at the faults' other end, as the API's `target`.
    target: Option<SelectorSpec>,
    /// When the experiment runs again: a cron line, a descriptor or `@every DURATION`.
    schedule: Option<String>,
    fault: Vec<FaultSpec>,
}

/// What `apply` sends: the faults, the experiment they form, and its pods and schedule.
#[derive(Default)]
struct Plan {
    faults: Vec<FaultSpec>,
    experiment: Option<String>,
    selector: Option<SelectorSpec>,
    target: Option<SelectorSpec>,
    schedule: Option<ScheduleSpec>,
}

impl Plan {
    /// Checked here as the daemon checks them, so that a typo fails before any request; a
    /// selector or schedule needs the experiment's name (what `rm -e` removes it by).
    fn check(self) -> anyhow::Result<Self> {
        for s in [&self.selector, &self.target].into_iter().flatten() {
            s.validate()?;
        }
        if let Some(s) = &self.schedule {
            s.validate()?;
        }
        let follows = self.selector.is_some() || self.target.is_some() || self.schedule.is_some();
        if follows && self.experiment.is_none() {
            anyhow::bail!(
                "--experiment: is required with a selector or schedule: the name the daemon follows it by (and `rm -e` \
                 removes it by)"
            );
        }
        Ok(self)
    }
}

/// Exit codes (documented in the README): what a script needs to tell apart.
mod exit {
    /// Bad input: flags, a fault file, or a fault the daemon refused as invalid (HTTP 400).
    pub const BAD_INPUT: i32 = 2;
    /// chaos-daemon could not be reached (no socket, not running, no permission on it), or did
    /// not answer within --timeout.
    pub const UNREACHABLE: i32 = 3;
    /// The daemon refused for its state or policy: not allowed (403), a name taken or a
    /// protected flow (409), a fault this kernel cannot run (422), or too many connections
    /// (503).
    pub const REFUSED: i32 = 4;
    /// No such fault or experiment (404).
    pub const NOT_FOUND: i32 = 5;
    /// `apply --wait` interrupted with Ctrl-C (its faults were removed).
    pub const INTERRUPTED: i32 = 130;
}

/// An error in what the user gave chaosctl itself (a flag's value, a fault file).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct BadInput(anyhow::Error);

fn exit_code(e: &anyhow::Error) -> i32 {
    use chaos_api::client::ClientError;
    match (e.downcast_ref::<BadInput>(), e.downcast_ref::<ClientError>()) {
        (Some(_), _) => exit::BAD_INPUT,
        (_, Some(ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => exit::UNREACHABLE,
        (_, Some(ClientError::Refused { status: 400, .. })) => exit::BAD_INPUT,
        (_, Some(ClientError::Refused { status: 404, .. })) => exit::NOT_FOUND,
        (_, Some(ClientError::Refused { status: 403 | 409 | 422 | 503, .. })) => exit::REFUSED,
        _ => 1,
    }
}

fn main() {
    // Like other Unix tools, end quietly when the reader of the output goes (`| head`) instead
    // of failing to print.
    // SAFETY: at the start, before any thread; SIG_DFL for SIGPIPE is always valid.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("chaosctl: error: {e:#}");
            std::process::exit(exit_code(&e));
        }
    }
}

/// `--timeout`: more than zero.
fn timeout(text: &str) -> Result<std::time::Duration, String> {
    match chaos_api::spec::parse_duration(text)? {
        std::time::Duration::ZERO => Err(format!("'{text}' is no time at all")),
        d => Ok(d),
    }
}

/// A fault or experiment name as the daemon accepts them, checked before any request is sent
/// (an empty name or `/` would otherwise change the path it is sent in).
fn name(text: &str) -> Result<String, String> {
    chaos_api::spec::validate_name(text).map(|()| text.to_owned()).map_err(|e| e.reason)
}

/// `--interval`: a duration of at least 100 ms.
fn interval(text: &str) -> Result<std::time::Duration, String> {
    match chaos_api::spec::parse_duration(text)? {
        d if d < std::time::Duration::from_millis(100) => Err(format!("'{text}' is shorter than 100ms")),
        d => Ok(d),
    }
}

/// Prints `value` as JSON.
fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs the command; returns the exit code for an outcome that is not an error.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let client = Client::new(&cli.socket).with_timeout(cli.timeout);
    match cli.command {
        Command::Completions { shell } => completions(shell),
        Command::Manpage { dir } => {
            chaos_api::manpage::write(command(), "1", &dir, &man_sections)?;
        }
        Command::Apply(args) => {
            let (force, wait, output) = (args.force, args.wait, args.output);
            // Listened to before the faults exist: a Ctrl-C from then on removes them.
            let interrupt = if wait {
                Some(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?)
            } else {
                None
            };
            let Plan { faults, experiment, selector, target, schedule } =
                specs(*args).and_then(Plan::check).map_err(BadInput)?;
            let scheduled = schedule.is_some().then(|| experiment.clone().unwrap_or_default());
            let applied: Faults =
                client.post("/v1/faults", &Apply { faults, experiment, force, selector, target, schedule }).await?;
            // A schedule's first run is at its first tick: nothing to show or wait for yet.
            if let Some(name) = scheduled {
                let all: Experiments = client.get("/v1/experiments").await?;
                let view = all.experiments.into_iter().find(|e| e.name == name);
                match output {
                    Output::Json => json(&view)?,
                    Output::Table => {
                        let next = view
                            .as_ref()
                            .and_then(|v| v.next_run_ms)
                            .map_or("never".into(), |t| format!("in {}", left(t)));
                        println!("scheduled experiment {name}: first run {next}");
                    }
                }
                return Ok(0);
            }
            if !wait {
                if let Output::Json = output {
                    return json(&applied).map(|()| 0);
                }
                for f in applied.faults {
                    // How long it lasts once started: from its start, not from now.
                    let until = f
                        .expires_at
                        .map_or("until removed".into(), |t| format!("for {}", span(t.saturating_sub(f.starts_at))));
                    let when = if f.state == FaultState::Scheduled {
                        format!("starting in {}, ", left(f.starts_at))
                    } else {
                        "".into()
                    };
                    println!("applied {} ({when}{until})", f.name);
                }
                return Ok(0);
            }
            let names: Vec<String> = applied.faults.iter().map(|f| f.name.clone()).collect();
            let interrupt = interrupt.expect("made for --wait");
            let (ended, code) = match live::wait(&client, &names, interrupt).await? {
                live::Waited::Ended(ended) => (ended, 0),
                live::Waited::Interrupted(ended) => (ended, exit::INTERRUPTED),
            };
            match output {
                Output::Json => json(&serde_json::json!({ "ended": ended }))?,
                Output::Table => {
                    for x in &ended {
                        let c = counts(x.matched, x.dropped, [x.duplicated, x.corrupted, x.reset, x.answered]);
                        println!("{} ended ({}): {c}", shown(&x.name), shown(&x.reason));
                    }
                }
            }
            return Ok(code);
        }
        Command::Watch { names, interval, count, output } => {
            live::watch(&client, &names, interval, count, output).await?
        }
        Command::History { limit, output } => {
            let history: History = client.get(&format!("/v1/history?limit={limit}")).await?;
            match output {
                Output::Json => json(&history)?,
                Output::Table if history.events.is_empty() => println!("no events"),
                Output::Table => print!("{}", history_table(&history.events)),
            }
        }
        Command::List { output } => {
            let list: Faults = client.get("/v1/faults").await?;
            // The experiments the daemon follows (pods, schedules); a daemon from before them has none.
            let experiments = match client.get::<Experiments>("/v1/experiments").await {
                Err(ClientError::Refused { status: 404, .. }) => Experiments::default(),
                other => other?,
            };
            let followed: Vec<&ExperimentView> =
                experiments.experiments.iter().filter(|e| e.applied_by.is_some()).collect();
            match output {
                Output::Json => {
                    json(&serde_json::json!({"faults": list.faults, "experiments": experiments.experiments}))?
                }
                Output::Table => {
                    match list.faults.is_empty() {
                        true => println!("no faults"),
                        false => print_table(&list.faults),
                    }
                    if !followed.is_empty() {
                        println!();
                        print!("{}", experiments_table(&followed));
                    }
                }
            }
        }
        Command::Rm { names, experiment, output } => {
            let removed = match experiment {
                Some(e) => client.delete::<Faults>(&format!("/v1/experiments/{e}")).await?.faults,
                None => {
                    let mut removed = Vec::new();
                    for name in names {
                        removed.push(client.delete::<FaultView>(&format!("/v1/faults/{name}")).await?);
                    }
                    removed
                }
            };
            match output {
                Output::Json => json(&Faults { faults: removed })?,
                Output::Table => {
                    for r in removed {
                        let c = counts(r.matched, r.dropped, [r.duplicated, r.corrupted, r.reset, r.answered]);
                        println!("removed {} ({c})", r.name);
                    }
                }
            }
        }
        Command::Clear { output } => {
            let removed: Faults = client.delete("/v1/faults").await?;
            match output {
                Output::Json => json(&removed)?,
                Output::Table => match removed.faults.len() {
                    0 => println!("no faults to remove"),
                    n => println!("removed {}", plural(n, "fault")),
                },
            }
        }
        Command::Status { output } => {
            let status: Status = client.get("/v1/status").await?;
            match output {
                Output::Json => json(&status)?,
                Output::Table => {
                    println!("chaos-daemon {} on kernel {}", status.version, status.kernel);
                    let features: Vec<String> =
                        status.features.iter().map(|(k, v)| format!("{k}={}", if *v { "yes" } else { "no" })).collect();
                    println!("features: {}", features.join(" "));
                    println!("delay backend: {}", status.delay_backend);
                    if !status.guard_sessions.is_empty() {
                        println!("SSH guard sessions: {}", status.guard_sessions);
                    }
                    for (target, how) in &status.scoping {
                        println!("target {target}: {how}");
                    }
                    let a = &status.abilities;
                    if !a.profile.is_empty() {
                        println!("kernel profile: {}", a.profile);
                        for (what, ability) in [
                            ("TCX links", &a.tcx),
                            ("cgroup ingress", &a.cgroup_ingress),
                            ("connect-fail", &a.connect_fail),
                            ("connect-fail any errno", &a.connect_fail_any_errno),
                            ("edt backend", &a.edt),
                            ("edt reorder", &a.edt_reorder),
                            ("netem backend", &a.netem),
                            ("batch map updates", &a.batch_update),
                        ] {
                            match &ability.why_not {
                                None => println!("can: {what}"),
                                Some(why) => println!("cannot: {what}: {why}"),
                            }
                        }
                        println!("connect-fail default errno: {}", a.connect_fail_default_errno);
                    }
                    println!(
                        "faults: {} (max {}), max duration {}s{}",
                        status.faults,
                        status.max_faults,
                        status.max_duration_ms / 1000,
                        if status.allow_unlimited { ", unlimited allowed" } else { "" }
                    );
                    for a in &status.attachments {
                        println!("attached: {} {} ({})", a.interface, a.hook, a.mode);
                    }
                }
            }
        }
    }
    Ok(0)
}

/// The faults to apply, the experiment they form, and its pods and schedule.
fn specs(args: ApplyArgs) -> anyhow::Result<Plan> {
    if let Some(path) = args.file {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if chaos_api::chaos_mesh::is_network_chaos(&path, &text) {
            let x = chaos_api::chaos_mesh::parse(&text).with_context(|| format!("{}", path.display()))?;
            for note in x.notes {
                eprintln!("chaosctl: note: {}: {note}", path.display());
            }
            return Ok(Plan {
                faults: x.faults,
                experiment: args.experiment.or(Some(x.name)),
                selector: x.selector,
                target: x.target,
                schedule: x.schedule,
            });
        }
        let file: FaultFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        return Ok(Plan {
            faults: file.fault,
            experiment: args.experiment.or(file.experiment),
            selector: file.selector,
            target: file.target,
            schedule: file.schedule.map(|cron| ScheduleSpec { cron, history_limit: None }),
        });
    }
    let selector = selector(&args)?;
    let schedule = args.schedule.clone().map(|cron| ScheduleSpec { cron, history_limit: args.history_limit });
    let percent = |flag: &str, v: Option<String>| {
        v.map(|l| {
            l.trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .map_err(|_| anyhow::anyhow!("--{flag}: '{l}' is not a percentage"))
        })
        .transpose()
    };
    // Asked for here rather than by clap, which would name one flag (`--loss`) as required.
    let actions = [
        args.loss.is_some(),
        args.gemodel.is_some(),
        args.partition,
        args.delay.is_some(),
        args.rate.is_some(),
        args.duplicate.is_some(),
        args.corrupt.is_some(),
        args.reset,
        args.connect_fail,
        args.dns.is_some(),
    ];
    if !actions.contains(&true) {
        anyhow::bail!(
            "give an action: --loss, --gemodel, --partition, --delay, --rate, --duplicate, --corrupt, --reset, \
             --connect-fail or --dns (or --file with faults)"
        );
    }
    let action = if args.partition {
        "partition"
    } else if args.delay.is_some() {
        "delay"
    } else if args.rate.is_some() {
        "bandwidth"
    } else if args.duplicate.is_some() {
        "duplicate"
    } else if args.corrupt.is_some() {
        "corrupt"
    } else if args.reset {
        "reset"
    } else if args.connect_fail {
        "connect-fail"
    } else if args.dns.is_some() {
        "dns"
    } else {
        "loss"
    };
    let spec = FaultSpec {
        name: args.name,
        interface: args.interface,
        netns: args.netns,
        pid: args.pid,
        container: args.container,
        pod: args.pod,
        cgroup: args.cgroup,
        action: Some(action.into()),
        loss: percent("loss", args.loss)?,
        gemodel: args.gemodel,
        duplicate: percent("duplicate", args.duplicate)?,
        corrupt: percent("corrupt", args.corrupt)?,
        checksum: args.checksum,
        connections: args.connections,
        errno: args.errno,
        dns: args.dns,
        rcode: args.rcode,
        spoof: (!args.spoof.is_empty()).then_some(args.spoof),
        qtypes: (!args.qtype.is_empty()).then(|| args.qtype.into_iter().map(QTypeSpec::Text).collect()),
        percent: percent("percent", args.percent)?,
        domains: (!args.domain.is_empty()).then_some(args.domain),
        reorder: percent("reorder", args.reorder)?,
        reorder_correlation: percent("reorder-correlation", args.reorder_correlation)?,
        gap: args.gap,
        delay: args.delay.map(DurationSpec::Text),
        jitter: args.jitter.map(DurationSpec::Text),
        correlation: percent("correlation", args.correlation)?,
        distribution: args.distribution,
        rate: args.rate.map(RateSpec::Text),
        burst: args.burst.map(RateSpec::Text),
        direction: args.direction,
        family: args.family,
        protocol: args.protocol,
        src: args.src,
        dst: args.dst,
        sport: args.sport.map(PortSpec::Text),
        dport: args.dport.map(PortSpec::Text),
        duration: args.duration.map(DurationSpec::Text),
        start_after: args.start_after.map(DurationSpec::Text),
    };
    Ok(Plan { faults: vec![spec], experiment: args.experiment, selector, target: None, schedule })
}

/// The selector the flags describe, if any: like kubectl, `-l` alone selects in `default`.
fn selector(args: &ApplyArgs) -> anyhow::Result<Option<SelectorSpec>> {
    if args.namespace.is_empty() && !args.all_namespaces && args.selector.is_none() && args.mode.is_none() {
        return Ok(None);
    }
    let namespaces = match (args.all_namespaces, args.namespace.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => vec!["default".to_owned()],
        (false, false) => args.namespace.clone(),
    };
    let spec = SelectorSpec {
        namespaces,
        labels: args.selector.clone(),
        mode: args.mode.clone(),
        value: args.value.clone(),
        ..SelectorSpec::default()
    };
    // The flag, not the API's field, in the message.
    spec.validate().map_err(|e| {
        let field = e.field.strip_prefix("selector.").unwrap_or(&e.field);
        let flag = match field.split(['[', '.']).next().unwrap_or_default() {
            "namespaces" => "--namespace",
            "labels" => "--selector",
            "mode" => "--mode",
            _ => "--value",
        };
        anyhow::anyhow!("{flag}: {}", e.reason)
    })?;
    Ok(Some(spec))
}

/// The action as a short phrase: `loss 20%`, `delay 50ms±10ms rate 10mbit`.
fn describe(s: &FaultSpec) -> String {
    let text = |d: &DurationSpec| match d {
        DurationSpec::Seconds(n) => n.to_string(),
        DurationSpec::Text(t) => t.clone(),
    };
    let mut parts = Vec::new();
    if let Some(d) = &s.delay {
        let jitter = s.jitter.as_ref().map(|j| format!("±{}", text(j))).unwrap_or_default();
        parts.push(format!("delay {}{jitter}", text(d)));
        if let Some(r) = s.reorder {
            parts.push(format!("reorder {}% gap {}", percent(r), s.gap.unwrap_or(1)));
        }
    }
    if let Some(r) = &s.rate {
        parts.push(match r {
            RateSpec::Number(n) => format!("rate {n}bit"),
            RateSpec::Text(t) => format!("rate {t}"),
        });
    }
    if let Some(l) = s.loss {
        parts.push(format!("loss {}%", percent(l)));
    }
    if let Some(g) = &s.gemodel {
        parts.push(format!("loss gemodel {g}"));
    }
    if let Some(d) = s.duplicate {
        parts.push(format!("duplicate {}%", percent(d)));
    }
    if let Some(c) = s.corrupt {
        parts.push(format!("corrupt {}% checksum {}", percent(c), s.checksum.as_deref().unwrap_or("broken")));
    }
    if s.action.as_deref() == Some("connect-fail") {
        // The daemon records the errno it applied; only a spec not yet applied has none.
        parts.push(format!("connect-fail {}", s.errno.as_deref().unwrap_or("(the kernel's default errno)")));
    }
    if s.action.as_deref() == Some("reset") {
        parts.push(format!("reset {} connections", s.connections.as_deref().unwrap_or("all")));
    }
    if s.action.as_deref() == Some("dns") {
        parts.push(describe_dns(s));
    }
    if let (Some(c), None) = (s.correlation, &s.jitter) {
        parts.push(format!("correlation {}%", percent(c)));
    }
    if parts.is_empty() {
        parts.push(s.action.clone().unwrap_or_else(|| "?".into()));
    }
    parts.join(" ")
}

/// A dns fault: `dns error NXDOMAIN for *.example.com 30% qtypes A,AAAA`.
fn describe_dns(s: &FaultSpec) -> String {
    let reply = s.dns.as_deref().unwrap_or("error");
    let mut text = format!("dns {reply}");
    match reply {
        "error" => text += &format!(" {}", s.rcode.as_deref().unwrap_or("SERVFAIL").to_ascii_uppercase()),
        "spoof" => text += &format!(" {}", s.spoof.as_deref().unwrap_or_default().join(",")),
        _ => {}
    }
    let domains = s.domains.as_deref().filter(|d| !d.is_empty()).map_or("*".into(), abridged);
    text += &format!(" for {domains}");
    if let Some(p) = s.percent {
        text += &format!(" {}%", percent(p));
    }
    if let Some(q) = s.qtypes.as_deref().filter(|q| !q.is_empty()) {
        let names: Vec<String> = q
            .iter()
            .map(|t| match t {
                QTypeSpec::Number(n) => u16::try_from(*n).map_or_else(|_| n.to_string(), chaos_api::spec::qtype_name),
                QTypeSpec::Text(t) => {
                    chaos_api::spec::parse_qtype(t).map_or_else(|_| t.clone(), chaos_api::spec::qtype_name)
                }
            })
            .collect();
        text += &format!(" qtypes {}", names.join(","));
    }
    text
}

/// A percentage as people write it: `20`, `0.5`, `1e-12` (not 300 digits), `0` (not `-0`).
fn percent(p: f64) -> String {
    let p = if p == 0.0 { 0.0 } else { p };
    match p.to_string() {
        short if short.len() <= 10 => short,
        _ if p.abs() >= 1e-4 => format!("{p:.6}").trim_end_matches('0').trim_end_matches('.').to_owned(),
        _ => format!("{p:e}"),
    }
}

/// `matched 10, dropped 2`, with the copies, corruptions, resets and DNS answers when there are
/// any.
fn counts(matched: u64, dropped: u64, others: [u64; 4]) -> String {
    let mut text = format!("matched {matched}, dropped {dropped}");
    for (n, what) in others.into_iter().zip(["duplicated", "corrupted", "reset", "answered"]) {
        if n > 0 {
            text += &format!(", {what} {n}");
        }
    }
    text
}

/// When a fault starts or ends, from now: `in 5s`, `4m10s left`, `unlimited`.
fn state(f: &FaultView) -> String {
    match (f.state, f.expires_at) {
        (FaultState::Scheduled, _) => format!("in {}", left(f.starts_at)),
        (_, Some(t)) => format!("{} left", left(t)),
        (_, None) => "unlimited".into(),
    }
}

/// Time from now until `unix_ms`, as `1h2m3s` (whole seconds, rounded up).
fn left(at_ms: u64) -> String {
    clock(at_ms.saturating_sub(unix_ms()).div_ceil(1000))
}

/// A length of time: `6s`, `1m`, `1h30m`; under a second in milliseconds (`500ms`), under a
/// minute to the millisecond (`1.5s`), above in whole seconds rounded up.
fn span(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 if !ms.is_multiple_of(1000) => format!("{}s", ms as f64 / 1000.0),
        _ => clock(ms.div_ceil(1000)),
    }
}

/// Seconds as `1h2m3s`, leaving out parts that are zero (`1m`, `2h5s`; `0s` for none).
fn clock(s: u64) -> String {
    let mut text = String::new();
    for (n, unit) in [(s / 3600, "h"), (s / 60 % 60, "m"), (s % 60, "s")] {
        if n > 0 {
            text += &format!("{n}{unit}");
        }
    }
    if text.is_empty() { "0s".into() } else { text }
}

/// `1 fault`, `2 faults`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn print_table(faults: &[FaultView]) {
    let rows: Vec<[String; 12]> = faults
        .iter()
        .map(|f| {
            let s = &f.spec;
            let or_any = |v: &Option<String>| v.clone().unwrap_or_else(|| "any".into());
            let port = |p: &Option<PortSpec>| match p {
                None => "any".into(),
                Some(PortSpec::Number(n)) => n.to_string(),
                Some(PortSpec::Text(t)) => t.clone(),
            };
            let action = describe(s);
            let state = state(f);
            [
                f.name.clone(),
                f.experiment.clone().unwrap_or_else(|| "-".into()),
                state,
                // An interface of another namespace: `eth0@/run/netns/x`, `eth0@pid 42`; a
                // cgroup's packets on an interface: `eth0@cgroup /app` (connect-fail: the cgroup).
                match (&s.netns, s.pid, &s.container) {
                    _ if s.cgroup.is_some() => {
                        let cgroup = s.cgroup.as_deref().unwrap_or_default();
                        match &s.interface {
                            Some(i) => format!("{i}@cgroup {cgroup}"),
                            None => format!("cgroup {cgroup}"),
                        }
                    }
                    _ if s.pod.is_some() => {
                        format!("{}@{}", s.interface.as_deref().unwrap_or("eth0"), s.pod.as_deref().unwrap_or_default())
                    }
                    (Some(ns), _, _) => format!("{}@{ns}", s.interface.as_deref().unwrap_or("eth0")),
                    (_, Some(pid), _) => format!("{}@pid {pid}", s.interface.as_deref().unwrap_or("eth0")),
                    (_, _, Some(c)) => {
                        format!("{}@{}", s.interface.as_deref().unwrap_or("eth0"), &c[..c.len().min(12)])
                    }
                    _ => or_any(&s.interface),
                },
                action,
                match s.action.as_deref() {
                    Some("connect-fail") => "connect".into(),
                    _ => s.direction.clone().unwrap_or_else(|| "egress".into()),
                },
                or_any(&s.protocol),
                format!("{} -> {}", or_any(&s.src), or_any(&s.dst)),
                port(&s.sport),
                match (s.action.as_deref(), &s.dport) {
                    // What it matches without one: DNS's port.
                    (Some("dns"), None) => "53".into(),
                    (_, dport) => port(dport),
                },
                f.matched.to_string(),
                match s.action.as_deref() {
                    Some("duplicate") => format!("{} copied", f.duplicated),
                    Some("corrupt") => format!("{} corrupted", f.corrupted),
                    Some("reset") => format!("{} reset", f.reset),
                    // Lost queries (drop, and TCP queries, which cannot be answered) are drops.
                    Some("dns") if s.dns.as_deref() == Some("drop") => format!("{} dropped", f.dropped),
                    Some("dns") if f.dropped > 0 => format!("{} answered, {} dropped", f.answered, f.dropped),
                    Some("dns") => format!("{} answered", f.answered),
                    Some("connect-fail") => format!("{} failed", f.dropped),
                    _ => format!("{} dropped", f.dropped),
                },
            ]
        })
        .collect();
    let header = [
        "NAME",
        "EXPERIMENT",
        "STATE",
        "INTERFACE",
        "ACTION",
        "DIRECTION",
        "PROTO",
        "SRC -> DST",
        "SPORT",
        "DPORT",
        "MATCHED",
        "EFFECT",
    ];
    print!("{}", table(&header, &rows));
}

/// The first three of `items` and how many more, `-` for none: a batch of hundreds would push
/// the rest of a table off the screen (the JSON has them all).
fn abridged(items: &[String]) -> String {
    match items.len() {
        0 => "-".into(),
        1..=3 => items.join(","),
        n => format!("{} +{} more", items[..3].join(","), n - 3),
    }
}

/// The experiments the daemon follows: what they select, the pods they cover, their schedule.
fn experiments_table(experiments: &[&ExperimentView]) -> String {
    let rows: Vec<[String; 6]> = experiments
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.faults.to_string(),
                abridged(&e.pods),
                e.selects.clone().unwrap_or_else(|| "-".into()),
                e.schedule.as_ref().map_or("-".into(), |s| s.cron.clone()),
                match e.next_run_ms {
                    Some(at) => format!("in {} ({} runs, {} skipped)", left(at), e.runs, e.skipped),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    table(&["EXPERIMENT", "FAULTS", "PODS", "SELECTS", "SCHEDULE", "NEXT RUN"], &rows)
}

/// The audit trail as a table in local time, each event's ended faults below it. Events quote
/// what peers sent (names, paths): [`table`] escapes every cell.
fn history_table(events: &[Event]) -> String {
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            [
                local_time(e.at),
                e.actor.to_string(),
                e.action.to_string(),
                e.experiment.clone().unwrap_or_else(|| "-".into()),
                abridged(&e.faults),
                e.result.clone(),
            ]
        })
        .collect();
    let lines = table(&["TIME", "BY", "ACTION", "EXPERIMENT", "FAULTS", "RESULT"], &rows);
    let mut lines = lines.lines();
    let mut out = format!("{}\n", lines.next().unwrap_or_default());
    for (e, line) in events.iter().zip(lines) {
        out += line;
        out += "\n";
        for x in &e.ended {
            let c = counts(x.matched, x.dropped, [x.duplicated, x.corrupted, x.reset, x.answered]);
            out += &format!("    {} ended ({}): {c}\n", shown(&x.name), shown(&x.reason));
        }
    }
    out
}

/// Text from the daemon as printed: control characters escaped, so that it stays on its line
/// and sends nothing to the terminal.
fn shown(text: &str) -> String {
    chaos_api::text::escape(text, 4096)
}

/// Unix milliseconds as local time, `2026-12-01 15:04:05.123`.
fn local_time(at_ms: u64) -> String {
    // `as _`: time_t is deprecated as a name on musl (its width changes there), not as a type.
    let secs = (at_ms / 1000) as _;
    // SAFETY: an all-zero `tm` is valid (plain integers, a null zone name), and localtime_r
    // only writes the `tm` it is given.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&secs, &mut tm).is_null()).then_some(tm)
    };
    let Some(tm) = tm else {
        return format!("{}.{:03}", at_ms / 1000, at_ms % 1000);
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        at_ms % 1000
    )
}

/// Rows under a header, in columns as wide as their widest cell (escaped, see [`shown`]).
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows.iter().map(|r| r.each_ref().map(|c| shown(c))).collect();
    let rows = &rows;
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out += "\n";
    }
    out
}

/// `chaosctl completions SHELL`: the completion script, on stdout.
fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut command(), "chaosctl", &mut std::io::stdout());
}

/// What the man pages hold beyond `--help`: examples for each page (every example of every
/// command on `chaosctl`'s own), and on every page the exit status and the environment.
fn man_sections(page: &str) -> Vec<chaos_api::manpage::Section> {
    use chaos_api::manpage::Section;
    let examples: &[(&str, &[(&str, &str)])] = &[
        (
            "chaosctl-apply",
            &[
                (
                    "chaosctl apply -i eth0 --loss 20% --for 30s",
                    "Drop a fifth of eth0's outgoing packets for 30 seconds.",
                ),
                (
                    "chaosctl apply -i eth0 --delay 100ms --jitter 10ms -p tcp --dport 5432",
                    "Delay outgoing PostgreSQL traffic by 90-110 ms.",
                ),
                (
                    "chaosctl apply -i eth0 --partition -d both --dst 10.0.0.0/8 --start-after 1m --for 5m",
                    "Cut eth0 off from 10.0.0.0/8 both ways, in a minute, for five minutes.",
                ),
                (
                    "chaosctl apply --pod shop/web-0 --reset --dport 6379",
                    "Reset the Redis connections of a pod on this node, as seen from inside it.",
                ),
                (
                    "chaosctl apply --cgroup /system.slice/app.service --connect-fail --dport 3306",
                    "Make one service's connect() calls to port 3306 fail at once (ECONNREFUSED; EPERM before Linux 5.18).",
                ),
                (
                    "chaosctl apply -i eth0 --dns error --rcode NXDOMAIN --domain '*.example.com' --percent 30",
                    "Answer 30% of this host's DNS queries for names below example.com with NXDOMAIN at once.",
                ),
                (
                    "chaosctl apply -f outage.toml -e db-outage",
                    "Apply every fault of a file, all or none, as one experiment.",
                ),
                (
                    "chaosctl apply -i eth0 --loss 5 --for 1m --wait",
                    "Block until the fault ends, showing its progress, then print its final counters.",
                ),
            ],
        ),
        (
            "chaosctl-list",
            &[
                ("chaosctl list", "The faults, their state, time left and counters."),
                ("chaosctl list -o json", "The same as JSON."),
            ],
        ),
        (
            "chaosctl-watch",
            &[("chaosctl watch -n 500ms cut-db", "Follow one fault's counters twice a second until Ctrl-C.")],
        ),
        (
            "chaosctl-rm",
            &[
                ("chaosctl rm cut-db slow-dns", "Remove two faults, printing their final counters."),
                ("chaosctl rm -e db-outage", "Remove every fault of an experiment."),
            ],
        ),
        ("chaosctl-clear", &[("chaosctl clear", "Remove every fault, scheduled ones too.")]),
        (
            "chaosctl-history",
            &[
                (
                    "chaosctl history -n 20",
                    "The last 20 changes: when (local time), who, the experiment, the result, how faults ended.",
                ),
                ("chaosctl history -o json", "The same with times in Unix milliseconds (UTC)."),
            ],
        ),
        ("chaosctl-status", &[("chaosctl status", "Kernel features, delay backend, targets, attachments and limits.")]),
        (
            "chaosctl-completions",
            &[("chaosctl completions bash > /etc/bash_completion.d/chaosctl", "Install bash completion.")],
        ),
    ];
    let entries: Vec<(&str, &str)> = examples
        .iter()
        .filter(|(name, _)| page == "chaosctl" || *name == page)
        .flat_map(|(_, e)| e.iter().copied())
        .collect();
    let code = |c: i32| c.to_string();
    let status = [
        (code(0), "Done."),
        (code(1), "Failed otherwise: the kernel refused a change, the daemon went away mid-request."),
        (
            code(exit::BAD_INPUT),
            "Bad input: a flag, a fault file, or a fault the daemon refused as invalid (HTTP 400).",
        ),
        (
            code(exit::UNREACHABLE),
            "chaos-daemon could not be reached (no socket, not running, no permission on it), or did not answer \
             within --timeout (the request is then withdrawn).",
        ),
        (
            code(exit::REFUSED),
            "Refused by the daemon: not allowed (403), a name taken or a protected flow (409), a fault this kernel \
             cannot run (422), or too many connections (503).",
        ),
        (code(exit::NOT_FOUND), "No such fault or experiment (404)."),
        (code(exit::INTERRUPTED), "apply --wait interrupted by Ctrl-C: the faults it applied were removed."),
    ];
    let mut sections = Vec::new();
    if !entries.is_empty() {
        sections.push(Section::new("EXAMPLES", &entries));
    }
    let status: Vec<(&str, &str)> = status.iter().map(|(c, what)| (c.as_str(), *what)).collect();
    sections.push(Section::new("EXIT STATUS", &status));
    sections.push(Section::new(
        "ENVIRONMENT",
        &[
            ("CHAOS_SOCKET", "chaos-daemon's control socket, as --socket (default /run/chaos-daemon.sock)."),
            ("CHAOS_TIMEOUT", "How long to wait for each answer, as --timeout (default 30s)."),
        ],
    ));
    sections.push(Section::new(
        "SEE ALSO",
        &[("chaos-daemon(8)", "The daemon; its configuration and the control API are described in its docs.")],
    ));
    sections
}

fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_as_written() {
        assert_eq!(percent(20.0), "20");
        assert_eq!(percent(0.5), "0.5");
        assert_eq!(percent(-0.0), "0");
        assert_eq!(percent(1e-300), "1e-300");
        assert_eq!(percent(100.0 / 3.0), "33.333333");
        assert_eq!(percent(0.000012345), "1.2345e-5");
    }

    #[test]
    fn lengths_read_as_written() {
        assert_eq!(span(6_000), "6s");
        assert_eq!(span(60_000), "1m");
        assert_eq!(span(90_000), "1m30s");
        assert_eq!(span(3_600_000), "1h");
        assert_eq!(span(3_605_000), "1h5s");
        assert_eq!(span(500), "500ms");
        assert_eq!(span(1_500), "1.5s");
        assert_eq!(span(60_500), "1m1s");
        assert_eq!(clock(0), "0s");
        assert_eq!(plural(1, "fault"), "1 fault");
        assert_eq!(plural(0, "fault"), "0 faults");
    }

    #[test]
    fn man_pages_hold_the_help_examples_exit_status_and_environment() {
        let dir = std::env::temp_dir().join(format!("chaosctl-man-{}", std::process::id()));
        let pages = chaos_api::manpage::write(command(), "1", &dir, &man_sections).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let (top, apply) = (read("chaosctl.1"), read("chaosctl-apply.1"));
        std::fs::remove_dir_all(&dir).unwrap();
        let visible = command().get_subcommands().filter(|s| !s.is_hide_set()).count();
        assert_eq!(pages.len(), 1 + visible);
        for page in [&top, &apply] {
            for section in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH OPTIONS"] {
                assert!(page.contains(section), "{section} missing:\n{page}");
            }
            assert!(page.contains("CHAOS_SOCKET") && page.contains("CHAOS_TIMEOUT") && page.contains("\\fB130\\fR"));
        }
        // What --help says of apply's flags, and its examples.
        for text in
            ["\\-\\-start\\-after", "Start after this long", "chaosctl apply \\-i eth0 \\-\\-loss 20% \\-\\-for 30s"]
        {
            assert!(apply.contains(text), "{text} missing:\n{apply}");
        }
        assert!(top.contains("chaosctl rm \\-e db\\-outage"), "every example on chaosctl(1)");
    }

    #[test]
    fn names_are_checked_before_any_request() {
        for bad in ["", "/", "?", "#", "a/b", "..", "x\n"] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(name("loss-1").unwrap(), "loss-1");
    }

    /// What `chaosctl apply ARGS...` would send, or why not.
    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(["chaosctl", "apply"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Apply(args) = cli.command else { panic!("not apply") };
        specs(*args).and_then(Plan::check).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn selector_flags_make_a_template() {
        let p = plan(&["-e", "x", "-l", "app=web", "--loss", "5"]).unwrap();
        let s = p.selector.unwrap();
        // As kubectl: -l alone selects in namespace default.
        assert_eq!((s.namespaces, s.labels.as_deref()), (vec!["default".to_owned()], Some("app=web")));
        assert_eq!((p.faults[0].pod.as_ref(), p.faults[0].interface.as_ref()), (None, None));
        let s = plan(&["-e", "x", "-n", "a", "-n", "b", "--mode", "fixed", "--value", "2", "--loss", "5"])
            .unwrap()
            .selector
            .unwrap();
        assert_eq!(
            (s.namespaces, s.mode.as_deref(), s.value.as_deref()),
            (vec!["a".into(), "b".into()], Some("fixed"), Some("2"))
        );
        assert_eq!(plan(&["-e", "x", "-A", "--loss", "5"]).unwrap().selector.unwrap().namespaces, Vec::<String>::new());
        let p = plan(&[
            "-e",
            "x",
            "-i",
            "eth0",
            "--loss",
            "5",
            "--for",
            "1m",
            "--schedule",
            "@every 10m",
            "--history-limit",
            "3",
        ])
        .unwrap();
        assert_eq!(p.schedule, Some(ScheduleSpec { cron: "@every 10m".into(), history_limit: Some(3) }));
        assert_eq!(p.selector, None);
    }

    #[test]
    fn selector_flags_are_checked() {
        for (args, expected) in [
            (&["-l", "app=web", "--loss", "5"][..], "--experiment: is required with a selector or schedule"),
            (&["-i", "eth0", "--schedule", "@daily", "--loss", "5"], "--experiment: is required"),
            (&["-e", "x", "-l", "app=", "-l", "x", "--loss", "5"], "error: the argument '--selector"),
            (&["-e", "x", "-l", "app=web,", "--loss", "5"], "--selector: ends with ','"),
            (&["-e", "x", "-n", "Shop", "--loss", "5"], "--namespace: 'Shop' is not a namespace"),
            (&["-e", "x", "-A", "--mode", "fixed", "--loss", "5"], "--value: is required with mode fixed"),
            (&["-e", "x", "-A", "--mode", "any", "--loss", "5"], "--mode: 'any' is not a mode"),
            (&["-e", "x", "-i", "eth0", "--schedule", "* * *", "--loss", "5"], "schedule.cron: '* * *' has 3 fields"),
            (&["-e", "x", "-A", "-n", "a", "--loss", "5"], "error: the argument '--all-namespaces'"),
            (&["-e", "x", "-n", "a", "--pod", "a/b", "--loss", "5"], "error: the argument '--namespace"),
            (&["-e", "x", "-f", "x.yaml", "-l", "a=b"], "error: the argument '--file"),
        ] {
            let e = plan(args).map(|_| "accepted".to_owned()).unwrap_or_else(|e| e);
            assert!(e.starts_with(expected), "{args:?}: {e}");
        }
    }

    #[test]
    fn dns_flags() {
        let p = plan(&[
            "-i",
            "eth0",
            "--dns",
            "error",
            "--rcode",
            "NXDOMAIN",
            "--domain",
            "*.example.com",
            "--domain",
            "api.*,www.example.org",
            "--qtype",
            "A,aaaa",
            "--qtype",
            "65",
            "--percent",
            "30%",
        ])
        .unwrap();
        let [f] = p.faults.as_slice() else { panic!("{:?}", p.faults) };
        assert_eq!(
            (f.action.as_deref(), f.dns.as_deref(), f.rcode.as_deref()),
            (Some("dns"), Some("error"), Some("NXDOMAIN"))
        );
        assert_eq!(f.domains, Some(vec!["*.example.com".into(), "api.*".into(), "www.example.org".into()]));
        assert_eq!(f.percent, Some(30.0));
        let fault = f.validate().unwrap();
        let chaos_api::spec::Action::Dns(d) = fault.action else { panic!("{:?}", fault.action) };
        assert_eq!((d.p, d.qtypes.iter().collect::<Vec<_>>()), (0.3, vec![1, 28, 65]));
        assert_eq!(fault.matches.dport.lo, 53);
        assert_eq!(describe(f), "dns error NXDOMAIN for *.example.com,api.*,www.example.org 30% qtypes A,AAAA,HTTPS");

        let p = plan(&["-i", "eth0", "--dns", "spoof", "--spoof", "10.0.0.1", "--spoof", "fd00::1", "--percent", "5"])
            .unwrap();
        let f = &p.faults[0];
        assert_eq!(
            (f.spoof.clone(), f.percent, f.domains.clone()),
            (Some(vec!["10.0.0.1".into(), "fd00::1".into()]), Some(5.0), None)
        );
        assert_eq!(describe(f), "dns spoof 10.0.0.1,fd00::1 for * 5%");
        let f = &plan(&["-i", "eth0", "--dns", "drop", "-p", "udp"]).unwrap().faults[0];
        assert_eq!((f.qtypes.as_ref(), f.spoof.as_ref(), f.percent), (None, None, None));
        assert_eq!(describe(f), "dns drop for *");
        // Its counters.
        assert_eq!(counts(10, 2, [0, 0, 0, 8]), "matched 10, dropped 2, answered 8");
        assert_eq!(counts(10, 0, [0, 0, 0, 0]), "matched 10, dropped 0");

        for (args, expected) in [
            (&["-i", "eth0", "--domain", "a.com", "--loss", "5"][..], "error: the following required arguments"),
            (&["-i", "eth0", "--percent", "5", "--loss", "5"], "error: the following required arguments"),
            (&["-i", "eth0", "--dns", "error", "--percent", "much"], "--percent: 'much' is not a percentage"),
            (&["-i", "eth0", "--dns", "error", "--loss", "5"], "accepted"),
            (&["-f", "x.yaml", "--dns", "error"], "error: the argument '--file"),
        ] {
            let e = plan(args).map(|_| "accepted".to_owned()).unwrap_or_else(|e| e);
            assert!(e.starts_with(expected), "{args:?}: {e}");
        }
        // Refused by the spec, as the daemon would.
        let f = &plan(&["-i", "eth0", "--dns", "error", "--loss", "5"]).unwrap().faults[0];
        assert_eq!(
            f.validate().unwrap_err().to_string(),
            "loss: applies to actions 'loss', 'delay' and 'bandwidth', not action 'dns'"
        );
        let f = &plan(&["-i", "eth0", "--dns", "error", "--domain", "a*.com"]).unwrap().faults[0];
        assert!(
            f.validate().unwrap_err().to_string().starts_with("domains[0]: 'a*.com': only a whole first or last label")
        );
    }

    #[test]
    fn fault_files_carry_a_selector_and_schedule() {
        let dir = std::env::temp_dir().join(format!("chaosctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("faults.toml");
        std::fs::write(
            &path,
            "experiment = \"x\"\nschedule = \"@hourly\"\n[selector]\nnamespaces = [\"shop\"]\nlabels = \"app=web\"\n\
             [[fault]]\naction = \"loss\"\nloss = 5\nduration = \"1m\"\n",
        )
        .unwrap();
        let p = plan(&["-f", path.to_str().unwrap()]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(p.selector.unwrap().labels.as_deref(), Some("app=web"));
        assert_eq!(p.schedule.unwrap().cron, "@hourly");
        assert_eq!(p.experiment.as_deref(), Some("x"));
    }
}
