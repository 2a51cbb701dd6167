//! Why a program did not load or attach: one line on stderr, the details (a verifier log)
//! with `-v`.

use aya::programs::ProgramError;

/// A program the kernel refused to load. Its Display is one line, the program and the
/// verifier's complaint; the whole verifier log (hundreds of lines) is printed only with `-v`.
#[derive(Debug)]
pub struct LoadFailure {
    pub prog: String,
    /// The line of the verifier log that says what is wrong, and the errno.
    pub reason: String,
    pub log: String,
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kernel rejected eBPF program {}: {}",
            self.prog, self.reason
        )
    }
}

impl std::error::Error for LoadFailure {}

/// The line of a verifier log that states the problem: the last one before the statistics the
/// verifier appends ("verification time", "stack depth", "processed N insns").
fn verifier_complaint(log: &str) -> Option<&str> {
    const STATS: [&str; 4] = [
        "verification time",
        "stack depth",
        "processed ",
        "max_states_per_insn",
    ];
    log.lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}

pub(super) fn load_failure(prog: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let reason = match verifier_complaint(&log) {
                Some(line) => format!("{line} ({io_error})"),
                None => io_error.to_string(),
            };
            LoadFailure {
                prog: prog.to_owned(),
                reason,
                log,
            }
            .into()
        }
        e => anyhow::Error::new(e).context(format!("loading eBPF program {prog}")),
    }
}

/// The first line of an error, for a one-line note.
pub fn first_line(e: &anyhow::Error) -> String {
    let all = format!("{e:#}");
    all.lines().next().unwrap_or_default().to_owned()
}

/// Says on stderr that a hook is not used as planned and why, in one line; `-v` adds the details
/// (a verifier log).
#[derive(Clone, Copy)]
pub struct Notes {
    pub verbose: bool,
}

impl Notes {
    pub fn note(self, line: &str) {
        eprintln!("rst-trace: note: {line}");
    }

    /// A note for a hook that failed with `e`: the first line of the error, its details with -v.
    pub(super) fn failed(self, what: &str, e: &anyhow::Error) {
        self.note(&format!("{what}: {}", first_line(e)));
        if self.verbose {
            print_details(e);
        }
    }
}

/// The details of an error beyond its first line: a rejected program's verifier log, and the
/// rest of a multi-line message.
pub fn print_details(e: &anyhow::Error) {
    if let Some(f) = e.chain().find_map(|c| c.downcast_ref::<LoadFailure>()) {
        eprintln!(
            "rst-trace: verifier log of {}:\n{}",
            f.prog,
            f.log.trim_end()
        );
    }
    let all = format!("{e:#}");
    if let Some((_, rest)) = all.split_once('\n') {
        eprintln!("{rest}");
    }
}
