//! Turns the kernel side's facts into a [`Report`]: which condition caused the reset, which
//! process it belongs to, and one sentence saying so. This is the product's judgement; the eBPF
//! side only collects facts.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use rst_trace_common::{
    ATTR_NONE, FACT_BACKLOG, FACT_IDLE, FACT_LINGER_ZERO, FACT_LISTENER_CLOSING, FACT_NETFILTER,
    FACT_PACKET, FACT_RST_TTL, FACT_TCP_SOCK, FACT_XMIT, KIND_RECEIVED, KIND_SENT, REASON_NONE,
    RstEvent, Task,
};

use crate::kernel::KernelInfo;

/// `RstEvent::kind`, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            KIND_SENT => Ok(Self::Sent),
            KIND_RECEIVED => Ok(Self::Received),
            other => Err(other),
        }
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
        }
    }
}

/// `enum tcp_state` (include/net/tcp_states.h); the numbering is ABI (/proc/net/tcp shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    Unknown(u8),
}

/// Every byte decodes: values this build does not know become `Unknown(n)`.
impl From<u8> for TcpState {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            13 => Self::BoundInactive,
            n => Self::Unknown(n),
        }
    }
}

impl TcpState {
    /// Decodes a state byte; 0 means "no socket".
    pub fn decode(v: u8) -> Option<Self> {
        if v == 0 {
            return None;
        }
        Some(Self::from(v))
    }

    pub fn name(self) -> String {
        match self {
            Self::Established => "ESTABLISHED".into(),
            Self::SynSent => "SYN_SENT".into(),
            Self::SynRecv => "SYN_RECV".into(),
            Self::FinWait1 => "FIN_WAIT1".into(),
            Self::FinWait2 => "FIN_WAIT2".into(),
            Self::TimeWait => "TIME_WAIT".into(),
            Self::Close => "CLOSE".into(),
            Self::CloseWait => "CLOSE_WAIT".into(),
            Self::LastAck => "LAST_ACK".into(),
            Self::Listen => "LISTEN".into(),
            Self::Closing => "CLOSING".into(),
            Self::NewSynRecv => "NEW_SYN_RECV".into(),
            Self::BoundInactive => "BOUND_INACTIVE".into(),
            Self::Unknown(n) => format!("UNKNOWN({n})"),
        }
    }
}

/// TCP header flag names in the order output.md fixes.
pub fn tcp_flags_names(flags: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

const SYN: u8 = 0x02;
/// TCP_CLOSE as the tracepoint reports it.
const TCP_CLOSE_RAW: u8 = 7;
const ACK: u8 = 0x10;

/// A process as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
}

impl Process {
    pub fn from_task(t: &Task) -> Self {
        let end = t.comm.iter().position(|&b| b == 0).unwrap_or(t.comm.len());
        Self {
            pid: t.pid,
            tid: t.tid,
            comm: String::from_utf8_lossy(&t.comm[..end]).into_owned(),
            uid: t.uid,
        }
    }
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.comm, self.pid)
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
    pub condition: &'static str,
    pub process: Option<Process>,
    pub mono_ns: u64,
}

/// One explained reset; `output` renders it as text or JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub mono_ns: u64,
    pub direction: Direction,
    /// Who produced a sent RST (`tcp`, `netfilter`); `None` for received resets.
    pub origin: Option<&'static str>,
    pub condition: &'static str,
    pub explanation: String,
    pub kernel_reason: Option<String>,
    pub state: Option<TcpState>,
    pub ipv6: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub process: Option<Process>,
    pub attribution: &'static str,
    /// Why no process is named, for the text output.
    pub no_process_why: Option<&'static str>,
    pub netns: u32,
    pub socket_cookie: Option<u64>,
    pub detail: Vec<(&'static str, DetailValue)>,
    pub linked: Option<Linked>,
    /// The condition was inferred without a kernel reason (kernels before 6.10).
    pub inferred: bool,
}

impl Report {
    #[cfg(test)]
    pub fn detail_num(&self, key: &str) -> Option<u64> {
        self.detail.iter().find_map(|(k, v)| match v {
            DetailValue::Num(n) if *k == key => Some(*n),
            _ => None,
        })
    }
}

/// Whether reports get their explanation sentence. Off with `--quiet`, where nothing prints
/// them: building the sentences is most of the per-event cost in a storm.
pub static EXPLAIN_WORDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets the report's explanation, if explanations are wanted at all.
macro_rules! say {
    ($r:expr, $($fmt:tt)*) => {
        if EXPLAIN_WORDS.load(std::sync::atomic::Ordering::Relaxed) {
            $r.explanation = format!($($fmt)*);
        }
    };
}

/// Condition ids (conditions.md): a public API, never renamed.
pub mod cond {
    pub const PORT_NOT_LISTENING: &str = "port_not_listening";
    pub const NO_CONNECTION: &str = "no_connection";
    pub const STALE_SYNACK: &str = "stale_synack";
    pub const TIME_WAIT_SEGMENT: &str = "time_wait_segment";
    pub const UNEXPECTED_ACK_ON_LISTENER: &str = "unexpected_ack_on_listener";
    pub const ACCEPT_QUEUE_OVERFLOW: &str = "accept_queue_overflow";
    pub const INVALID_ACK: &str = "invalid_ack";
    pub const PAWS_REJECT: &str = "paws_reject";
    pub const CLOSE_WITH_UNREAD_DATA: &str = "close_with_unread_data";
    pub const LINGER_ABORT: &str = "linger_abort";
    pub const LISTENER_CLOSED: &str = "listener_closed";
    pub const DISCONNECT: &str = "disconnect";
    pub const DISCONNECT_WITH_UNSENT_DATA: &str = "disconnect_with_unsent_data";
    pub const DATA_AFTER_CLOSE: &str = "data_after_close";
    pub const FIN_WAIT2_ABORT: &str = "fin_wait2_abort";
    pub const ORPHAN_LIMIT: &str = "orphan_limit";
    pub const KEEPALIVE_TIMEOUT: &str = "keepalive_timeout";
    pub const FIREWALL_REJECT: &str = "firewall_reject";
    pub const CONNECTION_REFUSED: &str = "connection_refused";
    pub const PEER_RESET: &str = "peer_reset";
    pub const OTHER: &str = "other";

    /// Every id, for `--condition` validation.
    pub const ALL: &[&str] = &[
        PORT_NOT_LISTENING,
        NO_CONNECTION,
        STALE_SYNACK,
        TIME_WAIT_SEGMENT,
        UNEXPECTED_ACK_ON_LISTENER,
        ACCEPT_QUEUE_OVERFLOW,
        INVALID_ACK,
        PAWS_REJECT,
        CLOSE_WITH_UNREAD_DATA,
        LINGER_ABORT,
        LISTENER_CLOSED,
        DISCONNECT,
        DISCONNECT_WITH_UNSENT_DATA,
        DATA_AFTER_CLOSE,
        FIN_WAIT2_ABORT,
        ORPHAN_LIMIT,
        KEEPALIVE_TIMEOUT,
        FIREWALL_REJECT,
        CONNECTION_REFUSED,
        PEER_RESET,
        OTHER,
    ];
}

/// Decodes addresses from the event (IPv4 in the first four bytes).
fn endpoint(ipv6: bool, addr: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if ipv6 {
        let v6 = Ipv6Addr::from(*addr);
        // An IPv4-mapped address on a dual-stack socket is really IPv4: show it that way.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    };
    SocketAddr::new(ip, port)
}

/// What userspace remembers between events, bounded.
#[derive(Default)]
pub struct History {
    /// Recent sent resets by (local, remote), to link a received reset to its local sender
    /// (loopback, another namespace); the queue gives the age order for expiry. O(1) per event,
    /// which matters in a reset storm.
    by_tuple: HashMap<(SocketAddr, SocketAddr), Linked, TupleHash>,
    order: VecDeque<(SocketAddr, SocketAddr, u64)>,
}

/// Hashes a (local, remote) pair in one pass over a packed copy, with a per-run random key:
/// the default SipHash over `SocketAddr`'s many small writes was a tenth of the CPU rst-trace
/// spends per event. The key keeps peers from choosing colliding tuples on purpose.
#[derive(Clone, Copy)]
struct TupleHash(u64);

impl Default for TupleHash {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        Self(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1)
    }
}

impl std::hash::BuildHasher for TupleHash {
    type Hasher = TupleHasher;
    fn build_hasher(&self) -> TupleHasher {
        TupleHasher(self.0)
    }
}

struct TupleHasher(u64);

impl std::hash::Hasher for TupleHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, v: u64) {
        // A multiply-xorshift round (as in wyhash/foldhash) per word, keyed by the seed.
        let m = u128::from(self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How long a sent reset stays linkable to a received one.
const LINK_WINDOW_NS: u64 = 2_000_000_000;
/// At most this many are kept: a received reset is held 5 ms for its sender (main.rs releases
/// held ones every 1024 records while it drains), and 8192 sent resets are 30 ms of a 250k/s
/// storm; each costs ~200 bytes.
const LINK_MAX: usize = 8192;

impl History {
    fn remember_sent(&mut self, r: &Report) {
        while let Some(&(l, rm, t)) = self.order.front() {
            if self.order.len() >= LINK_MAX || r.mono_ns.saturating_sub(t) > LINK_WINDOW_NS {
                self.order.pop_front();
                // Only if no newer reset on the same tuple replaced it.
                if self.by_tuple.get(&(l, rm)).is_some_and(|x| x.mono_ns == t) {
                    self.by_tuple.remove(&(l, rm));
                }
            } else {
                break;
            }
        }
        self.order.push_back((r.local, r.remote, r.mono_ns));
        self.by_tuple.insert(
            (r.local, r.remote),
            Linked {
                condition: r.condition,
                process: r.process.clone(),
                mono_ns: r.mono_ns,
            },
        );
    }

    fn find_sender(&self, local: SocketAddr, remote: SocketAddr, mono_ns: u64) -> Option<Linked> {
        self.by_tuple
            .get(&(remote, local))
            .filter(|s| mono_ns.abs_diff(s.mono_ns) <= LINK_WINDOW_NS)
            .cloned()
    }
}

/// Idle time past which a received reset suggests a middlebox (NAT, load balancer, mobile
/// carrier) expired the flow: common idle timeouts are 4 to 5 minutes (e.g. 350 s on AWS NLB,
/// 4 min on Azure LB, about 5 min on mobile networks).
const MIDDLEBOX_IDLE_MS: u64 = 240_000;

/// Explains one event, using the kernel facts (`enum sk_rst_reason` names, jiffy length).
pub fn explain(ev: &RstEvent, info: &KernelInfo, history: &mut History) -> Option<Report> {
    let reasons = &info.reasons;
    let direction = Direction::try_from(ev.kind).ok()?;
    let ipv6 = ev.family == 10;
    let local = endpoint(ipv6, &ev.local_addr, ev.local_port);
    let remote = endpoint(ipv6, &ev.remote_addr, ev.remote_port);
    let ipv6 = local.is_ipv6();
    let process = (ev.attribution != ATTR_NONE).then(|| Process::from_task(&ev.owner));
    let mut r = Report {
        mono_ns: ev.mono_ns,
        direction,
        origin: None,
        condition: cond::OTHER,
        explanation: String::new(),
        kernel_reason: None,
        state: TcpState::decode(ev.state),
        ipv6,
        local,
        remote,
        attribution: if process.is_some() {
            "socket_owner"
        } else {
            "none"
        },
        no_process_why: None,
        process,
        netns: ev.netns,
        socket_cookie: (ev.cookie != 0).then_some(ev.cookie),
        detail: Vec::new(),
        linked: None,
        inferred: false,
    };
    let to_ms = |j: u32| u64::from(j) * info.jiffy_ns / 1_000_000;
    let idle_ms = (ev.facts & FACT_IDLE != 0 && info.jiffy_ns > 0)
        .then(|| (to_ms(ev.idle_jiffies), to_ms(ev.recv_idle_jiffies)));
    match direction {
        Direction::Sent => explain_sent(ev, reasons, &mut r),
        Direction::Received => explain_received(ev, history, idle_ms, &mut r),
    }
    if r.process.is_none() && r.no_process_why.is_none() {
        r.no_process_why = Some(if ev.skaddr == 0 {
            "no socket"
        } else {
            "owner unknown"
        });
    }
    if direction == Direction::Sent {
        history.remember_sent(&r);
    }
    Some(r)
}

fn who(r: &Report) -> String {
    match &r.process {
        Some(p) => p.to_string(),
        None => "the application".into(),
    }
}

fn explain_sent(ev: &RstEvent, reasons: &HashMap<u32, String>, r: &mut Report) {
    if ev.facts & FACT_NETFILTER != 0 {
        explain_netfilter(ev, r);
        return;
    }
    r.origin = Some("tcp");
    let reason = (ev.reason != REASON_NONE).then(|| {
        reasons
            .get(&ev.reason)
            .cloned()
            .unwrap_or_else(|| format!("UNKNOWN({})", ev.reason))
    });
    r.kernel_reason = reason.clone();
    let prev = TcpState::decode(ev.prev_state);
    let mut packet = ev.facts & FACT_PACKET != 0;
    let mut flags = ev.tcp_flags;
    // Seen on transmit (before 6.10) without the segment it answers: what the RST itself says
    // of it (tcp_v4_send_reset(): an RST|ACK answers a segment without ACK, in practice a SYN;
    // a bare RST one with ACK).
    let guessed = ev.facts & FACT_XMIT != 0 && !packet;
    if guessed {
        packet = true;
        flags = if ev.tcp_flags & ACK != 0 { SYN } else { ACK };
    }
    let tcp_sock = ev.facts & FACT_TCP_SOCK != 0;
    // For aborts the tracepoint says CLOSE; the state the connection was in comes from the
    // preceding inet_sock_set_state X -> CLOSE transition.
    if r.state == Some(TcpState::Close) && prev.is_some() {
        r.state = prev;
    }
    let state_name = r
        .state
        .map(TcpState::name)
        .unwrap_or_else(|| "no socket".into());
    let reason_str = reason.as_deref().unwrap_or("");
    // Without a kernel reason (before 6.10), infer it from what the kernel side saw.
    let inferred = reason.is_none();
    let reason_key: &str = if inferred {
        r.inferred = true;
        infer_reason(ev, prev)
    } else {
        reason_str
    };
    let proc_ = who(r);
    let local = r.local;
    let remote = r.remote;
    let incoming = tcp_flags_names(flags);
    match reason_key {
        "NO_SOCKET" => {
            r.state = None;
            r.socket_cookie = None;
            r.no_process_why = Some("no socket");
            if packet && !guessed {
                r.detail
                    .push(("incoming_flags", DetailValue::Text(incoming.clone())));
            }
            if packet && flags & SYN != 0 && flags & ACK == 0 {
                r.condition = cond::PORT_NOT_LISTENING;
                say!(
                    r,
                    "nothing listens on {local}: the kernel refused the connection attempt (SYN) from {remote} with RST; the client sees ECONNREFUSED"
                );
            } else if packet && flags & SYN != 0 {
                r.condition = cond::STALE_SYNACK;
                say!(
                    r,
                    "a SYN-ACK from {remote} arrived for a connection attempt that no longer exists on {local} (the client gave up, e.g. a connect timeout), so the kernel answered with RST"
                );
            } else {
                r.condition = cond::NO_CONNECTION;
                say!(
                    r,
                    "a segment ({incoming}) from {remote} arrived for a connection {local} no longer has (closed, or state lost), so the kernel answered with RST; the peer sees ECONNRESET"
                );
            }
        }
        "TCP_TIMEWAIT_SOCKET" => {
            r.condition = cond::TIME_WAIT_SEGMENT;
            r.no_process_why = Some("closed, in TIME_WAIT");
            if packet && !guessed {
                r.detail
                    .push(("incoming_flags", DetailValue::Text(incoming.clone())));
            }
            say!(
                r,
                "a segment ({incoming}) from {remote} hit a connection already closed and waiting in TIME_WAIT on {local}, so the kernel answered with RST"
            );
        }
        "TCP_FLAGS" | "INVALID_SYN"
            if r.state == Some(TcpState::Listen)
                && ((reason_key == "INVALID_SYN" && ev.facts & FACT_BACKLOG == 0)
                    || (ev.facts & FACT_BACKLOG != 0 && ev.ack_backlog > ev.max_ack_backlog)) =>
        {
            r.condition = cond::ACCEPT_QUEUE_OVERFLOW;
            if ev.facts & FACT_BACKLOG != 0 {
                r.detail
                    .push(("accept_queue", DetailValue::Num(u64::from(ev.ack_backlog))));
                r.detail.push((
                    "accept_queue_max",
                    DetailValue::Num(u64::from(ev.max_ack_backlog)),
                ));
            }
            say!(
                r,
                "{proc_}'s accept queue on {local} was full (it is not calling accept() fast enough) and net.ipv4.tcp_abort_on_overflow=1, so the kernel reset the connection from {remote}"
            );
        }
        "TCP_FLAGS" if r.state == Some(TcpState::Listen) => {
            r.condition = cond::UNEXPECTED_ACK_ON_LISTENER;
            say!(
                r,
                "an ACK ({incoming}) from {remote} reached listener {proc_} on {local} for a connection it does not have (handshake state lost, or a stray segment), so the kernel answered with RST"
            );
        }
        "TCP_INVALID_ACK_SEQUENCE" if inferred && r.state == Some(TcpState::SynSent) => {
            // tcp_rcv_synsent_state_process() resets both a wrong ACK number and a TSecr
            // failing PAWS through reset_and_undo; only the 6.10+ reason tells them apart.
            r.condition = cond::INVALID_ACK;
            say!(
                r,
                "a SYN-ACK from {remote} failed {local}'s checks in SYN_SENT: it acknowledged a sequence number never sent, or its timestamp failed the PAWS check (this kernel does not say which), so the kernel answered with RST"
            );
        }
        "TCP_INVALID_ACK_SEQUENCE" | "TCP_TOO_OLD_ACK" | "TCP_ACK_UNSENT_DATA" | "TCP_OLD_ACK" => {
            r.condition = cond::INVALID_ACK;
            say!(
                r,
                "a segment from {remote} acknowledged data {local} never sent or long acknowledged (state {state_name}), so the kernel answered with RST"
            );
        }
        "TCP_RFC7323_PAWS" => {
            r.condition = cond::PAWS_REJECT;
            say!(
                r,
                "a segment from {remote} failed the PAWS timestamp check (RFC 7323) in state {state_name}, so the kernel answered with RST"
            );
        }
        "TCP_ABORT_ON_CLOSE" => {
            r.condition = cond::CLOSE_WITH_UNREAD_DATA;
            if tcp_sock {
                let unread = unread_data(ev, prev);
                r.detail
                    .push(("unread_bytes", DetailValue::Num(u64::from(unread))));
                say!(
                    r,
                    "{proc_} closed the socket with {unread} unread bytes in its receive queue, so the kernel aborted the connection with RST instead of FIN"
                );
            } else {
                say!(
                    r,
                    "{proc_} closed the socket with unread data in its receive queue, so the kernel aborted the connection with RST instead of FIN"
                );
            }
        }
        "TCP_STATE" | "TCP_DISCONNECT_WITH_DATA" if ev.state != TCP_CLOSE_RAW => {
            // tcp_abort() (ss -K, SOCK_DESTROY) also says TCP_STATE, but without moving the
            // socket to CLOSE first: not a close() or disconnect() of the application's.
            r.condition = cond::OTHER;
            say!(
                r,
                "the kernel aborted the connection {local} > {remote} in state {state_name} (reason {reason_str}; e.g. `ss -K` or another SOCK_DESTROY)"
            );
        }
        "TCP_STATE" | "TCP_DISCONNECT_WITH_DATA" => {
            // write_seq counts a FIN that is queued or in flight: it is not data.
            let fin = u32::from(matches!(
                prev,
                Some(TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck)
            ));
            let unsent = ev.unsent.saturating_sub(fin);
            if ev.facts & FACT_LISTENER_CLOSING != 0 || prev == Some(TcpState::Listen) {
                r.condition = cond::LISTENER_CLOSED;
                say!(
                    r,
                    "{proc_} closed its listening socket on {local} while a connection from {remote} was not yet accepted, so the kernel reset that connection"
                );
            } else if reason_key == "TCP_DISCONNECT_WITH_DATA" {
                r.condition = cond::DISCONNECT_WITH_UNSENT_DATA;
                r.detail
                    .push(("unsent_bytes", DetailValue::Num(u64::from(unsent))));
                say!(
                    r,
                    "{proc_} aborted the connection to {remote} with {unsent} bytes not yet acknowledged by the peer, so the kernel sent RST"
                );
            } else if ev.facts & FACT_LINGER_ZERO != 0 {
                r.condition = cond::LINGER_ABORT;
                r.detail
                    .push(("unsent_bytes", DetailValue::Num(u64::from(unsent))));
                say!(
                    r,
                    "{proc_} closed the socket with SO_LINGER set to 0 seconds: an abortive close that discards {unsent} unsent bytes and sends RST to {remote}"
                );
            } else {
                r.condition = cond::DISCONNECT;
                say!(
                    r,
                    "{proc_} disconnected the socket (connect() with AF_UNSPEC) while connected to {remote}, which aborts the connection with RST"
                );
            }
        }
        "TCP_ABORT_ON_DATA" => {
            if tcp_sock && ev.linger2 < 0 {
                r.condition = cond::FIN_WAIT2_ABORT;
                say!(
                    r,
                    "{proc_} closed the socket with TCP_LINGER2 < 0, so when {remote} answered the kernel aborted it with RST instead of waiting in FIN_WAIT2"
                );
            } else {
                r.condition = cond::DATA_AFTER_CLOSE;
                say!(
                    r,
                    "data arrived from {remote} after {proc_} had closed the socket (or shut down reading), so the kernel answered with RST (RFC 1122)"
                );
            }
        }
        "TCP_ABORT_ON_LINGER" => {
            r.condition = cond::FIN_WAIT2_ABORT;
            say!(
                r,
                "{proc_} closed the socket with TCP_LINGER2 < 0, so the kernel aborted it with RST instead of waiting in FIN_WAIT2"
            );
        }
        "TCP_ABORT_ON_MEMORY" => {
            r.condition = cond::ORPHAN_LIMIT;
            say!(
                r,
                "too many orphaned sockets or TCP memory pressure: the kernel aborted the closed connection {local} > {remote} with RST (see net.ipv4.tcp_max_orphans, tcp_mem)"
            );
        }
        "TCP_KEEPALIVE_TIMEOUT" => {
            r.condition = cond::KEEPALIVE_TIMEOUT;
            say!(
                r,
                "keepalive probes to {remote} went unanswered, so the kernel gave up on {proc_}'s connection and sent RST; the application sees ETIMEDOUT"
            );
        }
        _ => {
            r.condition = cond::OTHER;
            let why = reason.as_deref().unwrap_or("no reason reported");
            say!(
                r,
                "the kernel sent RST to {remote} (reason {why}, state {state_name})"
            );
        }
    }
    if guessed {
        r.explanation.push_str(
            " (the segment it answers was not seen; its flags are inferred from the RST)",
        );
    }
    if r.inferred {
        r.explanation
            .push_str(" (inferred: this kernel reports no reset reason)");
    }
}

/// An RST built by netfilter (REJECT --reject-with tcp-reset), seen on transmit.
fn explain_netfilter(ev: &RstEvent, r: &mut Report) {
    r.state = None;
    r.socket_cookie = None;
    r.no_process_why = Some("firewall");
    r.detail.push(("ttl", DetailValue::Num(u64::from(ev.ttl))));
    r.origin = Some("netfilter");
    r.condition = cond::FIREWALL_REJECT;
    // nf_reject_ip_tcphdr_put(): an RST|ACK answers a segment without ACK (a SYN: the client
    // sees ECONNREFUSED); a bare RST answers a segment with ACK (an established connection:
    // ECONNRESET).
    let (what, errno) = if ev.tcp_flags & ACK != 0 {
        ("connection attempt (SYN)", "ECONNREFUSED")
    } else {
        ("segment on an established connection", "ECONNRESET")
    };
    r.detail.push((
        "rejected",
        DetailValue::Text(
            if ev.tcp_flags & ACK != 0 {
                "SYN"
            } else {
                "ACK"
            }
            .into(),
        ),
    ));
    say!(
        r,
        "a netfilter rule on this host (REJECT --reject-with tcp-reset, iptables or nft) rejected the {what} from {remote} to {local} and sent RST in its place; {remote} sees {errno}",
        remote = r.remote,
        local = r.local
    );
}

/// Bytes the application left unread: `rcv_nxt - copied_seq` counts a received FIN as one.
fn unread_data(ev: &RstEvent, prev: Option<TcpState>) -> u32 {
    let fin = u32::from(matches!(
        prev,
        Some(TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait)
    ));
    ev.unread.saturating_sub(fin)
}

/// Kernels before 6.10 give no reason: infer the kernel reason the same facts would carry on a
/// newer kernel, following the decisions of tcp_close(), tcp_disconnect(), tcp_keepalive_timer()
/// and tcp_rcv_state_process().
fn infer_reason(ev: &RstEvent, prev: Option<TcpState>) -> &'static str {
    let state = TcpState::decode(ev.state);
    let tcp_sock = ev.facts & FACT_TCP_SOCK != 0;
    if ev.skbaddr == 0 {
        // tcp_send_active_reset(): an abort decided on this host.
        return match state {
            Some(TcpState::Close) => {
                if ev.facts & FACT_LISTENER_CLOSING != 0 || prev == Some(TcpState::Listen) {
                    "TCP_STATE"
                } else if tcp_sock && unread_data(ev, prev) > 0 {
                    "TCP_ABORT_ON_CLOSE"
                } else if tcp_sock
                    && ev.unsent > 0
                    && matches!(prev, Some(TcpState::LastAck | TcpState::Closing))
                {
                    "TCP_DISCONNECT_WITH_DATA"
                } else if tcp_sock && ev.linger2 < 0 && prev == Some(TcpState::FinWait2) {
                    "TCP_ABORT_ON_LINGER"
                } else {
                    "TCP_STATE"
                }
            }
            // The keepalive timer resets without changing the state first.
            Some(TcpState::Established) => "TCP_KEEPALIVE_TIMEOUT",
            // Orphans aborted by tcp_out_of_resources() (too many orphans, memory pressure).
            Some(_) => "TCP_ABORT_ON_MEMORY",
            None => "",
        };
    }
    match state {
        Some(TcpState::TimeWait) => "TCP_TIMEWAIT_SOCKET",
        Some(TcpState::Listen) if ev.tcp_flags & SYN == 0 && ev.tcp_flags & ACK != 0 => "TCP_FLAGS",
        Some(TcpState::SynSent) => "TCP_INVALID_ACK_SEQUENCE",
        Some(TcpState::Close) => "TCP_ABORT_ON_DATA",
        None => "NO_SOCKET",
        _ => "",
    }
}

/// `idle_ms` is (since the connection last sent or received, since it last received).
fn explain_received(ev: &RstEvent, history: &History, idle_ms: Option<(u64, u64)>, r: &mut Report) {
    let proc_ = who(r);
    let remote = r.remote;
    let local = r.local;
    let state_name = r
        .state
        .map(TcpState::name)
        .unwrap_or_else(|| "unknown".into());
    let linked = history.find_sender(local, remote, ev.mono_ns);
    let by = match &linked {
        Some(l) if l.condition == cond::FIREWALL_REJECT => {
            "; it was sent by a netfilter REJECT rule on this host (firewall_reject)".to_owned()
        }
        Some(l) => format!(
            "; it was sent by {} on this host ({})",
            l.process
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "the kernel, no process".into()),
            l.condition
        ),
        None => String::new(),
    };
    if r.state == Some(TcpState::SynSent) {
        r.condition = cond::CONNECTION_REFUSED;
        r.detail
            .push(("errno", DetailValue::Text("ECONNREFUSED".into())));
        say!(
            r,
            "{proc_}'s connection attempt to {remote} was refused: the peer answered the SYN with RST{by}; connect() fails with ECONNREFUSED"
        );
    } else {
        r.condition = cond::PEER_RESET;
        // tcp_reset() picks the error the application will see from the state.
        let errno = match r.state {
            Some(TcpState::CloseWait) => Some("EPIPE"),
            Some(TcpState::Close) => None,
            _ => Some("ECONNRESET"),
        };
        if let Some(e) = errno {
            r.detail.push(("errno", DetailValue::Text(e.into())));
        }
        let sees = errno
            .map(|e| format!("; {proc_} sees {e} on its next read or write"))
            .unwrap_or_default();
        if let Some((ms, recv_ms)) = idle_ms {
            r.detail.push(("idle_ms", DetailValue::Num(ms)));
            r.detail.push(("recv_idle_ms", DetailValue::Num(recv_ms)));
        }
        let rst_ttl = (ev.facts & FACT_RST_TTL != 0).then_some(ev.ttl);
        let peer_ttl = (ev.peer_ttl != 0).then_some(ev.peer_ttl);
        if let Some(t) = rst_ttl {
            r.detail.push(("ttl", DetailValue::Num(u64::from(t))));
        }
        if let Some(t) = peer_ttl {
            r.detail.push(("peer_ttl", DetailValue::Num(u64::from(t))));
        }
        // Evidence, never a verdict. An RST whose TTL differs from the peer's segments was
        // built by a different host than the peer (a firewall, load balancer or injector on the
        // path); a long idle connection reset by a "peer" is what a NAT, load balancer or mobile
        // network that expired the flow produces.
        let mut suspicions = Vec::new();
        if linked.is_none()
            && let (Some(t), Some(p)) = (rst_ttl, peer_ttl)
            && t != p
        {
            suspicions.push(format!(
                "the RST arrived with TTL {t} while {remote}'s segments arrive with TTL {p}, so a device on the path (firewall, load balancer, NAT or injector), not the peer itself, likely sent it"
            ));
        }
        // Time since the peer was last heard from: the write that provoked the RST just reset
        // the send clock.
        if let Some((_, ms)) = idle_ms
            && linked.is_none()
            && ms >= MIDDLEBOX_IDLE_MS
        {
            suspicions.push(format!(
                "nothing had arrived on the connection for {} s, longer than common NAT, load-balancer and mobile idle timeouts, so a middlebox that expired the flow may have sent it",
                ms / 1000
            ));
        }
        let suspicion = if suspicions.is_empty() {
            String::new()
        } else {
            format!(" (suspicion, not fact: {})", suspicions.join("; "))
        };
        say!(
            r,
            "{remote} reset the connection while it was {state_name}{by}{sees}{suspicion}"
        );
    }
    r.linked = linked;
}

/// xorshift64*: a deterministic pseudo-random sequence for property tests, so a failure
/// reproduces.
#[cfg(test)]
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel counts `--summary --quiet` resets under `RstEvent::count_key`: the key must
    /// explain to the same condition, direction and process as the event itself, for events of
    /// every kind, state, reason and fact.
    #[test]
    fn count_key_keeps_condition_direction_and_process() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        // All 6.18 reason names, so every reason branch is taken.
        let info = KernelInfo {
            reasons: [
                "NOT_SPECIFIED",
                "NO_SOCKET",
                "TCP_INVALID_ACK_SEQUENCE",
                "TCP_RFC7323_PAWS",
                "TCP_TOO_OLD_ACK",
                "TCP_ACK_UNSENT_DATA",
                "TCP_FLAGS",
                "TCP_OLD_ACK",
                "TCP_ABORT_ON_DATA",
                "TCP_TIMEWAIT_SOCKET",
                "INVALID_SYN",
                "TCP_ABORT_ON_CLOSE",
                "TCP_ABORT_ON_LINGER",
                "TCP_ABORT_ON_MEMORY",
                "TCP_STATE",
                "TCP_KEEPALIVE_TIMEOUT",
                "TCP_DISCONNECT_WITH_DATA",
            ]
            .into_iter()
            .enumerate()
            .map(|(k, v)| (k as u32, v.to_string()))
            .collect(),
            jiffy_ns: 4_000_000,
        };
        let small = [0u32, 1, 2, 3, 100];
        let mut conditions = std::collections::HashSet::new();
        for _ in 0..50_000 {
            let mut ev = RstEvent {
                mono_ns: next(),
                skaddr: if next().is_multiple_of(4) { 0 } else { next() },
                skbaddr: if next().is_multiple_of(2) { 0 } else { next() },
                cookie: next() % 3,
                kind: 1 + (next() % 2) as u8,
                family: if next().is_multiple_of(2) { 2 } else { 10 },
                state: (next() % 14) as u8,
                prev_state: (next() % 14) as u8,
                reason: if next().is_multiple_of(5) {
                    REASON_NONE
                } else {
                    (next() % 18) as u32
                },
                tcp_flags: next() as u8,
                ttl: next() as u8,
                peer_ttl: next() as u8,
                attribution: (next() % 4) as u8,
                facts: next() as u32 & 0x1ff,
                unread: small[(next() % 5) as usize],
                unsent: small[(next() % 5) as usize],
                linger2: [-1, 0, 60][(next() % 3) as usize],
                ack_backlog: small[(next() % 5) as usize],
                max_ack_backlog: small[(next() % 5) as usize],
                idle_jiffies: next() as u32,
                recv_idle_jiffies: next() as u32,
                local_port: next() as u16,
                remote_port: next() as u16,
                netns: next() as u32,
                ..Default::default()
            };
            ev.local_addr = (u128::from(next()) << 64 | u128::from(next())).to_ne_bytes();
            ev.remote_addr = (u128::from(next()) << 64 | u128::from(next())).to_ne_bytes();
            ev.owner = task("worker", (next() % 5) as u32 + 1);
            ev.owner.tid = next() as u32;
            let mut key = ev;
            key.count_key();
            let a = explain(&ev, &info, &mut History::default());
            let b = explain(&key, &info, &mut History::default());
            let (Some(a), Some(b)) = (a, b) else {
                panic!("one of event and key explained, the other not: {ev:?}");
            };
            assert_eq!(a.condition, b.condition, "{ev:?}");
            assert_eq!(a.direction, b.direction, "{ev:?}");
            assert_eq!(
                a.process.as_ref().map(|p| (p.pid, p.comm.clone())),
                b.process.as_ref().map(|p| (p.pid, p.comm.clone())),
                "{ev:?}"
            );
            conditions.insert(a.condition);
        }
        // The generator reaches most conditions, so the check above means something.
        assert!(conditions.len() >= 15, "{conditions:?}");
    }

    fn reasons() -> KernelInfo {
        KernelInfo {
            reasons: [
                (1, "NO_SOCKET"),
                (11, "TCP_ABORT_ON_CLOSE"),
                (14, "TCP_STATE"),
            ]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
            jiffy_ns: 4_000_000,
        }
    }

    fn task(comm: &str, pid: u32) -> Task {
        let mut t = Task {
            pid,
            tid: pid,
            ..Default::default()
        };
        t.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        t
    }

    /// An event as a 5.10 kernel reports it: no reason.
    fn old_kernel(state: u8, prev: u8, skb: bool) -> RstEvent {
        RstEvent {
            kind: KIND_SENT,
            reason: REASON_NONE,
            family: 2,
            skaddr: 1,
            skbaddr: u64::from(skb),
            state,
            prev_state: prev,
            facts: FACT_TCP_SOCK,
            attribution: rst_trace_common::ATTR_OWNER_CURRENT,
            owner: task("app", 7),
            ..Default::default()
        }
    }

    #[test]
    fn old_kernels_infer_the_condition_and_say_so() {
        let k = KernelInfo::default();
        let mut h = History::default();
        let cases: Vec<(RstEvent, &str)> = vec![
            (
                RstEvent {
                    unread: 5,
                    ..old_kernel(7, 1, false)
                },
                cond::CLOSE_WITH_UNREAD_DATA,
            ),
            // A received FIN is not unread data.
            (
                RstEvent {
                    unread: 1,
                    ..old_kernel(7, 8, false)
                },
                cond::DISCONNECT,
            ),
            (
                RstEvent {
                    facts: FACT_TCP_SOCK | FACT_LINGER_ZERO,
                    ..old_kernel(7, 1, false)
                },
                cond::LINGER_ABORT,
            ),
            (
                RstEvent {
                    facts: FACT_TCP_SOCK | FACT_LISTENER_CLOSING,
                    ..old_kernel(7, 1, false)
                },
                cond::LISTENER_CLOSED,
            ),
            (
                RstEvent {
                    unsent: 9,
                    ..old_kernel(7, 9, false)
                },
                cond::DISCONNECT_WITH_UNSENT_DATA,
            ),
            (
                RstEvent {
                    linger2: -1,
                    ..old_kernel(7, 5, false)
                },
                cond::FIN_WAIT2_ABORT,
            ),
            (old_kernel(1, 0, false), cond::KEEPALIVE_TIMEOUT),
            (old_kernel(4, 0, false), cond::ORPHAN_LIMIT),
            (old_kernel(6, 0, true), cond::TIME_WAIT_SEGMENT),
            (
                RstEvent {
                    tcp_flags: ACK,
                    ..old_kernel(10, 0, true)
                },
                cond::UNEXPECTED_ACK_ON_LISTENER,
            ),
            (old_kernel(2, 0, true), cond::INVALID_ACK),
            (old_kernel(7, 4, true), cond::DATA_AFTER_CLOSE),
        ];
        for (ev, want) in cases {
            let r = explain(&ev, &k, &mut h).unwrap();
            assert_eq!(r.condition, want, "{ev:?}");
            assert!(r.inferred);
            assert_eq!(r.kernel_reason, None);
            assert!(r.explanation.contains("inferred"), "{}", r.explanation);
        }
    }

    #[test]
    fn listener_reset_with_full_queue_is_overflow() {
        let mut ev = RstEvent {
            kind: KIND_SENT,
            reason: 6,
            state: 10,
            skaddr: 1,
            skbaddr: 1,
            family: 2,
            tcp_flags: ACK,
            facts: FACT_BACKLOG | FACT_PACKET,
            ack_backlog: 2,
            max_ack_backlog: 1,
            ..Default::default()
        };
        let mut k = reasons();
        k.reasons.insert(6, "TCP_FLAGS".into());
        let r = explain(&ev, &k, &mut History::default()).unwrap();
        assert_eq!(r.condition, cond::ACCEPT_QUEUE_OVERFLOW);
        ev.ack_backlog = 1;
        let r = explain(&ev, &k, &mut History::default()).unwrap();
        assert_eq!(r.condition, cond::UNEXPECTED_ACK_ON_LISTENER);
    }

    #[test]
    fn long_idle_received_reset_is_a_suspicion_not_a_fact() {
        let ev = RstEvent {
            kind: KIND_RECEIVED,
            reason: REASON_NONE,
            state: 1,
            skaddr: 1,
            family: 2,
            facts: FACT_TCP_SOCK | FACT_IDLE,
            // Our write just now (the send clock is fresh); nothing received for 400 s.
            idle_jiffies: 2,
            recv_idle_jiffies: 100_000,
            ..Default::default()
        };
        let r = explain(&ev, &reasons(), &mut History::default()).unwrap();
        assert_eq!(r.condition, cond::PEER_RESET);
        assert_eq!(r.detail_num("idle_ms"), Some(8));
        assert_eq!(r.detail_num("recv_idle_ms"), Some(400_000));
        assert!(
            r.explanation.contains("suspicion, not fact"),
            "{}",
            r.explanation
        );
        let short = RstEvent {
            recv_idle_jiffies: 10,
            ..ev
        };
        let r = explain(&short, &reasons(), &mut History::default()).unwrap();
        assert!(!r.explanation.contains("suspicion"));
    }

    #[test]
    fn flags_order_is_fixed() {
        assert_eq!(tcp_flags_names(0x18), "PSH|ACK");
        assert_eq!(tcp_flags_names(0x12), "SYN|ACK");
        assert_eq!(tcp_flags_names(0x02), "SYN");
        assert_eq!(tcp_flags_names(0), "none");
    }

    #[test]
    fn unknown_kind_and_state_decode_without_panicking() {
        assert_eq!(Direction::try_from(9), Err(9));
        assert_eq!(TcpState::decode(99), Some(TcpState::Unknown(99)));
        assert_eq!(TcpState::decode(0), None);
        let ev = RstEvent {
            kind: 77,
            ..Default::default()
        };
        assert!(explain(&ev, &reasons(), &mut History::default()).is_none());
    }

    #[test]
    fn unknown_reason_value_is_other_with_raw_name() {
        let ev = RstEvent {
            kind: KIND_SENT,
            reason: 200,
            state: 1,
            skaddr: 1,
            family: 2,
            ..Default::default()
        };
        let r = explain(&ev, &reasons(), &mut History::default()).unwrap();
        assert_eq!(r.condition, cond::OTHER);
        assert_eq!(r.kernel_reason.as_deref(), Some("UNKNOWN(200)"));
    }

    #[test]
    fn syn_to_closed_port_is_port_not_listening_without_a_process() {
        let ev = RstEvent {
            kind: KIND_SENT,
            reason: 1,
            skbaddr: 1,
            family: 2,
            facts: FACT_PACKET,
            tcp_flags: SYN,
            ..Default::default()
        };
        let r = explain(&ev, &reasons(), &mut History::default()).unwrap();
        assert_eq!(r.condition, cond::PORT_NOT_LISTENING);
        assert_eq!(r.process, None);
        assert_eq!(r.state, None);
    }

    #[test]
    fn received_reset_links_to_local_sender() {
        let mut h = History::default();
        let mut sent = RstEvent {
            kind: KIND_SENT,
            reason: 11,
            family: 2,
            skaddr: 5,
            state: 7,
            prev_state: 1,
            attribution: rst_trace_common::ATTR_OWNER_CURRENT,
            owner: task("server", 10),
            facts: FACT_TCP_SOCK,
            unread: 128,
            local_port: 8888,
            remote_port: 40000,
            mono_ns: 100,
            ..Default::default()
        };
        sent.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        sent.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let s = explain(&sent, &reasons(), &mut h).unwrap();
        assert_eq!(s.condition, cond::CLOSE_WITH_UNREAD_DATA);
        assert_eq!(s.detail_num("unread_bytes"), Some(128));
        assert_eq!(s.state, Some(TcpState::Established));
        let mut recv = sent;
        recv.kind = KIND_RECEIVED;
        recv.local_port = 40000;
        recv.remote_port = 8888;
        recv.state = 1;
        recv.attribution = ATTR_NONE;
        recv.mono_ns = 200;
        let r = explain(&recv, &reasons(), &mut h).unwrap();
        assert_eq!(r.condition, cond::PEER_RESET);
        assert_eq!(r.process, None);
        let l = r.linked.unwrap();
        assert_eq!(l.condition, cond::CLOSE_WITH_UNREAD_DATA);
        assert_eq!(l.process.unwrap().comm, "server");
    }
}
