//! rst-trace: for every TCP reset, which process and which condition caused it.

mod cli;
mod explain;
mod filter;
mod kernel;
mod owners;
mod render;

use std::{collections::VecDeque, io, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::RingBuf;
use clap::Parser as _;
use rst_trace_common::{KIND_RECEIVED, MAP_EVENTS, RstEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, interval, sleep_until},
};

use crate::{
    cli::Cli,
    explain::{History, cond, explain},
    filter::Filter,
    kernel::KernelInfo,
    render::{Clock, Format, Out, Summary, metrics},
};

const NEEDS_ROOT: &str = "rst-trace needs root (CAP_BPF, CAP_PERFMON and read access to tracefs, \
     which is root-only by default): run it with sudo";

/// Exit codes (output.md): 0 normal end, 1 runtime error, 2 usage error (clap).
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let max = rst_trace_common::FILTER_MAX_ENTRIES as usize;
    if cli.pids.len() > max || cli.ports.len() > max {
        eprintln!("rst-trace: error: at most {max} --pid and {max} --port values: filter on fewer");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rst-trace: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let verbose = cli.verbose;
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line; a verifier log (hundreds of lines) and other details only with -v.
            let rejected = e
                .chain()
                .any(|c| c.downcast_ref::<kernel::LoadFailure>().is_some());
            let hint = if rejected && !verbose {
                " (-v prints the verifier log)"
            } else {
                ""
            };
            eprintln!("rst-trace: error: {}{hint}", kernel::first_line(&e));
            if verbose {
                kernel::print_details(&e);
            }
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) in the effective set, checked before touching
/// tracefs so the message names the real cause.
/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones to the memory cgroup), and
/// the usual limit is far below the ring buffer's 4 MiB: raise it, as libbpf does. Without the
/// privilege to raise the hard limit, the soft one still goes up to it.
fn raise_memlock() {
    // SAFETY: plain system calls on a valid, owned struct.
    unsafe {
        let infinite = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &infinite) == 0 {
            return;
        }
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 {
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
        }
    }
}

fn check_privileges() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(anyhow!(NEEDS_ROOT));
    }
    Ok(())
}

fn note_unknown_pids(pids: &[u32]) {
    for pid in pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "rst-trace: note: no process {pid} is running now; its resets will show if it starts"
            );
        }
    }
}

struct State {
    fmt: Format,
    clock: Clock,
    filter: Filter,
    history: History,
    /// Only with --summary (counting costs an allocation per event).
    summary: Option<Summary>,
    quiet: bool,
    matched: u64,
    count: Option<u64>,
    bad_records: u64,
    lost_seen: u64,
    pending: VecDeque<RstEvent>,
    metrics: Option<metrics::Shared>,
    flows: owners::FlowOwners,
    /// Firewall resets waiting for their flow's owner, by look-up token.
    awaiting: std::collections::HashMap<u64, explain::Report>,
    next_token: u64,
    out: Out,
    /// The line being rendered, reused from event to event.
    line: String,
}

/// Received resets are held this long before they are explained: on loopback and veth the
/// peer's `tcp_send_reset` fires *after* our `tcp_receive_reset` (the RST is delivered inside
/// the sender's transmit path), and a data_after_close reset fires `tcp_receive_reset` on the
/// sending socket just before its `tcp_send_reset`. Holding lets both be linked or suppressed.
const HOLD_RECEIVED_NS: u64 = 5_000_000;

impl State {
    /// Takes one ring record; returns true when `--count` is reached.
    fn ingest(&mut self, bytes: &[u8], reasons: &KernelInfo) -> bool {
        let ev = match RstEvent::decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.bad_records += 1;
                if self.bad_records == 1 {
                    eprintln!("rst-trace: warning: skipped a malformed ring record: {e}");
                }
                return false;
            }
        };
        if ev.kind == KIND_RECEIVED {
            self.pending.push_back(ev);
            return false;
        }
        self.emit(&ev, reasons)
    }

    /// Takes every record the ring holds now; true when `--count` is reached.
    fn drain(&mut self, rb: &mut RingBuf<aya::maps::MapData>, reasons: &KernelInfo) -> bool {
        let mut n = 0u32;
        while let Some(item) = rb.next() {
            if self.ingest(&item, reasons) {
                return true;
            }
            n += 1;
            // A full ring (8 MiB: 50k records) takes a while: explain the held received resets
            // that are old enough on the way, while their senders are still in the link history.
            if n.is_multiple_of(1024) && self.release(false, reasons) {
                return true;
            }
        }
        false
    }

    /// Explains pending received resets once they are old enough (all of them if `force`).
    fn release(&mut self, force: bool, reasons: &KernelInfo) -> bool {
        let now = Clock::mono_now();
        while let Some(ev) = self.pending.front() {
            if !force && now.saturating_sub(ev.mono_ns) < HOLD_RECEIVED_NS {
                break;
            }
            let ev = self.pending.pop_front().expect("front exists");
            if self.emit(&ev, reasons) {
                return true;
            }
        }
        false
    }

    fn emit(&mut self, ev: &RstEvent, reasons: &KernelInfo) -> bool {
        let Some(report) = explain(ev, reasons, &mut self.history) else {
            self.bad_records += 1;
            return false;
        };
        if ev.skbaddr != 0
            && matches!(
                report.condition,
                cond::DATA_AFTER_CLOSE | cond::FIN_WAIT2_ABORT
            )
        {
            // tcp_rcv_state_process() calls tcp_reset() on the socket before sending the RST:
            // that tcp_receive_reset is this host's own abort, not a received reset.
            // Only in the states that abort happens in (a new socket at a recycled address
            // with a genuine reset must keep it): the same rule the kernel's counting follows
            // (`RstEvent::countable`).
            self.pending.retain(|p| {
                p.skaddr != ev.skaddr
                    || ev.mono_ns.abs_diff(p.mono_ns) > HOLD_RECEIVED_NS
                    || !matches!(
                        explain::TcpState::decode(p.state),
                        Some(
                            explain::TcpState::FinWait1
                                | explain::TcpState::FinWait2
                                | explain::TcpState::CloseWait
                                | explain::TcpState::Closing
                                | explain::TcpState::LastAck
                        )
                    )
            });
        }
        if report.condition == cond::FIREWALL_REJECT && report.process.is_none() {
            // The rejected flow's owner, looked up off the event loop: the event is finished
            // when the answer comes back (`owner_found`).
            let token = self.next_token;
            self.next_token += 1;
            if self
                .flows
                .request(token, u64::from(report.netns), report.local, report.remote)
            {
                self.awaiting.insert(token, report);
                return false;
            }
        }
        self.finish(report)
    }

    /// The answer to a flow-owner look-up: finishes the event that waited for it.
    fn owner_found(&mut self, token: u64, owner: Option<rst_trace_common::Task>) -> bool {
        let Some(mut report) = self.awaiting.remove(&token) else {
            return false;
        };
        if let Some(t) = owner {
            let p = explain::Process::from_task(&t);
            report.explanation.push_str(&format!(
                "; the rejected flow's socket on this host belongs to {p}"
            ));
            report.process = Some(p);
            report.attribution = "socket_owner";
            report.no_process_why = None;
        }
        self.finish(report)
    }

    /// Filters, counts and prints one explained reset; true when `--count` is reached.
    fn finish(&mut self, report: explain::Report) -> bool {
        if !self.filter.matches(&report) {
            return false;
        }
        self.matched += 1;
        if let Some(s) = &mut self.summary {
            s.add(&report);
        }
        if let Some(m) = &self.metrics
            && let Ok(mut m) = m.lock()
        {
            m.record(&report);
        }
        if !self.quiet {
            render::render_into(&mut self.line, &report, &self.clock, self.fmt);
            self.out.line(&self.line);
        }
        self.count.is_some_and(|c| self.matched >= c)
    }

    /// The summary as of now: what userspace counted from ring records, plus, with
    /// `count_in_kernel`, what the kernel counted (each key explained once).
    fn summary_now(
        &self,
        tracer: &kernel::Tracer,
        count_in_kernel: bool,
        reasons: &KernelInfo,
    ) -> Option<String> {
        let s = self.summary.as_ref()?;
        if !count_in_kernel {
            return Some(s.render(&self.clock, self.fmt));
        }
        let mut s = s.clone();
        match kernel::kernel_counts(&tracer.ebpf) {
            Ok(counts) => {
                for (key, n) in counts {
                    if let Some(r) = explain(&key, reasons, &mut explain::History::default())
                        && self.filter.matches_but_ports(&r)
                    {
                        s.add_n(&r, n);
                    }
                }
            }
            Err(e) => eprintln!("rst-trace: warning: cannot read the kernel's reset counts: {e:#}"),
        }
        Some(s.render(&self.clock, self.fmt))
    }

    fn check_lost(&mut self, total: u64) {
        if total > self.lost_seen {
            let line = render::lost(total - self.lost_seen, total, &self.clock, self.fmt);
            self.lost_seen = total;
            if let Some(s) = &mut self.summary {
                s.lost = total;
            }
            if let Some(m) = &self.metrics
                && let Ok(mut m) = m.lock()
            {
                m.lost = total;
            }
            match self.fmt {
                Format::Json => self.out.line(&line),
                // Text mode: stdout carries events only; the warning goes to stderr.
                Format::Text { .. } => eprintln!("{line}"),
            }
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    check_privileges()?;
    raise_memlock();
    note_unknown_pids(&cli.pids);
    // Before the (slower) start-up, so that SIGINT/SIGTERM meanwhile still end with status 0.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let filter = Filter::from_cli(&cli);
    if cli.quiet {
        explain::EXPLAIN_WORDS.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    let started = std::time::Instant::now();
    // A summary and nothing else: resets alike can be counted in the kernel, without a ring
    // record each. (--count needs each match; metrics are per event.)
    let count_in_kernel = cli.summary && cli.quiet && cli.metrics.is_none() && cli.count.is_none();
    let hooks = kernel::Hooks {
        ttl: !cli.no_ttl,
        firewall: !cli.no_firewall,
        count_in_kernel,
    };
    let notes = kernel::Notes {
        verbose: cli.verbose,
    };
    let mut tracer = kernel::load(&filter, cli.ring_size, hooks, notes)?;
    // The two BTF parses (tens of MiB, one of them on a thread with its own malloc arena) are
    // freed; hand the memory back to the kernel, or it stays in our RSS for good.
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
    let ring = RingBuf::try_from(
        tracer
            .ebpf
            .take_map(MAP_EVENTS)
            .context("ring buffer map missing from the eBPF object")?,
    )?;
    // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("registering the ring buffer with the event loop: {e}"))?;

    let color = !cli.json && std::io::IsTerminal::is_terminal(&io::stdout());
    let fmt = if cli.json {
        Format::Json
    } else {
        Format::Text { color }
    };
    let (owners_tx, mut owners_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut st = State {
        fmt,
        clock: Clock::now(),
        filter,
        history: History::default(),
        summary: cli.summary.then(Summary::default),
        quiet: cli.quiet,
        matched: 0,
        count: cli.count,
        bad_records: 0,
        lost_seen: 0,
        pending: VecDeque::new(),
        metrics: None,
        flows: owners::FlowOwners::start(owners_tx),
        awaiting: std::collections::HashMap::new(),
        next_token: 0,
        line: String::with_capacity(1024),
        out: Out::stdout().context("standard output")?,
    };
    if let Some(addr) = cli.metrics {
        let shared = metrics::Shared::default();
        let bound = metrics::serve(addr, shared.clone()).await?;
        eprintln!("rst-trace: metrics at http://{bound}/metrics");
        st.metrics = Some(shared);
    }
    let reasons = tracer.info.clone();
    eprintln!(
        "rst-trace: tracing TCP resets ({}; {} tracepoints{}; kernel reasons: {}; {}; {}; {} existing sockets owned; attached in {} ms)",
        st.filter.describe(),
        tracer.resets.describe(),
        if count_in_kernel {
            "; counting in the kernel"
        } else {
            ""
        },
        if reasons.reasons.is_empty() {
            "none, inferring"
        } else {
            "yes"
        },
        tracer.reject.describe(),
        tracer.socketless.describe(),
        tracer.seeded,
        started.elapsed().as_millis()
    );

    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let deadline = cli
        .duration
        .map_or(far, |d| Instant::now() + Duration::from_secs(d));
    let mut lost_tick = interval(Duration::from_secs(1));
    let mut drain_tick = interval(kernel::DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary_tick = interval(Duration::from_secs(cli.interval.unwrap_or(3600).max(1)));
    summary_tick.tick().await;
    let mut done = st.count == Some(0);
    while !done && !st.out.broken {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                done = st.drain(guard.get_inner_mut(), &reasons);
                guard.clear_ready();
                done = done || st.release(false, &reasons);
                st.out.flush();
            }
            _ = drain_tick.tick() => {
                done = st.drain(ring.get_mut(), &reasons) || st.release(false, &reasons);
                st.out.flush();
            }
                        () = tokio::time::sleep(Duration::from_nanos(HOLD_RECEIVED_NS)), if !st.pending.is_empty() => {
                // The sent reset a held one waits for may sit in the ring without a wakeup.
                done = st.drain(ring.get_mut(), &reasons) || st.release(false, &reasons);
                st.out.flush();
            }
            Some((token, owner)) = owners_rx.recv() => {
                done = st.owner_found(token, owner);
                st.out.flush();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = sleep_until(deadline) => break,
            _ = lost_tick.tick() => {
                st.check_lost(kernel::lost_total(&tracer.ebpf)?);
                                if let Err(e) = tracer.poll_reject() {
                    eprintln!("rst-trace: warning: cannot watch firewall resets: {e:#}");
                }
                st.out.flush();
            }
            _ = summary_tick.tick(), if cli.interval.is_some() => {
                if let Some(s) = st.summary_now(&tracer, count_in_kernel, &reasons) {
                    st.out.line(&s);
                    st.out.flush();
                }
            }
        }
    }
    // Flush what the kernel already queued (SIGTERM in a storm loses nothing that was read).
    if !done {
        done = st.drain(ring.get_mut(), &reasons) || st.release(true, &reasons);
    }
    // Firewall resets still waiting for their flow's owner: a moment for the answers, then
    // they go out without one.
    let give_up = Instant::now() + Duration::from_secs(2);
    while !done && !st.out.broken && !st.awaiting.is_empty() {
        match tokio::time::timeout_at(give_up, owners_rx.recv()).await {
            Ok(Some((token, owner))) => done = st.owner_found(token, owner),
            _ => break,
        }
    }
    let unanswered: Vec<u64> = st.awaiting.keys().copied().collect();
    for token in unanswered {
        if done || st.out.broken {
            break;
        }
        done = st.owner_found(token, None);
    }
    st.check_lost(kernel::lost_total(&tracer.ebpf)?);
    if let Some(s) = st.summary_now(&tracer, count_in_kernel, &reasons) {
        st.out.line(&s);
    }
    st.out.flush();
    if st.bad_records > 0 {
        eprintln!(
            "rst-trace: warning: {} malformed ring records skipped",
            st.bad_records
        );
    }
    match st.out.error.take() {
        Some(e) => Err(anyhow!("writing to stdout: {e}")),
        None => Ok(()),
    }
}
