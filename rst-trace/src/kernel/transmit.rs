//! The per-packet transmit hook and what it sees: netfilter REJECT resets (only while REJECT
//! code is in the kernel) and, before 6.10, the resets TCP sends without a full socket.

use std::path::Path;

use anyhow::Result;
use aya::Ebpf;
use rst_trace_common::{Config, PROG_DEV_QUEUE, PROG_NETIF_RECEIVE};

use super::{
    attach::attach_raw,
    btf::Btf,
    errors::Notes,
    layout::Tracepoints,
    load::{Hooks, Tracer},
};

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
    /// Whether the transmit hook waits for REJECT code to appear ([`Tracer::poll_reject`]).
    pub fn reject_pending(&self) -> bool {
        !self.reject_attached && self.reject == RejectSupport::NotLoaded
    }

    /// Attaches the transmit hook once REJECT code appears (called every 100 ms while
    /// [`Tracer::reject_pending`]: creating the first REJECT rule loads it, and the rule's
    /// first reset may follow at once). True when it was attached now.
    pub fn poll_reject(&mut self) -> Result<bool> {
        if !self.reject_pending() || !reject_modules_loaded() {
            return Ok(false);
        }
        attach_raw(&mut self.ebpf, PROG_DEV_QUEUE, "net_dev_queue")?;
        self.reject_attached = true;
        self.reject = RejectSupport::Module;
        Ok(true)
    }
}

/// The per-packet transmit hook (netfilter REJECT resets, and before 6.10 the resets TCP sends
/// without a socket) and the receive hook that notes the segment such a reset answers: what
/// they see, and whether the transmit hook is attached.
pub(super) fn attach_transmit_hooks(
    ebpf: &mut Ebpf,
    cfg: &Config,
    tps: &Tracepoints,
    btf: &Btf,
    hooks: Hooks,
    notes: Notes,
) -> Result<(RejectSupport, Socketless, bool)> {
    let reject = if !hooks.firewall {
        RejectSupport::Disabled
    } else if tps.dev_queue.is_some() {
        reject_support(btf)
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
        attach_raw(ebpf, PROG_DEV_QUEUE, "net_dev_queue")?;
    }
    if socketless == Socketless::Transmit
        && let Err(e) = attach_raw(ebpf, PROG_NETIF_RECEIVE, "netif_receive_skb")
    {
        notes.failed(
            "no incoming flags for resets without a socket (raw tracepoint netif_receive_skb)",
            &e,
        );
    }
    Ok((reject, socketless, reject_attached))
}
