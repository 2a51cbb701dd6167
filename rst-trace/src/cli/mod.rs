//! Command line (docs/output.md). Usage errors exit with status 2 (clap's default).

use clap::{Parser, ValueEnum};

mod values;

use values::{
    parse_comm, parse_condition, parse_container, parse_pid, parse_pod, parse_port, parse_ring_size,
};

use crate::{
    explain::{Condition, Direction, Sentences},
    filter::Filter,
    kernel::Hooks,
};

const EXAMPLES: &str = "\
Examples:
  sudo rst-trace                          every TCP reset on this host, one line each
  sudo rst-trace --pid 1234               resets of process 1234's sockets, whichever task ran
  sudo rst-trace --port 5432 --json       resets on port 5432 as NDJSON, each with the application's
                                          failing call (app_error: call, fd, thread, errno, delay)
  sudo rst-trace --condition close_with_unread_data --count 1
  sudo rst-trace --container web         resets of docker/podman container `web`'s sockets
  sudo rst-trace --pod shop/web-0         resets of a Kubernetes pod's sockets
  sudo rst-trace --summary --quiet --duration 60
  sudo rst-trace --summary --by pod --quiet --duration 60
  sudo rst-trace --quiet --metrics 127.0.0.1:9464
  sudo rst-trace --quiet --otlp http://localhost:4318
                                          every record and the counts to an OpenTelemetry
                                          collector (OTLP/HTTP: /v1/logs, /v1/metrics)
  sudo rst-trace --stacks --condition close_with_unread_data
                                          where in the program each aborting close() was
  sudo rst-trace --stacks --pid 4242      also where in process 4242 each read or write failed
  sudo rst-trace top                      a live full-screen view: who resets what, how fast
  sudo rst-trace top --port 443           the same filters as above apply (keys: ? for help)

Exit status: 0 normal end (--count, --duration, SIGINT, SIGTERM, broken pipe),
1 runtime error (not privileged, kernel lacks a needed hook or feature, tracefs unavailable),
2 usage error. A runtime error is one line; -v adds the details (e.g. the verifier log).

rst-trace writes `rst-trace: tracing TCP resets (...)` to stderr once it is attached;
stdout carries events only.

Condition ids, the text and JSON fields and the readiness line: docs/conditions.md and
docs/output.md in rst-trace's source tree.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Sent,
    Received,
    Both,
}

/// What `--summary` rows count by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    /// pid and process name
    #[default]
    Process,
    /// container name (or short id); `-` outside containers
    Container,
    /// NAMESPACE/POD; `-` outside Kubernetes pods
    Pod,
}

/// Names the process and the condition behind every TCP reset on this host.
#[derive(Debug, Parser)]
#[command(
    name = "rst-trace",
    version,
    override_usage = "rst-trace [OPTIONS]\n       rst-trace top [OPTIONS]   (a live full-screen view; see below)",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Only resets attributed to process PID (thread group): its own sockets' resets, whichever
    /// task was running when the kernel acted. A thread's id stands for its process (a note
    /// says so). Repeatable.
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pids: Vec<u32>,

    /// Only processes named NAME: the process's comm (its main thread's, as in `ps -o comm`),
    /// never a thread's own name (at most 15 bytes, as the kernel keeps it; a note says when
    /// only a thread has the name). Repeatable.
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,

    /// Only resets whose local or remote port is PORT. Repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Only resets of processes in container NAME (docker's or podman's name, or the Kubernetes
    /// container name) or whose id starts with ID-PREFIX (at least 4 hex digits). Containers
    /// that start later are matched too. Repeatable.
    #[arg(long = "container", value_name = "ID-PREFIX|NAME", value_parser = parse_container)]
    pub containers: Vec<String>,

    /// Only resets of processes in Kubernetes pod NAME (in any namespace) or NAMESPACE/NAME.
    /// Repeatable.
    #[arg(long = "pod", value_name = "[NAMESPACE/]NAME", value_parser = parse_pod)]
    pub pods: Vec<String>,

    /// Which resets to show: sent by this host, received by a local socket, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub direction: DirectionArg,

    /// Only these condition ids (docs/conditions.md in the source tree). Repeatable.
    #[arg(long = "condition", value_name = "ID", value_parser = parse_condition)]
    pub conditions: Vec<Condition>,

    /// One JSON object per line (NDJSON) on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// Exit 0 after N matching reset events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Exit 0 after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// On exit (and every --interval SECS if given) print counts by process, condition and
    /// direction (a table on stderr; with --json, a summary record on stdout).
    #[arg(long)]
    pub summary: bool,

    /// With --summary: what the rows count by.
    #[arg(
        long,
        value_enum,
        value_name = "KEY",
        default_value = "process",
        requires = "summary"
    )]
    pub by: ByArg,

    /// With --summary: also print the summary every SECS seconds.
    #[arg(long, value_name = "SECS", requires = "summary")]
    pub interval: Option<u64>,

    /// No per-event output; needs --summary or --metrics.
    #[arg(long)]
    pub quiet: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; a bare PORT means
    /// 127.0.0.1:PORT). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = crate::render::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Send every record (rst, app_error, not_noticed, lost) as an OTLP log record and the
    /// counts as OTLP metrics to the OpenTelemetry collector at URL, over HTTP with protobuf
    /// (URL/v1/logs, URL/v1/metrics), e.g. http://localhost:4318. A collector that is down does
    /// not slow the event output: records wait in a bounded queue and are retried.
    #[arg(long, value_name = "URL", value_parser = crate::otlp::parse_url)]
    pub otlp: Option<String>,

    /// With --otlp: an HTTP header on every request, e.g. Authorization=Bearer TOKEN.
    /// Repeatable.
    #[arg(long = "otlp-header", value_name = "NAME=VALUE", value_parser = crate::otlp::parse_header, requires = "otlp")]
    pub otlp_headers: Vec<(String, String)>,

    /// With --otlp: send the metrics every SECS seconds (and once at exit).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = clap::value_parser!(u64).range(1..), requires = "otlp")]
    pub otlp_interval: u64,

    /// With --otlp: how many records may wait for the collector; more are dropped, counted
    /// (stderr, metrics, a `lost` record).
    #[arg(long, value_name = "RECORDS", default_value = "4096", value_parser = clap::value_parser!(u64).range(1..=1_000_000), requires = "otlp")]
    pub otlp_queue: u64,

    /// Do not watch transmitted packets for netfilter REJECT resets (saves ~40 ns per packet
    /// sent on hosts whose kernel has REJECT built in or loaded). Before Linux 6.10 that hook
    /// also shows the resets TCP sends without a socket (closed port, TIME_WAIT): they are then
    /// not seen, and the readiness line says so.
    #[arg(long)]
    pub no_firewall: bool,

    /// Do not sample TTLs of received segments (saves ~40 ns per received segment); received
    /// resets then carry no `ttl`/`peer_ttl` evidence.
    #[arg(long)]
    pub no_ttl: bool,

    /// On sent resets a process made in its own system call (close() with unread data,
    /// SO_LINGER 0, shutdown() then close(), exit, connect(AF_UNSPEC)): the user-space and
    /// kernel stacks of that call, symbolized (function, file:line with debug info, else module
    /// and offset); and those of each application call that failed because of a reset or a
    /// timeout (`app_error`). User stacks need frame pointers in the program's code (see the
    /// README).
    #[arg(long)]
    pub stacks: bool,
    /// Do not report the application calls that fail because of a reset or a timeout (the
    /// `app_error` object and records; saves a program run per send and receive from Linux
    /// 6.3, per system call before, and ~0.7 us per failing call).
    #[arg(long)]
    pub no_app_errors: bool,

    /// Attach no program to any system call. Any syscall tracepoint puts every task of the host
    /// on the kernel's slow system-call path (~40 ns more per call here). Without them:
    /// accepted sockets are owned from their first send or receive (a reset before that names
    /// no process), failing connect() calls and SO_ERROR reads are not reported, and failing
    /// sends and receives are reported from Linux 6.3 (the socket layer) only.
    #[arg(long)]
    pub no_syscall_hooks: bool,

    /// Details on stderr: the verifier log of a program the kernel rejected (whether rst-trace
    /// fell back to another one or gave up), and at exit the CPU time its eBPF programs took
    /// (see `--self-cost`).
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Measure rst-trace's own cost: each eBPF program's runs and CPU time, exported by
    /// `--metrics` (`-v` turns it on too, and prints it at exit). It turns on the kernel's
    /// per-program accounting while rst-trace runs, under which every BPF program on the host,
    /// not only rst-trace's, reads the clock twice more per run: 3-7% on packet-heavy loads
    /// here (README, Benchmark), so it is off unless asked for.
    #[arg(long)]
    pub self_cost: bool,

    /// Size of the kernel-to-userspace ring buffer in bytes (a power of two). The default holds
    /// ~26k events: a 500k events/s storm on two busy cores loses none (`./x bench`)
    #[arg(long, value_name = "BYTES", default_value = "4194304", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// How many sockets the kernel side remembers the owners of (an LRU map of ~150 bytes of
    /// kernel memory per entry). Default: 65536, or room for twice the host's TCP sockets at
    /// start-up if that is more (at most 1048576). A host with more live TCP sockets than the
    /// map keeps forgets the owners of the least recently used ones: rst-trace warns when the
    /// host's count crosses it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sockets: Option<u32>,
}

/// The filters the command line asks for (the filter stage knows nothing of the command line).
fn filter_of(cli: &Cli) -> Filter {
    Filter {
        pids: cli.pids.iter().copied().collect(),
        comms: cli.comms.iter().cloned().collect(),
        ports: {
            let mut p = cli.ports.clone();
            p.sort_unstable();
            p.dedup();
            p
        },
        direction: match cli.direction {
            DirectionArg::Sent => Some(Direction::Sent),
            DirectionArg::Received => Some(Direction::Received),
            DirectionArg::Both => None,
        },
        conditions: cli.conditions.iter().copied().collect(),
        containers: cli.containers.clone(),
        pods: cli
            .pods
            .iter()
            .map(|p| match p.split_once('/') {
                Some((ns, name)) => (Some(ns.to_owned()), name.to_owned()),
                None => (None, p.clone()),
            })
            .collect(),
    }
}

/// What a run does, from a command line that makes sense: [`validate`] refuses the rest.
pub struct Settings {
    /// `--pid` values as given, for the notes on processes not running and on threads' ids.
    pub pids: Vec<u32>,
    pub filter: Filter,
    pub json: bool,
    pub count: Option<u64>,
    pub duration: Option<u64>,
    pub summary: bool,
    pub by: ByArg,
    pub interval: Option<u64>,
    pub quiet: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub otlp: Option<crate::otlp::Options>,
    pub hooks: Hooks,
    pub verbose: bool,
    /// `rst-trace top`: the live full-screen view instead of event lines.
    pub top: bool,
    /// Measure the programs' own cost (`--self-cost` or `-v`).
    pub self_cost: bool,
    pub ring_size: u32,
    /// `--max-sockets`: the socket owner map's entries, else sized from the host.
    pub max_sockets: Option<u32>,
    /// Explanation sentences are built only when event lines print them.
    pub words: Sentences,
}

/// The command line: `rst-trace [OPTIONS]`, or `rst-trace top [OPTIONS]` (the same filters),
/// clap's usage errors exiting with status 2; then [`validate`].
pub fn parse() -> Result<Settings, String> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let top = args.get(1).is_some_and(|a| a == "top");
    if top {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    if top {
        let output = [
            (cli.json, "--json"),
            (cli.summary, "--summary"),
            (cli.quiet, "--quiet"),
            (cli.stacks, "--stacks"),
            (cli.count.is_some(), "--count"),
        ];
        if let Some((_, flag)) = output.iter().find(|(on, _)| *on) {
            return Err(format!(
                "rst-trace top draws its own screen: {flag} is for the event lines, drop it"
            ));
        }
    }
    if top {
        crate::top::require_terminal()?;
    }
    let mut settings = validate(cli)?;
    settings.top = top;
    Ok(settings)
}

/// A command line clap accepts but that cannot work: the message (exit status 2).
pub fn validate(cli: Cli) -> Result<Settings, String> {
    let max = rst_trace_common::FILTER_MAX_ENTRIES as usize;
    if cli.pids.len() > max || cli.ports.len() > max {
        return Err(format!(
            "at most {max} --pid and {max} --port values: filter on fewer"
        ));
    }
    if cli.quiet && !cli.summary && cli.metrics.is_none() && cli.otlp.is_none() {
        return Err("--quiet hides every event: add --summary, --metrics or --otlp".into());
    }
    if let Some(n) = cli.max_sockets {
        let cpus = crate::kernel::possible_cpus();
        let least = crate::kernel::min_owners(cpus);
        if u64::from(n) < least {
            return Err(format!(
                "--max-sockets {n} leaves no room: the kernel's LRU map keeps 128 entries free \
                 per CPU ({cpus} CPUs here), so give at least {least}"
            ));
        }
    }
    if cli.quiet && cli.stacks {
        return Err("--stacks shows stacks on event lines, which --quiet hides: drop one".into());
    }
    // A summary and nothing else: resets alike can be counted in the kernel, without a ring
    // record each. (--count needs each match; metrics and OTLP records are per event;
    // containers and pods are known per event, in userspace.)
    let filter = filter_of(&cli);
    let otlp_on = cli.otlp.is_some();
    let count_in_kernel = cli.summary
        && cli.quiet
        && cli.metrics.is_none()
        && cli.otlp.is_none()
        && cli.count.is_none()
        && cli.by == ByArg::Process
        && !filter.by_identity();
    Ok(Settings {
        filter,
        pids: cli.pids,
        json: cli.json,
        count: cli.count,
        duration: cli.duration,
        summary: cli.summary,
        by: cli.by,
        interval: cli.interval,
        quiet: cli.quiet,
        metrics: cli.metrics,
        otlp: cli.otlp.map(|url| crate::otlp::Options {
            url,
            headers: cli.otlp_headers,
            interval: std::time::Duration::from_secs(cli.otlp_interval),
            queue: cli.otlp_queue as usize,
        }),
        hooks: Hooks {
            ttl: !cli.no_ttl,
            firewall: !cli.no_firewall,
            count_in_kernel,
            stacks: cli.stacks,
            app_errors: !cli.no_app_errors,
            syscalls: !cli.no_syscall_hooks,
        },
        verbose: cli.verbose,
        top: false,
        self_cost: cli.self_cost || cli.verbose,
        ring_size: cli.ring_size,
        max_sockets: cli.max_sockets,
        // OTLP log records carry the sentence as their body.
        words: if cli.quiet && !otlp_on {
            Sentences::Skip
        } else {
            Sentences::Write
        },
    })
}

#[cfg(test)]
mod tests;
