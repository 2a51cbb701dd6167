//! Joining failing calls to resets by socket address: a call that arrives while its reset is
//! still on its way (held for its sender, or waiting for its container) is attached to the
//! reset; one that comes later is its own record, joined by the socket's cookie and the reset's
//! time; a reset no call notices within [`NOTICE_WINDOW_NS`] is said to be not (yet) noticed.

use std::{
    collections::{VecDeque, hash_map::Entry},
    net::SocketAddr,
};

use rst_trace_common::{RstEvent, Task};

use super::AppError;
use crate::{
    explain::{AppNotice, Condition, Direction, Process, Report, cond},
    hashing::{FastMap, take_if},
};

/// How long after a reset its application has to notice it (a failing call on the socket)
/// before rst-trace says it has not yet: a request/response client notices at once, a pooled
/// idle connection only when it is next used.
pub const NOTICE_WINDOW_NS: u64 = 10_000_000_000;
/// How long a reset is remembered for a late notice (after its `not_noticed` record), so the
/// late call still says which reset it was and how long after.
pub const FORGET_NS: u64 = 600_000_000_000;
/// Resets remembered at most; beyond, the oldest are forgotten (counted in `evicted`). Each
/// costs about 300 bytes: 5 MiB at most.
const PENDING_MAX: usize = 16_384;
/// A call whose reset has not been printed yet waits this long for it, from when userspace read
/// it: received resets are held 25 ms for their sender, and a reset waits up to 500 ms for its
/// container's identity. (Not from the call's kernel time: reading and symbolizing its stacks
/// can take longer than that on a slow machine, and the reset, read first, is still on its way.)
pub const EARLY_WAIT_NS: u64 = 1_000_000_000;
const EARLY_MAX: usize = 8_192;

/// A socket: its address and cookie (0 if the kernel never generated one). The address alone
/// is reused within microseconds in a connection storm (the slab hands a freed socket's memory
/// to the next one).
type Sock = (u64, u64);

fn key(skaddr: u64, cookie: Option<u64>) -> Sock {
    (skaddr, cookie.unwrap_or(0))
}

/// A printed reset whose application has not noticed it yet.
#[derive(Clone, Debug)]
pub struct Pending {
    pub cookie: Option<u64>,
    pub reset_mono_ns: u64,
    pub condition: Condition,
    pub direction: Direction,
    pub process: Option<Process>,
    pub ipv6: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: Option<crate::explain::TcpState>,
    pub netns: u32,
    /// Its `not_noticed` record is out.
    announced: bool,
}

/// A failing call joined to a reset printed earlier.
#[derive(Clone, Debug)]
pub struct Joined {
    pub error: AppError,
    pub reset: Pending,
    pub delay_ns: u64,
}

/// What the event loop prints.
#[derive(Debug)]
pub enum Outcome {
    /// An `app_error` record joined to its reset.
    Joined(Joined),
    /// An `app_error` record with no reset (a timeout; or the reset was not seen).
    Alone(AppError),
    /// A `not_noticed` record: no call failed within `waited_ns` of the reset.
    NotNoticed(Pending, u64),
}

#[derive(Default)]
pub struct Noticing {
    /// Calls waiting for their reset, by socket, with their arrival order: (socket, the call's
    /// kernel time, when userspace read it).
    early: FastMap<Sock, AppError>,
    early_order: VecDeque<(Sock, u64, u64)>,
    /// Resets waiting for their call, by socket; `order` in reset time, `late` those announced
    /// as not noticed. (The queues may hold entries already joined: they are skipped, and
    /// compacted once they outgrow the maps.)
    pending: FastMap<Sock, Pending>,
    order: VecDeque<(Sock, u64)>,
    late: VecDeque<(Sock, u64)>,
    /// Resets forgotten before a call noticed them, [`PENDING_MAX`] being reached.
    pub evicted: u64,
    /// Failing calls are traced (not `--no-app-errors`, and the kernel has the hook): else no
    /// reset waits to be noticed.
    pub enabled: bool,
    /// A failing connect() (and an `SO_ERROR` read) is seen: else (`--no-syscall-hooks`) a
    /// refused connection attempt, which its application notices there, waits for nothing.
    connects: bool,
}

/// Whether a reset leaves an error for its application to notice: a received reset on a socket
/// the application still holds (not orphaned; not already CLOSE, where tcp_reset() sets no
/// error), and the keepalive timeout's (tcp_write_err() gives the socket ETIMEDOUT).
pub fn awaits_app(r: &Report) -> bool {
    if r.skaddr == 0 || r.orphan {
        return false;
    }
    match r.direction {
        Direction::Received => {
            matches!(r.condition, cond::PEER_RESET | cond::CONNECTION_REFUSED)
                && r.state != Some(crate::explain::TcpState::Close)
        }
        Direction::Sent => r.condition == cond::KEEPALIVE_TIMEOUT,
    }
}

impl Noticing {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            connects: true,
            ..Self::default()
        }
    }

    /// Whether failing connect() calls are seen (see `connects`).
    pub fn connects_seen(self, connects: bool) -> Self {
        Self { connects, ..self }
    }

    /// A failing call arrived (read by userspace at `now`, monotonic ns).
    pub fn app_error(&mut self, e: AppError, now: u64, out: &mut Vec<Outcome>) {
        let k = key(e.skaddr, e.cookie);
        if let Some(reset) = take_if(&mut self.pending, k, |p| e.mono_ns >= p.reset_mono_ns) {
            let delay_ns = e.mono_ns - reset.reset_mono_ns;
            out.push(Outcome::Joined(Joined {
                error: e,
                reset,
                delay_ns,
            }));
            return;
        }
        // Its reset may still be on its way.
        if self.early.len() >= EARLY_MAX {
            out.push(Outcome::Alone(e));
            return;
        }
        match self.early.entry(k) {
            Entry::Occupied(_) => {
                out.push(Outcome::Alone(e));
                return;
            }
            Entry::Vacant(v) => {
                self.early_order.push_back((k, e.mono_ns, now));
                v.insert(e);
            }
        }
        if self.early_order.len() > 2 * EARLY_MAX {
            let early = &self.early;
            self.early_order
                .retain(|(k, t, _)| early.get(k).is_some_and(|e| e.mono_ns == *t));
        }
    }

    /// The process holding a received reset's socket, when it is not the owner the kernel
    /// side had recorded: a failing call on that socket, made after the reset and read while
    /// the reset was held, proves its caller holds it. The owner is learned at accept() and at
    /// each send or receive that returns, so a socket handed on (a server that accepts, forks
    /// and closes its copy; `SCM_RIGHTS`) keeps its last owner until the new holder's first
    /// call returns, which is the very call that fails with the reset.
    pub fn holder(&self, ev: &RstEvent) -> Option<Task> {
        let k = key(ev.skaddr, (ev.cookie != 0).then_some(ev.cookie));
        self.early
            .get(&k)
            .filter(|e| e.mono_ns >= ev.mono_ns && e.task.pid != ev.owner.pid)
            .map(|e| e.task)
    }

    /// A reset is about to be printed: the call that already noticed it (attached to its
    /// report), else it waits for one.
    pub fn reset_printed(&mut self, r: &mut Report) {
        if !self.enabled
            || !awaits_app(r)
            || (!self.connects && r.condition == cond::CONNECTION_REFUSED)
        {
            return;
        }
        let k = key(r.skaddr, r.socket_cookie);
        // A call before the reset is not its consequence (an earlier failure on the socket):
        // it stays on its own, and the delay is never negative.
        if let Some(e) = take_if(&mut self.early, k, |e| e.mono_ns >= r.mono_ns) {
            let delay_ns = e.mono_ns - r.mono_ns;
            r.app_notice = Some(Box::new(AppNotice { error: e, delay_ns }));
            return;
        }
        while self.pending.len() >= PENDING_MAX {
            let Some((k, t)) = self.order.pop_front().or_else(|| self.late.pop_front()) else {
                break;
            };
            if self.forget(k, t) {
                self.evicted += 1;
            }
        }
        self.order.push_back((k, r.mono_ns));
        self.pending.insert(
            k,
            Pending {
                cookie: r.socket_cookie,
                reset_mono_ns: r.mono_ns,
                condition: r.condition,
                direction: r.direction,
                process: r.process.clone(),
                ipv6: r.ipv6,
                local: r.local,
                remote: r.remote,
                state: r.state,
                netns: r.netns,
                announced: false,
            },
        );
        if self.order.len() + self.late.len() > 2 * PENDING_MAX {
            let pending = &self.pending;
            let live = |(k, t): &(Sock, u64)| pending.get(k).is_some_and(|p| p.reset_mono_ns == *t);
            self.order.retain(live);
            self.late.retain(live);
        }
    }

    /// Removes `k`'s pending reset if it is the one of time `t`; true if it was.
    fn forget(&mut self, k: Sock, t: u64) -> bool {
        take_if(&mut self.pending, k, |p| p.reset_mono_ns == t).is_some()
    }

    /// Time passes (`now`, monotonic ns): calls that waited long enough for a reset stand alone,
    /// resets not noticed within the window are announced, old ones forgotten. With `force`
    /// (the end of the run) every call and every unannounced reset goes out now.
    pub fn tick(&mut self, now: u64, force: bool, out: &mut Vec<Outcome>) {
        while let Some(&(k, t, arrived)) = self.early_order.front() {
            if !force && now.saturating_sub(arrived) < EARLY_WAIT_NS {
                break;
            }
            self.early_order.pop_front();
            if let Some(e) = take_if(&mut self.early, k, |e| e.mono_ns == t) {
                out.push(Outcome::Alone(e));
            }
        }
        while let Some(&(k, t)) = self.order.front() {
            if !force && now.saturating_sub(t) < NOTICE_WINDOW_NS {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.get_mut(&k)
                && p.reset_mono_ns == t
                && !p.announced
            {
                p.announced = true;
                out.push(Outcome::NotNoticed(p.clone(), now.saturating_sub(t)));
                self.late.push_back((k, t));
            }
        }
        while let Some(&(k, t)) = self.late.front() {
            if now.saturating_sub(t) < FORGET_NS {
                break;
            }
            self.late.pop_front();
            self.forget(k, t);
        }
    }
}
