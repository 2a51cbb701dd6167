//! `cargo xtask bench`: how much rst-trace costs during a reset storm, in one run.
//!
//! A bounded, in-tree reset generator runs inside a network namespace of the bench's own (so
//! nothing else is touched): threads that connect to a closed port (every attempt: one RST sent by
//! the kernel with no socket, one received by the client) or that connect, write one byte and let
//! a server close without reading (a process-context RST, `close_with_unread_data`). Untraced
//! and traced rounds alternate; the table shows the median of each.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rst_trace_tests::{Netns, enter_netns};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// connect() to a closed port.
    Refused,
    /// close() with unread data.
    Unread,
    /// No resets at all: 1-byte request/response on one connection per thread, to show what
    /// the per-packet and per-syscall hooks cost ordinary traffic.
    Echo,
    /// No sockets at all: getppid() in a loop, the cheapest system call, to show what the
    /// `sys_exit` hook (failing application calls) adds to every system call on the host.
    Syscalls,
}

pub struct Opts {
    pub seconds: f64,
    pub rounds: usize,
    pub soak: Option<u64>,
    pub only: Option<String>,
}

const PORT: u16 = 39_555;

/// The bench's own network namespace (the end-to-end tests' helper), replacing a stale one of
/// the same name.
fn bench_netns() -> Result<Netns> {
    let name = format!("rstbench-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    Netns::create(&name)
        .map_err(|e| anyhow::anyhow!("cannot create network namespace {name} (run as root): {e}"))
}

/// `kernel.bpf_stats_enabled`, put back as it was when the guard drops (also on an error).
struct BpfStatsEnabled {
    was: String,
}

const BPF_STATS_ENABLED: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsEnabled {
    fn save() -> Self {
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

/// Runs the generator for `secs` with `threads` client threads; returns the resets generated.
fn generate(ns: &Netns, mode: Mode, threads: usize, secs: f64) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    let mut handles = Vec::new();
    if mode == Mode::Echo {
        let stop = stop.clone();
        let ns_name = ns.name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter_netns(&ns_name)?;
            let l = TcpListener::bind(addr)?;
            tx.send(()).ok();
            let mut conns = Vec::new();
            for _ in 0..threads {
                let (s, _) = l.accept()?;
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || {
                    let mut s = s;
                    let mut b = [0u8; 1];
                    while !stop.load(Ordering::Relaxed) {
                        if s.read_exact(&mut b).is_err() || s.write_all(&b).is_err() {
                            break;
                        }
                    }
                }));
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .context("bench echo server did not start")?;
    }
    if mode == Mode::Unread {
        // The server: accept and close at once, leaving the client's byte unread.
        let stop = stop.clone();
        let ns_name = ns.name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter_netns(&ns_name)?;
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            tx.send(()).ok();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        // Wait for the byte, so the close really leaves data unread.
                        s.set_nonblocking(false)?;
                        let mut b = [0u8; 1];
                        let _ = s.peek(&mut b);
                        drop(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }));
        rx.recv_timeout(Duration::from_secs(5))
            .context("bench server did not start")?;
    }
    for _ in 0..threads {
        let stop = stop.clone();
        let count = count.clone();
        let ns_name = ns.name.clone();
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter_netns(&ns_name)?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match mode {
                    Mode::Echo => {
                        let mut s = TcpStream::connect(addr)?;
                        s.set_nodelay(true)?;
                        let mut b = [0u8; 1];
                        while !stop.load(Ordering::Relaxed) {
                            // The server side may go first at the end of the round.
                            if s.write_all(b"x").is_err() || s.read_exact(&mut b).is_err() {
                                break;
                            }
                            n += 1;
                        }
                    }
                    Mode::Refused => {
                        if TcpStream::connect(addr).is_err() {
                            n += 1;
                        }
                    }
                    Mode::Syscalls => {
                        for _ in 0..1000 {
                            // SAFETY: no preconditions.
                            unsafe { libc::getppid() };
                        }
                        n += 1000;
                    }
                    Mode::Unread => {
                        // At the end of the round the server may be gone, its accept queue
                        // reset: not an error then.
                        let conn = TcpStream::connect(addr).and_then(|mut s| {
                            s.write_all(b"x")?;
                            Ok(s)
                        });
                        let mut s = match conn {
                            Ok(s) => s,
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(e) => return Err(e.into()),
                        };
                        let mut b = [0u8; 1];
                        // The server's close resets the connection.
                        if s.read(&mut b).is_err() {
                            n += 1;
                        }
                    }
                }
            }
            count.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    }
    Ok(count.load(Ordering::Relaxed))
}

/// BPF run time a process's programs used (from fdinfo; needs kernel.bpf_stats_enabled=1).
#[derive(Clone, Copy, Default)]
struct BpfStats {
    /// run_time_ns of all its programs.
    all_ns: u64,
    /// run_time_ns and run_cnt of the reset programs: the only ones of type `tracing` (26,
    /// BPF_PROG_TYPE_TRACING: the BTF tracepoints); the others are raw tracepoints and one
    /// record-based tracepoint.
    reset_ns: u64,
    reset_cnt: u64,
    /// run_time_ns and run_cnt of the `sys_exit` hook (failing application calls): one run per
    /// system call on the host.
    app_ns: u64,
    app_cnt: u64,
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

fn bpf_stats(pid: u32) -> BpfStats {
    let mut st = BpfStats::default();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return st;
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
        let ns = field("run_time_ns:");
        st.all_ns += ns;
        if field("prog_type:") == 26 {
            st.reset_ns += ns;
            st.reset_cnt += field("run_cnt:");
        }
        if field("prog_type:") == 17
            && prog_name(field("prog_id:") as u32).as_deref() == Some("sys_exit_app")
        {
            st.app_ns += ns;
            st.app_cnt += field("run_cnt:");
        }
    }
    st
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A /proc/PID/status memory line in KiB (VmHWM is the peak RSS since exec).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

struct Traced {
    generated: u64,
    rst_events: u64,
    lost: u64,
    cpu_s: f64,
    peak_rss_kib: u64,
    /// RSS once attached, and at the end of the storm.
    start_rss_kib: u64,
    end_rss_kib: u64,
    attach_ms: f64,
    /// BPF run time of all programs per captured event, and of a reset program per run; only
    /// measured in rounds with `stats` (the accounting itself costs two clock reads per run).
    all_ns_per_event: f64,
    reset_ns_per_run: f64,
    /// BPF run time of the `sys_exit` hook per system call (0 when it is off).
    app_ns_per_call: f64,
}

/// One traced round: start rst-trace, wait until attached, generate, stop it with SIGTERM.
fn traced_round(
    bin: &Path,
    ns: &Netns,
    mode: Mode,
    threads: usize,
    secs: f64,
    args: &[&str],
    stats: bool,
) -> Result<Traced> {
    let out_path = std::env::temp_dir().join(format!("rstbench-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path)?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["--port", &PORT.to_string()])
        .args(args)
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting rst-trace")?;
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("rst-trace exited before attaching");
        }
        if line.starts_with("rst-trace: tracing TCP resets") {
            break;
        }
    }
    let attach_ms = started.elapsed().as_secs_f64() * 1000.0;
    let start_rss_kib = rss_kib(pid);
    std::fs::write(BPF_STATS_ENABLED, if stats { "1" } else { "0" })
        .context("setting kernel.bpf_stats_enabled")?;
    let s0 = bpf_stats(pid);
    let generated = generate(ns, mode, threads, secs)?;
    // Let the drain timer catch up before stopping.
    std::thread::sleep(Duration::from_millis(300));
    let s1 = bpf_stats(pid);
    std::fs::write(BPF_STATS_ENABLED, "0")?;
    let peak_rss_kib = status_kib(pid, "VmHWM:");
    let end_rss_kib = rss_kib(pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("rst-trace did not exit 0 on SIGTERM (status {status}): {rest}");
    }
    let cpu_s = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    let (mut rst_events, mut lost) = (0u64, 0u64);
    let text = std::fs::read_to_string(&out_path)?;
    let _ = std::fs::remove_file(&out_path);
    let netns = ns.inode();
    for l in text.lines() {
        // A line cut short (rst-trace stopped mid-write) is no record.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        match v["type"].as_str() {
            // Only this bench's namespace: another checkout's bench may run on the same port.
            Some("rst") if v["netns"] == netns => rst_events += 1,
            Some("lost") => lost += v["count"].as_u64().unwrap_or(0),
            // --summary --quiet: the events counted in the kernel.
            Some("summary") => rst_events = v["total"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    let all_ns_per_event = if rst_events > 0 {
        s1.all_ns.saturating_sub(s0.all_ns) as f64 / rst_events as f64
    } else {
        0.0
    };
    let reset_runs = s1.reset_cnt.saturating_sub(s0.reset_cnt);
    let reset_ns_per_run = if reset_runs > 0 {
        s1.reset_ns.saturating_sub(s0.reset_ns) as f64 / reset_runs as f64
    } else {
        0.0
    };
    let app_runs = s1.app_cnt.saturating_sub(s0.app_cnt);
    let app_ns_per_call = if app_runs > 0 {
        s1.app_ns.saturating_sub(s0.app_ns) as f64 / app_runs as f64
    } else {
        0.0
    };
    Ok(Traced {
        generated,
        rst_events,
        lost,
        cpu_s,
        peak_rss_kib,
        start_rss_kib,
        end_rss_kib,
        attach_ms,
        all_ns_per_event,
        reset_ns_per_run,
        app_ns_per_call,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn run(bin: &Path, opts: &Opts) -> Result<()> {
    let ns = bench_netns()?;
    let _stats = BpfStatsEnabled::save();
    if let Some(secs) = opts.soak {
        return soak(bin, &ns, secs);
    }
    println!(
        "rst-trace bench: {} s per round, {} untraced + {} traced rounds per row, alternating; medians\n",
        opts.seconds, opts.rounds, opts.rounds
    );
    println!(
        "{:<34} {:>10} {:>10} {:>6} {:>11} {:>8} {:>6} {:>9} {:>6} {:>6} {:>6} {:>9} {:>8} {:>9} {:>6}",
        "configuration",
        "untraced/s",
        "traced/s",
        "ratio",
        "captured",
        "lost",
        "capt%",
        "cpu s/1M",
        "rss0",
        "rss1",
        "peak",
        "attach ms",
        "reset ns",
        "all ns/ev",
        "app ns"
    );
    let configs: [(&str, Mode, usize, &[&str]); 14] = [
        (
            "syscalls (getppid), all hooks",
            Mode::Syscalls,
            1,
            &["--json"],
        ),
        (
            "syscalls, --no-app-errors",
            Mode::Syscalls,
            1,
            &["--json", "--no-app-errors"],
        ),
        ("echo (no resets), all hooks", Mode::Echo, 1, &["--json"]),
        (
            "echo, --no-app-errors",
            Mode::Echo,
            1,
            &["--json", "--no-app-errors"],
        ),
        (
            "echo, --no-firewall --no-ttl",
            Mode::Echo,
            1,
            &["--json", "--no-firewall", "--no-ttl"],
        ),
        (
            "refused, 1 thread, --json file",
            Mode::Refused,
            1,
            &["--json"],
        ),
        (
            "refused, 1 thr, --no-app-errors",
            Mode::Refused,
            1,
            &["--json", "--no-app-errors"],
        ),
        (
            "refused, 2 threads, --json file",
            Mode::Refused,
            2,
            &["--json"],
        ),
        (
            "refused, 2 threads, --json, 1M ring",
            Mode::Refused,
            2,
            &["--json", "--ring-size", "1048576"],
        ),
        (
            "refused, 2 threads, --summary -q",
            Mode::Refused,
            2,
            &["--json", "--summary", "--quiet"],
        ),
        (
            "unread close, 1 thread, --json",
            Mode::Unread,
            1,
            &["--json"],
        ),
        (
            "unread close, 2 threads, --json",
            Mode::Unread,
            2,
            &["--json"],
        ),
        // Every one of these resets is a process-context abort: each gets its two stacks.
        (
            "unread close, 1 thread, --stacks",
            Mode::Unread,
            1,
            &["--json", "--stacks"],
        ),
        (
            "unread close, 2 threads, --stacks",
            Mode::Unread,
            2,
            &["--json", "--stacks"],
        ),
    ];
    for (name, mode, threads, args) in configs {
        if opts.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let (mut un, mut tr, mut cpu, mut att) = (vec![], vec![], vec![], vec![]);
        let (mut captured, mut generated_events, mut lost) = (0u64, 0u64, 0u64);
        let (mut rss0, mut rss1, mut peak) = (0u64, 0u64, 0u64);
        for _ in 0..opts.rounds {
            let n = generate(&ns, mode, threads, opts.seconds)?;
            un.push(n as f64 / opts.seconds);
            let t = traced_round(bin, &ns, mode, threads, opts.seconds, args, false)?;
            tr.push(t.generated as f64 / opts.seconds);
            // Each reset is seen twice: sent by one socket (or none), received by another.
            if !matches!(mode, Mode::Echo | Mode::Syscalls) {
                generated_events += 2 * t.generated;
            }
            captured += t.rst_events;
            lost += t.lost;
            rss0 = rss0.max(t.start_rss_kib);
            rss1 = rss1.max(t.end_rss_kib);
            peak = peak.max(t.peak_rss_kib);
            cpu.push(t.cpu_s / (t.rst_events.max(1) as f64) * 1e6);
            att.push(t.attach_ms);
        }
        // The kernel cost, in a round of its own: with the run-time accounting on, every
        // program run also reads the clock twice, which would slow the rounds above.
        let k = traced_round(bin, &ns, mode, threads, opts.seconds, args, true)?;
        let (u, t) = (median(&mut un), median(&mut tr));
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>6.3} {:>5}/{:<5} {:>8} {:>6} {:>9} {:>6.1} {:>6.1} {:>6.1} {:>9.1} {:>8} {:>9} {:>6}",
            name,
            u,
            t,
            t / u,
            captured,
            generated_events,
            lost,
            if generated_events == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", 100.0 * captured as f64 / generated_events as f64)
            },
            // No resets generated (the echo rows; a few may happen at teardown): nothing
            // worth dividing by.
            if generated_events == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", median(&mut cpu))
            },
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            peak as f64 / 1024.0,
            median(&mut att),
            // Per-event costs only mean something where resets were generated.
            if generated_events == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", k.reset_ns_per_run)
            },
            if generated_events == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", k.all_ns_per_event)
            },
            if k.app_ns_per_call > 0.0 {
                format!("{:.1}", k.app_ns_per_call)
            } else {
                "-".to_owned()
            },
        );
    }
    println!(
        "\ncaptured/generated counts events (2 per reset); lost = reported by rst-trace; cpu s/1M = rst-trace\nCPU seconds per million events; rss0/rss1/peak = MiB of RSS once attached, after the storm, and at\nits peak (VmHWM: BTF parsing at start-up); attach = spawn to readiness line; reset ns = BPF run time per run of\na reset program; all ns/ev = run time of all rst-trace BPF programs (owner tracking, transmit hook)\nper captured event; app ns = run time of the sys_exit hook (failing application calls) per system\ncall. All from kernel.bpf_stats_enabled, in one extra traced round with it on."
    );
    if opts
        .only
        .as_deref()
        .is_some_and(|o| !"bpftrace reference".contains(o))
    {
    } else {
        references(&ns, opts)?;
    }
    Ok(())
}

/// The tools the goals were set against, on the same load: a per-event bpftrace printer, an
/// in-kernel bpftrace count and `perf record` of the two tracepoints (it decodes nothing).
fn references(ns: &Netns, opts: &Opts) -> Result<()> {
    const TPS: &str = "tracepoint:tcp:tcp_send_reset, tracepoint:tcp:tcp_receive_reset";
    let tools: [(&str, &str, Vec<String>); 3] = [
        (
            "bpftrace printf per event",
            "bpftrace",
            vec![
                "-e".into(),
                format!("{TPS} {{ printf(\"%d %s\\n\", pid, comm); }}"),
            ],
        ),
        (
            "bpftrace in-kernel count",
            "bpftrace",
            vec!["-e".into(), format!("{TPS} {{ @n = count(); }}")],
        ),
        (
            "perf record of the two tracepoints",
            "perf",
            [
                "record",
                "-a",
                "-e",
                "tcp:tcp_send_reset",
                "-e",
                "tcp:tcp_receive_reset",
                "-o",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .chain([std::env::temp_dir()
                .join(format!("rstbench-perf-{}.data", std::process::id()))
                .display()
                .to_string()])
            .collect(),
        ),
    ];
    for (name, tool, args) in tools {
        if !which(tool) {
            println!("reference: {tool} not installed, no `{name}` row");
            continue;
        }
        for threads in [1, 2] {
            let (mut un, mut tr) = (vec![], vec![]);
            let (mut captured, mut generated_events) = (0u64, 0u64);
            for _ in 0..opts.rounds {
                un.push(generate(ns, Mode::Refused, threads, opts.seconds)? as f64 / opts.seconds);
                let (n, seen) = reference_round(ns, tool, &args, threads, opts.seconds)?;
                tr.push(n as f64 / opts.seconds);
                generated_events += 2 * n;
                captured += seen;
            }
            let (u, t) = (median(&mut un), median(&mut tr));
            println!(
                "reference: {name}, refused, {threads} thread(s): untraced {u:.0}/s, traced {t:.0}/s, ratio {:.3}, events {captured}/{generated_events}",
                t / u
            );
        }
    }
    Ok(())
}

/// One round under a reference tool. Returns (resets generated, events the tool reported:
/// printed lines, the count, or perf's sample count).
fn reference_round(
    ns: &Netns,
    tool: &str,
    args: &[String],
    threads: usize,
    secs: f64,
) -> Result<(u64, u64)> {
    let mut child = Command::new(tool)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let err = BufReader::new(child.stderr.take().context("stderr")?);
    let (tx, rx) = std::sync::mpsc::channel();
    let out_t = count_lines(out, tx.clone());
    let err_t = count_lines(err, tx);
    if tool == "perf" {
        // perf says nothing when it is ready.
        std::thread::sleep(Duration::from_secs(1));
    } else if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        bail!("{tool} did not attach");
    }
    let generated = generate(ns, Mode::Refused, threads, secs)?;
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()?;
    let (out_lines, out_num) = out_t.join().unwrap_or((0, 0));
    let (_, err_num) = err_t.join().unwrap_or((0, 0));
    let seen = if args.iter().any(|a| a.contains("printf")) {
        out_lines
    } else {
        out_num.max(err_num)
    };
    if tool == "perf" {
        let _ = std::fs::remove_file(args.last().map(String::as_str).unwrap_or_default());
    }
    Ok((generated, seen))
}

/// Reads a tool's output stream: signals readiness (bpftrace's "Attaching" line), counts the
/// other lines, and keeps the last number it saw (bpftrace's "@n: N", perf's "(N samples)").
fn count_lines<R: std::io::Read + Send + 'static>(
    r: BufReader<R>,
    tx: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut lines, mut last_num) = (0u64, 0u64);
        for l in r.lines().map_while(Result::ok) {
            if l.starts_with("Attaching") {
                let _ = tx.send(());
                continue;
            }
            lines += 1;
            if let Some(n) = l
                .strip_prefix("@n: ")
                .or_else(|| l.split(" (").nth(1)?.strip_suffix(" samples) ]"))
                .and_then(|v| v.trim().parse().ok())
            {
                last_num = n;
            }
        }
        (lines, last_num)
    })
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `--soak SECS`: a moderate storm for SECS seconds; RSS at start and at end.
fn soak(bin: &Path, ns: &Netns, secs: u64) -> Result<()> {
    let mut child = Command::new(bin)
        .args([
            "--port",
            &PORT.to_string(),
            "--json",
            "--quiet",
            "--summary",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    while err.read_line(&mut line)? > 0 && !line.starts_with("rst-trace: tracing") {
        line.clear();
    }
    let start = rss_kib(pid);
    let mut total = 0;
    let t0 = Instant::now();
    while t0.elapsed().as_secs() < secs {
        total += generate(ns, Mode::Refused, 1, 1.0)?;
        total += generate(ns, Mode::Unread, 1, 1.0)?;
    }
    let end = rss_kib(pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait()?;
    println!(
        "soak: {secs} s, {total} resets; rst-trace RSS {:.1} MiB at start, {:.1} MiB at end; exit {status}",
        start as f64 / 1024.0,
        end as f64 / 1024.0
    );
    Ok(())
}
