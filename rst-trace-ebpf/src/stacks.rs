//! `--stacks`: the user and kernel stacks of the call that made a reset, as ids into the
//! `STACKS` map (userspace reads, symbolizes and deletes them).
//!
//! Any hook that runs in the acting task's own system call can call [`capture`] with its
//! context and store the two ids in its record: the user stack is the current task's
//! (`BPF_F_USER_STACK` walks `task_pt_regs(current)`, the registers at syscall entry), so it is
//! only meaningful in process context, never in a softirq or timer.

use aya_ebpf::{bindings::BPF_F_USER_STACK, programs::tracing::StackIdContext};

use crate::maps::STACKS;

/// `[user, kernel]` stack ids of the current call, each an id in `STACKS` or `-errno`
/// (`-EFAULT`: no such stack, e.g. no user memory left in an exiting process; `-EEXIST`: the id's
/// bucket holds another stack). Nothing is captured, and `None` returned, without `--stacks`.
#[inline(always)]
pub fn capture<C: StackIdContext>(ctx: &C) -> Option<[i32; 2]> {
    if conf!(stacks) == 0 {
        return None;
    }
    let id = |flags: u32| match ctx.get_stackid(&STACKS, u64::from(flags)) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    Some([id(BPF_F_USER_STACK), id(0)])
}
