//! What an explanation is made of: the [`Report`] and its closed vocabularies (conditions,
//! attributions, origins, kernel reasons), each rendering to the strings output.md fixes.

use std::{fmt::Write as _, net::SocketAddr};

use rst_trace_common::Task;

use super::tcp::{Direction, TcpState};

/// Declares the condition ids once: the enum, its strings, the list and the `cond` constants.
macro_rules! conditions {
    ($($variant:ident $konst:ident $id:literal,)*) => {
        /// A condition (docs/conditions.md); its id is a public API, never renamed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Condition {
            $($variant,)*
        }

        impl Condition {
            /// Every condition, for `--condition` validation.
            pub const ALL: &[Condition] = &[$(Self::$variant,)*];

            /// The condition id.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $id,)*
                }
            }
        }

        /// The conditions under their id's name, as the rules and tests refer to them.
        pub mod cond {
            use super::Condition;
            $(pub const $konst: Condition = Condition::$variant;)*
        }
    };
}

conditions! {
    PortNotListening PORT_NOT_LISTENING "port_not_listening",
    NoConnection NO_CONNECTION "no_connection",
    StaleSynack STALE_SYNACK "stale_synack",
    TimeWaitSegment TIME_WAIT_SEGMENT "time_wait_segment",
    UnexpectedAckOnListener UNEXPECTED_ACK_ON_LISTENER "unexpected_ack_on_listener",
    AcceptQueueOverflow ACCEPT_QUEUE_OVERFLOW "accept_queue_overflow",
    InvalidAck INVALID_ACK "invalid_ack",
    PawsReject PAWS_REJECT "paws_reject",
    CloseWithUnreadData CLOSE_WITH_UNREAD_DATA "close_with_unread_data",
    LingerAbort LINGER_ABORT "linger_abort",
    ListenerClosed LISTENER_CLOSED "listener_closed",
    Disconnect DISCONNECT "disconnect",
    DisconnectWithUnsentData DISCONNECT_WITH_UNSENT_DATA "disconnect_with_unsent_data",
    DataAfterClose DATA_AFTER_CLOSE "data_after_close",
    FinWait2Abort FIN_WAIT2_ABORT "fin_wait2_abort",
    OrphanLimit ORPHAN_LIMIT "orphan_limit",
    KeepaliveTimeout KEEPALIVE_TIMEOUT "keepalive_timeout",
    FirewallReject FIREWALL_REJECT "firewall_reject",
    ConnectionRefused CONNECTION_REFUSED "connection_refused",
    PeerReset PEER_RESET "peer_reset",
    Other OTHER "other",
}

impl Condition {
    /// The condition whose id is `id`.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == id)
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How the process of a report was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The socket's owner, learned in its own system calls (or the flow's socket, for a
    /// firewall reset).
    SocketOwner,
    /// No process.
    NoProcess,
}

impl Attribution {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SocketOwner => "socket_owner",
            Self::NoProcess => "none",
        }
    }
}

/// Who built a sent RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Tcp,
    Netfilter,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Netfilter => "netfilter",
        }
    }
}

/// Declares the kernel reasons the rules know, with their `enum sk_rst_reason` names.
macro_rules! kernel_reasons {
    ($($variant:ident $name:literal,)*) => {
        /// A reset reason (`enum sk_rst_reason`, 6.10+, or inferred before): the ones the rules
        /// tell apart by name; any other (`NOT_SPECIFIED`, a newer kernel's, or a value the
        /// kernel's format file does not name, as `UNKNOWN(n)`) is `Unknown(name)`.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum KernelReason {
            $($variant,)*
            Unknown(String),
        }

        impl KernelReason {
            /// The reason the kernel names `name`.
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($name => Self::$variant,)*
                    other => Self::Unknown(other.to_owned()),
                }
            }

            /// The kernel's name for it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Unknown(name) => name,
                }
            }
        }
    };
}

kernel_reasons! {
    NoSocket "NO_SOCKET",
    TimewaitSocket "TCP_TIMEWAIT_SOCKET",
    Flags "TCP_FLAGS",
    InvalidSyn "INVALID_SYN",
    InvalidAckSequence "TCP_INVALID_ACK_SEQUENCE",
    TooOldAck "TCP_TOO_OLD_ACK",
    AckUnsentData "TCP_ACK_UNSENT_DATA",
    OldAck "TCP_OLD_ACK",
    Rfc7323Paws "TCP_RFC7323_PAWS",
    AbortOnClose "TCP_ABORT_ON_CLOSE",
    State "TCP_STATE",
    DisconnectWithData "TCP_DISCONNECT_WITH_DATA",
    AbortOnData "TCP_ABORT_ON_DATA",
    AbortOnLinger "TCP_ABORT_ON_LINGER",
    AbortOnMemory "TCP_ABORT_ON_MEMORY",
    KeepaliveTimeout "TCP_KEEPALIVE_TIMEOUT",
}

/// The kernel's name, wherever a string is wanted.
impl std::ops::Deref for KernelReason {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A process as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    /// The process's name: its thread-group leader's comm.
    pub comm: std::sync::Arc<str>,
    /// The acting thread's own name, when it differs from `comm`.
    pub thread: Option<String>,
    pub uid: u32,
    /// cgroup v2 id, 0 when unknown.
    pub cgroup: u64,
    /// Its cgroup path and container, once the identity stage has resolved them.
    pub identity: Option<std::sync::Arc<crate::identity::Identity>>,
}

/// A kernel name (a comm) as text: its UTF-8 as it is, and each byte that is not UTF-8 as the
/// four characters `\xNN`. `prctl(PR_SET_NAME)` takes any byte but NUL; a lossy decoding
/// would make every such byte U+FFFD and hide it in both outputs.
pub fn name_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A NUL-padded kernel comm's bytes.
pub fn comm_bytes(c: &[u8; 16]) -> &[u8] {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    &c[..end]
}

impl Process {
    pub fn from_task(t: &Task) -> Self {
        // Compared as bytes first: the thread's name is the process's in most events, and
        // is then not allocated at all.
        let (comm, thread) = (comm_bytes(&t.comm), comm_bytes(&t.thread));
        Self {
            pid: t.pid,
            tid: t.tid,
            thread: (!thread.is_empty() && thread != comm).then(|| name_text(thread)),
            comm: name_text(comm).into(),
            uid: t.uid,
            cgroup: t.cgroup,
            identity: None,
        }
    }
}

/// Writes an IPv4 address as std's `Display` does, piece by piece to `put`, by hand: std writes
/// each octet through the integer formatter and `pad_integral`, and every record names two
/// addresses and every explanation two or three, which showed in a storm's profile (README,
/// Reset storms). The one IPv4 writer of the JSON records and the explanations.
pub fn put_ipv4(ip: std::net::Ipv4Addr, mut put: impl FnMut(&str)) {
    let mut num = itoa::Buffer::new();
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            put(".");
        }
        put(num.format(o));
    }
}

/// An endpoint in an explanation, written as `SocketAddr`'s `Display` writes it (IPv4 by hand,
/// see [`put_ipv4`]).
#[derive(Clone, Copy, Debug)]
pub struct Ep(pub SocketAddr);

impl std::fmt::Display for Ep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SocketAddr::V4(a) = self.0 else {
            return std::fmt::Display::fmt(&self.0, f);
        };
        // "255.255.255.255:65535"
        let mut buf = [0u8; 21];
        let mut n = 0;
        let mut put = |s: &str| {
            buf[n..n + s.len()].copy_from_slice(s.as_bytes());
            n += s.len();
        };
        put_ipv4(*a.ip(), &mut put);
        put(":");
        put(itoa::Buffer::new().format(a.port()));
        // ASCII digits, dots and a colon.
        f.pad(std::str::from_utf8(&buf[..n]).unwrap_or_default())
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)
    }
}

/// The keys of a report's `detail` object (docs/output.md): a public API, never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    AcceptQueue,
    AcceptQueueMax,
    Errno,
    IdleMs,
    IncomingFlags,
    PeerTtl,
    RecvIdleMs,
    Rejected,
    Ttl,
    UnreadBytes,
    UnsentBytes,
}

impl Detail {
    /// The key as output.md fixes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AcceptQueue => "accept_queue",
            Self::AcceptQueueMax => "accept_queue_max",
            Self::Errno => "errno",
            Self::IdleMs => "idle_ms",
            Self::IncomingFlags => "incoming_flags",
            Self::PeerTtl => "peer_ttl",
            Self::RecvIdleMs => "recv_idle_ms",
            Self::Rejected => "rejected",
            Self::Ttl => "ttl",
            Self::UnreadBytes => "unread_bytes",
            Self::UnsentBytes => "unsent_bytes",
        }
    }
}

/// A detail value: condition-specific facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetailValue {
    Num(u64),
    Text(String),
}

/// The sent reset a received one was linked to (both ends on this host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    pub condition: Condition,
    pub process: Option<Process>,
    pub mono_ns: u64,
}

/// The application call that noticed a reset: its first failing call on the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppNotice {
    pub error: crate::apperr::AppError,
    /// From the reset to the call's return, never negative (a call before the reset is not
    /// joined to it).
    pub delay_ns: u64,
}

/// One explained reset; `render` renders it as text or JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub mono_ns: u64,
    pub direction: Direction,
    /// Who produced a sent RST (`tcp`, `netfilter`); `None` for received resets.
    pub origin: Option<Origin>,
    pub condition: Condition,
    pub explanation: String,
    pub kernel_reason: Option<KernelReason>,
    pub state: Option<TcpState>,
    pub ipv6: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub process: Option<Process>,
    pub attribution: Attribution,
    /// Why no process is named, for the text output.
    pub no_process_why: Option<&'static str>,
    pub netns: u32,
    pub socket_cookie: Option<u64>,
    pub detail: Vec<(Detail, DetailValue)>,
    pub linked: Option<Linked>,
    /// The condition was inferred without a kernel reason (kernels before 6.10).
    pub inferred: bool,
    /// `--stacks`: the user and kernel stacks of the call that made a process-context abort.
    pub stacks: Option<Box<crate::stacks::Stacks>>,
    /// The socket (`struct sock *`), 0 without one: joins the application's failing call.
    pub skaddr: u64,
    /// Received resets: the socket was already orphaned (closed by its process).
    pub orphan: bool,
    /// The application's failing call, when it came before the reset was printed.
    pub app_notice: Option<Box<AppNotice>>,
}

impl Report {
    #[cfg(test)]
    pub fn detail_num(&self, key: Detail) -> Option<u64> {
        self.detail.iter().find_map(|(k, v)| match v {
            DetailValue::Num(n) if *k == key => Some(*n),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_written_as_socketaddr_writes_them() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "10.0.0.9:65535",
            "255.255.255.255:65535",
            "192.168.100.7:443",
            "[::1]:22",
            "[fd77::2]:24001",
            "[::ffff:10.1.2.3]:80",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(Ep(a).to_string(), a.to_string());
            // Width and alignment as std applies them to the whole endpoint.
            assert_eq!(
                format!("{:>24}|{:<24}|", Ep(a), Ep(a)),
                format!("{a:>24}|{a:<24}|")
            );
        }
    }

    #[test]
    fn names_keep_their_bytes_that_are_not_utf8_as_hex() {
        assert_eq!(name_text(b"nginx"), "nginx");
        assert_eq!(name_text("é\u{9b}".as_bytes()), "é\u{9b}");
        assert_eq!(
            name_text(b"bad\xff\xfe\x01\x9b2J"),
            "bad\\xff\\xfe\x01\\x9b2J"
        );
        // A UTF-8 sequence cut short by the kernel's 15-byte limit.
        assert_eq!(name_text(b"abc\xc3"), "abc\\xc3");
    }
}
