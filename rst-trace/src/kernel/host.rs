//! What the process needs from the host before loading: privileges and a memlock limit.

use anyhow::{Context as _, Result, anyhow};

const NEEDS_ROOT: &str = "rst-trace needs root (CAP_BPF, CAP_PERFMON and read access to tracefs, \
     which is root-only by default): run it with sudo";

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones to the memory cgroup), and
/// the usual limit is far below the ring buffer's 4 MiB: raise it, as libbpf does. Without the
/// privilege to raise the hard limit, the soft one still goes up to it.
pub fn raise_memlock() {
    // SAFETY: plain system calls on a valid, owned struct.
    unsafe {
        let infinite = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &infinite) == 0 {
            return;
        }
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 {
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
        }
    }
}

/// CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) in the effective set, checked before touching
/// tracefs so the message names the real cause.
pub fn check_privileges() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = procfs::process::Process::myself()
        .and_then(|p| p.status())
        .context("reading /proc/self/status")?
        .capeff;
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(anyhow!(NEEDS_ROOT));
    }
    Ok(())
}
