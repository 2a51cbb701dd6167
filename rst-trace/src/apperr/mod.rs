//! The application's side of a reset: the first socket call that failed because of it (or of a
//! timeout with no reset behind it), decoded from the kernel's [`AppErrorEvent`], and joined to
//! the reset by socket address (`join`).

mod join;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use rst_trace_common::{
    APP_PREV_STATE, APP_SO_ERROR, APP_USER_TIMEOUT, AppErrorEvent, ECONNREFUSED, ECONNRESET, EPIPE,
    ETIMEDOUT,
};

pub use join::{Joined, NOTICE_WINDOW_NS, Noticing, Outcome};

use crate::{
    explain::{Process, TcpState, endpoint},
    stacks::Stacks,
};

/// The system call that failed. Numbers are the running architecture's (x86_64, arm64), from
/// libc, as the kernel side's bitmap (`kernel::SOCK_CALLS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Read,
    Write,
    Readv,
    Writev,
    Preadv2,
    Pwritev2,
    Recvfrom,
    Sendto,
    Recvmsg,
    Sendmsg,
    Recvmmsg,
    Sendmmsg,
    Connect,
    Sendfile,
    Splice,
    /// getsockopt(SOL_SOCKET, SO_ERROR): returned 0, the error was its value.
    GetsockoptSoError,
    Unknown(u32),
}

impl Call {
    pub fn from_nr(nr: u32, so_error: bool) -> Self {
        if so_error {
            return Self::GetsockoptSoError;
        }
        let table = [
            (libc::SYS_read, Self::Read),
            (libc::SYS_write, Self::Write),
            (libc::SYS_readv, Self::Readv),
            (libc::SYS_writev, Self::Writev),
            (libc::SYS_preadv2, Self::Preadv2),
            (libc::SYS_pwritev2, Self::Pwritev2),
            (libc::SYS_recvfrom, Self::Recvfrom),
            (libc::SYS_sendto, Self::Sendto),
            (libc::SYS_recvmsg, Self::Recvmsg),
            (libc::SYS_sendmsg, Self::Sendmsg),
            (libc::SYS_recvmmsg, Self::Recvmmsg),
            (libc::SYS_sendmmsg, Self::Sendmmsg),
            (libc::SYS_connect, Self::Connect),
            (libc::SYS_sendfile, Self::Sendfile),
            (libc::SYS_splice, Self::Splice),
        ];
        table
            .iter()
            .find(|(n, _)| *n == i64::from(nr))
            .map_or(Self::Unknown(nr), |&(_, c)| c)
    }

    /// The name output.md fixes (`getsockopt(SO_ERROR)`, `syscall_N` for an unknown one).
    pub fn name(self) -> String {
        let s = match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Preadv2 => "preadv2",
            Self::Pwritev2 => "pwritev2",
            Self::Recvfrom => "recvfrom",
            Self::Sendto => "sendto",
            Self::Recvmsg => "recvmsg",
            Self::Sendmsg => "sendmsg",
            Self::Recvmmsg => "recvmmsg",
            Self::Sendmmsg => "sendmmsg",
            Self::Connect => "connect",
            Self::Sendfile => "sendfile",
            Self::Splice => "splice",
            Self::GetsockoptSoError => "getsockopt(SO_ERROR)",
            Self::Unknown(n) => return format!("syscall_{n}"),
        };
        s.to_owned()
    }

    /// A connection attempt's own call: its ETIMEDOUT is a SYN timeout.
    fn connecting(self) -> bool {
        matches!(self, Self::Connect | Self::GetsockoptSoError)
    }
}

/// The error the call saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    Econnreset,
    Epipe,
    Econnrefused,
    Etimedout,
    Other(u32),
}

impl Errno {
    pub fn from_raw(n: u32) -> Self {
        match n {
            ECONNRESET => Self::Econnreset,
            EPIPE => Self::Epipe,
            ECONNREFUSED => Self::Econnrefused,
            ETIMEDOUT => Self::Etimedout,
            n => Self::Other(n),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Econnreset => "ECONNRESET".into(),
            Self::Epipe => "EPIPE".into(),
            Self::Econnrefused => "ECONNREFUSED".into(),
            Self::Etimedout => "ETIMEDOUT".into(),
            Self::Other(n) => format!("E{n}"),
        }
    }
}

/// One failing call, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppError {
    pub mono_ns: u64,
    pub skaddr: u64,
    pub cookie: Option<u64>,
    /// The caller: process, thread, cgroup.
    pub process: Process,
    /// The caller as the kernel side recorded it (for [`Noticing::holder`]).
    pub task: rst_trace_common::Task,
    pub call: Call,
    pub fd: i32,
    pub errno: Errno,
    pub ipv6: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u32,
    pub state: Option<TcpState>,
    /// The state the connection left for CLOSE, when the kernel side knew it.
    pub prev_state: Option<TcpState>,
    /// `TCP_USER_TIMEOUT` in ms (ETIMEDOUT only; 0: not set).
    pub user_timeout_ms: Option<u32>,
    /// `--stacks`: the call's user and kernel stacks, symbolized when the record was read.
    pub stacks: Option<Box<Stacks>>,
}

impl AppError {
    pub fn decode(ev: &AppErrorEvent) -> Self {
        let ipv6 = u16::from(ev.family) == rst_trace_common::AF_INET6;
        let local = endpoint(ipv6, &ev.local_addr, ev.local_port);
        let remote = endpoint(ipv6, &ev.remote_addr, ev.remote_port);
        Self {
            mono_ns: ev.mono_ns,
            skaddr: ev.skaddr,
            cookie: (ev.cookie != 0).then_some(ev.cookie),
            process: Process::from_task(&ev.task),
            task: ev.task,
            call: Call::from_nr(ev.nr, ev.flags & APP_SO_ERROR != 0),
            fd: ev.fd,
            errno: Errno::from_raw(ev.errno),
            ipv6: local.is_ipv6(),
            local,
            remote,
            netns: ev.netns,
            state: TcpState::decode(ev.state),
            prev_state: (ev.flags & APP_PREV_STATE != 0)
                .then(|| TcpState::decode(ev.prev_state))
                .flatten(),
            user_timeout_ms: (ev.flags & APP_USER_TIMEOUT != 0).then_some(ev.user_timeout_ms),
            stacks: None,
        }
    }

    /// `read(fd 3)`
    pub fn call_text(&self) -> String {
        format!("{}(fd {})", self.call.name(), self.fd)
    }

    /// What a failing call with no reset behind it means: the sentence of a standalone record.
    pub fn explain_alone(&self) -> String {
        let who = &self.process;
        let call = self.call_text();
        let e = self.errno.name();
        match self.errno {
            Errno::Etimedout
                if self.call.connecting() || self.prev_state == Some(TcpState::SynSent) =>
            {
                format!(
                    "{who}'s {call} failed with {e}: its connection attempt to {} got no answer to its SYNs (tcp_syn_retries exhausted); no reset was sent or received",
                    self.remote
                )
            }
            Errno::Etimedout => match self.user_timeout_ms.filter(|&ms| ms > 0) {
                Some(ms) => format!(
                    "{who}'s {call} failed with {e}: data to {} stayed unacknowledged longer than its TCP_USER_TIMEOUT ({ms} ms), so the kernel gave up (tcp_write_timeout()); no reset was sent or received",
                    self.remote
                ),
                None => format!(
                    "{who}'s {call} failed with {e}: data to {} stayed unacknowledged through every retransmission (net.ipv4.tcp_retries2), so the kernel gave up (tcp_write_timeout()); no reset was sent or received",
                    self.remote
                ),
            },
            Errno::Epipe => format!(
                "{who}'s {call} failed with {e} and rst-trace saw no reset on this socket: it was shut down for writing (shutdown(SHUT_WR)), or reset before rst-trace started or more than {} s before",
                join::FORGET_NS / 1_000_000_000
            ),
            _ => format!(
                "{who}'s {call} failed with {e} and rst-trace saw no reset on this socket: it came before rst-trace started, more than {} s before, or was filtered out or lost",
                join::FORGET_NS / 1_000_000_000
            ),
        }
    }
}
