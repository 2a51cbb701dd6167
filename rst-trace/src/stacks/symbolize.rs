//! Addresses to names, with blazesym (the libbpf project's symbolizer): user addresses in the
//! process's own mappings (`/proc/PID/maps` and `map_files`, so it works across mount
//! namespaces), function and file:line from DWARF where the binary has it, the ELF symbol
//! otherwise, module and file offset when no symbol covers the address; kernel addresses by
//! `/proc/kallsyms`.

use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use blazesym::{
    MaybeDefault, Pid,
    normalize::{Normalizer, UserMeta},
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};

use super::Frame;

/// A stack's frames, or why they could not be named.
pub type Frames = Result<Vec<Frame>, String>;

/// blazesym keeps every binary it parsed (mapped, with its DWARF index) by file identity, so a
/// fork-per-connection server costs one parse; a long run would keep stale binaries (upgraded,
/// deleted) forever, so the whole cache is dropped this often.
const REBUILD_AFTER: Duration = Duration::from_secs(600);

/// Symbolized stacks kept, keyed by process and addresses (user) or addresses (kernel): a storm
/// of aborts from one code path is symbolized once. Emptied when full.
const MEMO_MAX: usize = 256;

enum Job {
    User(u32, Vec<u64>),
    Kernel(Vec<u64>),
}

/// The symbolizer on a thread of its own (blazesym's `Symbolizer` cannot move between
/// threads): it parses /proc/kallsyms at start-up (~60 ms here) instead of in the event loop at
/// the first stack. The event loop still waits for each answer, because the process must be
/// alive while its addresses are looked up: a new binary's symbols and debug info are parsed
/// then (tens of ms for libc with its detached debug info), a known one's cost ~0.3 ms, and a
/// stack seen before nothing (`memo`).
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    answers: mpsc::Receiver<Frames>,
    memo: HashMap<(u32, Vec<u64>), Vec<Frame>>,
}

impl Worker {
    pub fn start() -> Self {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (answer_tx, answers) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || {
                let mut s = Symbols::new();
                // Any kernel address: kallsyms is read whatever the answer.
                let _ = s.kernel(&[0xffff_ffff_8100_0000]);
                for job in job_rx {
                    let answer = match job {
                        Job::User(pid, ips) => s.user(pid, &ips),
                        Job::Kernel(ips) => s.kernel(&ips),
                    };
                    if answer_tx.send(answer).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("rst-trace: warning: cannot start the symbolizer thread: {e}");
        }
        Self {
            jobs,
            answers,
            memo: HashMap::new(),
        }
    }

    /// The frames of a user stack of process `pid`.
    pub fn user(&mut self, pid: u32, ips: Vec<u64>) -> Frames {
        self.ask(pid, ips, Job::User)
    }

    /// The frames of a kernel stack.
    pub fn kernel(&mut self, ips: Vec<u64>) -> Frames {
        self.ask(0, ips, |_, ips| Job::Kernel(ips))
    }

    fn ask(&mut self, pid: u32, ips: Vec<u64>, job: fn(u32, Vec<u64>) -> Job) -> Frames {
        let key = (pid, ips);
        if let Some(frames) = self.memo.get(&key) {
            return Ok(frames.clone());
        }
        self.jobs
            .send(job(pid, key.1.clone()))
            .map_err(|_| "the symbolizer thread is gone".to_owned())?;
        let frames = self
            .answers
            .recv()
            .map_err(|_| "the symbolizer thread is gone".to_owned())??;
        if self.memo.len() >= MEMO_MAX {
            self.memo.clear();
        }
        self.memo.insert(key, frames.clone());
        Ok(frames)
    }
}

struct Symbols {
    symbolizer: Symbolizer,
    normalizer: Normalizer,
    built: Instant,
}

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        // Not expanded into frames of their own (yet): the frame is the function the address
        // lies in, with the line of the instruction.
        .enable_inlined_fns(false)
        .enable_demangling(true)
        .build()
}

impl Symbols {
    fn new() -> Self {
        Self {
            symbolizer: new_symbolizer(),
            normalizer: Normalizer::new(),
            built: Instant::now(),
        }
    }

    fn refresh(&mut self) {
        if self.built.elapsed() > REBUILD_AFTER {
            *self = Self::new();
        }
    }

    /// The frames of a user stack of process `pid`, innermost first. Frames past the first are
    /// return addresses: they are looked up one byte earlier, in the call instruction, so
    /// that the line is the call's (the reported `addr` stays the return address).
    fn user(&mut self, pid: u32, ips: &[u64]) -> Frames {
        self.refresh();
        let lookup = call_sites(ips);
        let mut src = Process::new(Pid::from(pid));
        // A JIT's perf map would be read from the process's /tmp; not asked for.
        src.perf_map = false;
        let syms = self
            .symbolizer
            .symbolize(&Source::Process(src), Input::AbsAddr(&lookup))
            .map_err(|e| format!("{e}"))?;
        let mut frames: Vec<Frame> = ips.iter().zip(&syms).map(|(&a, s)| frame(a, s)).collect();
        // Module and file offset for the addresses no symbol covers.
        if frames.iter().any(|f| f.function.is_none())
            && let Ok(out) = self
                .normalizer
                .normalize_user_addrs(Pid::from(pid), &lookup)
        {
            for (f, (off, meta)) in frames.iter_mut().zip(&out.outputs) {
                if f.function.is_none()
                    && let Some(UserMeta::Elf(elf)) = out.meta.get(*meta)
                {
                    f.module = Some(elf.path.display().to_string());
                    f.offset = Some(*off);
                }
            }
        }
        Ok(frames)
    }

    /// The frames of a kernel stack, by /proc/kallsyms (function names; no file:line).
    fn kernel(&mut self, ips: &[u64]) -> Frames {
        self.refresh();
        let lookup = call_sites(ips);
        let src = Kernel {
            kallsyms: MaybeDefault::Default,
            // vmlinux images are rarely installed; kallsyms is always there and names every
            // function (modules' too).
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        };
        let syms = self
            .symbolizer
            .symbolize(&Source::Kernel(src), Input::AbsAddr(&lookup))
            .map_err(|e| format!("{e}"))?;
        Ok(ips.iter().zip(&syms).map(|(&a, s)| frame(a, s)).collect())
    }
}

/// The address to look up for each frame: the first as is, the return addresses minus one.
fn call_sites(ips: &[u64]) -> Vec<u64> {
    ips.iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

fn frame(addr: u64, s: &Symbolized<'_>) -> Frame {
    let mut f = Frame {
        addr,
        ..Frame::default()
    };
    if let Symbolized::Sym(sym) = s {
        f.function = Some(sym.name.to_string());
        f.module = sym
            .module
            .as_ref()
            .map(|m| std::path::Path::new(m).display().to_string());
        if let Some(ci) = &sym.code_info {
            f.file = Some(ci.to_path().display().to_string());
            f.line = ci.line;
        }
    }
    f
}
