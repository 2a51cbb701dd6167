//! Kernel struct offsets from vmlinux BTF, and the windows the eBPF programs read them in.

use anyhow::{Context as _, Result, anyhow};
use rst_trace_common::{Config, OFF_NONE, REASON_ARG, SKB_HDR_WINDOW, SKC_WINDOW, TCP_WINDOW};

use crate::kernel::btf::Btf;

fn btf_off(btf: &Btf, root: &str, path: &str) -> Result<u16> {
    let o = btf.offset_of(root, path)?;
    u16::try_from(o).with_context(|| format!("{root}.{path} at offset {o} does not fit in u16"))
}

/// The first of several historical locations of a field that exists on the running kernel.
fn btf_off_any(btf: &Btf, root: &str, paths: &[&str]) -> Result<u16> {
    let mut last = None;
    for p in paths {
        match btf_off(btf, root, p) {
            Ok(o) => return Ok(o),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no path given for {root}")))
}

/// Fills in the kernel struct offsets from BTF.
pub fn struct_config(btf: &Btf, cfg: &mut Config) -> Result<()> {
    cfg.sk_daddr = btf_off(btf, "sock", "__sk_common.skc_daddr")?;
    cfg.sk_rcv_saddr = btf_off(btf, "sock", "__sk_common.skc_rcv_saddr")?;
    // Absent without CONFIG_IPV6: then there are no IPv6 sockets to read either.
    cfg.sk_v6_daddr = btf_off(btf, "sock", "__sk_common.skc_v6_daddr").unwrap_or(OFF_NONE);
    cfg.sk_v6_rcv_saddr = btf_off(btf, "sock", "__sk_common.skc_v6_rcv_saddr").unwrap_or(OFF_NONE);
    cfg.sk_family = btf_off(btf, "sock", "__sk_common.skc_family")?;
    cfg.sk_num = btf_off(btf, "sock", "__sk_common.skc_num")?;
    cfg.sk_dport = btf_off(btf, "sock", "__sk_common.skc_dport")?;
    cfg.sk_state = btf_off(btf, "sock", "__sk_common.skc_state")?;
    cfg.sk_net = btf_off(btf, "sock", "__sk_common.skc_net.net")?;
    cfg.sk_cookie = btf_off(btf, "sock", "__sk_common.skc_cookie")?;
    // 6.18 moved sk_flags into sock_common as skc_flags.
    cfg.sk_flags = btf_off_any(btf, "sock", &["sk_flags", "__sk_common.skc_flags"])?;
    cfg.sk_lingertime = btf_off(btf, "sock", "sk_lingertime")?;
    // sk_protocol was a bitfield before 5.6: then the accept hook skips its TCP check.
    cfg.sk_protocol = btf_off(btf, "sock", "sk_protocol").unwrap_or(OFF_NONE);
    cfg.sk_ack_backlog = btf_off(btf, "sock", "sk_ack_backlog")?;
    cfg.inet_sport = btf_off(btf, "inet_sock", "inet_sport")?;
    cfg.sk_max_ack_backlog = btf_off(btf, "sock", "sk_max_ack_backlog")?;
    cfg.net_inum = btf_off(btf, "net", "ns.inum")?;
    cfg.tp_rcv_nxt = btf_off(btf, "tcp_sock", "rcv_nxt")?;
    cfg.tp_copied_seq = btf_off(btf, "tcp_sock", "copied_seq")?;
    cfg.tp_write_seq = btf_off(btf, "tcp_sock", "write_seq")?;
    cfg.tp_snd_una = btf_off(btf, "tcp_sock", "snd_una")?;
    cfg.tp_linger2 = btf_off(btf, "tcp_sock", "linger2")?;
    cfg.tp_lsndtime = btf_off(btf, "tcp_sock", "lsndtime")?;
    cfg.tp_rcv_tstamp = btf_off(btf, "tcp_sock", "rcv_tstamp")?;
    cfg.tp_lrcvtime = btf_off(btf, "tcp_sock", "inet_conn.icsk_ack.lrcvtime")?;
    cfg.skb_head = btf_off(btf, "sk_buff", "head")?;
    cfg.skb_network_header = btf_off(btf, "sk_buff", "network_header")?;
    cfg.skb_transport_header = btf_off(btf, "sk_buff", "transport_header")?;
    cfg.skb_dev = btf_off(btf, "sk_buff", "dev")?;
    cfg.skb_sk = btf_off(btf, "sk_buff", "sk")?;
    cfg.skb_iif = btf_off(btf, "sk_buff", "skb_iif")?;
    cfg.dev_nd_net = btf_off(btf, "net_device", "nd_net.net")?;
    cfg.task_files = btf_off_any(btf, "task_struct", &["files"])?;
    cfg.files_fdt = btf_off(btf, "files_struct", "fdt")?;
    cfg.fdt_max_fds = btf_off(btf, "fdtable", "max_fds")?;
    cfg.fdt_fd = btf_off(btf, "fdtable", "fd")?;
    cfg.file_private_data = btf_off(btf, "file", "private_data")?;
    cfg.socket_sk = btf_off(btf, "socket", "sk")?;
    cfg.socket_file = btf_off(btf, "socket", "file")?;
    // The process's name: current->group_leader->comm.
    cfg.task_group_leader = btf_off(btf, "task_struct", "group_leader")?;
    cfg.task_comm = btf_off(btf, "task_struct", "comm")?;
    // The registers at system call entry, per architecture (regs.rs).
    super::regs::stack_top_config(btf, cfg);
    cfg.sock_linger_bit = u16::try_from(btf.enum_value("sock_flags", "SOCK_LINGER")?)
        .context("SOCK_LINGER out of range")?;
    cfg.sock_dead_bit = u16::try_from(btf.enum_value("sock_flags", "SOCK_DEAD")?)
        .context("SOCK_DEAD out of range")?;
    check_skc_window(cfg)?;
    cfg.skb_hdr_base = skb_hdr_base(cfg);
    cfg.tp_win_base = tcp_window_base(cfg);
    // tcp_send_reset(sk, skb, reason) since 6.10; (sk, skb) before.
    if btf.tracepoint_args("tcp_send_reset") == Some(3) {
        cfg.send_reason_arg = REASON_ARG;
    }
    socketless_config(btf, cfg);
    Ok(())
}

/// The reset programs read these from one copy of the socket's first bytes: each must lie inside
/// it, aligned.
fn check_skc_window(cfg: &Config) -> Result<()> {
    for (name, off, size) in [
        ("skc_daddr", cfg.sk_daddr, 4),
        ("skc_rcv_saddr", cfg.sk_rcv_saddr, 4),
        ("skc_dport", cfg.sk_dport, 2),
        ("skc_num", cfg.sk_num, 2),
        ("skc_family", cfg.sk_family, 2),
        ("skc_state", cfg.sk_state, 1),
        ("skc_net", cfg.sk_net, 8),
        ("skc_cookie", cfg.sk_cookie, 8),
        ("skc_v6_daddr", cfg.sk_v6_daddr, 16),
        ("skc_v6_rcv_saddr", cfg.sk_v6_rcv_saddr, 16),
    ] {
        // OFF_NONE only for the IPv6 fields of a kernel without IPv6, which then has no IPv6
        // socket to read them from.
        if off != OFF_NONE
            && (usize::from(off) + size > SKC_WINDOW || usize::from(off) % size.min(8) != 0)
        {
            return Err(anyhow!(
                "sock_common.{name} is at offset {off}: not inside the first {SKC_WINDOW} bytes, aligned, where rst-trace reads it; please report this kernel version"
            ));
        }
    }
    Ok(())
}

/// Before 6.10 `tcp_send_reset` fires only for a full socket (commit 19822a980e19 made it fire
/// for every reset, in the release that gave it its `reason` argument): the transmit hook then
/// reports the rest, and needs these to tell them apart.
fn socketless_config(btf: &Btf, cfg: &mut Config) {
    cfg.xmit_socketless = u8::from(cfg.send_reason_arg != REASON_ARG);
    // A control socket is SOCK_RAW/IPPROTO_TCP: sk_type and sk_protocol, u16 each, side by side
    // (since 5.6), in one read.
    cfg.sk_type = match btf_off(btf, "sock", "sk_type") {
        Ok(t) if cfg.sk_protocol != OFF_NONE && cfg.sk_protocol == t.wrapping_add(2) => t,
        _ => OFF_NONE,
    };
    // `__u8 ip_summed:2`: its byte and the bit it starts at.
    if let Ok(bits) = btf.bit_offset_of("sk_buff", "ip_summed")
        && bits % 8 <= 6
        && let Ok(byte) = u16::try_from(bits / 8)
    {
        cfg.skb_ip_summed = byte;
        cfg.ip_summed_shift = (bits % 8) as u8;
    }
}

/// Start of the [`SKB_HDR_WINDOW`] bytes of `struct sk_buff` that hold `head` and the two
/// header offsets, naturally aligned; [`OFF_NONE`] if they are further apart.
fn skb_hdr_base(cfg: &Config) -> u16 {
    let fields = [
        (cfg.skb_head, 8),
        (cfg.skb_network_header, 2),
        (cfg.skb_transport_header, 2),
    ];
    // 8-aligned, so every field keeps its alignment inside the window.
    let base = fields.iter().map(|&(o, _)| o).min().unwrap_or(0) & !7;
    let fits = fields
        .iter()
        .all(|&(o, size)| usize::from(o - base) + size <= SKB_HDR_WINDOW && o % size as u16 == 0);
    if fits { base } else { OFF_NONE }
}

/// Start of the [`TCP_WINDOW`] bytes of `struct tcp_sock` that hold its sequence numbers and
/// clocks (all u32), 8-aligned; [`OFF_NONE`] if they are further apart.
fn tcp_window_base(cfg: &Config) -> u16 {
    let fields = [
        cfg.tp_rcv_nxt,
        cfg.tp_copied_seq,
        cfg.tp_write_seq,
        cfg.tp_snd_una,
        cfg.tp_lsndtime,
        cfg.tp_rcv_tstamp,
    ];
    let base = fields.iter().copied().min().unwrap_or(0) & !7;
    let fits = fields
        .iter()
        .all(|&o| usize::from(o - base) + 4 <= TCP_WINDOW && o % 4 == 0);
    if fits { base } else { OFF_NONE }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's (major, minor): these tests run on the host and in every guest of
    /// the kernel matrix, and expect what that kernel has.
    fn running_kernel() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    #[test]
    fn running_kernel_btf_tracepoint_prototypes() {
        // tcp_send_reset(sk, skb) before 6.10, (sk, skb, reason) since;
        // tcp_receive_reset(sk) on every kernel.
        let has_reason = running_kernel() >= (6, 10);
        let btf = Btf::from_sys_fs().expect("vmlinux BTF");
        let send_args = if has_reason { 3 } else { 2 };
        assert_eq!(btf.tracepoint_args("tcp_send_reset"), Some(send_args));
        assert_eq!(btf.tracepoint_args("tcp_receive_reset"), Some(1));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
        let mut cfg = Config::empty();
        struct_config(&btf, &mut cfg).unwrap();
        assert_eq!(cfg.send_reason_arg == REASON_ARG, has_reason);
        assert_eq!(cfg.xmit_socketless == 1, !has_reason);
        // sock_common starts with the address pair.
        assert_eq!((cfg.sk_daddr, cfg.sk_rcv_saddr), (0, 4));
        // So are the tcp_sock sequence numbers and clocks.
        assert_ne!(cfg.tp_win_base, OFF_NONE);
        // The skb header fields are close together, so they are read in one go.
        assert_ne!(cfg.skb_hdr_base, OFF_NONE);
        assert!(cfg.skb_head - cfg.skb_hdr_base <= 24);
    }

    #[test]
    fn running_kernel_btf_offsets() {
        // The test machines have BTF (the product needs it too).
        let btf = Btf::from_sys_fs().unwrap();
        let mut cfg = Config::empty();
        struct_config(&btf, &mut cfg).unwrap();
        // sock_common starts struct sock; skc_family is within its first 32 bytes on every kernel.
        assert!(cfg.sk_family < 32);
        assert!(cfg.sk_state < 32);
        assert_ne!(cfg.tp_rcv_nxt, OFF_NONE);
        assert!(cfg.sock_linger_bit < 64);
        // task_struct is large; both are pointer/array members somewhere inside it.
        assert_ne!(cfg.task_group_leader, OFF_NONE);
        assert_ne!(cfg.task_comm, OFF_NONE);
        assert_eq!(cfg.task_group_leader % 8, 0);
        assert!(btf.has_function("tcp_v4_rcv"));
        assert!(!btf.has_function("no_such_function_in_any_kernel"));
        // enum sk_rst_reason came with the reason argument (6.10).
        match btf.enum_values("sk_rst_reason") {
            Ok(reasons) => {
                assert!(running_kernel() >= (6, 10));
                assert!(reasons.iter().any(|(n, _)| n == "SK_RST_REASON_NO_SOCKET"));
            }
            Err(_) => assert!(running_kernel() < (6, 10)),
        }
    }
}
