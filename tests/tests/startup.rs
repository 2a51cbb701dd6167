//! What rst-trace says when it starts, on each kernel: the reset programs it runs, whether the
//! kernel gives reasons, how resets without a socket are seen, one `note:` line per fallback
//! (with its reason), the verifier log only with `-v`; and below the oldest supported kernel,
//! exit 1 with one line naming the missing feature.
//!
//! `./x test` runs this file on the host and in every guest kernel; `./x vmtest 5.4` runs only
//! this file (nothing else can start there).

use std::process::{Command, Output};

use rst_trace_tests::{kernel, require_root, rst_trace_bin};

const READY: &str = "rst-trace: tracing TCP resets (";
const NOTE: &str = "rst-trace: note: ";

/// Runs rst-trace for one second (on a port nothing uses) and returns what it printed.
fn run_briefly(extra: &[&str]) -> Output {
    require_root();
    Command::new(rst_trace_bin())
        .args(["--port", "23999", "--duration", "1"])
        .args(extra)
        .output()
        .expect("spawning rst-trace")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The `note:` lines this kernel must print, each by its start: one per hook that is missing or
/// replaced, and why.
fn expected_notes(k: (u32, u32)) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if k < (5, 12) {
        // Tracing programs cannot call bpf_get_socket_cookie() before 5.12 (commit
        // c5dbb89fc2ac), so the BTF tcp_receive_reset program is rejected.
        notes.push(
            "using record-based tcp:tcp_receive_reset, and BTF tcp_send_reset without cookie \
             generation (BTF tracepoint rejected): the kernel rejected eBPF program",
        );
    }
    if k < (6, 3) {
        // The sock:sock_send_length/sock_recv_length tracepoints came in 6.3.
        notes.push("no sock:sock_send_length (Linux 6.3+): owners are learned from receives");
    }
    notes
}

/// The parts of the readiness line that depend on the kernel. (Application errors need the
/// architecture's `pt_regs`, which rst-trace knows on both of the matrix's: x86_64 and arm64.)
fn expected_ready(k: (u32, u32)) -> Vec<&'static str> {
    vec![
        if k >= (5, 12) {
            "; BTF tracepoints;"
        } else {
            "; BTF send/record receive tracepoints;"
        },
        if k >= (6, 10) {
            "; kernel reasons: yes;"
        } else {
            "; kernel reasons: none, inferring;"
        },
        if k >= (6, 10) {
            "; resets without a socket: tcp_send_reset;"
        } else {
            "; resets without a socket: on transmit (kernel before 6.10);"
        },
        // 6.3's sock_send_length/sock_recv_length carry each call's result: no hook at every
        // system call's exit there.
        if k >= (6, 3) {
            "; application errors: yes (socket layer);"
        } else {
            "; application errors: yes (sys_exit, every system call);"
        },
    ]
}

/// On 5.8+: exit 0 after the notes this kernel needs, each one line, then the readiness line
/// with what this kernel gives. Below 5.8: exit 1, one line, naming the missing ring buffer.
#[test]
fn start_says_what_this_kernel_gives() {
    let k = kernel();
    let out = run_briefly(&[]);
    let lines = stderr_lines(&out);
    if k < (5, 8) {
        assert_eq!(out.status.code(), Some(1), "{lines:#?}");
        assert_eq!(
            lines,
            ["rst-trace: error: this kernel has no BPF ring buffer (needs Linux 5.8+)"],
            "kernel {k:?}"
        );
        assert!(out.stdout.is_empty());
        return;
    }
    assert!(out.status.success(), "kernel {k:?}: {lines:#?}");
    let (ready, notes): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.starts_with(READY));
    assert_eq!(ready.len(), 1, "one readiness line: {lines:#?}");
    for part in expected_ready(k) {
        assert!(
            ready[0].contains(part),
            "kernel {k:?}: no {part:?} in {ready:?}"
        );
    }
    // Nothing but one-line notes: no verifier log, no continuation lines.
    for l in &notes {
        assert!(l.starts_with(NOTE), "kernel {k:?}: not a note: {l:?}");
    }
    let want = expected_notes(k);
    for w in &want {
        let prefix = format!("{NOTE}{w}");
        assert!(
            notes.iter().any(|n| n.starts_with(&prefix)),
            "kernel {k:?}: no note {w:?} in {notes:#?}"
        );
    }
    assert_eq!(notes.len(), want.len(), "kernel {k:?}: {notes:#?}");
}

/// `-v` adds a rejected program's verifier log after its note, where a program was rejected
/// (before 5.12); on other kernels it adds nothing.
#[test]
fn verbose_adds_the_verifier_log_of_a_rejected_program() {
    let k = kernel();
    if k < (5, 8) {
        let out = run_briefly(&["-v"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr_lines(&out).len(), 1, "{:?}", stderr_lines(&out));
        return;
    }
    let quiet = stderr_lines(&run_briefly(&[]));
    let out = run_briefly(&["-v"]);
    assert!(out.status.success());
    // At exit -v also says what rst-trace's programs cost: a total, then a line per program.
    let (cost, verbose): (Vec<String>, Vec<String>) =
        stderr_lines(&out).into_iter().partition(|l| {
            l.starts_with("rst-trace: its eBPF programs took ") || l.starts_with("rst-trace:   ")
        });
    assert!(
        cost.first()
            .is_some_and(|l| l.starts_with("rst-trace: its eBPF programs took ")),
        "kernel {k:?}: no cost at exit: {cost:#?}"
    );
    let log_header = "rst-trace: verifier log of ";
    assert!(
        !quiet.iter().any(|l| l.starts_with(log_header)),
        "{quiet:#?}"
    );
    if k < (5, 12) {
        let at = verbose
            .iter()
            .position(|l| l.starts_with(log_header))
            .unwrap_or_else(|| panic!("kernel {k:?}: -v printed no verifier log: {verbose:#?}"));
        // The log follows its note, and is the verifier's own (instructions and the complaint).
        assert!(at > 0 && verbose[at - 1].starts_with(NOTE), "{verbose:#?}");
        assert!(verbose.len() > quiet.len() + 10, "{verbose:#?}");
    } else {
        assert_eq!(
            verbose.len(),
            quiet.len(),
            "kernel {k:?}: -v added lines where nothing was rejected: {verbose:#?}"
        );
    }
}
