//! Where explained resets go: the event lines (unless `--quiet`), the summary and the metrics,
//! and the lost-event records.

use super::{Clock, Format, Out, Summary, app, event, metrics};
use crate::{apperr::Outcome, cli::ByArg, explain::Report};

pub struct Sink {
    pub fmt: Format,
    pub clock: Clock,
    /// `--quiet`: no event lines.
    pub quiet: bool,
    /// Only with --summary (counting costs an allocation per event).
    pub summary: Option<Summary>,
    pub metrics: Option<metrics::Shared>,
    pub out: Out,
    /// The line being rendered, reused from event to event.
    line: String,
    lost_seen: u64,
    insert_failed_seen: u64,
    unlabelled_seen: u64,
    app_lost_seen: u64,
    evicted_seen: u64,
    /// `rst-trace top`: events are counted here instead of printed.
    pub top: Option<crate::top::TopState>,
    /// `--otlp`: every record goes there too, as JSON (whatever the output format), but those
    /// of rst-trace's own sockets: its connections to a collector that is down would fill the
    /// queue with records of the export failing, which stderr says once.
    pub otlp: Option<crate::otlp::Otlp>,
    /// rst-trace's own pid, read once: `std::process::id()` is a getpid() system call (glibc
    /// caches no pid), which per event showed in a storm's profile (README, Reset storms).
    own_pid: u32,
}

impl Sink {
    pub fn new(fmt: Format, quiet: bool, summary: Option<ByArg>, out: Out) -> Self {
        Self {
            fmt,
            clock: Clock::now(),
            quiet,
            summary: summary.map(Summary::by),
            metrics: None,
            out,
            line: String::with_capacity(1024),
            lost_seen: 0,
            insert_failed_seen: 0,
            unlabelled_seen: 0,
            app_lost_seen: 0,
            evicted_seen: 0,
            top: None,
            otlp: None,
            own_pid: std::process::id(),
        }
    }

    /// Counts and prints one explained reset that passed the filter.
    pub fn event(&mut self, report: &Report) {
        if let Some(s) = &mut self.summary {
            s.add(report);
        }
        if let Some(m) = &self.metrics
            && let Ok(mut m) = m.lock()
        {
            m.record(report);
            if let Some(n) = &report.app_notice {
                m.app_error(n.error.errno.name());
            }
        }
        let mut json_rendered = false;
        if let Some(t) = &mut self.top {
            t.add(report);
        } else if !self.quiet {
            event::render_into(&mut self.line, report, &self.clock, self.fmt);
            self.out.line(&self.line);
            json_rendered = self.fmt == Format::Json;
        }
        if let Some(o) = &self.otlp
            && report
                .process
                .as_ref()
                .is_none_or(|p| p.pid != self.own_pid)
        {
            if !json_rendered {
                event::render_into(&mut self.line, report, &self.clock, Format::Json);
            }
            o.send(self.line.clone());
        }
    }

    /// Prints an application record (`app_error`, `not_noticed`); counts the resets not
    /// noticed for the summary.
    pub fn outcome(&mut self, o: &Outcome) {
        if let Outcome::NotNoticed(..) = o
            && let Some(s) = &mut self.summary
        {
            s.not_noticed += 1;
        }
        if let Some(m) = &self.metrics
            && let Ok(mut m) = m.lock()
        {
            match o {
                Outcome::Joined(j) => m.app_error(j.error.errno.name()),
                Outcome::Alone(e) => m.app_error(e.errno.name()),
                Outcome::NotNoticed(..) => m.not_noticed(),
            }
        }
        if let Some(t) = &mut self.top {
            t.add_outcome(o);
        } else if !self.quiet {
            let line = app::outcome(o, &self.clock, self.fmt);
            self.out.line(&line);
        }
        let pid = match o {
            Outcome::Joined(j) => Some(j.error.process.pid),
            Outcome::Alone(e) => Some(e.process.pid),
            Outcome::NotNoticed(p, _) => p.process.as_ref().map(|p| p.pid),
        };
        if let Some(x) = &self.otlp
            && pid != Some(self.own_pid)
        {
            x.send(app::outcome(o, &self.clock, Format::Json));
        }
    }

    /// `--otlp`: the export queue's drops so far, for the metrics (the export thread says them
    /// on stderr and sends a `lost` record).
    pub fn otlp_tick(&mut self) {
        if let (Some(o), Some(m)) = (&self.otlp, &self.metrics)
            && let Ok(mut m) = m.lock()
        {
            m.set_otlp_dropped(o.dropped());
        }
    }

    /// Application error records the kernel side could not queue, and resets forgotten before
    /// their application noticed them (the pending table is bounded), given the running totals:
    /// warned on stderr, never silently.
    pub fn app_losses(&mut self, lost: u64, evicted: u64) {
        if lost > self.app_lost_seen {
            eprintln!(
                "rst-trace: warning: {} application error events lost ({lost} in total; ring buffer full): raise --ring-size or filter with --pid/--port",
                lost - self.app_lost_seen
            );
            self.app_lost_seen = lost;
        }
        if evicted > self.evicted_seen {
            eprintln!(
                "rst-trace: warning: {} resets forgotten before their application noticed them ({evicted} in all; too many waiting)",
                evicted - self.evicted_seen
            );
            self.evicted_seen = evicted;
        }
    }

    /// Reports events lost since the last call, given the running `total`.
    /// Kernel-side records that could not be stored (a full owner, TIME_WAIT or listener map):
    /// not lost events, but resets that may then show no process. Warned on stderr, never
    /// silently.
    pub fn insert_failures(&mut self, total: u64) {
        if total > self.insert_failed_seen {
            eprintln!(
                "rst-trace: warning: {} socket records could not be stored in the kernel ({total} in all; a map is full): resets of those sockets may name no process",
                total - self.insert_failed_seen
            );
            self.insert_failed_seen = total;
        }
    }

    /// Resets printed before their container was resolved (`identity::wait`), given
    /// the running `total`: warned on stderr, never silently.
    pub fn unlabelled(&mut self, total: u64) {
        if total > self.unlabelled_seen {
            eprintln!(
                "rst-trace: warning: {} resets printed without their cgroup path and container ({total} in all): resolving them took over {} ms, or over {} resets waited",
                total - self.unlabelled_seen,
                crate::identity::wait::MAX_WAIT.as_millis(),
                crate::identity::wait::MAX_QUEUED
            );
            self.unlabelled_seen = total;
        }
    }

    pub fn lost(&mut self, total: u64) {
        if total > self.lost_seen {
            let count = total - self.lost_seen;
            let line = event::lost(count, total, &self.clock, self.fmt);
            self.lost_seen = total;
            if let Some(s) = &mut self.summary {
                s.lost = total;
            }
            if let Some(m) = &self.metrics
                && let Ok(mut m) = m.lock()
            {
                m.set_lost(total);
            }
            if let Some(o) = &self.otlp {
                o.send(event::lost(count, total, &self.clock, Format::Json));
            }
            // `rst-trace top` shows it in its header: no line drawn over the screen.
            if let Some(t) = &mut self.top {
                t.lost = total;
                return;
            }
            match self.fmt {
                Format::Json => self.out.line(&line),
                // Text mode: stdout carries events only; the warning goes to stderr.
                Format::Text { .. } => eprintln!("{line}"),
            }
        }
    }
}
