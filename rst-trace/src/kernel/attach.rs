//! Attaching the programs to their tracepoints: owner hooks, then the reset programs (the
//! first kind that loads).

use std::{
    path::Path,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{BtfTracePoint, RawTracePoint, TracePoint, trace_point::TracePointLink},
};
use rst_trace_common::{
    Config, OFF_NONE, PROG_DESTROY_SOCK, PROG_DESTROY_SOCK_RAW, PROG_EXIT_ACCEPT,
    PROG_RECEIVE_RESET, PROG_RECEIVE_RESET_BTF, PROG_SEND_RESET, PROG_SEND_RESET_BTF,
    PROG_SET_STATE, PROG_SET_STATE_RAW, PROG_SOCK_IO, PROG_SOCK_IO_APP,
};

use super::{
    errors::{Notes, load_failure, print_details},
    layout::Tracepoints,
    tracefs,
};

/// The BTF `tcp_send_reset` without the cookie helper (see `tcp_send_reset_btf_nocookie` in
/// rst-trace-ebpf).
pub(super) const PROG_SEND_RESET_BTF_NC: &str = "tcp_send_reset_btf_nocookie";

/// Set to 1 to use the record-based reset tracepoints even where the BTF ones work (what
/// kernels before 5.12 get): for tests, and a way around a verifier problem on some kernel.
pub const ENV_RECORD_TRACEPOINTS: &str = "RST_TRACE_RECORD_TRACEPOINTS";

/// Attaches `(raw program, record program, category, tracepoint)`: the raw tracepoint, or where
/// it fails, the record-based one, saying so.
fn raw_or_record(
    ebpf: &mut Ebpf,
    (raw, record, cat, name): (&str, &str, &str, &str),
    notes: Notes,
) -> Result<()> {
    if let Err(e) = attach_raw(ebpf, raw, name) {
        notes.failed(
            &format!("using record-based {cat}:{name} (raw tracepoint failed)"),
            &e,
        );
        attach(ebpf, record, cat, name)?;
    }
    Ok(())
}

/// The hooks that learn socket owners and forget destroyed sockets. The state-change hook is
/// required; the others are optional, and each one missing is named on stderr.
pub(super) fn attach_owner_hooks(
    ebpf: &mut Ebpf,
    (cfg, syscalls): (&Config, bool),
    tps: &Tracepoints,
    tracefs: &Path,
    notes: Notes,
) -> Result<()> {
    // Raw tracepoints where the socket's protocol can be read by offset (5.6+, where sk_protocol
    // stopped being a bitfield): the kernel then formats no trace record for each state change.
    let set_state = (
        PROG_SET_STATE_RAW,
        PROG_SET_STATE,
        "sock",
        "inet_sock_set_state",
    );
    if cfg.sk_protocol == OFF_NONE {
        attach(ebpf, PROG_SET_STATE, "sock", "inet_sock_set_state")?;
    } else {
        raw_or_record(ebpf, set_state, notes)?;
    }
    if tps.destroy_sock.is_none() {
        notes.note(
            "no tcp:tcp_destroy_sock in this kernel: a destroyed socket's owner is kept until \
             its address is reused by a socket whose owner is seen",
        );
    } else {
        let destroy = (
            PROG_DESTROY_SOCK_RAW,
            PROG_DESTROY_SOCK,
            "tcp",
            "tcp_destroy_sock",
        );
        raw_or_record(ebpf, destroy, notes)?;
    }
    // Optional owner hooks: without them, accepted sockets are owned from their first send or
    // receive (the hook below), or the start-up seed. `--no-syscall-hooks` (the readiness line
    // says so) leaves this one out.
    if syscalls && tps.exit_accept.is_none() {
        notes.note(
            "no syscalls:sys_exit_accept4 (CONFIG_FTRACE_SYSCALLS off): accepted sockets are \
             not owned at accept()",
        );
    } else if syscalls {
        let mut r = attach(ebpf, PROG_EXIT_ACCEPT, "syscalls", "sys_exit_accept4");
        if r.is_ok() && tracefs::read_format(tracefs, "syscalls", "sys_exit_accept")?.is_some() {
            r = attach(ebpf, PROG_EXIT_ACCEPT, "syscalls", "sys_exit_accept");
        }
        if let Err(e) = r {
            notes.failed("accepted sockets are not owned at accept()", &e);
        }
    }
    attach_sock_io(ebpf, cfg, tps, notes);
    Ok(())
}

/// The owner hook on every send and receive (which also reports failing calls when they are
/// seen at the socket layer), or before 6.3 on receives that read data.
fn attach_sock_io(ebpf: &mut Ebpf, cfg: &Config, tps: &Tracepoints, notes: Notes) {
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
    } else if let Err(e) = {
        // With failing calls seen at the socket layer, the owner hook reports them too.
        let io = if cfg.app_sock != 0 {
            PROG_SOCK_IO_APP
        } else {
            PROG_SOCK_IO
        };
        attach_raw(ebpf, io, "sock_send_length")
            .and_then(|()| attach_raw(ebpf, io, "sock_recv_length"))
    } {
        notes.failed("owners are not learned from sends and receives", &e);
    }
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

/// Attaches the reset programs, the first choice that loads: BTF tracepoints that generate a
/// missing cookie (5.12+); a BTF `tcp_send_reset` without that helper and the record-based
/// `tcp:tcp_receive_reset` (5.5+); the record-based tracepoints. Each step down is named on
/// stderr with the reason.
pub(super) fn attach_resets(
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
    notes: Notes,
) -> Result<Resets> {
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

/// The record-based tracepoints' links (perf events), taken from aya: closing one waits in
/// perf_trace_event_unreg() for tracepoint_synchronize_unregister(), and closed one after
/// another at exit (up to 6 of them) those waits added up (README, Start-up). See
/// [`detach_record_links`].
static RECORD_LINKS: Mutex<Vec<TracePointLink>> = Mutex::new(Vec::new());

/// Loads (once) and attaches program `prog` to tracepoint `cat:name`.
pub(super) fn attach(ebpf: &mut Ebpf, prog: &str, cat: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| load_failure(prog, e))?;
    }
    let id = p
        .attach(cat, name)
        .with_context(|| format!("attaching to tracepoint {cat}:{name}"))?;
    // (take_link only fails for an unknown id: the link then stays with the program.)
    if let Ok(link) = p.take_link(id) {
        RECORD_LINKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(link);
    }
    Ok(())
}

/// Detaches the record-based tracepoints at once, each on a thread of its own, so that their
/// waits for the kernel overlap (at exit: the other programs go with the process).
pub fn detach_record_links() {
    let links = std::mem::take(&mut *RECORD_LINKS.lock().unwrap_or_else(PoisonError::into_inner));
    std::thread::scope(|s| {
        for link in links {
            s.spawn(move || drop(link));
        }
    });
}

/// Loads (once) and attaches raw-tracepoint program `prog` to raw tracepoint `name`: no trace
/// record is formatted, which matters for the per-packet and per-syscall hooks.
pub(super) fn attach_raw(ebpf: &mut Ebpf, prog: &str, name: &str) -> Result<()> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| load_failure(prog, e))?;
    }
    p.attach(name)
        .with_context(|| format!("attaching to raw tracepoint {name}"))?;
    Ok(())
}
