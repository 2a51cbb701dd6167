//! `--stacks`: the user and kernel stacks of a process-context abort or of an application's
//! failing call, read from the kernel's stack map and symbolized when the event is read, while
//! the process most likely still runs (its mappings are needed to name user addresses; a process
//! that exited first gets addresses and, where the binary was already parsed, names).
//!
//! Ids are deleted from the map once read, at the end of each drain of the ring: the map then
//! only holds the stacks of events not read yet, and stays far from full (a full bucket makes
//! `bpf_get_stackid()` fail with `-EEXIST`). The kernel gives identical stacks one id, so an
//! id may come again in an event captured before the delete: the frames last read for each id
//! are kept for that.

mod frameless;
mod symbolize;

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, StackTraceMap};
use rst_trace_common::{APP_STACKS, AppErrorEvent, FACT_STACKS, MAP_STACKS, RstEvent, StackIds};

use self::{
    frameless::add_frameless_caller,
    symbolize::{Frames, Worker},
};

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

/// A stack: its frames (addresses only when they could not be named), and why it has none or
/// no names (`EFAULT: ...`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stack {
    pub frames: Vec<Frame>,
    pub error: Option<String>,
}

impl Stack {
    /// `ips` named, or as bare addresses with the reason they could not be.
    fn named(ips: &[u64], named: Frames) -> Self {
        match named {
            Ok(frames) => Self {
                frames,
                error: None,
            },
            Err(e) => Self {
                frames: ips
                    .iter()
                    .map(|&addr| Frame {
                        addr,
                        ..Frame::default()
                    })
                    .collect(),
                error: Some(format!("not symbolized: {e}")),
            },
        }
    }

    fn none(why: String) -> Self {
        Self {
            frames: Vec::new(),
            error: Some(why),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stacks {
    pub user: Stack,
    pub kernel: Stack,
}

/// Why `bpf_get_stackid()` failed, by errno.
fn stackid_error(errno: i32) -> String {
    match errno {
        libc::EFAULT => "EFAULT: no stack to walk (for a user stack: the task had no user \
                         memory left, as when a process's exit closes its sockets)"
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

/// Reads, symbolizes and deletes the stacks events refer to; counts the failures.
pub struct StackReader {
    map: StackTraceMap<MapData>,
    /// The symbolizer's thread, and the stacks it symbolized.
    symbols: Worker,
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
            symbols: Worker::start(),
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
        Some(Box::new(self.resolve_ids(ev.owner.pid, &ev.stacks)))
    }

    /// The symbolized stacks of a failing application call, if it carries stack ids.
    pub fn resolve_app(&mut self, ev: &AppErrorEvent) -> Option<Box<Stacks>> {
        if ev.flags & APP_STACKS == 0 {
            return None;
        }
        Some(Box::new(self.resolve_ids(ev.task.pid, &ev.stacks)))
    }

    /// The stacks `ids` of a system call of process `pid` (what the eBPF side's
    /// `stacks::capture()` took), symbolized. Call it as soon as the record is read: the
    /// process's mappings name its addresses; the ids are deleted at the next [`Self::flush`].
    pub fn resolve_ids(&mut self, pid: u32, ids: &StackIds) -> Stacks {
        let user = match self.raw(ids.user) {
            Ok(mut ips) => {
                add_frameless_caller(pid, ids.user_caller, &mut ips);
                let named = self.symbols.user(pid, ips.clone());
                Stack::named(&ips, named)
            }
            Err(why) => Stack::none(why),
        };
        let kernel = match self.raw(ids.kernel) {
            Ok(ips) => {
                let named = self.symbols.kernel(ips.clone());
                Stack::named(&ips, named)
            }
            Err(why) => Stack::none(why),
        };
        for (which, st) in [("user", &user), ("kernel", &kernel)] {
            if let Some(why) = &st.error {
                let short = why.split(':').next().unwrap_or(why).to_owned();
                *self.failed.entry((which, short)).or_default() += 1;
            }
        }
        Stacks { user, kernel }
    }

    /// Reads `ev`'s stack ids without symbolizing them (an event that will not be shown): they
    /// leave the map at the next [`Self::flush`], and a later event sharing an id still finds
    /// its addresses.
    pub fn discard(&mut self, ev: &RstEvent) {
        if ev.facts & FACT_STACKS != 0 {
            let _ = self.raw(ev.stacks.user);
            let _ = self.raw(ev.stacks.kernel);
        }
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
