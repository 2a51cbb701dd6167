//! The healthy path: what rst-trace costs a host where nothing resets. Five loads, each run
//! untraced, under rst-trace with its default flags (or other arguments), and under the bpftrace
//! reference (a count on the two reset tracepoints, which only a reset fires), rounds
//! alternating; then one more traced round with the kernel's run-time accounting on, which
//! names each attached program's runs per operation and nanoseconds per run.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rst_trace_tests::{Netns, enter_netns};

use super::{
    Mode, Opts,
    bpf::{BPF_STATS_ENABLED, diff, print_programs, prog_stats},
    load::generate,
    measure::{await_readiness, median},
};

/// The healthy-path loads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Load {
    /// getppid() in a loop: what every system call of the host pays.
    Syscalls,
    /// 1-byte request/response over one loopback TCP connection, both ends on CPU 0.
    PingPong,
    /// nginx serving a small file with keep-alive, under `wrk -t1 -c8`.
    Http,
    /// One TCP stream of 64 KiB writes, read and discarded (MB/s).
    Bulk,
    /// connect, accept, 1-byte exchange, graceful close (server first), over and over.
    Churn,
}

pub(super) const LOADS: [(&str, Load, &str); 5] = [
    ("healthy: syscalls (getppid)", Load::Syscalls, "calls"),
    (
        "healthy: 1-byte ping-pong, 1 CPU",
        Load::PingPong,
        "round trips",
    ),
    ("healthy: nginx keep-alive, wrk -c8", Load::Http, "requests"),
    ("healthy: bulk stream, 64 KiB writes", Load::Bulk, "MB"),
    ("healthy: connection churn", Load::Churn, "connections"),
];

const PORT: u16 = 39_556;
const BPFTRACE_REF: &str =
    "tracepoint:tcp:tcp_send_reset, tracepoint:tcp:tcp_receive_reset { @n = count(); }";

/// Every healthy-path row with rst-trace's `args` (the default flags when empty).
pub(super) fn run(bin: &Path, ns: &Netns, opts: &Opts, args: &[&str]) -> Result<()> {
    println!(
        "\nhealthy path (no resets), rst-trace {}: ops/s untraced, traced, bpftrace reference; ratios to untraced (medians of {} rounds of {} s)",
        if args.is_empty() {
            "with its default flags".to_owned()
        } else {
            args.join(" ")
        },
        opts.rounds,
        opts.seconds
    );
    println!(
        "{:38} {:>12} {:>12} {:>12} {:>7} {:>7}",
        "load", "untraced/s", "traced/s", "bpftrace/s", "ratio", "bpftr."
    );
    let mut programs = Vec::new();
    for (name, load, unit) in LOADS {
        if opts.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let (mut un, mut tr, mut rf) = (vec![], vec![], vec![]);
        for _ in 0..opts.rounds {
            un.push(rate(ns, load, opts.seconds)?);
            let t = Tracing::start(bin, args, false)?;
            tr.push(rate(ns, load, opts.seconds)?);
            t.stop()?;
            let r = Tracing::bpftrace()?;
            rf.push(rate(ns, load, opts.seconds)?);
            r.stop()?;
        }
        let (u, t, r) = (median(&mut un), median(&mut tr), median(&mut rf));
        println!(
            "{name:38} {u:>12.0} {t:>12.0} {r:>12.0} {:>7.3} {:>7.3}",
            t / u,
            r / u
        );
        // The per-program cost, in a round of its own (the accounting reads the clock twice
        // per program run).
        let tracer = Tracing::start(bin, args, true)?;
        let s0 = prog_stats(tracer.pid());
        let ops = rate(ns, load, opts.seconds)? * opts.seconds;
        let s1 = prog_stats(tracer.pid());
        tracer.stop()?;
        programs.push((name, unit, ops, diff(&s0, &s1)));
    }
    print_programs(&programs);
    Ok(())
}

/// Operations per second of one round of `load`.
fn rate(ns: &Netns, load: Load, secs: f64) -> Result<f64> {
    let n = match load {
        Load::Syscalls => generate(ns, Mode::Syscalls, 1, secs)? as f64,
        Load::PingPong => on_cpu0(|| generate(ns, Mode::Echo, 1, secs))? as f64,
        Load::Http => http(ns, secs)?,
        Load::Bulk => bulk(ns, secs)? as f64 / 1e6,
        Load::Churn => churn(ns, secs)? as f64,
    };
    Ok(n / secs)
}

/// Runs `f` with this thread (and the threads it starts) on CPU 0 only: a request/response
/// whose two ends share a CPU pays every hook on it.
fn on_cpu0<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity on this thread with its size.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
        let r = f();
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
        r
    }
}

/// A server thread in `ns` running `serve` on its listener, and a client thread running
/// `client` until `secs` have passed; returns what the client counted.
fn pair(
    ns: &Netns,
    secs: f64,
    serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    client: impl Fn(SocketAddr, &AtomicBool) -> Result<u64> + Send + 'static,
) -> Result<u64> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (ns1, stop1) = (ns.name.clone(), stop.clone());
    let server = std::thread::spawn(move || -> Result<()> {
        enter_netns(&ns1)?;
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        tx.send(()).ok();
        while !stop1.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    serve(s, &stop1);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    });
    if rx.recv_timeout(Duration::from_secs(5)).is_err() {
        let why = server
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))?;
        bail!("bench server did not start on {addr}: {why:?}");
    }
    let count = Arc::new(AtomicU64::new(0));
    let client_stop = Arc::new(AtomicBool::new(false));
    let (ns2, stop2, count2) = (ns.name.clone(), client_stop.clone(), count.clone());
    let cl = std::thread::spawn(move || -> Result<()> {
        enter_netns(&ns2)?;
        count2.store(client(addr, &stop2)?, Ordering::Relaxed);
        Ok(())
    });
    std::thread::sleep(Duration::from_secs_f64(secs));
    // The client stops first: a listener closed with connections in its queue would reset them.
    client_stop.store(true, Ordering::Relaxed);
    cl.join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    stop.store(true, Ordering::Relaxed);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(count.load(Ordering::Relaxed))
}

/// Bytes streamed in 64 KiB writes.
fn bulk(ns: &Netns, secs: f64) -> Result<u64> {
    pair(
        ns,
        secs,
        |mut s, _| {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        },
        |addr, stop| {
            let mut s = TcpStream::connect(addr)?;
            let buf = vec![7u8; 1 << 16];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&buf)?;
                n += buf.len() as u64;
            }
            s.shutdown(Shutdown::Write)?;
            Ok(n)
        },
    )
}

/// Connections made, each with a 1-byte exchange and a graceful close, the server's first (so
/// TIME_WAIT stays on the server's side and the client's ports are reused).
fn churn(ns: &Netns, secs: f64) -> Result<u64> {
    pair(
        ns,
        secs,
        |mut s, _| {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        },
        |addr, stop| {
            let mut n = 0u64;
            let mut b = [0u8; 1];
            while !stop.load(Ordering::Relaxed) {
                let mut s = TcpStream::connect(addr)?;
                s.write_all(b"x")?;
                s.read_exact(&mut b)?;
                // EOF: the server closed first.
                let _ = s.read(&mut b)?;
                n += 1;
            }
            Ok(n)
        },
    )
}

/// nginx in `ns` serving a 612-byte file with keep-alive; `wrk -t1 -c8`'s requests.
fn http(ns: &Netns, secs: f64) -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("rstbench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "x".repeat(612))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{PORT}; root {d}/www; }} }}\n",
            d = dir.display()
        ),
    )?;
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nginx", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nginx (Debian's nginx-light)")?;
    let up = Instant::now();
    while Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{PORT}"))
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        if up.elapsed() > Duration::from_secs(5) {
            let _ = nginx.kill();
            bail!("nginx did not listen on 127.0.0.1:{PORT}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "wrk", "-t1", "-c8"])
        .arg(format!("-d{}s", secs.ceil() as u64))
        .arg(format!("http://127.0.0.1:{PORT}/index.html"))
        .output()
        .context("running wrk")?;
    // SIGTERM, not SIGKILL: the master then stops its worker, which holds the port too.
    // SAFETY: signalling our own child (`ip netns exec` execs nginx in place).
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    let _ = nginx.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    // "  153210 requests in 2.00s, ..."
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk printed no request count: {text}"))?;
    // wrk runs whole seconds: scale to the round's length.
    Ok(requests * secs / secs.ceil())
}

/// rst-trace or the bpftrace reference, attached.
struct Tracing {
    child: Child,
}

impl Tracing {
    /// rst-trace with `args` (output to /dev/null), attached; `stats` turns the kernel's
    /// run-time accounting on for the round.
    fn start(bin: &Path, args: &[&str], stats: bool) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting rst-trace")?;
        let mut err = BufReader::new(child.stderr.take().context("stderr")?);
        await_readiness(&mut err)?;
        // Drain the rest of stderr so rst-trace never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        std::fs::write(BPF_STATS_ENABLED, if stats { "1" } else { "0" })
            .context("setting kernel.bpf_stats_enabled")?;
        Ok(Self { child })
    }

    /// bpftrace counting the two reset tracepoints in the kernel, attached.
    fn bpftrace() -> Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_REF])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (Debian's bpftrace)")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        while !line.starts_with("Attaching") {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                bail!("bpftrace exited before attaching");
            }
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> Result<()> {
        std::fs::write(BPF_STATS_ENABLED, "0")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the tracer exited with {status}");
        }
        Ok(())
    }
}
