//! rst-trace's kernel side. Small and dumb on purpose: collect facts about each reset, filter
//! early, submit them to a ring buffer. Explaining them is userspace's job.
//!
//! There is no CO-RE for Rust eBPF, so every tracepoint field offset and kernel struct offset
//! comes from userspace (tracefs `format` files and vmlinux BTF) through the `CONFIG` global.
//!
//! This file holds the program entry points only; the modules:
//! - `maps`: every map, and the per-program slots;
//! - `read`: kernel memory, tracepoint arguments, word-by-word copies;
//! - `sock`: a socket's `sock_common` and `tcp_sock` facts, the socket of a file descriptor;
//! - `headers`: the IP/TCP header parser;
//! - `owners`: socket owners, state history, peer TTL samples;
//! - `timewait`: connections handed to a TIME_WAIT mini-socket, and who closed them;
//! - `events`: the sent and received reset events;
//! - `app`: application calls that failed because their connection died;
//! - `transmit`: the transmit hook's events (netfilter, socketless resets before 6.10);
//! - `stacks`: `--stacks`, the user and kernel stacks of a process-context abort or a failing
//!   application call;
//! - `deliver`: slots, in-kernel filters and counts, the ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use rst_trace_common::{Config, IPPROTO_TCP, REASON_ARG, REASON_NONE, failing_ret};

#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::empty());

/// Reads one field of `CONFIG`. Volatile, so the compiler cannot fold in the compiled-in default
/// (userspace overrides the global at load time); per field, so the whole struct is not copied
/// onto the 512-byte BPF stack.
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: Global is repr(transparent) over an always-initialised Config.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(core::ptr::addr_of!($crate::CONFIG).cast::<rst_trace_common::Config>())).$field
            ))
        }
    };
}

mod app;
mod deliver;
mod events;
mod headers;
mod maps;
mod owners;
mod read;
mod sock;
mod stacks;
mod timewait;
mod transmit;

use events::{on_receive_reset, on_send_reset};
use read::{btf_args, kread, tp};
use sock::btf_sock_cookie;

/// BTF tracepoint `tcp_send_reset(sk, skb[, reason])`: unlike the record-based tracepoint, the
/// kernel formats no trace record (addresses and all) for us to read back field by field.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    // Reading the third slot is harmless where there is none (before 6.10): it is then ignored.
    let [sk, skb, reason] = btf_args::<3>(&ctx);
    on_send_reset(&ctx, sk, skb, send_reason(reason), btf_sock_cookie(&ctx));
    0
}

/// The BTF `tcp_send_reset`'s third argument, where it is the reason (6.10+).
#[inline(always)]
fn send_reason(arg: u64) -> u32 {
    if conf!(send_reason_arg) == REASON_ARG {
        arg as u32
    } else {
        REASON_NONE
    }
}

/// BTF tracepoint `tcp_receive_reset(sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let [sk] = btf_args::<1>(&ctx);
    on_receive_reset(sk, btf_sock_cookie(&ctx));
    0
}

/// `tcp_send_reset_btf` without `bpf_get_socket_cookie()`, which tracing programs may call only
/// since 5.12 (commit c5dbb89fc2ac, "bpf: Expose bpf_get_socket_cookie to tracing programs"):
/// on 5.5-5.11 the verifier stops at the call ("unknown func"). The cookie then comes from the
/// socket, as with the record-based tracepoint, whose record has no cookie (0 if the kernel
/// never generated one). There is no such variant for `tcp_receive_reset`: its
/// record carries a cookie the kernel generates (sock_gen_cookie()), so the record-based program
/// is the better one there.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf_nocookie(ctx: BtfTracePointContext) -> i32 {
    let [sk, skb, reason] = btf_args::<3>(&ctx);
    on_send_reset(&ctx, sk, skb, send_reason(reason), 0);
    0
}

/// `tcp:tcp_send_reset`, the trace record: where the BTF tracepoint cannot be used.
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let sk = tp::<u64>(&ctx, conf!(send_skaddr)).unwrap_or(0);
    let skb = tp::<u64>(&ctx, conf!(send_skbaddr)).unwrap_or(0);
    let reason = tp::<u32>(&ctx, conf!(send_reason)).unwrap_or(REASON_NONE);
    on_send_reset(&ctx, sk, skb, reason, 0);
    0
}

/// `tcp:tcp_receive_reset`, the trace record.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let sk = tp::<u64>(&ctx, conf!(recv_skaddr)).unwrap_or(0);
    let cookie = tp::<u64>(&ctx, conf!(recv_cookie)).unwrap_or(0);
    on_receive_reset(sk, cookie);
    0
}

/// `sock:inet_sock_set_state`, the tracepoint record (kernels where `sk_protocol` is a bitfield,
/// before 5.6, and so cannot be read from the socket by offset).
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if tp::<u16>(&ctx, conf!(ss_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(sk) = tp::<u64>(&ctx, conf!(ss_skaddr)) else {
        return 0;
    };
    let old = tp::<i32>(&ctx, conf!(ss_oldstate)).unwrap_or(0);
    let new = tp::<i32>(&ctx, conf!(ss_newstate)).unwrap_or(0);
    owners::on_set_state(sk, old, new, || {
        tp::<u16>(&ctx, conf!(ss_sport)).unwrap_or(0)
    });
    0
}

/// Raw tracepoint `inet_sock_set_state(sk, oldstate, newstate)`: the same without the kernel
/// formatting a trace record (addresses and all) for every state change of every socket.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    if !owners::acts_on(old, new) {
        return 0;
    }
    if kread::<u16>(sk, conf!(sk_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    // skc_num: the local port in host byte order.
    owners::on_set_state(sk, old, new, || {
        kread::<u16>(sk, conf!(sk_num)).unwrap_or(0)
    });
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp::<u64>(&ctx, conf!(destroy_skaddr)) {
        owners::on_destroy(sk);
    }
    0
}

/// Raw tracepoint `tcp_destroy_sock(sk)`: no trace record formatted.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    owners::on_destroy(ctx.arg(0));
    0
}

/// Raw tracepoints `sock_send_length` / `sock_recv_length` (6.3+, args: sk, ret, flags):
/// every send and receive runs in the process that uses the socket, which owns it from then on
/// (e.g. a worker that inherited it). Raw, so the kernel does not format a trace record for
/// each call, and a per-CPU memo skips the map for a stream on one socket.
#[raw_tracepoint]
pub fn sock_io(ctx: RawTracePointContext) -> i32 {
    owners::on_sock_io(ctx.arg(0));
    0
}

/// [`sock_io`] where the failing calls are seen at the socket layer (6.3+, see
/// `Config::app_sock`): `sock_send_length` / `sock_recv_length` (sk, ret, flags) carry the
/// call's return value, so a send or receive that fails with the error of a dead connection is
/// reported here, and no program runs at every system call's exit. (A separate program: one
/// reading `ret` cannot attach to `tcp_rcv_space_adjust(sk)`, which has no second argument.)
#[raw_tracepoint]
pub fn sock_io_app(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    owners::on_sock_io(sk);
    // `int ret`, widened to the u64 slot.
    let ret = i64::from(ctx.arg::<u64>(1) as i32);
    if failing_ret(ret) {
        app::on_failed_call(&ctx, ret.unsigned_abs() as u32, sk);
    }
    0
}

/// `syscalls:sys_exit_connect`, `sys_exit_sendfile64`, `sys_exit_splice` with [`sock_io_app`]:
/// the failing socket calls the socket layer does not show (connect's error; sendfile and
/// splice before 6.5, which send through sendpage). Record-based: each fires for its own system
/// call only.
#[tracepoint]
pub fn sys_exit_sock_call(ctx: TracePointContext) -> u32 {
    let ret = tp::<i64>(&ctx, conf!(exit_ret)).unwrap_or(0);
    if failing_ret(ret) {
        app::on_failed_call(&ctx, ret.unsigned_abs() as u32, 0);
    }
    0
}

/// `syscalls:sys_exit_accept4` / `sys_exit_accept`: the new fd's socket belongs to the caller.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if let Some(fd) = tp::<i64>(&ctx, conf!(exit_ret)) {
        owners::on_accept(fd);
    }
    0
}

/// Raw tracepoint `sys_exit(regs, ret)` (raw_syscalls, on every kernel since 3.x): every
/// system call's exit, so the success path is one compare chain on `ret` and a return.
/// Raw, so the kernel formats no trace record per call.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_app(ctx: RawTracePointContext) -> i32 {
    let ret = ctx.arg::<u64>(1) as i64;
    if failing_ret(ret) {
        app::on_failed_syscall(&ctx, ctx.arg(0), ret.unsigned_abs() as u32);
    }
    0
}

/// `syscalls:sys_enter_getsockopt`: fires for getsockopt only; notes `SO_ERROR` reads.
#[tracepoint]
pub fn sys_enter_getsockopt(ctx: TracePointContext) -> u32 {
    let f = |off: u16| tp::<u64>(&ctx, off).unwrap_or(0);
    app::on_enter_getsockopt(
        f(conf!(gs_fd)),
        f(conf!(gs_level)),
        f(conf!(gs_optname)),
        f(conf!(gs_optval)),
    );
    0
}

/// `syscalls:sys_exit_getsockopt`: the error a non-blocking connect left, read back.
#[tracepoint]
pub fn sys_exit_getsockopt(ctx: TracePointContext) -> u32 {
    let nr = tp::<i32>(&ctx, conf!(gs_nr)).unwrap_or(-1) as u32;
    app::on_exit_getsockopt(&ctx, nr, tp::<i64>(&ctx, conf!(gs_ret)).unwrap_or(-1));
    0
}

/// Raw tracepoint `tcp_probe(sk, skb)`, first thing in tcp_rcv_established(), for every
/// segment of an established connection: so it only notes the segment (per-CPU, no reads), and
/// samples the peer's TTL when the CPU moves to another socket.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_probe_ttl(ctx: RawTracePointContext) -> i32 {
    owners::note_segment(ctx.arg(0), ctx.arg(1));
    0
}

/// `net:net_dev_queue`: every transmitted packet, so it must stay cheap. It reports the RSTs no
/// TCP tracepoint shows:
/// - netfilter's REJECT (nf_send_reset(), nf_send_reset6()), built with no socket;
/// - before 6.10, TCP's own resets sent without a full socket (no socket, or a TIME_WAIT one):
///   tcp_v4_send_reset() sends with the per-CPU TCP control socket, tcp_v6_send_response() with
///   none (ip6_xmit() does not attach its control socket to the skb).
///
/// Every other packet carries its socket, and one read (two, for a socket not seen last on this
/// CPU, before 6.10) decides. Raw (arg: skb), so the kernel formats no trace record per packet.
/// Its body (`transmit::on_transmit`) is inlined: with the non-inlined callees there, its stack
/// must stay under 512 bytes.
#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn net_dev_queue(ctx: RawTracePointContext) -> i32 {
    transmit::on_transmit(ctx.arg(0));
    0
}

/// Raw tracepoint `netif_receive_skb(skb)` (before 6.10, with the transmit hook): notes the
/// segment this CPU's receive path handles, for `socketless_event`. One store per packet.
#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: RawTracePointContext) -> i32 {
    if let Some(cur) = maps::CUR_RX.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *cur = ctx.arg(0) };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
