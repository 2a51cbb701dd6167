//! `--summary`: counts of resets by process (or `--by` container or pod), condition and
//! direction.

use std::collections::HashMap;

use serde_json::json;

use crate::{
    cli::ByArg,
    explain::Report,
    render::{
        Clock, Format,
        fast::{rfc3339, visible},
    },
};

/// Distinct rows kept; the rest fold into one `other` row so memory stays bounded in a storm.
const MAX_ROWS: usize = 10_000;

/// Whom a row counts: by process kept without allocating, since every event of a storm is
/// counted.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Who {
    /// pid and comm (the kernel's, at most 15 bytes, zero-padded).
    Process(u32, [u8; 16]),
    /// `--by container` or `--by pod`: its label.
    Group(String),
    NoProcess,
    /// The fold-over row once `MAX_ROWS` are in use.
    Other,
}

impl Who {
    fn name(&self) -> String {
        match self {
            Self::Process(pid, comm) => {
                use crate::explain::{comm_bytes, name_text};
                format!("{}[{pid}]", name_text(comm_bytes(comm)))
            }
            Self::Group(g) => g.clone(),
            Self::NoProcess => "-".to_owned(),
            Self::Other => "other".to_owned(),
        }
    }
}

#[derive(Clone, Default)]
pub struct Summary {
    rows: HashMap<(Who, &'static str, &'static str), u64>,
    pub lost: u64,
    /// Resets no application call noticed within the notice window (or before the run ended).
    pub not_noticed: u64,
    /// Failing application calls are traced: else `not_noticed` means nothing (`null`).
    pub app_errors: bool,
    by: ByArg,
}

impl Summary {
    pub fn by(by: ByArg) -> Self {
        Self {
            by,
            ..Self::default()
        }
    }

    fn who(&self, r: &Report) -> Who {
        let Some(p) = r.process.as_ref() else {
            return Who::NoProcess;
        };
        let container = p.identity.as_ref().and_then(|i| i.container.as_ref());
        match self.by {
            ByArg::Process => {
                let mut comm = [0u8; 16];
                let n = p.comm.len().min(16);
                comm[..n].copy_from_slice(&p.comm.as_bytes()[..n]);
                Who::Process(p.pid, comm)
            }
            ByArg::Container => container.map_or(Who::NoProcess, |c| Who::Group(c.label())),
            ByArg::Pod => container
                .and_then(|c| c.pod_label())
                .map_or(Who::NoProcess, Who::Group),
        }
    }

    pub fn add(&mut self, r: &Report) {
        self.add_n(r, 1);
    }

    /// Counts `n` resets like `r` (the kernel counts resets alike under one key).
    pub fn add_n(&mut self, r: &Report, n: u64) {
        let who = self.who(r);
        let mut key = (who, r.condition.as_str(), r.direction.as_str());
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            key = (Who::Other, "other", "other");
        }
        *self.rows.entry(key).or_default() += n;
    }

    pub fn render(&self, clock: &Clock, fmt: Format) -> String {
        let mut rows: Vec<_> = self
            .rows
            .iter()
            .map(|((w, c, d), n)| ((w.name(), *c, *d), *n))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: u64 = self.rows.values().sum();
        let by = match self.by {
            ByArg::Process => "process",
            ByArg::Container => "container",
            ByArg::Pod => "pod",
        };
        let now = Clock::mono_now();
        match fmt {
            Format::Json => json!({
                "type": "summary",
                "time": rfc3339(clock.wall_ns(now), 9),
                "total": total,
                "lost": self.lost,
                "not_noticed": self.app_errors.then_some(self.not_noticed),
                "rows": rows.iter().map(|((p, c, d), n)| json!({
                    by: p, "condition": c, "direction": d, "count": n
                })).collect::<Vec<_>>(),
            })
            .to_string(),
            Format::Text { .. } => {
                let noticed = if self.app_errors {
                    format!(
                        ", {} not noticed by their application within {} s",
                        self.not_noticed,
                        super::app::notice_window_s()
                    )
                } else {
                    String::new()
                };
                let mut s = format!(
                    "--- summary at {}: {total} resets, {} lost{noticed}\n{:>8}  {:<9} {:<28} {}",
                    rfc3339(clock.wall_ns(now), 6),
                    self.lost,
                    "COUNT",
                    "DIRECTION",
                    "CONDITION",
                    by.to_uppercase()
                );
                for ((p, c, d), n) in rows {
                    // Process, container and pod names come from outside: see `visible`.
                    s.push_str(&format!("\n{n:>8}  {d:<9} {c:<28} {}", visible(&p)));
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{explain::Direction, filter::tests_support::report};

    /// Rows are by process name and pid: two threads of one process count together.
    #[test]
    fn threads_of_one_process_share_a_row() {
        let mut s = Summary::default();
        for (tid, thread) in [
            (11, Some("conn-worker-7")),
            (12, Some("conn-worker-8")),
            (10, None),
        ] {
            let mut r = report(Some(10), "java", 8080, 40000, Direction::Received);
            let p = r.process.as_mut().unwrap();
            p.tid = tid;
            p.thread = thread.map(str::to_owned);
            s.add(&r);
        }
        let out = s.render(&Clock::fixed(0), Format::Json);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 1, "{out}");
        assert_eq!(v["rows"][0]["process"], "java[10]");
        assert_eq!(v["rows"][0]["count"], 3);
    }
}
