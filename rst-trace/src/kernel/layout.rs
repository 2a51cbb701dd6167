//! Builds the eBPF side's [`Config`] from the running kernel: tracepoint record layouts from the
//! tracefs `format` files, struct offsets from vmlinux BTF. Nothing kernel-specific is compiled in.

mod regs;
mod structs;

use std::collections::HashMap;

use anyhow::Result;
use rst_trace_common::{Config, OFF_NONE};

use super::{btf::Btf, tracefs::Format};

pub use regs::syscall_config;
pub use structs::struct_config;

/// The tracepoints rst-trace reads, as found on the running kernel.
pub struct Tracepoints {
    pub send_reset: Format,
    pub receive_reset: Format,
    pub set_state: Format,
    pub destroy_sock: Option<Format>,
    /// `sock:sock_send_length` (6.3+); `sock_recv_length` has the same layout.
    pub send_length: Option<Format>,
    /// `syscalls:sys_exit_accept4` (needs CONFIG_FTRACE_SYSCALLS).
    pub exit_accept: Option<Format>,
    /// `net:net_dev_queue`, for netfilter's RSTs.
    pub dev_queue: Option<Format>,
}

/// The kernel facts userspace needs to decode events.
#[derive(Clone, Debug, Default)]
pub struct KernelInfo {
    /// `enum sk_rst_reason` names by value, from the `format` file (or BTF); empty before 6.10.
    pub reasons: HashMap<u32, String>,
    /// Length of a jiffy in ns (1 s / CONFIG_HZ), for the idle times the kernel keeps in jiffies.
    pub jiffy_ns: u64,
}

/// The jiffy length: the resolution of the coarse clocks is one tick (TICK_NSEC), which is how
/// userspace can learn CONFIG_HZ without the kernel config.
pub fn jiffy_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc == 0 {
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        0
    }
}

fn off(v: Option<u16>) -> u16 {
    v.unwrap_or(OFF_NONE)
}

/// Fills in the tracepoint part of the config. Errors name the field that does not fit.
pub fn tracepoint_config(tps: &Tracepoints, cfg: &mut Config) -> Result<()> {
    // Only what the record-based fallback programs need: the socket, the packet, the reason and
    // the cookie. Addresses and ports come from the socket or the packet, as the tracepoints'
    // own TP_fast_assign takes them; so the three historical address layouts (before 6.1,
    // 6.1-6.9, 6.10+) do not matter.
    let s = &tps.send_reset;
    cfg.send_skbaddr = s.require("skbaddr", 8)?;
    cfg.send_skaddr = s.require("skaddr", 8)?;
    cfg.send_reason = off(s.optional("reason", 4)?);
    let r = &tps.receive_reset;
    cfg.recv_skaddr = r.require("skaddr", 8)?;
    cfg.recv_cookie = off(r.optional("sock_cookie", 8)?);
    let st = &tps.set_state;
    cfg.ss_skaddr = st.require("skaddr", 8)?;
    cfg.ss_oldstate = st.require("oldstate", 4)?;
    cfg.ss_newstate = st.require("newstate", 4)?;
    cfg.ss_protocol = st.require("protocol", 2)?;
    cfg.ss_sport = st.require("sport", 2)?;
    cfg.destroy_skaddr = match &tps.destroy_sock {
        Some(d) => d.require("skaddr", 8)?,
        None => OFF_NONE,
    };
    if let Some(a) = &tps.exit_accept {
        cfg.exit_ret = a.require("ret", 8)?;
    }
    Ok(())
}

/// Reason names: from the `format` file's `__print_symbolic` table, else from BTF's
/// `enum sk_rst_reason` (names there carry an `SK_RST_REASON_` prefix).
pub fn reason_names(send_reset: &Format, btf: Option<&Btf>) -> HashMap<u32, String> {
    let from_format = send_reset.symbols("reason");
    if !from_format.is_empty() || send_reset.field("reason").is_none() {
        return from_format;
    }
    btf.and_then(|b| b.enum_values("sk_rst_reason").ok())
        .map(|vals| {
            vals.into_iter()
                .filter_map(|(n, v)| {
                    let n = n.strip_prefix("SK_RST_REASON_").unwrap_or(&n).to_owned();
                    u32::try_from(v).ok().map(|v| (v, n))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(kernel: &str, cat: &str, name: &str) -> Option<Format> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(kernel)
            .join(cat)
            .join(format!("{name}.format"));
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()));
        Some(Format::parse(&text).unwrap())
    }

    fn tracepoints(kernel: &str) -> Tracepoints {
        Tracepoints {
            send_reset: fixture(kernel, "tcp", "tcp_send_reset").unwrap(),
            receive_reset: fixture(kernel, "tcp", "tcp_receive_reset").unwrap(),
            set_state: fixture(kernel, "sock", "inet_sock_set_state").unwrap(),
            destroy_sock: fixture(kernel, "tcp", "tcp_destroy_sock"),
            send_length: None,
            exit_accept: None,
            dev_queue: fixture(kernel, "net", "net_dev_queue"),
        }
    }

    #[test]
    fn linux_5_10_and_6_1_records_without_reason() {
        for k in ["debian-5.10.262", "debian-6.1.192"] {
            let mut cfg = Config::empty();
            tracepoint_config(&tracepoints(k), &mut cfg).unwrap();
            assert_eq!((cfg.send_skbaddr, cfg.send_skaddr), (8, 16), "{k}");
            assert_eq!(cfg.send_reason, OFF_NONE, "{k}");
            assert_eq!((cfg.recv_skaddr, cfg.recv_cookie), (8, 64), "{k}");
            assert!(reason_names(&tracepoints(k).send_reset, None).is_empty());
        }
        let mut cfg = Config::empty();
        tracepoint_config(&tracepoints("debian-5.10.262"), &mut cfg).unwrap();
        assert_eq!(
            (cfg.ss_oldstate, cfg.ss_newstate, cfg.ss_protocol),
            (16, 20, 30)
        );
        assert_eq!(cfg.destroy_skaddr, 8);
    }

    #[test]
    fn linux_6_12_and_6_18_records_with_reason() {
        for k in ["debian-6.12.117", "linux-6.18"] {
            let tps = tracepoints(k);
            let mut cfg = Config::empty();
            tracepoint_config(&tps, &mut cfg).unwrap();
            assert_eq!(
                (cfg.send_skbaddr, cfg.send_skaddr, cfg.send_reason),
                (8, 16, 28),
                "{k}"
            );
            assert_eq!((cfg.recv_skaddr, cfg.recv_cookie), (8, 64), "{k}");
            let reasons = reason_names(&tps.send_reset, None);
            assert_eq!(
                reasons.get(&1).map(String::as_str),
                Some("NO_SOCKET"),
                "{k}"
            );
            assert_eq!(
                reasons.get(&11).map(String::as_str),
                Some("TCP_ABORT_ON_CLOSE"),
                "{k}"
            );
        }
    }

    #[test]
    fn state_symbols_by_number_in_set_state() {
        let f = fixture("linux-6.18", "sock", "inet_sock_set_state").unwrap();
        let s = f.symbols("newstate");
        assert_eq!(s.get(&2).map(String::as_str), Some("TCP_SYN_SENT"));
        assert_eq!(s.get(&12).map(String::as_str), Some("TCP_NEW_SYN_RECV"));
    }

    #[test]
    fn malformed_format_is_an_error() {
        assert!(Format::parse("name: x\nformat:\n").is_err());
        assert!(Format::parse("field:int a;\toffset:x;\tsize:4;").is_err());
    }

    #[test]
    fn wrong_field_size_is_named() {
        let f = Format::parse(
            "name: tcp_send_reset\nformat:\n\tfield:const void * skbaddr;\toffset:8;\tsize:4;\tsigned:0;\n",
        )
        .unwrap();
        let e = f.require("skbaddr", 8).unwrap_err().to_string();
        assert!(e.contains("skbaddr") && e.contains("size 4"), "{e}");
    }
}
