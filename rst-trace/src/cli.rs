//! Command line (../shared/spec/output.md). Usage errors exit with status 2 (clap's default).

use clap::{Parser, ValueEnum};

use crate::explain::cond;

const EXAMPLES: &str = "\
Examples:
  sudo rst-trace                          every TCP reset on this host, one line each
  sudo rst-trace --pid 1234               resets of process 1234's sockets, whichever task ran
  sudo rst-trace --port 5432 --json       resets on port 5432 as NDJSON
  sudo rst-trace --condition close_with_unread_data --count 1
  sudo rst-trace --summary --quiet --duration 60
  sudo rst-trace --quiet --metrics 127.0.0.1:9464

Exit status: 0 normal end (--count, --duration, SIGINT, SIGTERM, broken pipe),
1 runtime error (not privileged, kernel lacks a needed hook or feature, tracefs unavailable),
2 usage error. A runtime error is one line; -v adds the details (e.g. the verifier log).

rst-trace writes `rst-trace: tracing TCP resets (...)` to stderr once it is attached;
stdout carries events only.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Sent,
    Received,
    Both,
}

fn parse_condition(s: &str) -> Result<String, String> {
    if cond::ALL.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unknown condition id; valid ids: {}",
            cond::ALL.join(", ")
        ))
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(
            "a comm is 1 to 15 bytes (the kernel truncates longer names): give the first 15".into(),
        );
    }
    Ok(s.to_owned())
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096 bytes".into());
    }
    Ok(n)
}

/// Names the process and the condition behind every TCP reset on this host.
#[derive(Debug, Parser)]
#[command(name = "rst-trace", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Only resets attributed to process PID (thread group): its own sockets' resets, whichever
    /// task was running when the kernel acted. Repeatable.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only processes whose comm is NAME (at most 15 bytes, as the kernel keeps it). Repeatable.
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,

    /// Only resets whose local or remote port is PORT. Repeatable.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Which resets to show: sent by this host, received by a local socket, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub direction: DirectionArg,

    /// Only these condition ids (see conditions.md). Repeatable.
    #[arg(long = "condition", value_name = "ID", value_parser = parse_condition)]
    pub conditions: Vec<String>,

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
    /// direction.
    #[arg(long)]
    pub summary: bool,

    /// With --summary: also print the summary every SECS seconds.
    #[arg(long, value_name = "SECS", requires = "summary")]
    pub interval: Option<u64>,

    /// No per-event output (for use with --summary or --metrics).
    #[arg(long)]
    pub quiet: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; a bare PORT means
    /// 127.0.0.1:PORT). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = crate::render::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

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

    /// Details on stderr: the verifier log of a program the kernel rejected (whether rst-trace
    /// fell back to another one or gave up).
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Size of the kernel-to-userspace ring buffer in bytes (a power of two). The default holds
    /// ~26k events: a 500k events/s storm on two busy cores loses none (`./x bench`)
    #[arg(long, value_name = "BYTES", default_value = "4194304", value_parser = parse_ring_size)]
    pub ring_size: u32,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeatable_filters_and_bad_values() {
        let c =
            Cli::try_parse_from(["rst-trace", "-p", "1", "--pid", "2", "--port", "80"]).unwrap();
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.ports, vec![80]);
        assert!(Cli::try_parse_from(["rst-trace", "--condition", "nope"]).is_err());
        assert!(Cli::try_parse_from(["rst-trace", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["rst-trace", "--interval", "5"]).is_err());
        assert!(Cli::try_parse_from(["rst-trace", "--ring-size", "5000"]).is_err());
        assert!(Cli::try_parse_from(["rst-trace", "--comm", "a-very-long-process-name"]).is_err());
        assert!(Cli::try_parse_from(["rst-trace", "--comm", "nginx"]).is_ok());
        let e = Cli::try_parse_from(["rst-trace", "--bogus"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
