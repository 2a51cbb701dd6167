//! The bench's table: its configurations, header, rows and the legend under it.

use super::{Mode, Opts, measure::Row};

/// What each row runs: its name, the load, client threads and rst-trace's arguments.
/// (The healthy path, loads without resets, has rows of its own: see `healthy.rs`.)
pub(super) const CONFIGS: [(&str, Mode, usize, &[&str]); 12] = [
    (
        "refused, 1 thread, --json file",
        Mode::Refused,
        1,
        &["--json"],
    ),
    (
        "refused, 1 thr, --no-app-errors",
        Mode::Refused,
        1,
        &["--json", "--no-app-errors"],
    ),
    (
        "refused, 2 threads, --json file",
        Mode::Refused,
        2,
        &["--json"],
    ),
    (
        "refused, 2 threads, --json, 1M ring",
        Mode::Refused,
        2,
        &["--json", "--ring-size", "1048576"],
    ),
    (
        "refused, 2 threads, --summary -q",
        Mode::Refused,
        2,
        &["--json", "--summary", "--quiet"],
    ),
    (
        "unread close, 1 thread, --json",
        Mode::Unread,
        1,
        &["--json"],
    ),
    (
        "unread close, 2 threads, --json",
        Mode::Unread,
        2,
        &["--json"],
    ),
    // The same, each record also exported over OTLP (to the bench's receiver, which answers at
    // once; and to a port nothing listens on: the queue full, the memory it takes).
    (
        "refused, 1 thread, --json --otlp",
        Mode::Refused,
        1,
        &["--json", "--otlp", super::receiver::URL],
    ),
    (
        "refused, 2 threads, -q -s --otlp",
        Mode::Refused,
        2,
        // --summary: its totals are the count (nothing else is printed).
        &[
            "--json",
            "--summary",
            "--quiet",
            "--otlp",
            super::receiver::URL,
        ],
    ),
    (
        "refused, 1 thread, --otlp down",
        Mode::Refused,
        1,
        &["--json", "--otlp", super::receiver::DOWN_URL],
    ),
    // Every one of these resets is a process-context abort: each gets its two stacks.
    (
        "unread close, 1 thread, --stacks",
        Mode::Unread,
        1,
        &["--json", "--stacks"],
    ),
    (
        "unread close, 2 threads, --stacks",
        Mode::Unread,
        2,
        &["--json", "--stacks"],
    ),
];

/// The title line and the column names.
pub(super) fn print_header(opts: &Opts) {
    println!(
        "rst-trace bench: {} s per round, {} untraced + {} traced rounds per row, alternating; medians\n",
        opts.seconds, opts.rounds, opts.rounds
    );
    println!(
        "{:<34} {:>10} {:>10} {:>6} {:>11} {:>8} {:>6} {:>9} {:>6} {:>6} {:>6} {:>9} {:>8} {:>9} {:>6}",
        "configuration",
        "untraced/s",
        "traced/s",
        "ratio",
        "captured",
        "lost",
        "capt%",
        "cpu s/1M",
        "rss0",
        "rss1",
        "peak",
        "attach ms",
        "reset ns",
        "all ns/ev",
        "app ns"
    );
}

/// One configuration's row.
pub(super) fn print_row(name: &str, r: &Row) {
    println!(
        "{:<34} {:>10.0} {:>10.0} {:>6.3} {:>5}/{:<5} {:>8} {:>6} {:>9} {:>6.1} {:>6.1} {:>6.1} {:>9.1} {:>8} {:>9} {:>6}",
        name,
        r.untraced,
        r.traced,
        r.traced / r.untraced,
        r.captured,
        r.generated_events,
        r.lost,
        if r.generated_events == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.2}",
                100.0 * r.captured as f64 / r.generated_events as f64
            )
        },
        // No resets generated (the echo rows; a few may happen at teardown): nothing
        // worth dividing by.
        if r.generated_events == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", r.cpu_per_m)
        },
        r.rss0 as f64 / 1024.0,
        r.rss1 as f64 / 1024.0,
        r.peak as f64 / 1024.0,
        r.attach_ms,
        // Per-event costs only mean something where resets were generated.
        if r.generated_events == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}", r.kernel.reset_ns_per_run)
        },
        if r.generated_events == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}", r.kernel.all_ns_per_event)
        },
        if r.kernel.app_ns_per_call > 0.0 {
            format!("{:.1}", r.kernel.app_ns_per_call)
        } else {
            "-".to_owned()
        },
    );
}

/// What the columns mean.
pub(super) fn print_legend() {
    println!(
        "\ncaptured/generated counts events (2 per reset); lost = reported by rst-trace; cpu s/1M = rst-trace\nCPU seconds per million events; rss0/rss1/peak = MiB of RSS once attached, after the storm, and at\nits peak (VmHWM); attach = spawn to readiness line; reset ns = BPF run time per run of\na reset program; all ns/ev = run time of all rst-trace BPF programs (owner tracking, transmit hook)\nper captured event; app ns = run time of the sys_exit hook (failing application calls; before 6.3\nonly, - from 6.3, where the socket layer shows them) per system call. All from kernel.bpf_stats_enabled, in one extra traced round with it on."
    );
}
