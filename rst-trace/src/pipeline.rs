//! The pipeline from a ring record to a printed line, one stage after another:
//! decode → hold received resets for their sender (`correlate`) → `explain` → firewall flow
//! owners (`enrich`) → container identity (`identity::wait`) → `filter` → the sink (event lines,
//! summary, metrics).

use aya::maps::{MapData, RingBuf};
use rst_trace_common::{APP_ERROR_SIZE, AppErrorEvent, CgroupSeen, KIND_RECEIVED, RstEvent};

use crate::{
    apperr::{AppError, Noticing, Outcome},
    correlate::{Held, History},
    enrich::{Answer, Enricher},
    explain::{Report, Sentences, explain},
    filter::Filter,
    identity::{self, Waiting},
    kernel::{self, KernelInfo, Tracer},
    render::{Clock, Sink},
    stacks::{StackReader, Stacks},
};

/// Records taken from the ring per turn of the event loop.
const DRAIN_BATCH: u32 = 16_384;

/// Released reports' buffer kept between turns, in reports.
const READY_KEPT: usize = 64;

/// What [`State::drain_some`] left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// `--count` reached.
    Done,
    /// The ring is empty.
    Empty,
    /// Records are left: come back after the other work.
    More,
}

/// The event loop's state: each stage's own, and the counts that end the run.
pub struct State {
    pub info: KernelInfo,
    pub words: Sentences,
    pub history: History,
    pub held: Held,
    pub enrich: Enricher,
    pub identity: Waiting,
    pub filter: Filter,
    pub sink: Sink,
    pub matched: u64,
    pub count: Option<u64>,
    pub bad_records: u64,
    /// Reports the identity stage released, waiting for the filter and the sink.
    pub ready: Vec<Report>,
    /// Cgroup ids written to the kernel's hidden set (`--container`/`--pod`), to hide later.
    pub to_hide: Vec<u64>,
    /// `--stacks`: reads and symbolizes the stacks of process-context aborts and failing calls.
    pub stacks: Option<StackReader>,
    /// Failing application calls and the resets they join.
    pub noticing: Noticing,
}

impl State {
    /// Takes one ring record; returns true when `--count` is reached.
    fn ingest(&mut self, bytes: &[u8]) -> bool {
        if let Some(seen) = CgroupSeen::decode(bytes) {
            self.identity.warm(seen.cgroup, seen.pid);
            return false;
        }
        if bytes.len() == APP_ERROR_SIZE {
            if let Some(ev) = AppErrorEvent::decode(bytes) {
                let mut e = AppError::decode(&ev);
                // Now, as for a sent reset: the caller may exit any moment.
                e.stacks = self.stacks.as_mut().and_then(|s| s.resolve_app(&ev));
                self.app_error(e);
            }
            return false;
        }
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
            self.held.hold(ev);
            return false;
        }
        // Now, not later in the pipeline: the process whose mappings name its user addresses
        // may exit any moment. (Not for a process --pid filters out: only its ids are read.)
        let stacks = match &mut self.stacks {
            Some(s) if self.filter.pids.is_empty() || self.filter.pids.contains(&ev.owner.pid) => {
                s.resolve(&ev)
            }
            _ => None,
        };
        self.emit(&ev, stacks)
    }

    /// Takes every record the ring holds now; true when `--count` is reached.
    pub fn drain(&mut self, rb: &mut RingBuf<MapData>) -> bool {
        loop {
            match self.drain_some(rb) {
                Drained::Done => return true,
                Drained::Empty => return false,
                Drained::More => {}
            }
        }
    }

    /// Takes at most [`DRAIN_BATCH`] records: in a storm that outpaces userspace the ring never
    /// empties, and the event loop must still get to the identity answers and deadlines
    /// (reports wait there for their container; unanswered, they would pile up).
    pub fn drain_some(&mut self, rb: &mut RingBuf<MapData>) -> Drained {
        let mut n = 0u32;
        while let Some(item) = rb.next() {
            if self.ingest(&item) {
                return Drained::Done;
            }
            n += 1;
            // A full ring (4 MiB by default: ~20k records) takes a while: explain the held received resets
            // that are old enough on the way, while their senders are still in the link history.
            if n.is_multiple_of(1024) && self.release(false) {
                return Drained::Done;
            }
            if n >= DRAIN_BATCH {
                self.stacks_drained(false);
                return Drained::More;
            }
        }
        self.stacks_drained(true);
        Drained::Empty
    }

    /// A failing application call: joined to its reset, or on its own.
    fn app_error(&mut self, e: AppError) {
        let mut out = Vec::new();
        self.noticing.app_error(e, Clock::mono_now(), &mut out);
        self.app_outcomes(out);
    }

    /// Calls that waited long enough for a reset, resets not noticed in time (all of them if
    /// `force`, at the end of the run).
    pub fn app_tick(&mut self, force: bool) {
        let mut out = Vec::new();
        self.noticing.tick(Clock::mono_now(), force, &mut out);
        self.app_outcomes(out);
    }

    fn app_outcomes(&mut self, out: Vec<Outcome>) {
        for o in out {
            // Joined ones and not_noticed follow a reset the filters let through; a call alone
            // has its own test.
            if let Outcome::Alone(e) = &o
                && !self.filter.matches_app(e)
            {
                continue;
            }
            self.sink.outcome(&o);
        }
    }

    /// The end of a drain (`empty`: the ring was read empty): the stack generation may move on
    /// (see `stacks`).
    fn stacks_drained(&mut self, empty: bool) {
        if let Some(s) = &mut self.stacks {
            s.drained(empty);
        }
    }

    /// Explains held received resets once they are old enough (all of them if `force`).
    pub fn release(&mut self, force: bool) -> bool {
        let now = Clock::mono_now();
        while let Some(mut ev) = self.held.next_due(now, force) {
            if let Some(holder) = self.noticing.holder(&ev) {
                ev.owner = holder;
            }
            if self.emit(&ev, None) {
                return true;
            }
        }
        false
    }

    fn emit(&mut self, ev: &RstEvent, stacks: Option<Box<Stacks>>) -> bool {
        let Some(mut report) = self.history.explain_linked(ev, &self.info, self.words) else {
            self.bad_records += 1;
            return false;
        };
        report.stacks = stacks;
        self.held.drop_self_abort(ev, report.condition);
        match self.enrich.submit(report) {
            Some(report) => self.identify(report),
            None => false,
        }
    }

    /// The identity stage: the report goes on once its container is known.
    fn identify(&mut self, report: Report) -> bool {
        let mut ready = std::mem::take(&mut self.ready);
        self.identity.submit(report, &mut ready);
        self.finish_ready(ready)
    }

    /// A container resolver answer: the reports it completes go on.
    pub fn identity_found(&mut self, answer: identity::Answer) -> bool {
        let (cgroup, _, found) = &answer;
        if self.filter.by_identity() && !found.per_pid && !self.filter.identity_matches(Some(found))
        {
            self.to_hide.push(*cgroup);
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.identity.answered(&mut ready);
        self.finish_ready(ready)
    }

    /// Reports overdue for their identity (all of them if `force`) go on without it.
    pub fn identity_overdue(&mut self, force: bool) -> bool {
        let mut ready = std::mem::take(&mut self.ready);
        self.identity
            .release(std::time::Instant::now(), force, &mut ready);
        self.finish_ready(ready)
    }

    fn finish_ready(&mut self, mut ready: Vec<Report>) -> bool {
        let mut done = false;
        for mut report in ready.drain(..) {
            if !done {
                done = self.finish(&mut report);
            }
        }
        // A full identity queue can release thousands at once: that buffer is not kept for the
        // life of the process.
        ready.shrink_to(READY_KEPT);
        self.ready = ready;
        done
    }

    /// Once a second (and at the end): stacks that could not be had are warned about.
    pub fn stacks_tick(&mut self) {
        let Some(s) = &mut self.stacks else {
            return;
        };
        for ((which, errno), n) in s.failed.drain() {
            eprintln!(
                "rst-trace: warning: {n} {which} stacks not shown ({errno}; the events' `{which}_error` says why)"
            );
        }
    }

    /// Cgroups found to hold only hidden containers: the kernel drops their received resets.
    pub fn hide_cgroups(&mut self, tracer: &mut Tracer) {
        for id in self.to_hide.drain(..) {
            if let Err(e) = kernel::hide_cgroup(&mut tracer.ebpf, id) {
                eprintln!("rst-trace: warning: cannot filter cgroup {id} in the kernel: {e:#}");
            }
        }
    }

    /// The answer to a flow-owner look-up: finishes the event that waited for it.
    pub fn owner_found(&mut self, answer: Answer) -> bool {
        match self.enrich.answer(answer) {
            Some(report) => self.identify(report),
            None => false,
        }
    }

    /// Filters, counts and prints one explained reset; true when `--count` is reached.
    fn finish(&mut self, report: &mut Report) -> bool {
        if !self.filter.matches(report) {
            return false;
        }
        self.noticing.reset_printed(report);
        self.matched += 1;
        self.sink.event(report);
        self.count.is_some_and(|c| self.matched >= c)
    }

    /// The summary as of now: what userspace counted from ring records, plus, with
    /// `count_in_kernel`, what the kernel counted (each key explained once).
    pub fn summary_now(&self, tracer: &Tracer, count_in_kernel: bool) -> Option<String> {
        let s = self.sink.summary.as_ref()?;
        let (clock, fmt) = (&self.sink.clock, self.sink.fmt);
        if !count_in_kernel {
            return Some(s.render(clock, fmt));
        }
        let mut s = s.clone();
        match kernel::kernel_counts(&tracer.ebpf) {
            Ok(counts) => {
                for (key, n) in counts {
                    if let Some(r) = explain(&key, &self.info, self.words, None)
                        && self.filter.matches_but_ports(&r)
                    {
                        s.add_n(&r, n);
                    }
                }
            }
            Err(e) => eprintln!("rst-trace: warning: cannot read the kernel's reset counts: {e:#}"),
        }
        Some(s.render(clock, fmt))
    }
}
