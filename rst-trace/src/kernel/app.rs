//! The application-error hooks (failing socket calls): what they need from the running kernel
//! (the architecture's `struct pt_regs`, the socket's file back-pointer, the getsockopt records,
//! syscall numbers) and attaching them.

use anyhow::Result;
use aya::Ebpf;
use rst_trace_common::{
    Config, OFF_NONE, PROG_ENTER_GETSOCKOPT, PROG_EXIT_GETSOCKOPT, PROG_SYS_EXIT_APP,
    PROG_SYS_EXIT_SOCK_CALL, SOCK_CALLS_BITS,
};

use super::{
    attach::{attach, attach_raw},
    btf::Btf,
    errors::Notes,
    layout,
    tracefs::{self, Format},
};

/// The calls on a socket whose first argument is its fd and that return the error of a dead
/// connection (sock_error() in their receive or send path, or connect's sk_err). Numbers are
/// the running architecture's, from libc built for it (x86_64's own table; arm64's is the
/// generic one, include/uapi/asm-generic/unistd.h: no read/write aliases of its own).
pub const SOCK_CALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendmmsg,
    libc::SYS_connect,
    libc::SYS_sendfile,
    libc::SYS_splice,
];

/// Whether application errors are traced, for the readiness line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppErrors {
    /// Traced; `SO_ERROR` reads too if the getsockopt tracepoints exist. `sock_layer`: seen
    /// where the socket layer reports each call's result (6.3+), else at every system call's
    /// exit (`sys_exit`). `syscalls`: the exits of connect, sendfile and splice are hooked
    /// beside the socket layer (not `--no-syscall-hooks`).
    On {
        so_error: bool,
        sock_layer: bool,
        syscalls: bool,
    },
    /// `--no-app-errors`.
    Off,
    /// Not on this kernel or in this mode: why.
    Unavailable(String),
}

impl AppErrors {
    pub fn describe(&self) -> String {
        match self {
            Self::On {
                syscalls: false, ..
            } => "application errors: yes (socket layer; not connect() or SO_ERROR: \
                  --no-syscall-hooks)"
                .into(),
            Self::On {
                so_error,
                sock_layer,
                syscalls: true,
            } => format!(
                "application errors: yes ({}{})",
                if *sock_layer {
                    "socket layer"
                } else {
                    "sys_exit, every system call"
                },
                if *so_error { "" } else { "; not SO_ERROR" }
            ),
            Self::Off => "application errors: off (--no-app-errors)".into(),
            Self::Unavailable(why) => format!("application errors: no ({why})"),
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Self::On { .. })
    }
}

/// Fills in the offsets and numbers the hooks need. `Err` says why they cannot run here.
pub fn app_config(btf: &Btf, cfg: &mut Config) -> Result<(), String> {
    let off = |root: &str, path: &str| -> Result<u16, String> {
        btf.offset_of(root, path)
            .ok()
            .and_then(|o| u16::try_from(o).ok())
            .ok_or_else(|| format!("no {root}.{path} in vmlinux BTF"))
    };
    // The call's number and arguments in the running architecture's struct pt_regs (x86_64,
    // arm64); getsockopt's optval too where the entry registers can be found from inside the
    // call (see `attach_app_hooks`).
    layout::syscall_config(btf, cfg)?;
    cfg.icsk_user_timeout = off("inet_connection_sock", "icsk_user_timeout")?;
    cfg.sys_sendfile = libc::SYS_sendfile as u16;
    cfg.sys_splice = libc::SYS_splice as u16;
    cfg.sys_connect = libc::SYS_connect as u16;
    for &nr in SOCK_CALLS {
        let nr = nr as usize;
        assert!(
            nr < SOCK_CALLS_BITS,
            "syscall number {nr} beyond the bitmap"
        );
        cfg.sock_calls[nr / 64] |= 1 << (nr % 64);
    }
    Ok(())
}

/// The getsockopt records' fields (all syscall records store arguments as 8-byte longs).
fn getsockopt_config(enter: &Format, exit: &Format, cfg: &mut Config) -> Result<()> {
    cfg.gs_fd = enter.require("fd", 8)?;
    cfg.gs_level = enter.require("level", 8)?;
    cfg.gs_optname = enter.require("optname", 8)?;
    cfg.gs_optval = enter.require("optval", 8)?;
    cfg.gs_ret = exit.require("ret", 8)?;
    cfg.gs_nr = exit.require("__syscall_nr", 4)?;
    Ok(())
}

/// Reads the getsockopt tracepoints' formats into `cfg`; false (with a note) where they are
/// missing (CONFIG_FTRACE_SYSCALLS off) or unusable.
pub fn so_error_config(tracefs: &std::path::Path, cfg: &mut Config, notes: Notes) -> bool {
    let read = |name| tracefs::read_format(tracefs, "syscalls", name);
    let r = match (read("sys_enter_getsockopt"), read("sys_exit_getsockopt")) {
        (Ok(Some(enter)), Ok(Some(exit))) => getsockopt_config(&enter, &exit, cfg),
        (Ok(None), _) | (_, Ok(None)) => Err(anyhow::anyhow!(
            "no syscalls:sys_enter_getsockopt/sys_exit_getsockopt (CONFIG_FTRACE_SYSCALLS off)"
        )),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            notes.failed(
                "a non-blocking connect's error read back through SO_ERROR is not seen",
                &e,
            );
            cfg.gs_nr = OFF_NONE;
            false
        }
    }
}

/// The system calls whose failure the socket layer does not show (connect's error; sendfile and
/// splice before 6.5, which send through sendpage), by their `syscalls:sys_exit_*` names.
const EXITS_BESIDE_SOCK_LAYER: [&str; 3] =
    ["sys_exit_connect", "sys_exit_sendfile64", "sys_exit_splice"];

/// Whether failing calls can be seen at the socket layer here (`Config::app_sock`): 6.3+'s
/// `sock_send_length`/`sock_recv_length` with the call's result, the registers at system call
/// entry (to tell the call and its fd), and the exits of the calls that layer does not show.
/// `RST_TRACE_APP_HOOK=sys_exit` keeps the hook at every system call's exit (tests, and a way
/// around a problem with the socket-layer hooks).
/// Without `syscalls` (`--no-syscall-hooks`) those exits are not needed: their failures are
/// then not seen.
pub fn sock_layer_config(
    tracefs: &std::path::Path,
    send_length: bool,
    syscalls: bool,
    cfg: &mut Config,
) -> bool {
    let forced = std::env::var("RST_TRACE_APP_HOOK").as_deref() == Ok("sys_exit");
    let exits = !syscalls
        || EXITS_BESIDE_SOCK_LAYER
            .iter()
            .all(|n| matches!(tracefs::read_format(tracefs, "syscalls", n), Ok(Some(_))));
    let ok = !forced
        && send_length
        && exits
        && cfg.pt_regs_size != OFF_NONE
        && cfg.task_stack != OFF_NONE
        && cfg.exit_ret != OFF_NONE;
    cfg.app_sock = u8::from(ok);
    ok
}

/// Attaches the hooks: at the socket layer's side the exits it does not show (`sock_layer`;
/// the send/receive hook itself is the owner hook, see `attach_owner_hooks`), else `sys_exit`
/// (required for the feature); the getsockopt pair if `so_error`.
pub fn attach_app_hooks(
    ebpf: &mut Ebpf,
    (so_error, sock_layer): (bool, bool),
    (cfg, syscalls): (&Config, bool),
    notes: Notes,
) -> AppErrors {
    if !syscalls {
        // `app_plan` chose the socket layer alone: its hook is the owner hook.
        return AppErrors::On {
            so_error: false,
            sock_layer: true,
            syscalls: false,
        };
    }
    let exits = sock_layer
        && match EXITS_BESIDE_SOCK_LAYER
            .iter()
            .try_for_each(|n| attach(ebpf, PROG_SYS_EXIT_SOCK_CALL, "syscalls", n))
        {
            Ok(()) => true,
            Err(e) => {
                notes.failed(
                    "failing connect/sendfile/splice calls are seen at every system call's exit \
                     (raw tracepoint sys_exit)",
                    &e,
                );
                false
            }
        };
    if !exits && let Err(e) = attach_raw(ebpf, PROG_SYS_EXIT_APP, "sys_exit") {
        notes.failed(
            "application errors are not traced (raw tracepoint sys_exit)",
            &e,
        );
        return AppErrors::Unavailable("raw tracepoint sys_exit failed".into());
    }
    // Where getsockopt's arguments are read at its exit from the registers at entry, no hook
    // runs at system call entry: one there costs every system call of the host.
    let exit_only = cfg.regs_arg3 != OFF_NONE;
    let so_error = so_error
        && match (if exit_only {
            Ok(())
        } else {
            attach(
                ebpf,
                PROG_ENTER_GETSOCKOPT,
                "syscalls",
                "sys_enter_getsockopt",
            )
        })
        .and_then(|()| {
            attach(
                ebpf,
                PROG_EXIT_GETSOCKOPT,
                "syscalls",
                "sys_exit_getsockopt",
            )
        }) {
            Ok(()) => true,
            Err(e) => {
                notes.failed(
                    "a non-blocking connect's error read back through SO_ERROR is not seen",
                    &e,
                );
                false
            }
        };
    AppErrors::On {
        so_error,
        sock_layer: exits,
        syscalls: true,
    }
}
