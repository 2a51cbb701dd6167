//! The identity stage of the pipeline: every explained reset waits here until the cgroup path
//! and container of its process (and of the linked sender's) are known, then goes on to the
//! filters and the output in arrival order.
//!
//! A cache hit (the common case: a container's resets after its first) passes at once. A miss
//! asks the resolver's thread and parks the report; the answer comes back through the event
//! loop ([`Waiting::answered`]). A report never waits longer than [`MAX_WAIT`]: it then goes
//! out without the missing identity, and the miss is counted ([`Waiting::gave_up`]) and
//! reported on stderr; so does the oldest when a report arrives while [`MAX_QUEUED`] wait.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Identity, Resolver, Roots};
use crate::explain::{Process, Report};

/// The longest a report waits for its identity. A docker container resolves in well under a
/// millisecond (two small files); a pid that is gone costs a walk of the cgroup tree.
pub const MAX_WAIT: Duration = Duration::from_millis(500);

/// Reports waiting at most: in a storm behind a slow look-up, the oldest then goes on without
/// its identity (counted in `gave_up`), so memory stays bounded.
pub const MAX_QUEUED: usize = 16_384;

/// A resolver answer, as the event loop receives it.
pub type Answer = (u64, u32, Arc<Identity>);

/// Reports waiting for their identity, oldest first.
pub struct Waiting {
    resolver: Resolver,
    queue: VecDeque<(Report, Instant)>,
    /// Reports sent on without their identity (the resolver was too slow or its queue full).
    pub gave_up: u64,
}

impl Waiting {
    /// Starts the resolver; its answers come back on `answers`, for [`Self::answered`].
    pub fn start(roots: Roots, answers: tokio::sync::mpsc::UnboundedSender<Answer>) -> Self {
        if super::cgroup2_mount(&roots).is_none() {
            eprintln!(
                "rst-trace: note: no cgroup v2 mount: cgroup paths and containers come from /proc/PID/cgroup alone, so a process that is gone is not named"
            );
        }
        let resolver = Resolver::start(roots, move |cgroup, pid, identity| {
            // The event loop is gone: nothing is waiting any more.
            let _ = answers.send((cgroup, pid, identity));
        });
        Self {
            resolver,
            queue: VecDeque::new(),
            gave_up: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes one report; the reports now ready, in order, go to `out`.
    pub fn submit(&mut self, mut report: Report, out: &mut Vec<Report>) {
        // Behind a waiting report, a report waits too, so the output keeps the kernel's order.
        if label(&self.resolver, &mut report, true) && self.queue.is_empty() {
            out.push(report);
            return;
        }
        // Full: the head goes on as it is, before the push, so that the queue never holds more
        // than MAX_QUEUED (one more would double its buffer for the life of the process).
        let full = self.queue.len() >= MAX_QUEUED;
        if full && let Some((head, _)) = self.queue.pop_front() {
            self.gave_up += u64::from(!is_labelled(&head));
            out.push(head);
        }
        self.queue.push_back((report, Instant::now() + MAX_WAIT));
        if full {
            // Those behind the head follow as soon as they are complete.
            self.release(Instant::now(), false, out);
        }
    }

    /// A cgroup in which an owner was just learned (a `CgroupSeen` record): resolved now, while
    /// its process lives, unless cached already, so that the resets it leaves after it dies
    /// still name their container.
    pub fn warm(&self, cgroup: u64, pid: u32) {
        if cgroup != 0 && self.resolver.get(cgroup, pid).is_none() {
            // A full queue is counted by the resolver; the reset asks again.
            self.resolver.request(cgroup, pid);
        }
    }

    /// The queue's buffer, in reports.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// A resolver answer came (it is cached now, so the answer itself is not needed): the
    /// reports it completes go to `out`.
    pub fn answered(&mut self, out: &mut Vec<Report>) {
        self.release(Instant::now(), false, out);
    }

    /// Releases the reports at the head that are complete, or overdue at `now` (all of them
    /// if `force`).
    pub fn release(&mut self, now: Instant, force: bool, out: &mut Vec<Report>) {
        while let Some((report, deadline)) = self.queue.front_mut() {
            let overdue = force || now >= *deadline;
            if !label(&self.resolver, report, false) && !overdue {
                break;
            }
            if let Some((report, _)) = self.queue.pop_front() {
                if !is_labelled(&report) {
                    self.gave_up += 1;
                }
                out.push(report);
            }
        }
    }

    /// When the head of the queue is due at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(_, d)| *d)
    }
}

/// Fills the identities the cache has; on a miss, asks the resolver (if `ask`). True when
/// nothing is missing.
fn label(resolver: &Resolver, report: &mut Report, ask: bool) -> bool {
    let mut done = true;
    let linked = report.linked.as_mut().and_then(|l| l.process.as_mut());
    for p in [report.process.as_mut(), linked].into_iter().flatten() {
        if needs_identity(p) {
            p.identity = resolver.get(p.cgroup, p.pid);
            if p.identity.is_none() {
                done = false;
                if ask {
                    // A full queue is counted by the resolver and ends in `gave_up`.
                    resolver.request(p.cgroup, p.pid);
                }
            }
        }
    }
    done
}

/// A process whose cgroup is known but not yet resolved.
fn needs_identity(p: &Process) -> bool {
    p.cgroup != 0 && p.identity.is_none()
}

fn is_labelled(report: &Report) -> bool {
    let linked = report.linked.as_ref().and_then(|l| l.process.as_ref());
    [report.process.as_ref(), linked]
        .into_iter()
        .flatten()
        .all(|p| !needs_identity(p))
}
