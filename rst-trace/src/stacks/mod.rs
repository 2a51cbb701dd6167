//! `--stacks`: the user and kernel stacks of a process-context abort, read from the kernel's
//! stack map and symbolized when the event is read, while the process most likely still runs
//! (its mappings are needed to name user addresses; a process that exited first gets
//! addresses and, where the binary was already parsed, names).
//!
//! Ids are deleted from the map once read, at the end of each drain of the ring: the map then
//! only holds the stacks of events not read yet, and stays far from full (a full bucket makes
//! `bpf_get_stackid()` fail with `-EEXIST`). The kernel gives identical stacks one id, so an
//! id may come again in an event captured before the delete: the frames last read for each id
//! are kept for that.

mod symbolize;

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, StackTraceMap};
use rst_trace_common::{FACT_STACKS, MAP_STACKS, RstEvent};

use self::symbolize::Symbols;

/// One frame, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub addr: u64,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The binary or shared object (user), or the kernel module (kernel), when known.
    pub module: Option<String>,
    /// The address's offset in `module`, given when no function is known.
    pub offset: Option<u64>,
}

/// A stack: its frames, or why there are none (`EFAULT: ...`).
pub type Stack = Result<Vec<Frame>, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stacks {
    pub user: Stack,
    pub kernel: Stack,
}

/// Why `bpf_get_stackid()` failed, by errno.
fn stackid_error(errno: i32) -> String {
    match errno {
        libc::EFAULT => "EFAULT: no stack to walk (user: the task had no user memory left, as \
                         when a process's exit closes its sockets)"
            .into(),
        libc::EEXIST => {
            "EEXIST: the stack map's bucket for this stack held another one (rst-trace was \
             behind reading them)"
                .into()
        }
        libc::ENOMEM => "ENOMEM: the stack map had no free entry".into(),
        libc::EINVAL => "EINVAL: the kernel refused the request".into(),
        n => format!("errno {n}"),
    }
}

/// The kernel's frame-pointer walk starts at the user registers (frame 0, e.g. in libc's
/// close()) and goes on from the frame pointer, which a function that keeps no frame (libc's
/// system call wrappers) leaves pointing at its caller's frame: the caller itself (the line
/// that called close()) is skipped. Its return address is the word at the stack pointer when
/// such a function made the system call: inserted as frame 1 when it is a return address (a
/// call instruction ends right before it, in the process's memory) and not frame 1 already.
fn add_frameless_caller(pid: u32, sp_word: u64, ips: &mut Vec<u64>) {
    if sp_word == 0 || ips.is_empty() || ips.get(1) == Some(&sp_word) {
        return;
    }
    if follows_call(pid, sp_word) {
        ips.insert(1, sp_word);
    }
}

/// Whether an x86_64 call instruction ends at `ret` in process `pid`'s memory: `call rel32`
/// (E8), `call *disp32(%rip)` (FF 15, as with -fno-plt), `call *%reg` (FF D0+r, with a REX
/// prefix 41 for r8-r15), `call *disp8(%reg)` (FF 50+r) and `call *disp32(%reg)` (FF 90+r).
fn follows_call(pid: u32, ret: u64) -> bool {
    use std::os::unix::fs::FileExt as _;
    let Some(start) = ret.checked_sub(7) else {
        return false;
    };
    let mut b = [0u8; 7];
    let read = std::fs::File::open(format!("/proc/{pid}/mem"))
        .and_then(|f| f.read_exact_at(&mut b, start));
    if read.is_err() {
        return false;
    }
    // b[7 - n] is the first byte of an n-byte instruction ending at `ret`.
    let modrm = |m: u8, base: u8| m & 0xf8 == base;
    b[2] == 0xe8
        || (b[1] == 0xff && b[2] == 0x15)
        || (b[5] == 0xff && modrm(b[6], 0xd0))
        || (b[4] == 0x41 && b[5] == 0xff && modrm(b[6], 0xd0))
        || (b[4] == 0xff && modrm(b[5], 0x50))
        || (b[1] == 0xff && modrm(b[2], 0x90))
}

/// Reads, symbolizes and deletes the stacks events refer to; counts the failures.
pub struct StackReader {
    map: StackTraceMap<MapData>,
    symbols: Symbols,
    /// The frames (raw addresses) last read for each id: ids are < the map's bucket count.
    read: HashMap<u32, Vec<u64>>,
    /// Ids read since the last [`StackReader::flush`].
    to_delete: Vec<u32>,
    /// Stacks that could not be captured or read, by reason, for the warning line.
    pub failed: HashMap<(&'static str, String), u64>,
}

impl StackReader {
    /// Takes the stack map out of the loaded object.
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(MAP_STACKS)
            .context("stack map missing from the eBPF object")?;
        Ok(Self {
            map: StackTraceMap::try_from(map)?,
            symbols: Symbols::new(),
            read: HashMap::new(),
            to_delete: Vec::new(),
            failed: HashMap::new(),
        })
    }

    /// The symbolized stacks of `ev`, if it carries stack ids.
    pub fn resolve(&mut self, ev: &RstEvent) -> Option<Box<Stacks>> {
        if ev.facts & FACT_STACKS == 0 {
            return None;
        }
        let user = self.raw(ev.user_stack).and_then(|mut ips| {
            add_frameless_caller(ev.owner.pid, ev.user_sp_word, &mut ips);
            self.symbols.user(ev.owner.pid, &ips)
        });
        let kernel = self
            .raw(ev.kernel_stack)
            .and_then(|ips| self.symbols.kernel(&ips));
        for (which, st) in [("user", &user), ("kernel", &kernel)] {
            if let Err(why) = st {
                let short = why.split(':').next().unwrap_or(why).to_owned();
                *self.failed.entry((which, short)).or_default() += 1;
            }
        }
        Some(Box::new(Stacks { user, kernel }))
    }

    /// The addresses of stack `id`, or why there are none.
    fn raw(&mut self, id: i32) -> Result<Vec<u64>, String> {
        if id < 0 {
            Err(stackid_error(-id))
        } else {
            let id = id as u32;
            match self.map.get(&id, 0) {
                Ok(st) => {
                    let ips: Vec<u64> = st.frames().iter().map(|f| f.ip).collect();
                    self.to_delete.push(id);
                    self.read.insert(id, ips.clone());
                    Ok(ips)
                }
                Err(e) => self
                    .read
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("stack {id} not in the map: {e}")),
            }
        }
    }

    /// Deletes the ids read so far (called once the ring is drained).
    pub fn flush(&mut self) {
        for id in self.to_delete.drain(..) {
            // Already gone when an earlier event of this drain had the same id.
            let _ = self.map.remove(&id);
        }
    }

    /// Deletes every id: after events were lost, their stacks would never be read.
    pub fn sweep(&mut self) {
        let ids: Vec<u32> = self.map.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = self.map.remove(&id);
        }
    }
}
