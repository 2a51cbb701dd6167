//! What `--pid` and `--comm` name on this host at start-up. Resets belong to processes (the
//! thread group that owns the socket), but an operator may hold a thread's id (`top -H`, a
//! thread dump) or a thread's name (`ps -T`, a JVM's named threads): a thread's id
//! stands for its process; a value that matches nothing running now is noted, not refused (the
//! process may start later), and a thread's name is noted with the process to ask for instead.

use procfs::process::{Process, all_processes};

use crate::{cli::Settings, render::visible};

/// Resolves `--pid` thread ids to their processes (in the filter) and says, on stderr, what each
/// `--pid` and `--comm` that matches no process now is.
pub fn resolve(settings: &mut Settings) {
    for pid in &settings.pids {
        let Ok(status) = Process::new(*pid as i32).and_then(|p| p.status()) else {
            eprintln!(
                "rst-trace: note: no process {pid} is running now; its resets will show if it starts"
            );
            continue;
        };
        let tgid = status.tgid as u32;
        if tgid != *pid && tgid != 0 {
            eprintln!(
                "rst-trace: note: {pid} is a thread ({}) of process {}[{tgid}], which owns its \
                 sockets: showing that process's resets",
                visible(&status.name),
                visible(&comm_of(tgid as i32)),
            );
            settings.filter.pids.remove(pid);
            settings.filter.pids.insert(tgid);
        }
    }
    if !settings.filter.comms.is_empty() {
        note_unmatched_comms(settings);
    }
}

fn comm_of(pid: i32) -> String {
    Process::new(pid)
        .and_then(|p| p.stat())
        .map_or_else(|_| "?".to_owned(), |s| s.comm)
}

/// Each `--comm` no process is named now: a thread's name (one process it was found in), or
/// nothing yet. One walk of /proc; threads only for the names no process has.
fn note_unmatched_comms(settings: &Settings) {
    let Ok(procs) = all_processes() else {
        return;
    };
    let procs: Vec<Process> = procs.flatten().collect();
    let mut missing: Vec<&String> = settings.filter.comms.iter().collect();
    missing.sort();
    for p in &procs {
        if let Ok(stat) = p.stat() {
            missing.retain(|c| **c != stat.comm);
        }
    }
    for comm in missing {
        match thread_named(&procs, comm) {
            Some(pid) => eprintln!(
                "rst-trace: note: --comm {c}: no process is named {c}, but a thread of {p}[{pid}] \
                 is: --comm matches processes' names (ps -o comm), so give --comm {p} or --pid {pid}",
                p = visible(&comm_of(pid)),
                c = visible(comm),
            ),
            None => eprintln!(
                "rst-trace: note: --comm {c}: no process is named {c} now; its resets will show if \
                 one starts",
                c = visible(comm),
            ),
        }
    }
}

/// The pid of a process one of whose threads is named `comm`.
fn thread_named(procs: &[Process], comm: &str) -> Option<i32> {
    procs.iter().find_map(|p| {
        p.tasks()
            .ok()?
            .flatten()
            .any(|t| t.stat().is_ok_and(|s| s.comm == comm))
            .then_some(p.pid())
    })
}
