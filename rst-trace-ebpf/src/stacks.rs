//! `--stacks`: the user and kernel stacks of the call that made a reset, or of an application's
//! call that failed because of one, as ids into the stack map of the current generation
//! (userspace reads and symbolizes them, and empties a generation's map before reusing it).
//!
//! Any hook that runs in the acting task's own system call can call [`capture`] with its
//! context and store the two ids in its record: the user stack is the current task's
//! (`BPF_F_USER_STACK` walks `task_pt_regs(current)`, the registers at syscall entry), so it is
//! only meaningful in process context, never in a softirq or timer.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_task, bpf_probe_read_user},
    programs::tracing::StackIdContext,
};
use rst_trace_common::{OFF_NONE, REGS_ARM64, REGS_X86_64, STACKS_ID_BASE, StackIds};

use crate::{
    maps::{
        STACK_GENERATION, STACKS_EVEN, STACKS_ODD, STACKS_SPILL_EVEN, STACKS_SPILL_ODD,
        STACKS_SPILL2_EVEN, STACKS_SPILL2_ODD,
    },
    read::{kread, kread_at},
};

/// `EEXIST` (include/uapi/asm-generic/errno-base.h).
const EEXIST: i32 = 17;
/// x86_64's user code and stack segment selectors (`__USER_CS`, `__USER_DS`), as the entry
/// code saves them in `pt_regs.cs`/`pt_regs.ss` for a 64-bit task.
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;
/// arm64 `pstate`'s mode bits (`PSR_MODE_MASK` with `PSR_MODE32_BIT`): 0 is `PSR_MODE_EL0t`,
/// a 64-bit task's user mode (user_mode() && !compat_user_mode()).
const PSR_MODE_BITS: u64 = 0x1f;

/// The id of the current stack (`flags`: user or kernel) in `$map`, or, where its bucket there
/// holds another stack (`-EEXIST`, `__bpf_get_stackid()`), in `$spill`, or else in `$spill2`,
/// offset by that map's `STACKS_ID_BASE`; `-errno` if none takes it. A macro, so that each map
/// stays the constant argument of a call of its own.
macro_rules! stackid {
    ($ctx:expr, [$map:ident, $spill:ident, $spill2:ident], $flags:expr) => {
        match $ctx.get_stackid(&$map, $flags) {
            Err(e) if e == -EEXIST => match $ctx.get_stackid(&$spill, $flags) {
                Err(e) if e == -EEXIST => based($ctx.get_stackid(&$spill2, $flags), 2),
                r => based(r, 1),
            },
            r => based(r, 0),
        }
    };
}

/// A stack id as the record holds it: the map's key plus the map's base, or `-errno`. Both fit
/// an i16 (asserted in rst-trace-common).
#[inline(always)]
fn based(r: Result<i64, i32>, map: usize) -> i16 {
    match r {
        Ok(id) => (id + i64::from(STACKS_ID_BASE[map])) as i16,
        Err(e) => e as i16,
    }
}

/// The user and kernel stack ids of the current call in the current generation's maps, each
/// an id or `-errno` (`-EFAULT`: no such stack, e.g. no user memory left in an exiting process;
/// `-EEXIST`: the id's bucket holds another stack in every map). Nothing is captured, and
/// `None` returned, without `--stacks`.
#[inline(always)]
pub fn capture<C: StackIdContext>(ctx: &C) -> Option<StackIds> {
    if conf!(stacks) == 0 {
        return None;
    }
    // Read before the captures: if userspace moves on meanwhile, the record names the
    // generation whose map it wrote to, and userspace tells it apart.
    let generation = STACK_GENERATION.get(0).copied().unwrap_or(0);
    const USER: u64 = BPF_F_USER_STACK as u64;
    // The map is the helper's constant argument: one call site per map and flag.
    let (user, kernel) = if generation & 1 == 0 {
        (
            stackid!(
                ctx,
                [STACKS_EVEN, STACKS_SPILL_EVEN, STACKS_SPILL2_EVEN],
                USER
            ),
            stackid!(ctx, [STACKS_EVEN, STACKS_SPILL_EVEN, STACKS_SPILL2_EVEN], 0),
        )
    } else {
        (
            stackid!(ctx, [STACKS_ODD, STACKS_SPILL_ODD, STACKS_SPILL2_ODD], USER),
            stackid!(ctx, [STACKS_ODD, STACKS_SPILL_ODD, STACKS_SPILL2_ODD], 0),
        )
    };
    Some(StackIds {
        user,
        kernel,
        generation,
        user_caller: user_caller(),
    })
}

/// The return address of the function that made the system call, 0 if unknown: a function
/// that keeps no frame (libc's system call wrappers), which the kernel's frame-pointer walk
/// skips (userspace checks it follows a call instruction). x86_64: the word at the user stack
/// pointer (`call` pushed it); arm64: the link register (`bl` put it in x30, and a leaf
/// wrapper leaves it there).
#[inline(always)]
fn user_caller() -> u64 {
    let Some(regs) = current_regs() else {
        return 0;
    };
    let Some(reg) = kread::<u64>(regs, conf!(regs_caller)) else {
        return 0;
    };
    if conf!(regs_arch) == REGS_ARM64 {
        return reg;
    }
    // SAFETY: bpf_probe_read_user never faults (0 when the task has no user memory left).
    unsafe { bpf_probe_read_user(reg as *const u64) }.unwrap_or(0)
}

/// The current task's registers at system call entry (`task_pt_regs(current)`), for a hook
/// that runs inside a system call without being handed them; None where they cannot be found
/// (an architecture or kernel without what it takes, or no 64-bit user registers: a kernel
/// thread, a 32-bit task).
#[inline(always)]
pub fn current_regs() -> Option<u64> {
    let off = conf!(task_stack);
    let size = conf!(pt_regs_size);
    if off == OFF_NONE || size == OFF_NONE {
        return None;
    }
    // SAFETY: helper without preconditions; the result is only used as a number.
    let task = unsafe { bpf_get_current_task() };
    let stack = kread::<u64>(task, off)?;
    let top = stack + u64::from(conf!(thread_size));
    let end = match conf!(regs_arch) {
        REGS_X86_64 => x86_64_regs_end(top)?,
        // arm64: task_pt_regs() is exactly the top of the stack less sizeof(struct pt_regs)
        // (arch/arm64/include/asm/processor.h), no padding; a kernel thread's pstate is EL1
        // (copy_thread()), a compat task's has PSR_MODE32_BIT.
        REGS_ARM64 => {
            let regs = top - u64::from(size);
            let pstate = kread::<u64>(regs, conf!(regs_pstate))?;
            return (pstate & PSR_MODE_BITS == 0).then_some(regs);
        }
        _ => return None,
    };
    Some(end - u64::from(size))
}

/// Where x86_64's `struct pt_regs` ends: right below the top of the kernel stack (..., ip, cs,
/// flags, sp, ss), or 16 bytes lower where the kernel reserves room for FRED
/// (CONFIG_X86_FRED, 6.9+); the user segment selectors in cs and ss tell which, and that the
/// task entered from 64-bit user mode.
#[inline(always)]
fn x86_64_regs_end(top: u64) -> Option<u64> {
    let w = kread_at::<[u64; 8]>(top - 64)?;
    if w[4] == USER_CS && w[7] == USER_DS {
        Some(top)
    } else if w[2] & 0xffff == USER_CS && w[5] & 0xffff == USER_DS {
        // FRED keeps more bits beside the selectors.
        Some(top - 16)
    } else {
        None
    }
}
