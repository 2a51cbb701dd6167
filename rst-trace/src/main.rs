//! rst-trace: for every TCP reset, which process and which condition caused it.

// A dependency nothing here uses is an error under clippy's -D warnings (it caught `log` and
// `serde` left behind). Not workspace-wide: each end-to-end test binary uses a subset of its
// crate's dependencies.
#![warn(unused_crate_dependencies)]

mod apperr;
mod cli;
mod correlate;
mod enrich;
mod explain;
mod filter;
mod hashing;
mod identity;
mod kernel;
mod otlp;
mod owners;
mod pipeline;
mod render;
mod stacks;
mod top;

use std::{io, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    time::{Instant, interval, sleep_until},
};

use crate::{
    cli::Settings,
    correlate::{HOLD_RECEIVED_NS, Held, History},
    enrich::Enricher,
    identity::{Roots, Waiting},
    kernel::{Ring, Tracer},
    pipeline::{Drained, State},
    render::{Format, Out, Sink, metrics},
};

/// The answers the event loop waits for besides the ring: flow owners and container identities.
struct Answers {
    owners: UnboundedReceiver<enrich::Answer>,
    identities: UnboundedReceiver<identity::Answer>,
}

/// Exit codes (output.md): 0 normal end, 1 runtime error, 2 usage error (clap, or a command
/// line `cli::validate` refuses).
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let settings = match cli::parse() {
        Ok(s) => s,
        Err(usage) => {
            eprintln!("rst-trace: error: {usage}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
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
    let verbose = settings.verbose;
    match rt.block_on(run(settings)) {
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

/// A note for each `--pid` not running now (its resets show if it starts).
fn note_unknown_pids(pids: &[u32]) {
    for pid in pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "rst-trace: note: no process {pid} is running now; its resets will show if it starts"
            );
        }
    }
}

/// The signals that end the run (status 0).
struct Stop {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

/// Loads and attaches the programs; the ring buffer, registered with the event loop.
fn start(settings: &Settings) -> Result<(Tracer, Ring)> {
    let notes = kernel::Notes {
        verbose: settings.verbose,
    };
    let mut tracer = kernel::load(
        &settings.filter,
        (settings.ring_size, settings.max_sockets),
        settings.hooks,
        notes,
    )?;
    // The start-up's BTF buffers (the whole of vmlinux BTF, and aya's parse of the BTF built
    // for it) are freed; hand the memory back to the kernel, or it stays in our RSS for good.
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
    let ring = kernel::event_ring(&mut tracer)?;
    Ok((tracer, ring))
}

/// The readiness line on stderr: tracing has begun, with what.
fn announce(st: &State, tracer: &Tracer, count_in_kernel: bool, started: std::time::Instant) {
    eprintln!(
        "rst-trace: tracing TCP resets ({}; {} tracepoints{}{}; kernel reasons: {}; {}; {}; {}{}; {} existing sockets owned; attached in {} ms)",
        st.filter.describe(),
        tracer.resets.describe(),
        if count_in_kernel {
            "; counting in the kernel"
        } else {
            ""
        },
        match (st.stacks.is_some(), tracer.entry_regs) {
            (false, _) => String::new(),
            (true, true) => "; stacks of process-context aborts".into(),
            (true, false) => format!(
                "; stacks of process-context aborts (without the callers of frameless functions: \
                 no system call entry registers on {})",
                std::env::consts::ARCH
            ),
        },
        if st.info.reasons.is_empty() {
            "none, inferring"
        } else {
            "yes"
        },
        tracer.reject.describe(),
        tracer.socketless.describe(),
        tracer.app.describe(),
        if tracer.syscall_hooks {
            ""
        } else {
            "; no system call hooks (accepted sockets owned from their first send or receive)"
        },
        tracer.seeded,
        started.elapsed().as_millis()
    );
}

/// The pipeline's state at start: every stage, empty, configured from the command line.
fn new_state(
    settings: &Settings,
    tracer: &mut Tracer,
    owners_tx: UnboundedSender<enrich::Answer>,
    identities_tx: UnboundedSender<identity::Answer>,
) -> Result<State> {
    let color = !settings.json && std::io::IsTerminal::is_terminal(&io::stdout());
    let fmt = if settings.json {
        Format::Json
    } else {
        Format::Text { color }
    };
    let out = Out::stdout().context("standard output")?;
    let mut st = State {
        info: tracer.info.clone(),
        words: settings.words,
        history: History::default(),
        held: Held::default(),
        enrich: Enricher::start(owners_tx),
        identity: Waiting::start(Roots::default(), identities_tx),
        filter: settings.filter.clone(),
        sink: Sink::new(
            fmt,
            settings.quiet,
            settings.summary.then_some(settings.by),
            out,
        ),
        matched: 0,
        count: settings.count,
        bad_records: 0,
        ready: Vec::new(),
        to_hide: Vec::new(),
        stacks: if settings.hooks.stacks {
            Some(stacks::StackReader::new(&mut tracer.ebpf)?)
        } else {
            None
        },
        noticing: apperr::Noticing::new(tracer.app.is_on()).connects_seen(tracer.syscall_hooks),
    };
    if let Some(s) = &mut st.sink.summary {
        s.app_errors = tracer.app.is_on();
    }
    Ok(st)
}

/// Events the kernel could not queue (ring full) and application errors it could not keep, so
/// far: counted on stderr and in the summary and metrics, never lost silently.
fn report_losses(st: &mut State, tracer: &Tracer) -> Result<()> {
    let lost = kernel::lost_total(&tracer.ebpf)?;
    st.stacks_tick();
    st.sink.lost(lost);
    st.sink
        .app_losses(kernel::app_lost_total(&tracer.ebpf)?, st.noticing.evicted);
    Ok(())
}

/// `--otlp`: the export threads, fed the counts `--metrics` keeps (kept for it alone if need be).
fn start_otlp(st: &mut State, o: &otlp::Options) -> Result<()> {
    let counts = st.sink.metrics.get_or_insert_with(metrics::Shared::default);
    if let Ok(mut m) = counts.lock() {
        m.count_otlp_drops();
    }
    let counts = counts.clone();
    st.sink.otlp = Some(otlp::Otlp::start(o, st.sink.clock, counts).context("--otlp")?);
    eprintln!(
        "rst-trace: OTLP export to {0}/v1/logs (every record) and {0}/v1/metrics (every {1} s)",
        o.url,
        o.interval.as_secs()
    );
    Ok(())
}

/// A summary: in JSON a `summary` record on stdout, in the stream of records; in text a table
/// on stderr, after the event lines before it, so that stdout keeps one line per event.
fn print_summary(st: &mut State, s: &str) {
    st.sink.out.flush();
    if st.sink.fmt == Format::Json {
        st.sink.out.line(s);
        st.sink.out.flush();
    } else {
        // Not eprintln!, which panics when stderr is closed.
        let _ = io::Write::write_all(&mut io::stderr().lock(), format!("{s}\n").as_bytes());
    }
}

/// The last words at exit: losses, the summary, malformed records, and a write error.
fn finish(st: &mut State, tracer: &Tracer, count_in_kernel: bool) -> Result<()> {
    report_losses(st, tracer)?;
    if let Some(s) = st.summary_now(tracer, count_in_kernel) {
        print_summary(st, &s);
    }
    st.sink.out.flush();
    if let Some(o) = st.sink.otlp.take() {
        o.shutdown();
    }
    if st.bad_records > 0 {
        eprintln!(
            "rst-trace: warning: {} malformed ring records skipped",
            st.bad_records
        );
    }
    match st.sink.out.error.take() {
        Some(e) => Err(anyhow!("writing to stdout: {e}")),
        None => Ok(()),
    }
}

async fn run(settings: Settings) -> Result<()> {
    kernel::check_privileges()?;
    kernel::raise_memlock();
    note_unknown_pids(&settings.pids);
    // Before the (slower) start-up, so that SIGINT/SIGTERM meanwhile still end with status 0.
    let mut stop = Stop {
        sigint: signal(SignalKind::interrupt())?,
        sigterm: signal(SignalKind::terminate())?,
    };
    let started = std::time::Instant::now();
    let (mut tracer, mut ring) = start(&settings)?;
    let cost = self_cost(&settings);
    let (owners_tx, owners) = unbounded_channel();
    let (identities_tx, identities) = unbounded_channel();
    let mut answers = Answers { owners, identities };
    let mut st = new_state(&settings, &mut tracer, owners_tx, identities_tx)?;
    if let Some(addr) = settings.metrics {
        let shared = metrics::Shared::default();
        let bound = metrics::serve(addr, shared.clone()).await?;
        eprintln!("rst-trace: metrics at http://{bound}/metrics");
        st.sink.metrics = Some(shared);
    }
    if let Some(o) = &settings.otlp {
        start_otlp(&mut st, o)?;
    }
    let count_in_kernel = settings.hooks.count_in_kernel;
    announce(&st, &tracer, count_in_kernel, started);
    // rst-trace top: from here on the terminal is the view's (restored when `ui` drops).
    let mut ui = if settings.top {
        st.sink.top = Some(top::TopState::default());
        Some(top::Ui::start()?)
    } else {
        None
    };

    let mut done = event_loop(
        &mut st,
        &mut tracer,
        &mut ring,
        (&settings, cost.is_some()),
        (&mut stop, ui.as_mut()),
        &mut answers,
    )
    .await?;
    drop(ui);
    // Flush what the kernel already queued (SIGTERM in a storm loses nothing that was read).
    if !done {
        done = st.drain(ring.get_mut()) || st.release(true);
    }
    finish_waiting(&mut st, &mut answers, done).await;
    // Calls still waiting for a reset, and resets still waiting for a call, go out as they are
    // (not after --count: it asked for that many resets, and got them).
    if !done && !st.sink.out.broken {
        st.app_tick(true);
    }
    if cost.is_some() && settings.verbose {
        for l in kernel::cost_lines(&kernel::program_costs(&tracer.ebpf), started.elapsed()) {
            eprintln!("{l}");
        }
    }
    let done = finish(&mut st, &tracer, count_in_kernel);
    kernel::detach_record_links();
    done
}

/// The kernel's per-program accounting, when the cost is asked for; said on stderr if it
/// cannot be had.
fn self_cost(settings: &Settings) -> Option<kernel::SelfCost> {
    if !settings.self_cost {
        return None;
    }
    match kernel::SelfCost::enable() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "rst-trace: note: rst-trace's own cost is not measured ({e:#}): no \
                 rst_trace_bpf_program_* metrics, no cost at exit"
            );
            None
        }
    }
}

/// Until `--count`, `--duration`, a signal or a closed stdout: explains and prints the resets as
/// they come. True when `--count` was reached.
async fn event_loop(
    st: &mut State,
    tracer: &mut Tracer,
    ring: &mut Ring,
    (settings, cost): (&Settings, bool),
    (stop, mut ui): (&mut Stop, Option<&mut top::Ui>),
    answers: &mut Answers,
) -> Result<bool> {
    let count_in_kernel = settings.hooks.count_in_kernel;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let deadline = settings
        .duration
        .map_or(far, |d| Instant::now() + Duration::from_secs(d));
    let mut lost_tick = interval(Duration::from_secs(1));
    let mut drain_tick = interval(kernel::DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary_tick = interval(Duration::from_secs(
        settings.interval.unwrap_or(3600).max(1),
    ));
    summary_tick.tick().await;
    let mut done = st.count == Some(0);
    let mut reject_failing = false;
    let mut reject_tick = interval(Duration::from_millis(100));
    let mut redraw_tick = interval(Duration::from_secs(1));
    let mut sockets = kernel::SocketWatch::new(tracer.socket_maps);
    while !done && !st.sink.out.broken {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let drained = st.drain_some(guard.get_inner_mut());
                // Records left: stay ready, so the loop comes back after its other work.
                if drained != Drained::More {
                    guard.clear_ready();
                }
                done = drained == Drained::Done || st.release(false);
                st.sink.out.flush();
            }
            _ = drain_tick.tick() => {
                done = st.drain_some(ring.get_mut()) == Drained::Done || st.release(false);
                st.app_tick(false);
                st.sink.out.flush();
            }
            () = tokio::time::sleep(Duration::from_nanos(HOLD_RECEIVED_NS)), if !st.held.is_empty() => {
                // The sent reset a held one waits for may sit in the ring without a wakeup.
                done = st.drain_some(ring.get_mut()) == Drained::Done || st.release(false);
                st.sink.out.flush();
            }
            Some(answer) = answers.owners.recv() => {
                done = st.owner_found(answer);
                st.sink.out.flush();
            }
            Some(answer) = answers.identities.recv() => {
                done = st.identity_found(answer);
                st.hide_cgroups(tracer);
                st.sink.out.flush();
            }
            () = sleep_until(st.identity.next_deadline().map_or(far, Instant::from_std)) => {
                done = st.identity_overdue(false);
                st.sink.out.flush();
            }
            _ = redraw_tick.tick(), if ui.is_some() => {
                if let (Some(ui), Some(t)) = (ui.as_deref_mut(), st.sink.top.as_mut()) {
                    ui.tick(t)?;
                }
            }
            Some(ev) = top_key(&mut ui) => {
                let ev = ev.context("rst-trace top: reading the terminal's keys")?;
                if let (Some(ui), Some(t)) = (ui.as_deref_mut(), st.sink.top.as_ref()) {
                    match ui.handle(&ev) {
                        top::Action::Quit => break,
                        top::Action::Redraw => ui.draw(t)?,
                        top::Action::Nothing => {}
                    }
                }
            }
            _ = stop.sigint.recv() => break,
            _ = stop.sigterm.recv() => break,
            () = sleep_until(deadline) => break,
            _ = lost_tick.tick() => {
                report_losses(st, tracer)?;
                st.sink.insert_failures(kernel::insert_failures(&tracer.ebpf)?);
                let maps = sockets.tick();
                st.sink.unlabelled(st.identity.gave_up);
                if let Some(m) = &st.sink.metrics && let Ok(mut m) = m.lock() {
                    if cost {
                        m.set_programs(kernel::program_costs(&tracer.ebpf));
                    }
                    if let Some(maps) = maps {
                        m.set_maps(maps);
                    }
                }
                st.sink.otlp_tick();
                st.sink.out.flush();
            }
            _ = reject_tick.tick(), if tracer.reject_pending() => {
                // Said once when it starts failing; the moment it is attached, said too.
                match tracer.poll_reject() {
                    Err(e) if !reject_failing => {
                        reject_failing = true;
                        eprintln!("rst-trace: warning: cannot watch firewall resets: {e:#}");
                    }
                    Ok(true) => eprintln!(
                        "rst-trace: firewall resets: yes (nf_reject loaded): watched from now on"
                    ),
                    _ => {}
                }
            }
            _ = summary_tick.tick(), if settings.interval.is_some() => {
                if let Some(s) = st.summary_now(tracer, count_in_kernel) {
                    print_summary(st, &s);
                }
            }
        }
    }
    Ok(done)
}

/// The next key of `rst-trace top`'s terminal; never, without it.
async fn top_key(
    ui: &mut Option<&mut top::Ui>,
) -> Option<std::io::Result<crossterm::event::Event>> {
    match ui {
        Some(ui) => ui.keys.recv().await,
        None => std::future::pending().await,
    }
}

/// Resets still waiting for their firewall flow's owner or their container: a moment for the
/// answers, then they go out without.
async fn finish_waiting(st: &mut State, answers: &mut Answers, mut done: bool) {
    let give_up = Instant::now() + Duration::from_secs(2);
    while !done && !st.sink.out.broken && st.enrich.is_waiting() {
        match tokio::time::timeout_at(give_up, answers.owners.recv()).await {
            Ok(Some(answer)) => done = st.owner_found(answer),
            _ => break,
        }
    }
    for token in st.enrich.waiting_tokens() {
        if done || st.sink.out.broken {
            break;
        }
        done = st.owner_found((token, None));
    }
    let give_up = Instant::now() + identity::wait::MAX_WAIT;
    while !done && !st.sink.out.broken && !st.identity.is_empty() {
        match tokio::time::timeout_at(give_up, answers.identities.recv()).await {
            Ok(Some(answer)) => done = st.identity_found(answer),
            _ => break,
        }
    }
    if !done {
        st.identity_overdue(true);
    }
    st.sink.unlabelled(st.identity.gave_up);
}
