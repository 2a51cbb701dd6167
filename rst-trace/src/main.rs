//! rst-trace: for every TCP reset, which process and which condition caused it.

// A dependency nothing here uses is an error under clippy's -D warnings (it caught `log` and
// `serde` left behind). Not workspace-wide: each end-to-end test binary uses a subset of its
// crate's dependencies.
#![warn(unused_crate_dependencies)]

mod apperr;
mod cli;
mod correlate;
mod enrich;
mod event_loop;
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
mod targets;
mod top;

use std::{io, process::ExitCode};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::{UnboundedSender, unbounded_channel},
};

use crate::{
    cli::Settings,
    correlate::{Held, History},
    enrich::Enricher,
    identity::{Roots, Waiting},
    kernel::{Ring, Tracer},
    pipeline::State,
    render::{Format, Out, Sink, metrics},
};

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
pub(crate) fn report_losses(st: &mut State, tracer: &Tracer) -> Result<()> {
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
pub(crate) fn print_summary(st: &mut State, s: &str) {
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

async fn run(mut settings: Settings) -> Result<()> {
    kernel::check_privileges()?;
    kernel::raise_memlock();
    targets::resolve(&mut settings);
    // Before the (slower) start-up, so that SIGINT/SIGTERM meanwhile still end with status 0.
    let mut stop = event_loop::Stop {
        sigint: signal(SignalKind::interrupt())?,
        sigterm: signal(SignalKind::terminate())?,
    };
    let started = std::time::Instant::now();
    let (mut tracer, mut ring) = start(&settings)?;
    let cost = self_cost(&settings);
    let (owners_tx, owners) = unbounded_channel();
    let (identities_tx, identities) = unbounded_channel();
    let mut answers = event_loop::Answers { owners, identities };
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

    let mut done = event_loop::event_loop(
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
    event_loop::finish_waiting(&mut st, &mut answers, done).await;
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
