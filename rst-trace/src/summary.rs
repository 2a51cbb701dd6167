//! `--summary`: counts of resets by process, condition and direction.

use std::collections::BTreeMap;

use serde_json::json;

use crate::{
    explain::Report,
    output::{Clock, Format, rfc3339},
};

/// Distinct rows kept; the rest fold into one `other` row so memory stays bounded in a storm.
const MAX_ROWS: usize = 10_000;

#[derive(Default)]
pub struct Summary {
    rows: BTreeMap<(String, &'static str, &'static str), u64>,
    pub lost: u64,
}

impl Summary {
    pub fn add(&mut self, r: &Report) {
        let who = r
            .process
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let mut key = (who, r.condition, r.direction.as_str());
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            key = ("other".into(), "other", "other");
        }
        *self.rows.entry(key).or_default() += 1;
    }

    pub fn render(&self, clock: &Clock, fmt: Format) -> String {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let total: u64 = self.rows.values().sum();
        let now = Clock::mono_now();
        match fmt {
            Format::Json => json!({
                "type": "summary",
                "time": rfc3339(clock.wall_ns(now), 9),
                "total": total,
                "lost": self.lost,
                "rows": rows.iter().map(|((p, c, d), n)| json!({
                    "process": p, "condition": c, "direction": d, "count": n
                })).collect::<Vec<_>>(),
            })
            .to_string(),
            Format::Text { .. } => {
                let mut s = format!(
                    "--- summary at {}: {total} resets, {} lost\n{:>8}  {:<9} {:<28} {}",
                    rfc3339(clock.wall_ns(now), 6),
                    self.lost,
                    "COUNT",
                    "DIRECTION",
                    "CONDITION",
                    "PROCESS"
                );
                for ((p, c, d), n) in rows {
                    s.push_str(&format!("\n{n:>8}  {d:<9} {c:<28} {p}"));
                }
                s
            }
        }
    }
}
