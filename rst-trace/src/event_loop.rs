//! The event loop: the ring buffer, the answers of the enrichment and identity workers, the
//! timers, the signals and `rst-trace top`'s keys, until the run ends.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    sync::mpsc::UnboundedReceiver,
    time::{Instant, Interval, interval, sleep_until},
};

use crate::{
    cli::Settings,
    correlate::HOLD_RECEIVED_NS,
    enrich, identity,
    kernel::{self, Ring, Tracer},
    pipeline::{Drained, State},
    print_summary, report_losses, top,
};

/// The answers the event loop waits for besides the ring: flow owners and container identities.
pub struct Answers {
    pub owners: UnboundedReceiver<enrich::Answer>,
    pub identities: UnboundedReceiver<identity::Answer>,
}

/// The signals that end the run (status 0).
pub struct Stop {
    pub sigint: tokio::signal::unix::Signal,
    pub sigterm: tokio::signal::unix::Signal,
}

/// The event loop's timers.
struct Ticks {
    /// [`each_second`]: lost events, the socket maps against the host's count, metrics, OTLP.
    second: Interval,
    /// Records the ring holds without a wakeup (`kernel::DRAIN_INTERVAL`).
    drain: Interval,
    /// `--summary --interval SECS`.
    summary: Interval,
    /// Whether netfilter's REJECT code has been loaded since ([`poll_reject`]).
    reject: Interval,
    /// `rst-trace top`'s screen.
    redraw: Interval,
}

impl Ticks {
    async fn new(settings: &Settings) -> Self {
        let mut drain = interval(kernel::DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut summary = interval(Duration::from_secs(
            settings.interval.unwrap_or(3600).max(1),
        ));
        // The first tick is at once: the first summary is due one interval from now.
        summary.tick().await;
        Self {
            second: interval(Duration::from_secs(1)),
            drain,
            summary,
            reject: interval(Duration::from_millis(100)),
            redraw: interval(Duration::from_secs(1)),
        }
    }
}

/// Until `--count`, `--duration`, a signal or a closed stdout: explains and prints the resets as
/// they come. True when `--count` was reached.
pub async fn event_loop(
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
    let mut ticks = Ticks::new(settings).await;
    let mut done = st.count == Some(0);
    let mut reject_failing = false;
    let mut sockets =
        kernel::SocketWatch::new(tracer.socket_maps, std::mem::take(&mut tracer.namespaces));
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
            _ = ticks.drain.tick() => {
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
            _ = ticks.redraw.tick(), if ui.is_some() => {
                if let (Some(ui), Some(t)) = (ui.as_deref_mut(), st.sink.top.as_mut()) {
                    ui.tick(t)?;
                }
            }
            Some(ev) = top_key(&mut ui) => {
                if key_quits(st, ui.as_deref_mut(), ev)? {
                    break;
                }
            }
            _ = stop.sigint.recv() => break,
            _ = stop.sigterm.recv() => break,
            () = sleep_until(deadline) => break,
            _ = ticks.second.tick() => each_second(st, tracer, &mut sockets, cost)?,
            _ = ticks.reject.tick(), if tracer.reject_pending() => {
                poll_reject(tracer, &mut reject_failing);
            }
            _ = ticks.summary.tick(), if settings.interval.is_some() => {
                if let Some(s) = st.summary_now(tracer, count_in_kernel) {
                    print_summary(st, &s);
                }
            }
        }
    }
    Ok(done)
}

/// A key pressed in `rst-trace top`: handled; true if it quits.
fn key_quits(
    st: &State,
    ui: Option<&mut top::Ui>,
    ev: std::io::Result<crossterm::event::Event>,
) -> Result<bool> {
    let ev = ev.context("rst-trace top: reading the terminal's keys")?;
    if let (Some(ui), Some(t)) = (ui, st.sink.top.as_ref()) {
        match ui.handle(&ev) {
            top::Action::Quit => return Ok(true),
            top::Action::Redraw => ui.draw(t)?,
            top::Action::Nothing => {}
        }
    }
    Ok(false)
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
pub async fn finish_waiting(st: &mut State, answers: &mut Answers, mut done: bool) {
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

/// Once a second: losses and failed inserts reported, the socket maps watched, and the
/// metrics and OTLP exports brought up to date.
fn each_second(
    st: &mut State,
    tracer: &Tracer,
    sockets: &mut kernel::SocketWatch,
    cost: bool,
) -> Result<()> {
    report_losses(st, tracer)?;
    st.sink
        .insert_failures(kernel::insert_failures(&tracer.ebpf)?);
    let maps = sockets.tick();
    st.sink.unlabelled(st.identity.gave_up);
    if let Some(m) = &st.sink.metrics
        && let Ok(mut m) = m.lock()
    {
        if cost {
            m.set_programs(kernel::program_costs(&tracer.ebpf));
        }
        if let Some(maps) = maps {
            m.set_maps(maps);
        }
    }
    st.sink.otlp_tick();
    st.sink.out.flush();
    Ok(())
}

/// Tries to attach the firewall-reset hook once nf_reject is loaded. Said once when it starts
/// failing; the moment it is attached, said too.
fn poll_reject(tracer: &mut Tracer, failing: &mut bool) {
    match tracer.poll_reject() {
        Err(e) if !*failing => {
            *failing = true;
            eprintln!("rst-trace: warning: cannot watch firewall resets: {e:#}");
        }
        Ok(true) => {
            eprintln!("rst-trace: firewall resets: yes (nf_reject loaded): watched from now on")
        }
        _ => {}
    }
}
