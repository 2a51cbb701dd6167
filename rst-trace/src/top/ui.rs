//! Drawing `rst-trace top` with ratatui: a header (rates, lost events, the tracer's CPU), the
//! resets table or the failing calls view, a detail pane for the selected row, a key line, and
//! the help overlay.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table, TableState, Wrap},
};

use super::state::{GroupBy, Row, Sort, TopState};

/// What the operator chose: view, grouping, sort, selection, pause, help.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub calls: bool,
    pub group: GroupBy,
    pub sort: Sort,
    pub selected: usize,
    pub paused: bool,
    pub help: bool,
    /// CPU the tracer used in the last second (user + system, percent of one CPU).
    pub cpu_percent: f64,
}

impl Default for View {
    fn default() -> Self {
        Self {
            calls: false,
            group: GroupBy::Process,
            sort: Sort::Rate,
            selected: 0,
            paused: false,
            help: false,
            cpu_percent: 0.0,
        }
    }
}

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` seconds as a line of block characters, scaled to their maximum.
pub fn sparkline(history: &std::collections::VecDeque<u64>, width: usize) -> String {
    let tail: Vec<u64> = history.iter().rev().take(width).rev().copied().collect();
    let max = tail.iter().copied().max().unwrap_or(0).max(1);
    tail.iter()
        .map(|&v| {
            if v == 0 {
                ' '
            } else {
                SPARKS[((v * 7).div_ceil(max)) as usize % 8]
            }
        })
        .collect()
}

pub fn draw(f: &mut Frame, s: &TopState, v: &View) {
    let [header, body, detail, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(5),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(header_widget(s, v), header);
    if v.calls {
        f.render_widget(calls_table(s), body);
    } else {
        let rows = s.rows(v.group, v.sort);
        let mut state =
            TableState::default().with_selected(Some(v.selected.min(rows.len().saturating_sub(1))));
        f.render_stateful_widget(resets_table(&rows, v), body, &mut state);
        f.render_widget(detail_widget(rows.get(v.selected).copied()), detail);
    }
    f.render_widget(
        Paragraph::new("q quit  Tab resets/calls  g group  s sort  p pause  ↑↓ select  ? help"),
        keys,
    );
    if v.help {
        let area = centered(f.area(), 60, 12);
        f.render_widget(Clear, area);
        f.render_widget(help_widget(), area);
    }
}

fn header_widget(s: &TopState, v: &View) -> Paragraph<'static> {
    let paused = if v.paused { "  [paused]" } else { "" };
    let line1 = format!(
        "rst-trace top: {} resets/s now, {} in all, {} lost; rst-trace CPU {:.1}%{paused}",
        s.rate, s.total, s.lost, v.cpu_percent
    );
    let line2 = format!(
        "all resets, last minute: {}",
        sparkline(&s.history, super::state::HISTORY)
    );
    Paragraph::new(vec![Line::from(line1), Line::from(line2)])
        .block(Block::default().borders(Borders::BOTTOM))
}

fn resets_table<'a>(rows: &[&'a Row], v: &View) -> Table<'a> {
    let head = TableRow::new([
        v.group.title(),
        "DIR",
        "CONDITION",
        "RATE/s",
        "TREND (30 s)",
        "TOTAL",
        "ERRNO",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| {
        TableRow::new([
            Cell::from(r.key.clone()),
            Cell::from(r.direction),
            Cell::from(r.condition),
            Cell::from(r.rate.to_string()),
            Cell::from(sparkline(&r.history, 30)),
            Cell::from(r.total.to_string()),
            Cell::from(r.errno.clone().unwrap_or_else(|| "-".to_owned())),
        ])
    });
    Table::new(
        body,
        [
            Constraint::Min(20),
            Constraint::Length(8),
            Constraint::Length(27),
            Constraint::Length(8),
            Constraint::Length(30),
            Constraint::Length(9),
            Constraint::Length(12),
        ],
    )
    .header(head)
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().title(format!(
        " resets by {} (sorted by {}) ",
        v.group.title().to_lowercase(),
        v.sort.title()
    )))
}

fn calls_table(s: &TopState) -> Table<'static> {
    let mut calls: Vec<_> = s.calls.iter().collect();
    calls.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let head = TableRow::new(["CALL", "ERRNO", "COUNT", "MEDIAN DELAY AFTER THE RESET"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let body = calls.into_iter().map(|((call, errno), row)| {
        TableRow::new([
            call.clone(),
            errno.clone(),
            row.count.to_string(),
            row.median_delay_ns()
                .map_or_else(|| "- (no reset)".to_owned(), crate::render::human_ns),
        ])
    });
    Table::new(
        body,
        [
            // The longest call name: `getsockopt(SO_ERROR)`.
            Constraint::Length(20),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Min(20),
        ],
    )
    .header(head)
    .block(Block::default().title(format!(
        " failing application calls; resets nobody noticed: {} ",
        s.not_noticed
    )))
}

fn detail_widget(row: Option<&Row>) -> Paragraph<'static> {
    let text = match row.and_then(|r| r.latest.as_ref().map(|l| (r, l))) {
        Some((r, l)) => vec![
            Line::from(format!(
                "{} {} {}: {}",
                r.key, r.direction, r.condition, l.explanation
            )),
            Line::from(format!(
                "local {}  remote {}  state {}",
                l.local, l.remote, l.state
            )),
            Line::from(format!(
                "container {}  pod {}",
                l.container.as_deref().unwrap_or("-"),
                l.pod.as_deref().unwrap_or("-")
            )),
        ],
        None => vec![Line::from(
            "the latest reset of the selected row shows here (in the process grouping)",
        )],
    };
    Paragraph::new(text)
        .wrap(Wrap { trim: true })
        .block(Block::default().borders(Borders::TOP).title(" latest "))
}

fn help_widget() -> Paragraph<'static> {
    Paragraph::new(vec![
        Line::from("q, Ctrl-C   quit"),
        Line::from("Tab         resets / failing application calls"),
        Line::from("g           group by process, container, pod, remote, condition"),
        Line::from("s           sort by rate, total, name"),
        Line::from("p           pause (keep counting, freeze the screen)"),
        Line::from("↑ ↓         select a row: its latest reset shows below"),
        Line::from("?           this help"),
    ])
    .block(Block::default().borders(Borders::ALL).title(" help "))
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_its_maximum() {
        let h: std::collections::VecDeque<u64> = [0, 1, 4, 8].into_iter().collect();
        assert_eq!(sparkline(&h, 4), " ▂▅█");
        assert_eq!(sparkline(&h, 2), "▅█");
    }
}
