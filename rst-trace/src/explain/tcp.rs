//! TCP's own vocabulary as the kernel reports it: directions, states and header flags.

use rst_trace_common::{
    KIND_RECEIVED, KIND_SENT, TCP_ACK, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_CWR, TCP_ECE,
    TCP_ESTABLISHED, TCP_FIN, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_LISTEN,
    TCP_NEW_SYN_RECV, TCP_PSH, TCP_RST, TCP_SYN, TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT,
    TCP_URG,
};

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
            TCP_ESTABLISHED => Self::Established,
            TCP_SYN_SENT => Self::SynSent,
            TCP_SYN_RECV => Self::SynRecv,
            TCP_FIN_WAIT1 => Self::FinWait1,
            TCP_FIN_WAIT2 => Self::FinWait2,
            TCP_TIME_WAIT => Self::TimeWait,
            TCP_CLOSE => Self::Close,
            TCP_CLOSE_WAIT => Self::CloseWait,
            TCP_LAST_ACK => Self::LastAck,
            TCP_LISTEN => Self::Listen,
            TCP_CLOSING => Self::Closing,
            TCP_NEW_SYN_RECV => Self::NewSynRecv,
            // TCP_BOUND_INACTIVE (6.9+): not a state a reset is reported in, so not in common.
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
        (TCP_FIN, "FIN"),
        (TCP_SYN, "SYN"),
        (TCP_RST, "RST"),
        (TCP_PSH, "PSH"),
        (TCP_ACK, "ACK"),
        (TCP_URG, "URG"),
        (TCP_ECE, "ECE"),
        (TCP_CWR, "CWR"),
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

pub const SYN: u8 = TCP_SYN;
/// TCP_CLOSE as the tracepoint reports it.
pub const TCP_CLOSE_RAW: u8 = TCP_CLOSE;
pub const ACK: u8 = TCP_ACK;
