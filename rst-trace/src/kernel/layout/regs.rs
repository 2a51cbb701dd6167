//! The registers a task saved at system call entry (`struct pt_regs`), per architecture: where
//! they are (the top of the task's kernel stack), which of them hold the call's number and
//! arguments, and which locates the caller of a function that keeps no frame. Every offset and
//! size comes from the running kernel's BTF; only the register names are the architecture's,
//! chosen by the architecture this binary was built for (which is the kernel's: rst-trace runs
//! natively).

use rst_trace_common::{Config, OFF_NONE, REGS_ARM64, REGS_X86_64};

use crate::kernel::btf::Btf;

/// One architecture's register names, as its kernel's `struct pt_regs` spells them.
pub struct Arch {
    /// `std::env::consts::ARCH`.
    pub name: &'static str,
    /// [`Config::regs_arch`].
    pub id: u16,
    /// What syscall_get_nr() returns.
    nr: &'static str,
    /// The first four arguments as syscall_get_arguments() reads them at the call's exit.
    args: [&'static str; 4],
    /// The register that locates a frameless function's caller (see [`Config::regs_caller`]).
    caller: &'static str,
    /// arm64's `pstate`, whose mode bits tell a 64-bit user task's registers.
    pstate: Option<&'static str>,
}

/// x86_64 (arch/x86/include/asm/syscall.h): the number in orig_ax, the arguments in di, si, dx,
/// r10 (the syscall ABI's fourth is r10, not the C ABI's cx); the return address of a frameless
/// function is the word at sp.
const X86_64: Arch = Arch {
    name: "x86_64",
    id: REGS_X86_64,
    nr: "orig_ax",
    args: ["di", "si", "dx", "r10"],
    caller: "sp",
    pstate: None,
};

/// arm64 (arch/arm64/include/asm/syscall.h): syscall_get_nr() is `syscallno`; the arguments are
/// regs[0..], but regs[0] holds the return value by the call's exit, so the first is
/// `orig_x0` (what syscall_get_arguments() reads too). `bl` leaves the return address in the
/// link register, regs[30], which a leaf wrapper does not save.
const ARM64: Arch = Arch {
    name: "aarch64",
    id: REGS_ARM64,
    nr: "syscallno",
    args: ["orig_x0", "regs[1]", "regs[2]", "regs[3]"],
    caller: "regs[30]",
    pstate: Some("pstate"),
};

/// The architecture rst-trace was built for, if it knows its registers.
pub fn arch() -> Option<&'static Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(&X86_64),
        "aarch64" => Some(&ARM64),
        _ => None,
    }
}

/// Offset of register `name` in `struct pt_regs`: a member, or `regs[N]` (arm64's array of
/// u64: its element size checked against the `sp` that follows the 31 of them).
fn reg_off(btf: &Btf, name: &str) -> Result<u16, String> {
    let off = |path: &str| {
        btf.offset_of("pt_regs", path)
            .ok()
            .and_then(|o| u16::try_from(o).ok())
            .ok_or_else(|| format!("no pt_regs.{path} in vmlinux BTF"))
    };
    let Some(index) = name
        .strip_prefix("regs[")
        .and_then(|i| i.strip_suffix(']'))
        .and_then(|i| i.parse::<u16>().ok())
    else {
        return off(name);
    };
    let base = off("regs")?;
    if off("sp")? != base + 31 * 8 {
        return Err("pt_regs.regs is not 31 longs before sp".into());
    }
    Ok(base + index * 8)
}

/// `THREAD_SIZE`: 16 KiB on x86_64 and on arm64 with 4 KiB pages, twice that with KASAN
/// (KASAN_STACK_ORDER, KASAN_THREAD_SHIFT), at least a page on arm64 (THREAD_SHIFT is
/// PAGE_SHIFT with 64 KiB pages).
fn thread_size(btf: &Btf) -> u32 {
    let base: u32 = if btf.has_function("kasan_report") {
        32 << 10
    } else {
        16 << 10
    };
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
    base.max(page)
}

/// Where the system call entry's registers are: the top of the task's kernel stack
/// (`task_pt_regs()`), and the register that locates a frameless caller. Left unset (the
/// hooks then go without them: stacks lack only that caller) on an architecture rst-trace does
/// not know or a kernel without the fields.
pub fn stack_top_config(btf: &Btf, cfg: &mut Config) {
    let Some(arch) = arch() else { return };
    let (Ok(stack), Ok(size), Ok(caller)) = (
        btf.offset_of("task_struct", "stack"),
        btf.struct_size("pt_regs"),
        reg_off(btf, arch.caller),
    ) else {
        return;
    };
    let pstate = match arch.pstate.map(|p| reg_off(btf, p)) {
        None => OFF_NONE,
        Some(Ok(p)) => p,
        Some(Err(_)) => return,
    };
    let (Ok(stack), Ok(size)) = (u16::try_from(stack), u16::try_from(size)) else {
        return;
    };
    cfg.task_stack = stack;
    cfg.pt_regs_size = size;
    cfg.thread_size = thread_size(btf);
    cfg.regs_arch = arch.id;
    cfg.regs_caller = caller;
    cfg.regs_pstate = pstate;
}

/// The failing-call hooks' registers: the call's number and its first three arguments
/// (required), and the fourth (getsockopt's `optval`) where the entry registers can be found
/// from inside the call. `Err` says why not on this architecture or kernel.
pub fn syscall_config(btf: &Btf, cfg: &mut Config) -> Result<(), String> {
    let arch = arch().ok_or_else(|| {
        format!(
            "the system call registers of {} are not known to rst-trace",
            std::env::consts::ARCH
        )
    })?;
    cfg.regs_nr = reg_off(btf, arch.nr).map_err(|e| format!("{e} ({})", arch.name))?;
    cfg.regs_arg0 = reg_off(btf, arch.args[0])?;
    cfg.regs_arg1 = reg_off(btf, arch.args[1])?;
    cfg.regs_arg2 = reg_off(btf, arch.args[2])?;
    if cfg.regs_arch != 0 {
        cfg.regs_arg3 = reg_off(btf, arch.args[3]).unwrap_or(OFF_NONE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the running kernel (the host and every guest of the matrix, x86_64 and arm64): the
    /// registers are found, at the offsets the architecture's headers give.
    #[test]
    fn running_kernel_pt_regs() {
        let btf = Btf::from_sys_fs().expect("vmlinux BTF");
        let mut cfg = Config::empty();
        stack_top_config(&btf, &mut cfg);
        syscall_config(&btf, &mut cfg).unwrap();
        let arch = arch().expect("a known architecture");
        assert_eq!(cfg.regs_arch, arch.id);
        assert_ne!(cfg.task_stack, OFF_NONE);
        assert!(cfg.thread_size >= 16 << 10);
        match arch.id {
            // 21 longs, with or without FRED's unions; orig_ax is the 16th, di the 15th.
            REGS_X86_64 => {
                assert_eq!(cfg.pt_regs_size, 168);
                assert_eq!((cfg.regs_nr, cfg.regs_arg0), (120, 112));
                assert_eq!((cfg.regs_caller, cfg.regs_pstate), (152, OFF_NONE));
            }
            // regs[31], sp, pc, pstate, then orig_x0 and syscallno (5.10 to 6.12: 336 bytes).
            _ => {
                assert_eq!(cfg.pt_regs_size, 336);
                assert_eq!((cfg.regs_nr, cfg.regs_arg0), (280, 272));
                assert_eq!((cfg.regs_arg1, cfg.regs_arg3), (8, 24));
                assert_eq!((cfg.regs_caller, cfg.regs_pstate), (240, 264));
            }
        }
    }
}
