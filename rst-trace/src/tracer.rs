//! Loads the eBPF object with the running kernel's layout, sets the in-kernel filters and attaches
//! the programs to their tracepoints.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapType, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, ProgramError, RawTracePoint, TracePoint},
};
use rst_trace_common::{
    Config, FILTER_MAX_ENTRIES, FILTER_NO_RECEIVED, FILTER_PID, FILTER_PORT, GLOBAL_CONFIG,
    MAP_EVENTS, MAP_FILTER_PIDS, MAP_FILTER_PORTS, MAP_LOST, MAP_SEED_OWNERS, PROG_DESTROY_SOCK,
    PROG_DEV_QUEUE, PROG_EXIT_ACCEPT, PROG_NETIF_RECEIVE, PROG_RECEIVE_RESET, PROG_SEND_RESET,
    PROG_SET_STATE, PROG_SOCK_IO, PROG_TCP_PROBE, SEED_MAX_ENTRIES, Task,
};
use rst_trace_common::{
    MAP_COUNTS, MAP_INSERT_FAILED, OFF_NONE, PROG_DESTROY_SOCK_RAW, PROG_RECEIVE_RESET_BTF,
    PROG_SEND_RESET_BTF, PROG_SET_STATE_RAW, RstEvent,
};

use crate::{
    btf::Btf,
    explain::Direction,
    filter::Filter,
    layout::{self, KernelInfo, Tracepoints},
    owners, tracefs,
};

/// Userspace is woken when the ring is this fraction full (and drains every
/// [`DRAIN_INTERVAL`] anyway).
const WAKE_FRACTION: u32 = 16;
/// How often userspace drains the ring without being woken.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The eBPF object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rst-trace"));

pub struct Tracer {
    pub ebpf: Ebpf,
    pub info: KernelInfo,
    /// Sockets that existed at start-up whose owner was seeded.
    pub seeded: usize,
    /// Whether netfilter REJECT resets are watched (see [`RejectSupport`]).
    pub reject: RejectSupport,
    reject_attached: bool,
    /// How resets TCP sends without a full socket are seen.
    pub socketless: Socketless,
    /// The reset programs in use.
    pub resets: Resets,
}

/// Which pair of reset programs runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resets {
    /// BTF tracepoints that generate a missing socket cookie (5.12+).
    Btf,
    /// 5.5-5.11: `tcp_send_reset` as a BTF tracepoint without `bpf_get_socket_cookie()`,
    /// `tcp_receive_reset` record-based (its record has a cookie the kernel generates).
    BtfSendOnly,
    /// The record-based `tcp:tcp_send_reset`/`tcp:tcp_receive_reset`.
    Record,
}

impl Resets {
    /// For the readiness line: "BTF" or "record" (tracepoints).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Btf => "BTF",
            Self::BtfSendOnly => "BTF send/record receive",
            Self::Record => "record",
        }
    }
}

/// The BTF `tcp_send_reset` without the cookie helper (see `tcp_send_reset_btf_nocookie` in
/// rst-trace-ebpf).
const PROG_SEND_RESET_BTF_NC: &str = "tcp_send_reset_btf_nocookie";

/// A program the kernel refused to load. Its Display is one line, the program and the
/// verifier's complaint; the whole verifier log (hundreds of lines) is printed only with `-v`.
#[derive(Debug)]
pub struct LoadFailure {
    pub prog: String,
    /// The line of the verifier log that says what is wrong, and the errno.
    pub reason: String,
    pub log: String,
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kernel rejected eBPF program {}: {}",
            self.prog, self.reason
        )
    }
}

impl std::error::Error for LoadFailure {}

/// The line of a verifier log that states the problem: the last one before the statistics the
/// verifier appends ("verification time", "stack depth", "processed N insns").
fn verifier_complaint(log: &str) -> Option<&str> {
    const STATS: [&str; 4] = [
        "verification time",
        "stack depth",
        "processed ",
        "max_states_per_insn",
    ];
    log.lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}

fn load_failure(prog: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let reason = match verifier_complaint(&log) {
                Some(line) => format!("{line} ({io_error})"),
                None => io_error.to_string(),
            };
            LoadFailure {
                prog: prog.to_owned(),
                reason,
                log,
            }
            .into()
        }
        e => anyhow::Error::new(e).context(format!("loading eBPF program {prog}")),
    }
}

/// The first line of an error, for a one-line note.
pub fn first_line(e: &anyhow::Error) -> String {
    let all = format!("{e:#}");
    all.lines().next().unwrap_or_default().to_owned()
}

/// Says on stderr that a hook is not used as planned and why, in one line; `-v` adds the details
/// (a verifier log).
#[derive(Clone, Copy)]
pub struct Notes {
    pub verbose: bool,
}

impl Notes {
    pub fn note(self, line: &str) {
        eprintln!("rst-trace: note: {line}");
    }

    /// A note for a hook that failed with `e`: the first line of the error, its details with -v.
    fn failed(self, what: &str, e: &anyhow::Error) {
        self.note(&format!("{what}: {}", first_line(e)));
        if self.verbose {
            print_details(e);
        }
    }
}

/// The details of an error beyond its first line: a rejected program's verifier log, and the
/// rest of a multi-line message.
pub fn print_details(e: &anyhow::Error) {
    if let Some(f) = e.chain().find_map(|c| c.downcast_ref::<LoadFailure>()) {
        eprintln!(
            "rst-trace: verifier log of {}:\n{}",
            f.prog,
            f.log.trim_end()
        );
    }
    let all = format!("{e:#}");
    if let Some((_, rest)) = all.split_once('\n') {
        eprintln!("{rest}");
    }
}

/// Set to 1 to use the record-based reset tracepoints even where the BTF ones work (what
/// kernels before 5.12 get): for tests, and a way around a verifier problem on some kernel.
pub const ENV_RECORD_TRACEPOINTS: &str = "RST_TRACE_RECORD_TRACEPOINTS";

/// Whether this kernel can send netfilter REJECT resets right now. The transmit hook that sees
/// them runs for every packet, so it is attached only when REJECT code is in the kernel: always
/// if it is built in, else once the nf_reject_ipv4/6 module is loaded (which creating a
/// `REJECT --reject-with tcp-reset` rule, iptables or nft, does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectSupport {
    BuiltIn,
    Module,
    NotLoaded,
    /// `net:net_dev_queue` is missing: firewall resets cannot be seen.
    Unavailable,
    /// `--no-firewall`.
    Disabled,
}

impl RejectSupport {
    pub fn describe(self) -> &'static str {
        match self {
            Self::BuiltIn => "firewall resets: yes",
            Self::Module => "firewall resets: yes (nf_reject loaded)",
            Self::NotLoaded => "firewall resets: when nf_reject loads",
            Self::Unavailable => "firewall resets: no (no net:net_dev_queue)",
            Self::Disabled => "firewall resets: off (--no-firewall)",
        }
    }
}

/// How resets TCP sends without a full socket (closed port, TIME_WAIT) are seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socketless {
    /// `tcp_send_reset` fires for them (6.10+).
    Tracepoint,
    /// Before 6.10 it does not: the transmit hook sees them.
    Transmit,
    /// Before 6.10, with the transmit hook off or missing: they are not seen.
    Unseen(&'static str),
}

impl Socketless {
    pub fn describe(self) -> String {
        match self {
            Self::Tracepoint => "resets without a socket: tcp_send_reset".into(),
            Self::Transmit => "resets without a socket: on transmit (kernel before 6.10)".into(),
            Self::Unseen(why) => format!("resets without a socket: NOT SEEN ({why})"),
        }
    }
}

fn reject_modules_loaded() -> bool {
    ["nf_reject_ipv4", "nf_reject_ipv6"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists())
}

/// Built in (vmlinux BTF has nf_send_reset: module code has BTF of its own), loaded as a
/// module, or neither. Cheaper than scanning /proc/kallsyms, which costs ~30 ms at start-up.
fn reject_support(btf: &Btf) -> RejectSupport {
    if btf.has_function("nf_send_reset") || btf.has_function("nf_send_reset6") {
        RejectSupport::BuiltIn
    } else if reject_modules_loaded() {
        RejectSupport::Module
    } else {
        RejectSupport::NotLoaded
    }
}

impl Tracer {
    /// Attaches the transmit hook once REJECT code appears (called periodically).
    pub fn poll_reject(&mut self) -> Result<()> {
        if self.reject_attached || self.reject != RejectSupport::NotLoaded {
            return Ok(());
        }
        if reject_modules_loaded() {
            attach_raw(&mut self.ebpf, PROG_DEV_QUEUE, "net_dev_queue")?;
            self.reject_attached = true;
            self.reject = RejectSupport::Module;
        }
        Ok(())
    }
}

fn required_format(tracefs: &Path, cat: &str, name: &str) -> Result<tracefs::Format> {
    tracefs::read_format(tracefs, cat, name)?.ok_or_else(|| {
        anyhow!(
            "this kernel has no tracepoint {cat}:{name} (it needs Linux 5.8 or later with \
             CONFIG_TRACEPOINTS): run rst-trace on a newer kernel"
        )
    })
}

/// Which per-packet hooks to use (each costs tens of ns per packet, see README).
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// `tcp_probe`: TTL evidence on received resets.
    pub ttl: bool,
    /// `net_dev_queue`: netfilter REJECT resets.
    pub firewall: bool,
    /// Count resets in the kernel (`MAP_COUNTS`) rather than send each: `--summary --quiet`.
    pub count_in_kernel: bool,
}

/// The BPF ring buffer (BPF_MAP_TYPE_RINGBUF, 5.8, commit 457f44363a88) carries every event:
/// without it nothing can work, and the loader's error would only say that a map could not be
/// created. (Ubuntu 20.04's 5.4 is such a kernel.)
fn require_ringbuf() -> Result<()> {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(false) => Err(anyhow!(
            "this kernel has no BPF ring buffer (needs Linux 5.8+)"
        )),
        // A probe that fails for another reason (privileges) is left to the loader to report.
        Ok(true) | Err(_) => Ok(()),
    }
}

/// The tracepoint formats rst-trace reads: the three it cannot work without, and the optional
/// ones (None when this kernel lacks them).
fn read_tracepoints(tracefs: &Path) -> Result<Tracepoints> {
    Ok(Tracepoints {
        send_reset: required_format(tracefs, "tcp", "tcp_send_reset")?,
        receive_reset: required_format(tracefs, "tcp", "tcp_receive_reset")?,
        set_state: required_format(tracefs, "sock", "inet_sock_set_state")?,
        destroy_sock: tracefs::read_format(tracefs, "tcp", "tcp_destroy_sock")?,
        send_length: tracefs::read_format(tracefs, "sock", "sock_send_length")?,
        exit_accept: tracefs::read_format(tracefs, "syscalls", "sys_exit_accept4")?,
        dev_queue: tracefs::read_format(tracefs, "net", "net_dev_queue")?,
    })
}

/// The in-kernel filter settings of `cfg`.
fn filter_config(filter: &Filter, cfg: &mut Config) -> Result<()> {
    if filter.pids.len() > FILTER_MAX_ENTRIES as usize
        || filter.ports.len() > FILTER_MAX_ENTRIES as usize
    {
        return Err(anyhow!(
            "at most {FILTER_MAX_ENTRIES} --pid and --port values are supported"
        ));
    }
    if !filter.pids.is_empty() {
        cfg.filters |= FILTER_PID;
    }
    if !filter.ports.is_empty() {
        cfg.filters |= FILTER_PORT;
    }
    // --direction is applied in userspace only: a received reset is explained with the sent
    // one it answers (linking, and the data_after_close self-reset), so both must arrive.
    if filter.direction == Some(Direction::Sent) {
        cfg.filters |= FILTER_NO_RECEIVED;
    }
    Ok(())
}

pub fn load(filter: &Filter, ring_size: u32, hooks: Hooks, notes: Notes) -> Result<Tracer> {
    require_ringbuf()?;
    // aya's own parse of vmlinux BTF (the loader and the BTF tracepoints need it; ~15 ms here)
    // runs on another core while we read tracefs and take offsets from our lighter parse.
    let aya_btf = std::thread::spawn(aya::Btf::from_sys_fs);
    let tracefs = tracefs::locate()?;
    let tps = read_tracepoints(&tracefs)?;
    let mut cfg = Config::empty();
    layout::tracepoint_config(&tps, &mut cfg)?;
    let btf = Btf::from_sys_fs()?;
    layout::struct_config(&btf, &mut cfg)?;
    let info = KernelInfo {
        reasons: layout::reason_names(&tps.send_reset, Some(&btf)),
        jiffy_ns: layout::jiffy_ns(),
    };
    cfg.wake_bytes = ring_size / WAKE_FRACTION;
    cfg.count_in_kernel = u8::from(hooks.count_in_kernel);
    filter_config(filter, &mut cfg)?;

    // aya's own BTF parse, done once: the loader and the BTF tracepoints both need it. Without
    // it (a BTF aya cannot read), the record-based tracepoints still work.
    let aya_btf = match aya_btf.join() {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(anyhow!("aya cannot parse vmlinux BTF: {e}")),
        Err(_) => Err(anyhow!("aya's vmlinux BTF parse panicked")),
    };
    let mut loader = EbpfLoader::new();
    if let Ok(b) = &aya_btf {
        loader.btf(b);
    }
    let mut ebpf = loader
        .override_global(GLOBAL_CONFIG, &cfg, true)
        .map_max_entries(MAP_EVENTS, ring_size)
        .load(EBPF_OBJECT)
        .context(
            "loading the eBPF object (is the kernel built with CONFIG_BPF_SYSCALL and BTF?)",
        )?;
    fill_filters(&mut ebpf, filter)?;

    // Owner tracking first, so no socket created meanwhile is missed; resets last.
    attach_owner_hooks(&mut ebpf, &cfg, &tps, &tracefs, notes)?;
    // TTL evidence for received resets (raw tracepoints: 4.17+).
    if hooks.ttl
        && let Err(e) = attach_raw(&mut ebpf, PROG_TCP_PROBE, "tcp_probe")
    {
        notes.failed(
            "no TTL evidence on received resets (raw tracepoint tcp_probe)",
            &e,
        );
    }
    // With the owner hooks live, seed the sockets that already existed.
    let seeded = seed_owners(&mut ebpf)?;
    let resets = attach_resets(&mut ebpf, aya_btf.as_ref().ok(), notes)?;
    if let Err(e) = &aya_btf {
        notes.note(&format!("record-based reset tracepoints: {e:#}"));
    }
    drop(aya_btf);
    let reject = if !hooks.firewall {
        RejectSupport::Disabled
    } else if tps.dev_queue.is_some() {
        reject_support(&btf)
    } else {
        RejectSupport::Unavailable
    };
    let socketless = if cfg.xmit_socketless == 0 {
        Socketless::Tracepoint
    } else if !hooks.firewall {
        Socketless::Unseen("--no-firewall turns off the transmit hook they need before 6.10")
    } else if tps.dev_queue.is_none() {
        Socketless::Unseen("this kernel has no net:net_dev_queue")
    } else {
        Socketless::Transmit
    };
    let reject_attached = socketless == Socketless::Transmit
        || matches!(reject, RejectSupport::BuiltIn | RejectSupport::Module);
    if reject_attached {
        attach_raw(&mut ebpf, PROG_DEV_QUEUE, "net_dev_queue")?;
    }
    if socketless == Socketless::Transmit
        && let Err(e) = attach_raw(&mut ebpf, PROG_NETIF_RECEIVE, "netif_receive_skb")
    {
        notes.failed(
            "no incoming flags for resets without a socket (raw tracepoint netif_receive_skb)",
            &e,
        );
    }
    Ok(Tracer {
        ebpf,
        info,
        seeded,
        reject,
        reject_attached,
        socketless,
        resets,
    })
}

/// The `--pid` and `--port` values into their in-kernel maps.
fn fill_filters(ebpf: &mut Ebpf, filter: &Filter) -> Result<()> {
    let mut pids: BpfHashMap<_, u32, u8> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_FILTER_PIDS).context("pid filter map")?)?;
    for &p in &filter.pids {
        pids.insert(&p, &1, 0)?;
    }
    let mut ports: BpfHashMap<_, u16, u8> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_FILTER_PORTS).context("port filter map")?)?;
    for &p in &filter.ports {
        ports.insert(&p, &1, 0)?;
    }
    Ok(())
}

/// Seeds the owners of the sockets that existed before rst-trace started; returns how many.
fn seed_owners(ebpf: &mut Ebpf) -> Result<usize> {
    let existing = owners::existing();
    let mut seeded = 0;
    let mut seed: BpfHashMap<_, u64, Task> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_SEED_OWNERS).context("seed owner map")?)?;
    for (cookie, task) in existing.iter().take(SEED_MAX_ENTRIES as usize) {
        seed.insert(cookie, task, 0)?;
        seeded += 1;
    }
    Ok(seeded)
}

/// The hooks that learn socket owners and forget destroyed sockets. The state-change hook is
/// required; the others are optional, and each one missing is named on stderr.
fn attach_owner_hooks(
    ebpf: &mut Ebpf,
    cfg: &Config,
    tps: &Tracepoints,
    tracefs: &Path,
    notes: Notes,
) -> Result<()> {
    // Raw tracepoints where the socket's protocol can be read by offset (5.6+, where sk_protocol
    // stopped being a bitfield): the kernel then formats no trace record for each state change.
    if cfg.sk_protocol == OFF_NONE {
        attach(ebpf, PROG_SET_STATE, "sock", "inet_sock_set_state")?;
    } else if let Err(e) = attach_raw(ebpf, PROG_SET_STATE_RAW, "inet_sock_set_state") {
        notes.failed(
            "using record-based sock:inet_sock_set_state (raw tracepoint failed)",
            &e,
        );
        attach(ebpf, PROG_SET_STATE, "sock", "inet_sock_set_state")?;
    }
    if tps.destroy_sock.is_none() {
        notes.note(
            "no tcp:tcp_destroy_sock in this kernel: a destroyed socket's owner is kept until \
             its address is reused by a socket whose owner is seen",
        );
    } else if let Err(e) = attach_raw(ebpf, PROG_DESTROY_SOCK_RAW, "tcp_destroy_sock") {
        notes.failed(
            "using record-based tcp:tcp_destroy_sock (raw tracepoint failed)",
            &e,
        );
        attach(ebpf, PROG_DESTROY_SOCK, "tcp", "tcp_destroy_sock")?;
    }
    // Optional owner hooks: without them, accepted sockets are owned from their first reset-free
    // history only (connect/listen) or the start-up seed.
    if tps.exit_accept.is_none() {
        notes.note(
            "no syscalls:sys_exit_accept4 (CONFIG_FTRACE_SYSCALLS off): accepted sockets are \
             not owned at accept()",
        );
    } else {
        let mut r = attach(ebpf, PROG_EXIT_ACCEPT, "syscalls", "sys_exit_accept4");
        if r.is_ok() && tracefs::read_format(tracefs, "syscalls", "sys_exit_accept")?.is_some() {
            r = attach(ebpf, PROG_EXIT_ACCEPT, "syscalls", "sys_exit_accept");
        }
        if let Err(e) = r {
            notes.failed("accepted sockets are not owned at accept()", &e);
        }
    }
    if tps.send_length.is_none() {
        // Before 6.3: tcp_rcv_space_adjust(sk) (4.16+) runs in the receiving process's
        // tcp_recvmsg() each time it reads data, so a worker that inherited a socket still
        // owns it once it reads. (Also from tcp_read_sock(), which strparser users may call
        // in softirq: not the case for ordinary sockets.) Sends have no such hook there.
        match attach_raw(ebpf, PROG_SOCK_IO, "tcp_rcv_space_adjust") {
            Ok(()) => notes.note(
                "no sock:sock_send_length (Linux 6.3+): owners are learned from receives \
                 (tcp:tcp_rcv_space_adjust), connect(), listen(), accept() and the start-up \
                 seed, not from sends",
            ),
            Err(e) => notes.failed(
                "no sock:sock_send_length (Linux 6.3+) and no tcp:tcp_rcv_space_adjust: owners \
                 are not learned from sends and receives",
                &e,
            ),
        }
    } else if let Err(e) = attach_raw(ebpf, PROG_SOCK_IO, "sock_send_length")
        .and_then(|()| attach_raw(ebpf, PROG_SOCK_IO, "sock_recv_length"))
    {
        notes.failed("owners are not learned from sends and receives", &e);
    }
    Ok(())
}

/// Attaches the reset programs, the first choice that loads: BTF tracepoints that generate a
/// missing cookie (5.12+); a BTF `tcp_send_reset` without that helper and the record-based
/// `tcp:tcp_receive_reset` (5.5+); the record-based tracepoints. Each step down is named on
/// stderr with the reason.
fn attach_resets(ebpf: &mut Ebpf, btf: Option<&aya::Btf>, notes: Notes) -> Result<Resets> {
    if std::env::var(ENV_RECORD_TRACEPOINTS).as_deref() == Ok("1") {
        notes.note(&format!(
            "using record-based tcp:tcp_send_reset and tcp:tcp_receive_reset \
             ({ENV_RECORD_TRACEPOINTS}=1)"
        ));
    } else if let Some(btf) = btf {
        let Err(e) = attach_btf_pair(ebpf, btf, PROG_SEND_RESET_BTF, PROG_RECEIVE_RESET_BTF) else {
            return Ok(Resets::Btf);
        };
        match attach_btf(ebpf, btf, PROG_SEND_RESET_BTF_NC, "tcp_send_reset") {
            Ok(()) => {
                notes.failed(
                    "using record-based tcp:tcp_receive_reset, and BTF tcp_send_reset without \
                     cookie generation (BTF tracepoint rejected)",
                    &e,
                );
                attach(ebpf, PROG_RECEIVE_RESET, "tcp", "tcp_receive_reset")?;
                return Ok(Resets::BtfSendOnly);
            }
            Err(e2) => {
                notes.failed(
                    "using record-based tcp:tcp_send_reset and tcp:tcp_receive_reset \
                     (BTF tracepoint rejected)",
                    &e2,
                );
                if notes.verbose {
                    print_details(&e);
                }
            }
        }
    }
    attach(ebpf, PROG_SEND_RESET, "tcp", "tcp_send_reset")?;
    attach(ebpf, PROG_RECEIVE_RESET, "tcp", "tcp_receive_reset")?;
    Ok(Resets::Record)
}

/// Attaches both BTF reset programs or neither: one that did attach is unloaded (detaching it)
/// if its partner fails, so that no reset is seen twice.
fn attach_btf_pair(ebpf: &mut Ebpf, btf: &aya::Btf, send: &str, recv: &str) -> Result<()> {
    let r = attach_btf(ebpf, btf, send, "tcp_send_reset")
        .and_then(|()| attach_btf(ebpf, btf, recv, "tcp_receive_reset"));
    if r.is_err() {
        for prog in [send, recv] {
            if let Some(p) = ebpf.program_mut(prog)
                && let Ok(p) = <&mut BtfTracePoint>::try_from(p)
            {
                let _ = p.unload();
            }
        }
    }
    r
}

/// Loads and attaches BTF tracepoint program `prog` to tracepoint `name`.
fn attach_btf(ebpf: &mut Ebpf, btf: &aya::Btf, prog: &str, name: &str) -> Result<()> {
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(name, btf).map_err(|e| load_failure(prog, e))?;
    p.attach()
        .with_context(|| format!("attaching to BTF tracepoint {name}"))?;
    Ok(())
}

/// Program `prog` of the object, as its type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing from the eBPF object"))?
        .try_into()?)
}

/// Loads (once) and attaches program `prog` to tracepoint `cat:name`.
fn attach(ebpf: &mut Ebpf, prog: &str, cat: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| load_failure(prog, e))?;
    }
    p.attach(cat, name)
        .with_context(|| format!("attaching to tracepoint {cat}:{name}"))?;
    Ok(())
}

/// Loads (once) and attaches raw-tracepoint program `prog` to raw tracepoint `name`: no trace
/// record is formatted, which matters for the per-packet and per-syscall hooks.
fn attach_raw(ebpf: &mut Ebpf, prog: &str, name: &str) -> Result<()> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| load_failure(prog, e))?;
    }
    p.attach(name)
        .with_context(|| format!("attaching to raw tracepoint {name}"))?;
    Ok(())
}

/// Events lost so far: the per-CPU count of ring-buffer reservations that failed, plus the
/// runs of the reset programs the kernel skipped. A BTF tracepoint program does not run while it
/// is already running on that CPU (a softirq interrupting it; since 6.1), and a record-based one
/// while any record-based program runs there (bpf_prog_active); the kernel counts each skip in
/// the program's `recursion_misses` (since 6.7). (The transmit hook's skips are not counted: it
/// runs for every packet, and a skipped run is almost never a firewall reset.)
pub fn lost_total(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(MAP_LOST).context("lost counter map")?)?;
    let ring_full: u64 = map.get(&0, 0)?.iter().sum();
    let skipped: u64 = [
        PROG_SEND_RESET_BTF,
        PROG_RECEIVE_RESET_BTF,
        PROG_SEND_RESET_BTF_NC,
        PROG_SEND_RESET,
        PROG_RECEIVE_RESET,
    ]
    .into_iter()
    .filter_map(|name| recursion_misses(ebpf, name))
    .sum();
    Ok(ring_full + skipped)
}

/// Failed inserts into the kernel side's socket, TIME_WAIT and closing-listener maps, over all
/// CPUs (each a lost owner or TIME_WAIT hand-over; LRU maps evict instead, so normally 0).
#[allow(dead_code)] // Until the caller that warns about it lands (issue 10).
pub fn insert_failures(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
        ebpf.map(MAP_INSERT_FAILED)
            .context("insert failure counter map")?,
    )?;
    Ok(map.get(&0, 0)?.iter().sum())
}

/// The resets counted in the kernel so far (`--summary --quiet`): each key (an event reduced by
/// `RstEvent::count_key`) with its count over all CPUs.
pub fn kernel_counts(ebpf: &Ebpf) -> Result<Vec<(RstEvent, u64)>> {
    let map: PerCpuHashMap<_, RstEvent, u64> =
        PerCpuHashMap::try_from(ebpf.map(MAP_COUNTS).context("count map")?)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = item?;
        out.push((key, per_cpu.iter().sum()));
    }
    Ok(out)
}

/// `recursion_misses` of a loaded program, from its fdinfo (5.12+; None before, or unloaded).
fn recursion_misses(ebpf: &Ebpf, prog: &str) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = ebpf.program(prog)?.fd().ok()?.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}
