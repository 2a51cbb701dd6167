//! Firewall resets' flow owners: netfilter builds its RST without a socket, but the rejected
//! flow may still have one on this host. Its owner is looked up on a thread of its own, and the
//! event waits for the answer before it is filtered and printed.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use rst_trace_common::Task;

use crate::{
    explain::{Attribution, Process, Report, cond},
    owners,
};

/// An owner look-up's answer: the token it was asked under, and the owner found.
pub type Answer = (u64, Option<Task>);

/// Finds the process holding the local socket of a flow, by its endpoints, in network namespace
/// `netns`: for resets no TCP socket sent (netfilter REJECT), whose flow may still have a local
/// socket (REJECT of an established connection's data, or of a local client's packets). Costs a
/// sock_diag dump and a /proc scan (tens of ms on a busy host), so it runs on a thread of its
/// own, off the event loop, and is rate-limited: events past the limit keep no process.
pub struct FlowOwners {
    budget: u32,
    window: Instant,
    requests: std::sync::mpsc::Sender<(u64, u64, SocketAddr, SocketAddr)>,
}

/// Look-ups per second at most.
const FLOW_LOOKUPS_PER_SEC: u32 = 20;

impl FlowOwners {
    /// Starts the look-up thread. Answers, `(token, owner)`, come back on `answers`.
    pub fn start(answers: tokio::sync::mpsc::UnboundedSender<(u64, Option<Task>)>) -> Self {
        let (requests, rx) = std::sync::mpsc::channel::<(u64, u64, SocketAddr, SocketAddr)>();
        std::thread::spawn(move || {
            for (token, netns, a, b) in rx {
                if answers
                    .send((token, owners::flow_owner(netns, a, b)))
                    .is_err()
                {
                    break;
                }
            }
        });
        Self {
            budget: FLOW_LOOKUPS_PER_SEC,
            window: Instant::now(),
            requests,
        }
    }

    /// Queues a look-up; false if over the rate limit (or the thread is gone).
    pub fn request(&mut self, token: u64, netns: u64, a: SocketAddr, b: SocketAddr) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.budget = FLOW_LOOKUPS_PER_SEC;
        }
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        self.requests.send((token, netns, a, b)).is_ok()
    }
}

/// Firewall resets waiting for their flow's owner.
pub struct Enricher {
    flows: FlowOwners,
    /// The waiting reports, by look-up token.
    awaiting: HashMap<u64, Report>,
    next_token: u64,
}

impl Enricher {
    /// Starts the look-up thread; its answers come back on `answers`, for [`Self::answer`].
    pub fn start(answers: tokio::sync::mpsc::UnboundedSender<Answer>) -> Self {
        Self {
            flows: FlowOwners::start(answers),
            awaiting: HashMap::new(),
            next_token: 0,
        }
    }

    /// The report, finished, or `None` if it now waits for its flow's owner.
    pub fn submit(&mut self, report: Report) -> Option<Report> {
        if report.condition == cond::FIREWALL_REJECT && report.process.is_none() {
            // The rejected flow's owner, looked up off the event loop: the event is finished
            // when the answer comes back (`answer`).
            let token = self.next_token;
            self.next_token += 1;
            if self
                .flows
                .request(token, u64::from(report.netns), report.local, report.remote)
            {
                self.awaiting.insert(token, report);
                return None;
            }
        }
        Some(report)
    }

    /// The answer to a flow-owner look-up: the event that waited for it, finished.
    pub fn answer(&mut self, (token, owner): Answer) -> Option<Report> {
        let mut report = self.awaiting.remove(&token)?;
        if let Some(t) = owner {
            let p = Process::from_task(&t);
            report.explanation.push_str(&format!(
                "; the rejected flow's socket on this host belongs to {p}"
            ));
            report.process = Some(p);
            report.attribution = Attribution::SocketOwner;
            report.no_process_why = None;
        }
        Some(report)
    }

    pub fn is_waiting(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// The tokens of the reports still waiting, to finish them without an owner.
    pub fn waiting_tokens(&self) -> Vec<u64> {
        self.awaiting.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{explain::Direction, filter::tests_support::report};

    fn enricher() -> (Enricher, tokio::sync::mpsc::UnboundedReceiver<Answer>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Enricher::start(tx), rx)
    }

    fn firewall_reset() -> Report {
        let mut r = report(None, "", 80, 40000, Direction::Sent);
        r.condition = cond::FIREWALL_REJECT;
        r.attribution = Attribution::NoProcess;
        r.no_process_why = Some("firewall");
        r.explanation = "rejected".into();
        r
    }

    #[test]
    fn only_firewall_resets_without_a_process_wait() {
        let (mut e, _rx) = enricher();
        assert!(
            e.submit(report(Some(1), "a", 1, 2, Direction::Sent))
                .is_some()
        );
        assert!(
            e.submit(report(None, "", 1, 2, Direction::Received))
                .is_some()
        );
        let mut owned = firewall_reset();
        owned.process = report(Some(3), "b", 1, 2, Direction::Sent).process;
        assert!(e.submit(owned).is_some());
        assert!(!e.is_waiting());
    }

    #[test]
    fn an_answer_finishes_its_report_once() {
        let (mut e, _rx) = enricher();
        e.awaiting.insert(7, firewall_reset());
        e.awaiting.insert(8, firewall_reset());
        assert_eq!(e.waiting_tokens().len(), 2);
        let mut t = Task {
            pid: 42,
            tid: 43,
            ..Default::default()
        };
        t.comm[..4].copy_from_slice(b"curl");
        let r = e.answer((7, Some(t))).unwrap();
        assert_eq!(r.process.as_ref().map(|p| p.pid), Some(42));
        assert_eq!(r.attribution, Attribution::SocketOwner);
        assert_eq!(r.no_process_why, None);
        assert_eq!(
            r.explanation,
            "rejected; the rejected flow's socket on this host belongs to curl[42]"
        );
        assert!(e.answer((7, None)).is_none());
        // No owner found: the report goes out as it was.
        assert_eq!(e.answer((8, None)), Some(firewall_reset()));
        assert!(!e.is_waiting());
    }

    #[test]
    fn look_ups_are_rate_limited() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut f = FlowOwners::start(tx);
        // Namespace 0 exists nowhere: each look-up ends at once.
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        for token in 0..u64::from(FLOW_LOOKUPS_PER_SEC) {
            assert!(f.request(token, 0, a, a));
        }
        assert!(!f.request(99, 0, a, a));
    }
}
