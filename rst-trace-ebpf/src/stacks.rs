//! `--stacks`: the user and kernel stacks of the call that made a reset, or of an application's
//! call that failed because of one, as ids into the `STACKS` map (userspace reads, symbolizes
//! and deletes them).
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
use rst_trace_common::{OFF_NONE, StackIds};

use crate::{
    maps::STACKS,
    read::{kread, kread_at},
};

/// x86_64's user code and stack segment selectors (`__USER_CS`, `__USER_DS`), as the entry
/// code saves them in `pt_regs.cs`/`pt_regs.ss` for a 64-bit task.
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;

/// The user and kernel stack ids of the current call, each an id in `STACKS` or `-errno`
/// (`-EFAULT`: no such stack, e.g. no user memory left in an exiting process; `-EEXIST`: the id's
/// bucket holds another stack). Nothing is captured, and `None` returned, without `--stacks`.
#[inline(always)]
pub fn capture<C: StackIdContext>(ctx: &C) -> Option<StackIds> {
    if conf!(stacks) == 0 {
        return None;
    }
    let id = |flags: u32| match ctx.get_stackid(&STACKS, u64::from(flags)) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    Some(StackIds {
        user: id(BPF_F_USER_STACK),
        kernel: id(0),
        user_sp_word: user_sp_word(),
    })
}

/// The word at the user stack pointer saved at system call entry, 0 if unknown: the return
/// address of a function that keeps no frame (libc's system call wrappers), which the kernel's
/// frame-pointer walk skips (userspace checks it follows a call instruction).
#[inline(always)]
fn user_sp_word() -> u64 {
    let Some((_, sp)) = regs_end_and_sp() else {
        return 0;
    };
    // SAFETY: bpf_probe_read_user never faults (0 when the task has no user memory left).
    unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
}

/// The current task's registers at system call entry (`task_pt_regs(current)`), for a hook
/// that runs inside a system call without being handed them; None where they cannot be found
/// (not x86_64, or no user registers: a kernel thread).
#[inline(always)]
pub fn current_regs() -> Option<u64> {
    let size = conf!(pt_regs_size);
    if size == OFF_NONE {
        return None;
    }
    regs_end_and_sp().map(|(end, _)| end - u64::from(size))
}

/// Where the current task's `struct pt_regs` ends, and its saved user stack pointer.
///
/// The registers are the last `struct pt_regs` (x86_64: ..., ip, cs, flags, sp, ss) below the
/// top of the kernel stack, or 16 bytes lower where the kernel reserves room for FRED
/// (CONFIG_X86_FRED, 6.9+); the user segment selectors in cs and ss tell which, and that the
/// task entered from 64-bit user mode.
#[inline(always)]
fn regs_end_and_sp() -> Option<(u64, u64)> {
    let off = conf!(task_stack);
    if off == OFF_NONE {
        return None;
    }
    // SAFETY: helper without preconditions; the result is only used as a number.
    let task = unsafe { bpf_get_current_task() };
    let stack = kread::<u64>(task, off)?;
    let top = stack + u64::from(conf!(thread_size));
    let w = kread_at::<[u64; 8]>(top - 64)?;
    if w[4] == USER_CS && w[7] == USER_DS {
        Some((top, w[6]))
    } else if w[2] & 0xffff == USER_CS && w[5] & 0xffff == USER_DS {
        // FRED keeps more bits beside the selectors.
        Some((top - 16, w[4]))
    } else {
        None
    }
}
