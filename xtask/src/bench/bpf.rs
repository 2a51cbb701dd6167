//! BPF run time of rst-trace's programs, from fdinfo with `kernel.bpf_stats_enabled` on.

/// `kernel.bpf_stats_enabled`, put back as it was when the guard drops (also on an error).
pub(super) struct BpfStatsEnabled {
    was: String,
}

pub(super) const BPF_STATS_ENABLED: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsEnabled {
    pub(super) fn save() -> Self {
        Self {
            was: std::fs::read_to_string(BPF_STATS_ENABLED).unwrap_or_default(),
        }
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS_ENABLED, self.was.trim());
    }
}

/// BPF run time a process's programs used (from fdinfo; needs kernel.bpf_stats_enabled=1).
#[derive(Clone, Copy, Default)]
pub(super) struct BpfStats {
    /// run_time_ns of all its programs.
    pub(super) all_ns: u64,
    /// run_time_ns and run_cnt of the reset programs: the only ones of type `tracing` (26,
    /// BPF_PROG_TYPE_TRACING: the BTF tracepoints); the others are raw tracepoints and one
    /// record-based tracepoint.
    pub(super) reset_ns: u64,
    pub(super) reset_cnt: u64,
    /// run_time_ns and run_cnt of the `sys_exit` hook (failing application calls): one run per
    /// system call on the host.
    pub(super) app_ns: u64,
    pub(super) app_cnt: u64,
}

/// A loaded BPF program's name (`bpf_prog_info.name`, 16 bytes at offset 64 of the uapi
/// struct), by id: the fdinfo of a program fd has no name.
fn prog_name(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    // SAFETY: bpf(2) with a zeroed attribute union holding the id; the result is an fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 256];
    let mut attr = [0u64; 16];
    attr[0] = (fd as u64) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: bpf(2) filling `info` (its length given); then the fd we opened is closed.
    let rc = unsafe {
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        );
        libc::close(fd as i32);
        rc
    };
    if rc != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The run time so far of process `pid`'s programs.
pub(super) fn bpf_stats(pid: u32) -> BpfStats {
    let mut st = BpfStats::default();
    for p in prog_stats(pid) {
        st.all_ns += p.ns;
        if p.prog_type == PROG_TYPE_TRACING {
            st.reset_ns += p.ns;
            st.reset_cnt += p.runs;
        }
        if p.name == "sys_exit_app" {
            st.app_ns += p.ns;
            st.app_cnt += p.runs;
        }
    }
    st
}

/// BPF_PROG_TYPE_TRACING: the BTF tracepoints, which only the reset programs are.
const PROG_TYPE_TRACING: u64 = 26;

/// One program's run count and run time so far.
pub(super) struct ProgStats {
    pub(super) name: String,
    pub(super) prog_type: u64,
    pub(super) runs: u64,
    pub(super) ns: u64,
}

/// Process `pid`'s programs, by name (programs of one name added up: a program attached to
/// two tracepoints is loaded once per attachment kind).
pub(super) fn prog_stats(pid: u32) -> Vec<ProgStats> {
    let mut out: Vec<ProgStats> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .map(|l| l.to_string_lossy().contains("bpf-prog"))
            .unwrap_or(false);
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("prog_id:") as u32;
        if !seen.insert(id) {
            continue;
        }
        let name = prog_name(id).unwrap_or_else(|| format!("prog {id}"));
        let (runs, ns) = (field("run_cnt:"), field("run_time_ns:"));
        match out.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.runs += runs;
                p.ns += ns;
            }
            None => out.push(ProgStats {
                name,
                prog_type: field("prog_type:"),
                runs,
                ns,
            }),
        }
    }
    out
}

/// Each program's runs and run time between two samples.
pub(super) fn diff(a: &[ProgStats], b: &[ProgStats]) -> Vec<ProgStats> {
    b.iter()
        .map(|p| {
            let before = a.iter().find(|q| q.name == p.name);
            ProgStats {
                name: p.name.clone(),
                prog_type: p.prog_type,
                runs: p.runs - before.map_or(0, |q| q.runs),
                ns: p.ns - before.map_or(0, |q| q.ns),
            }
        })
        .filter(|p| p.runs > 0)
        .collect()
}

/// One table: each load's programs, runs per operation, ns per run and per operation.
pub(super) fn print_programs(rows: &[(&str, &str, f64, Vec<ProgStats>)]) {
    println!("\nper program, from the kernel's run-time accounting (kernel.bpf_stats_enabled):");
    println!(
        "{:38} {:24} {:>12} {:>10} {:>12}",
        "load", "program", "runs/op", "ns/run", "ns/op"
    );
    for (name, unit, ops, progs) in rows {
        let ops = ops.max(1.0);
        let mut total = 0.0;
        for p in progs {
            let per_op = p.ns as f64 / ops;
            total += per_op;
            println!(
                "{name:38} {:24} {:>12.3} {:>10.1} {per_op:>12.1}",
                p.name,
                p.runs as f64 / ops,
                p.ns as f64 / p.runs.max(1) as f64
            );
        }
        println!(
            "{name:38} {:24} {:>12} {:>10} {total:>12.1}   (op = {})",
            "all",
            "",
            "",
            unit_op(unit)
        );
    }
}

fn unit_op(unit: &str) -> &str {
    match unit {
        "calls" => "one getppid()",
        "round trips" => "one round trip",
        "requests" => "one HTTP request",
        "MB" => "one MB streamed",
        "resets" => "one reset generated",
        _ => "one connection",
    }
}
