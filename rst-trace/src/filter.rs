//! Userspace filters. `--pid`, `--port` and `--direction` are also applied in the kernel (so a
//! busy host does not pay for events nobody asked for); applying them here too keeps the result
//! right whatever the kernel side could decide. `--container` and `--pod` match the identity
//! stage's answer; the kernel learns which cgroups they hide (`kernel::hide_cgroup`).

use std::collections::HashSet;

use crate::{
    apperr::AppError,
    explain::{Condition, Direction, Report},
    identity::Identity,
};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: HashSet<u32>,
    pub comms: HashSet<String>,
    /// Sorted, no duplicates: looked up by binary search for every event.
    pub ports: Vec<u16>,
    pub direction: Option<Direction>,
    pub conditions: HashSet<Condition>,
    /// `--container`: names or id prefixes.
    pub containers: Vec<String>,
    /// `--pod`: `(namespace, name)`.
    pub pods: Vec<(Option<String>, String)>,
}

impl Filter {
    /// `--container` or `--pod` given: a reset matches by its process's identity.
    pub fn by_identity(&self) -> bool {
        !self.containers.is_empty() || !self.pods.is_empty()
    }

    /// Whether a process in `identity` passes `--container` and `--pod` (true without them).
    pub fn identity_matches(&self, identity: Option<&Identity>) -> bool {
        let container = identity.and_then(|i| i.container.as_ref());
        if !self.containers.is_empty()
            && !container.is_some_and(|c| self.containers.iter().any(|w| c.is_named(w)))
        {
            return false;
        }
        if !self.pods.is_empty()
            && !container.is_some_and(|c| {
                self.pods
                    .iter()
                    .any(|(ns, pod)| c.in_pod(ns.as_deref(), pod))
            })
        {
            return false;
        }
        true
    }

    /// Filters combine with AND; the values of one filter with OR.
    pub fn matches(&self, r: &Report) -> bool {
        if !self.ports.is_empty()
            && self.ports.binary_search(&r.local.port()).is_err()
            && self.ports.binary_search(&r.remote.port()).is_err()
        {
            return false;
        }
        self.matches_but_ports(r)
    }

    /// [`Filter::matches`] without the port test: for resets counted in the kernel, whose
    /// ports the kernel already filtered and then dropped from the count key.
    pub fn matches_but_ports(&self, r: &Report) -> bool {
        if !self.pids.is_empty()
            && !r
                .process
                .as_ref()
                .is_some_and(|p| self.pids.contains(&p.pid))
        {
            return false;
        }
        if !self.comms.is_empty()
            && !r
                .process
                .as_ref()
                .is_some_and(|p| self.comms.contains(&*p.comm))
        {
            return false;
        }
        if self.direction.is_some_and(|d| d != r.direction) {
            return false;
        }
        if self.by_identity()
            && !self.identity_matches(r.process.as_ref().and_then(|p| p.identity.as_deref()))
        {
            return false;
        }
        if !self.conditions.is_empty() && !self.conditions.contains(&r.condition) {
            return false;
        }
        true
    }

    /// Whether a failing call with no reset behind it is shown: `--condition`, `--direction`,
    /// `--container` and `--pod` select resets (or need a resolved identity), so with any of
    /// them only calls joined to a shown reset are; `--pid`, `--comm` and `--port` apply to the
    /// call itself.
    pub fn matches_app(&self, e: &AppError) -> bool {
        if !self.conditions.is_empty() || self.direction.is_some() || self.by_identity() {
            return false;
        }
        if !self.ports.is_empty()
            && self.ports.binary_search(&e.local.port()).is_err()
            && self.ports.binary_search(&e.remote.port()).is_err()
        {
            return false;
        }
        (self.pids.is_empty() || self.pids.contains(&e.process.pid))
            && (self.comms.is_empty() || self.comms.contains(&*e.process.comm))
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |name: &str, mut v: Vec<String>| {
            if !v.is_empty() {
                v.sort();
                parts.push(format!("{name}={}", v.join(",")));
            }
        };
        list("pid", self.pids.iter().map(ToString::to_string).collect());
        list("comm", self.comms.iter().cloned().collect());
        list("port", self.ports.iter().map(ToString::to_string).collect());
        list(
            "condition",
            self.conditions
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
        );
        list("container", self.containers.clone());
        list(
            "pod",
            self.pods
                .iter()
                .map(|(ns, p)| {
                    ns.as_ref()
                        .map_or_else(|| p.clone(), |ns| format!("{ns}/{p}"))
                })
                .collect(),
        );
        if let Some(d) = self.direction {
            parts.push(format!("direction={}", d.as_str()));
        }
        if parts.is_empty() {
            "no filters".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Report builders for unit tests of this and other modules.
#[cfg(test)]
pub mod tests_support {
    use std::net::SocketAddr;

    use crate::explain::{Direction, Process, Report, cond};

    pub fn report(pid: Option<u32>, comm: &str, lport: u16, rport: u16, dir: Direction) -> Report {
        Report {
            mono_ns: 0,
            direction: dir,
            origin: None,
            condition: cond::PEER_RESET,
            explanation: String::new(),
            kernel_reason: None,
            state: None,
            ipv6: false,
            local: SocketAddr::from(([127, 0, 0, 1], lport)),
            remote: SocketAddr::from(([127, 0, 0, 1], rport)),
            process: pid.map(|pid| Process {
                pid,
                tid: pid,
                comm: comm.into(),
                thread: None,
                uid: 0,
                cgroup: 0,
                identity: None,
            }),
            attribution: crate::explain::Attribution::SocketOwner,
            no_process_why: None,
            netns: 0,
            socket_cookie: None,
            detail: vec![],
            linked: None,
            inferred: false,
            stacks: None,
            skaddr: 0,
            orphan: false,
            app_notice: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::cond;
    use tests_support::report;

    #[test]
    fn empty_filter_matches_everything() {
        let f = Filter::default();
        assert!(f.matches(&report(None, "", 1, 2, Direction::Sent)));
    }

    #[test]
    fn pid_filter_needs_a_matching_process() {
        let f = Filter {
            pids: [10, 11].into(),
            ..Default::default()
        };
        assert!(f.matches(&report(Some(11), "a", 1, 2, Direction::Sent)));
        assert!(!f.matches(&report(Some(12), "a", 1, 2, Direction::Sent)));
        assert!(!f.matches(&report(None, "a", 1, 2, Direction::Sent)));
    }

    #[test]
    fn filters_combine_with_and_values_with_or() {
        let f = Filter {
            comms: ["srv".to_string()].into(),
            ports: [80, 443].into(),
            direction: Some(Direction::Received),
            conditions: [cond::PEER_RESET].into(),
            ..Default::default()
        };
        assert!(f.matches(&report(Some(1), "srv", 5000, 443, Direction::Received)));
        assert!(f.matches(&report(Some(1), "srv", 80, 5000, Direction::Received)));
        assert!(!f.matches(&report(Some(1), "srv", 5000, 5001, Direction::Received)));
        assert!(!f.matches(&report(Some(1), "cli", 80, 5000, Direction::Received)));
        assert!(!f.matches(&report(Some(1), "srv", 80, 5000, Direction::Sent)));
        let mut r = report(Some(1), "srv", 80, 5000, Direction::Received);
        r.condition = cond::CONNECTION_REFUSED;
        assert!(!f.matches(&r));
        assert_eq!(
            f.describe(),
            "comm=srv port=443,80 condition=peer_reset direction=received"
        );
    }
}
