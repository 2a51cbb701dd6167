//! What `rst-trace top` shows, counted as events arrive: resets by a group key (process,
//! container, pod, remote address or condition), with their rate each second and a minute of
//! history; the failing application calls; resets nobody noticed. Pure: the screen is drawn
//! from it (`ui.rs`).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::{
    apperr::Outcome,
    explain::{Detail, DetailValue, Origin, Report},
    render::visible,
};

/// Seconds of history a row keeps for its trend.
pub const HISTORY: usize = 60;
/// Rows kept per grouping; further keys fold into one `other` row, so a storm of distinct
/// remotes cannot grow memory without bound.
const MAX_ROWS: usize = 5_000;
/// Delays kept per failing call, for its median.
const MAX_DELAYS: usize = 1_000;

/// What rows are grouped by (`g` cycles through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Process,
    Container,
    Pod,
    Remote,
    Condition,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [
        Self::Process,
        Self::Container,
        Self::Pod,
        Self::Remote,
        Self::Condition,
    ];

    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|g| *g == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Process => "PROCESS",
            Self::Container => "CONTAINER",
            Self::Pod => "POD",
            Self::Remote => "REMOTE",
            Self::Condition => "CONDITION",
        }
    }

    /// The row key of `r` under this grouping (names made visible: they come from outside).
    fn key(self, r: &Report) -> String {
        let container = r
            .process
            .as_ref()
            .and_then(|p| p.identity.as_ref())
            .and_then(|i| i.container.as_ref());
        let key = match self {
            Self::Process => match (&r.process, r.origin) {
                (Some(p), _) => p.to_string(),
                (None, Some(Origin::Netfilter)) => "firewall (REJECT)".to_owned(),
                (None, _) => format!("kernel ({})", r.no_process_why.unwrap_or("no process")),
            },
            Self::Container => container.map_or_else(|| "-".to_owned(), |c| c.label()),
            Self::Pod => container
                .and_then(|c| c.pod_label())
                .unwrap_or_else(|| "-".to_owned()),
            Self::Remote => r.remote.ip().to_string(),
            Self::Condition => r.condition.as_str().to_owned(),
        };
        visible(&key).into_owned()
    }
}

/// The latest reset of a row, for the detail pane.
#[derive(Clone, Debug)]
pub struct Latest {
    pub explanation: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: String,
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// One row: a group key, condition and direction.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub condition: &'static str,
    pub direction: &'static str,
    /// What the application sees (the reset's `errno` detail), if it sees anything.
    pub errno: Option<String>,
    pub total: u64,
    /// Resets in the last whole second, and in the current one.
    pub rate: u64,
    current: u64,
    /// One count per second, oldest first.
    pub history: VecDeque<u64>,
    pub latest: Option<Latest>,
}

/// Failing calls of one kind (`connect` with `ECONNREFUSED`, ...).
#[derive(Clone, Debug, Default)]
pub struct CallRow {
    pub count: u64,
    /// Delays after their reset (ns), for the median; calls with no reset have none.
    delays: Vec<u64>,
}

impl CallRow {
    pub fn median_delay_ns(&self) -> Option<u64> {
        let mut d = self.delays.clone();
        d.sort_unstable();
        d.get(d.len() / 2).copied()
    }
}

#[derive(Debug)]
pub struct TopState {
    /// Per grouping, its rows by (key, condition, direction).
    rows: HashMap<GroupBy, HashMap<(String, &'static str, &'static str), Row>>,
    pub total: u64,
    /// All resets in the last whole second, and a minute of them.
    pub rate: u64,
    current: u64,
    pub history: VecDeque<u64>,
    pub lost: u64,
    pub calls: HashMap<(String, String), CallRow>,
    pub not_noticed: u64,
}

impl Default for TopState {
    fn default() -> Self {
        Self {
            rows: GroupBy::ALL.iter().map(|g| (*g, HashMap::new())).collect(),
            total: 0,
            rate: 0,
            current: 0,
            history: VecDeque::with_capacity(HISTORY),
            lost: 0,
            calls: HashMap::new(),
            not_noticed: 0,
        }
    }
}

impl TopState {
    /// Counts one explained reset in every grouping.
    pub fn add(&mut self, r: &Report) {
        self.total += 1;
        self.current += 1;
        let errno = r.detail.iter().find_map(|(k, v)| match (k, v) {
            (Detail::Errno, DetailValue::Text(t)) => Some(t.clone()),
            _ => None,
        });
        for (group, rows) in &mut self.rows {
            let mut key = (group.key(r), r.condition.as_str(), r.direction.as_str());
            if rows.len() >= MAX_ROWS && !rows.contains_key(&key) {
                key.0 = "other".to_owned();
            }
            let row = rows.entry(key.clone()).or_insert_with(|| Row {
                key: key.0,
                condition: key.1,
                direction: key.2,
                errno: None,
                total: 0,
                rate: 0,
                current: 0,
                history: VecDeque::with_capacity(HISTORY),
                latest: None,
            });
            row.total += 1;
            row.current += 1;
            row.errno.clone_from(&errno);
            if *group == GroupBy::Process {
                row.latest = Some(latest(r));
            }
        }
        if let Some(n) = &r.app_notice {
            self.call(n.error.call.name(), n.error.errno.name(), Some(n.delay_ns));
        }
    }

    /// Counts an application record.
    pub fn add_outcome(&mut self, o: &Outcome) {
        match o {
            Outcome::Joined(j) => {
                self.call(j.error.call.name(), j.error.errno.name(), Some(j.delay_ns));
            }
            Outcome::Alone(e) => self.call(e.call.name(), e.errno.name(), None),
            Outcome::NotNoticed(..) => self.not_noticed += 1,
        }
    }

    fn call(&mut self, call: String, errno: String, delay_ns: Option<u64>) {
        let row = self.calls.entry((call, errno)).or_default();
        row.count += 1;
        if let Some(d) = delay_ns
            && row.delays.len() < MAX_DELAYS
        {
            row.delays.push(d);
        }
    }

    /// A second has passed: the current counts become the rates, and history moves on.
    pub fn tick(&mut self) {
        push(&mut self.history, self.current);
        self.rate = std::mem::take(&mut self.current);
        for rows in self.rows.values_mut() {
            for row in rows.values_mut() {
                push(&mut row.history, row.current);
                row.rate = std::mem::take(&mut row.current);
            }
        }
    }

    /// The rows of `group`, sorted by `sort`.
    pub fn rows(&self, group: GroupBy, sort: Sort) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .get(&group)
            .map_or_else(Vec::new, |r| r.values().collect());
        rows.sort_by(|a, b| {
            match sort {
                Sort::Rate => b.rate.cmp(&a.rate).then(b.total.cmp(&a.total)),
                Sort::Total => b.total.cmp(&a.total),
                Sort::Name => a.key.cmp(&b.key),
            }
            .then(a.key.cmp(&b.key))
            .then(a.condition.cmp(b.condition))
        });
        rows
    }
}

/// How rows are ordered (`s` cycles through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Rate,
    Total,
    Name,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Self::Rate => Self::Total,
            Self::Total => Self::Name,
            Self::Name => Self::Rate,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Total => "total",
            Self::Name => "name",
        }
    }
}

fn push(h: &mut VecDeque<u64>, v: u64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(v);
}

fn latest(r: &Report) -> Latest {
    let container = r
        .process
        .as_ref()
        .and_then(|p| p.identity.as_ref())
        .and_then(|i| i.container.as_ref());
    Latest {
        explanation: visible(&r.explanation).into_owned(),
        local: r.local,
        remote: r.remote,
        state: r.state.map_or_else(|| "-".to_owned(), |s| s.name()),
        container: container.map(|c| visible(&c.label()).into_owned()),
        pod: container
            .and_then(|c| c.pod_label())
            .map(|p| visible(&p).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{explain::Direction, filter::tests_support::report};

    #[test]
    fn rows_by_group_rates_and_history() {
        let mut s = TopState::default();
        for _ in 0..3 {
            s.add(&report(Some(7), "api", 80, 5000, Direction::Sent));
        }
        s.add(&report(None, "", 80, 5001, Direction::Sent));
        s.tick();
        let rows = s.rows(GroupBy::Process, Sort::Rate);
        assert_eq!(rows[0].key, "api[7]");
        assert_eq!((rows[0].rate, rows[0].total), (3, 3));
        assert!(rows[1].key.starts_with("kernel ("), "{:?}", rows[1].key);
        assert_eq!(s.rate, 4);
        s.tick();
        assert_eq!(s.rows(GroupBy::Process, Sort::Rate)[0].history, [3, 0]);
        assert_eq!(s.rows(GroupBy::Remote, Sort::Total)[0].key, "127.0.0.1");
        assert_eq!(s.rows(GroupBy::Condition, Sort::Name)[0].key, "peer_reset");
    }

    #[test]
    fn hostile_names_are_visible() {
        let mut s = TopState::default();
        s.add(&report(Some(7), "a\nb\x1b[2J", 80, 5000, Direction::Sent));
        let rows = s.rows(GroupBy::Process, Sort::Rate);
        assert_eq!(rows[0].key, "a\\nb\\x1b[2J[7]");
    }
}
