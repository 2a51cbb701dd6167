//! `--stacks`: the user and kernel stacks of a process-context abort or of an application's
//! failing call, read from the kernel's stack map and symbolized when the event is read, while
//! the process most likely still runs (its mappings are needed to name user addresses; a process
//! that exited first gets addresses and, where the binary was already parsed, names).
//!
//! Each record names the generation its ids belong to, and each generation has the map of its
//! parity to itself. Userspace reads a generation's ids only once captures have moved on to
//! the next generation (it starts one when it meets a record of the current one): reading an
//! entry takes it out of its bucket for a moment (`bpf_stackmap_copy()`), and a capture of
//! another stack hashing there meanwhile would take the bucket and name the wrong stack. It
//! deletes nothing one by one: starting generation g+1 empties the map of g-1, whose records
//! have all been read by then (one read later says it came too late). So an id names one
//! stack for as long as a record of it can be read. (Deleting each id once read, as before,
//! let a record still in the ring meet its id's bucket refilled by another stack.) A map holds
//! one generation's stacks, so it stays far from full: a full bucket makes
//! `bpf_get_stackid()` fail with `-EEXIST`, and the stack then goes to the generation's spill
//! maps (its id offset by the map's `STACKS_ID_BASE`), which only such stacks fill.

mod frameless;
mod symbolize;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, StackTraceMap};
use rst_trace_common::{
    APP_STACKS, AppErrorEvent, FACT_STACKS, MAP_STACK_GENERATION, MAP_STACKS, MAP_STACKS_SPILL,
    RstEvent, STACKS_ID_BASE, StackIds,
};

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
            "EEXIST: the stack map's bucket for this stack held another one, and so did the \
             spill maps' (rst-trace was behind reading them)"
                .into()
        }
        libc::ENOMEM => "ENOMEM: the stack map had no free entry".into(),
        libc::EINVAL => "EINVAL: the kernel refused the request".into(),
        n => format!("errno {n}"),
    }
}

/// Which of its generation's maps a (non-negative) id is in (see `STACKS_ID_BASE`), and its key
/// there.
fn map_of(id: i16) -> (usize, u32) {
    let id = id as u32;
    let which = STACKS_ID_BASE
        .iter()
        .rposition(|&base| id >= base)
        .unwrap_or(0);
    (which, id - STACKS_ID_BASE[which])
}

/// An idle ring's generation moves on this often, so that the stacks of records never read
/// (lost, or filtered out by `--pid`) leave the maps.
const IDLE_ADVANCE: Duration = Duration::from_secs(1);
/// The same for a ring that never empties (a storm userspace cannot keep up with): records of
/// the generation before the last left unread by then are reported as read too late.
const FORCE_ADVANCE: Duration = Duration::from_secs(2);

/// Reads and symbolizes the stacks records refer to, and moves the stack generation on;
/// counts the failures.
pub struct StackReader {
    /// The maps of the even and the odd generations, each with its spill maps (for ids from
    /// `STACKS_ID_BASE[1]` on), in the order of `STACKS_ID_BASE`.
    maps: [[StackTraceMap<MapData>; 3]; 2],
    /// The kernel side's current generation (one entry).
    generation_map: Array<MapData, u32>,
    /// The generation captures go to now; records of the one before can be read.
    generation: u32,
    /// When the generation started.
    started: Instant,
    /// The symbolizer's thread, and the stacks it symbolized.
    symbols: Worker,
    /// The frames (raw addresses) read so far, by generation and id: within a generation an
    /// id names one stack.
    read: HashMap<(u32, i16), Vec<u64>>,
    /// Stacks that could not be captured or read, by reason, for the warning line.
    pub failed: HashMap<(&'static str, String), u64>,
}

impl StackReader {
    /// Takes the stack maps out of the loaded object.
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut map = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let mut stack_map = |name| Ok::<_, anyhow::Error>(StackTraceMap::try_from(map(name)?)?);
        let mut maps_of = |parity: usize| -> Result<[StackTraceMap<MapData>; 3]> {
            let [spill, spill2] = MAP_STACKS_SPILL[parity];
            Ok([
                stack_map(MAP_STACKS[parity])?,
                stack_map(spill)?,
                stack_map(spill2)?,
            ])
        };
        let maps = [maps_of(0)?, maps_of(1)?];
        let generation_map = Array::try_from(map(MAP_STACK_GENERATION)?)?;
        Ok(Self {
            maps,
            generation_map,
            generation: 0,
            started: Instant::now(),
            symbols: Worker::start(),
            read: HashMap::new(),
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
    /// process's mappings name its addresses.
    pub fn resolve_ids(&mut self, pid: u32, ids: &StackIds) -> Stacks {
        let user = match self.raw(ids.generation, ids.user) {
            Ok(mut ips) => {
                add_frameless_caller(pid, ids.user_caller, &mut ips);
                let named = self.symbols.user(pid, ips.clone());
                Stack::named(&ips, named)
            }
            Err(why) => Stack::none(why),
        };
        let kernel = match self.raw(ids.generation, ids.kernel) {
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

    /// The addresses of stack `id` of `generation`, or why there are none.
    fn raw(&mut self, generation: u32, id: i16) -> Result<Vec<u64>, String> {
        if id < 0 {
            return Err(stackid_error(-i32::from(id)));
        }
        if generation == self.generation {
            // Captures move to the other map before this one is read (see the module's
            // comment).
            self.advance();
        }
        // 1 once the kernel side moved on (0 only if it could not be made to).
        let age = self.generation.wrapping_sub(generation);
        if age > 1 {
            return Err(format!(
                "read too late: rst-trace fell behind, and the stack map of generation \
                 {generation} was emptied for reuse (now {})",
                self.generation
            ));
        }
        if let Some(ips) = self.read.get(&(generation, id)) {
            return Ok(ips.clone());
        }
        let (which, key) = map_of(id);
        let map = &self.maps[(generation & 1) as usize][which];
        match map.get(&key, 0) {
            Ok(st) => {
                let ips: Vec<u64> = st.frames().iter().map(|f| f.ip).collect();
                self.read.insert((generation, id), ips.clone());
                Ok(ips)
            }
            Err(e) => Err(format!("stack {id} not in the map: {e}")),
        }
    }

    /// The end of a drain of the ring (`empty`: it was read empty): a generation that has
    /// lasted [`IDLE_ADVANCE`] (with a ring that never empties, [`FORCE_ADVANCE`]) ends.
    pub fn drained(&mut self, empty: bool) {
        let limit = if empty { IDLE_ADVANCE } else { FORCE_ADVANCE };
        if self.started.elapsed() >= limit {
            self.advance();
        }
    }

    /// Starts generation g+1 in the map of g-1, emptied first: the ring gives records in the
    /// order they were written, so every record of g-1 has been read by now, or is reported
    /// as read too late. (A capture still running with g-1 may write its stack into the map
    /// after it was emptied: a record of g+1 then finds that entry only for the very same
    /// stack, or `-EEXIST`.)
    fn advance(&mut self) {
        let next = self.generation.wrapping_add(1);
        for map in &mut self.maps[(next & 1) as usize] {
            let ids: Vec<u32> = map.stack_ids().filter_map(Result::ok).collect();
            for id in ids {
                let _ = map.remove(&id);
            }
        }
        if let Err(e) = self.generation_map.set(0, &next, 0) {
            // The kernel side stays on the current generation, whose map is never emptied
            // under it: only collisions (`-EEXIST`) can grow.
            eprintln!("rst-trace: warning: cannot start a new stack generation: {e}");
            return;
        }
        let old = self.generation;
        self.read.retain(|&(g, _), _| g == old);
        self.generation = next;
        self.started = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::map_of;

    #[test]
    fn ids_name_their_map_and_key() {
        assert_eq!(map_of(0), (0, 0));
        assert_eq!(map_of(2047), (0, 2047));
        assert_eq!(map_of(2048), (1, 0));
        assert_eq!(map_of(2559), (1, 511));
        assert_eq!(map_of(2560), (2, 0));
        assert_eq!(map_of(3071), (2, 511));
    }
}
