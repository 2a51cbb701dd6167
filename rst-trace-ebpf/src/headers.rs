//! The one IP/TCP header parser: where a segment's headers are (`Segment`), what their bytes
//! mean (the offsets below), and a copy of them (`Headers`) with small accessors.

use core::ffi::c_void;

use rst_trace_common::{AF_INET, AF_INET6, FACT_PACKET, IPPROTO_TCP, RstEvent, SKB_HDR_WINDOW};

use crate::{
    maps::SKB_WINDOW,
    read::{copy_bytes, kread, kread_at},
};

/// Offset of the TTL (IPv4) or hop limit (IPv6) in an IP header of `version`.
#[inline(always)]
fn ttl_at(version: u8) -> u64 {
    if version == 6 { 7 } else { 8 }
}

/// Offset and length of the source address in an IP header of `version`; the destination
/// address follows it.
#[inline(always)]
fn addr_at(version: u8) -> (u64, u32) {
    if version == 6 { (8, 16) } else { (12, 4) }
}

/// Offset of the flags byte in a TCP header.
const TCP_FLAGS_AT: u64 = 13;

/// Where a segment's IP and TCP headers are in kernel memory; its accessors read one field each.
pub struct Segment {
    ip: u64,
    tcp: u64,
}

impl Segment {
    /// The segment `skb` carries in the receive path (its header offsets are set).
    #[inline(always)]
    pub fn received(slot: u32, skb: u64) -> Option<Self> {
        let (head, nh, th) = skb_header_offsets(slot, skb)?;
        Some(Self {
            ip: head + u64::from(nh),
            tcp: head + u64::from(th),
        })
    }

    /// IP version (4 or 6).
    #[inline(always)]
    pub fn version(&self) -> Option<u8> {
        kread_at::<u8>(self.ip).map(|b| b >> 4)
    }

    /// The TCP header's first 4 bytes: source and destination port, network order.
    #[inline(always)]
    pub fn ports(&self) -> Option<[u8; 4]> {
        kread_at::<[u8; 4]>(self.tcp)
    }

    /// TCP flags.
    #[inline(always)]
    pub fn flags(&self) -> Option<u8> {
        kread_at::<u8>(self.tcp + TCP_FLAGS_AT)
    }

    /// TTL / hop limit, for an IP header of a known `version`.
    #[inline(always)]
    pub fn ttl_of(&self, version: u8) -> Option<u8> {
        kread_at::<u8>(self.ip + ttl_at(version))
    }

    /// TTL / hop limit and TCP flags: two reads.
    #[inline(always)]
    pub fn ttl_flags(&self) -> Option<(u8, u8)> {
        let ip = kread_at::<[u8; 9]>(self.ip)?;
        Some((ip[ttl_at(ip[0] >> 4) as usize], self.flags()?))
    }

    /// Copies the source and destination address (of an IP header of `version`) straight into
    /// `src` and `dst`: no copy on the stack.
    #[inline(always)]
    pub fn read_addrs(&self, version: u8, src: &mut [u8; 16], dst: &mut [u8; 16]) {
        let (src_at, len) = addr_at(version);
        // SAFETY: bpf_probe_read_kernel never faults; both arrays are 16 bytes, len <= 16.
        unsafe {
            let read = aya_ebpf::helpers::generated::bpf_probe_read_kernel;
            read(
                src.as_mut_ptr().cast(),
                len,
                (self.ip + src_at) as *const c_void,
            );
            read(
                dst.as_mut_ptr().cast(),
                len,
                (self.ip + src_at + u64::from(len)) as *const c_void,
            );
        }
    }
}

/// A segment's headers: the IP header (40 bytes: IPv6's fixed header, or IPv4's with room for
/// the addresses) and the first 14 bytes of the TCP header.
pub struct Headers {
    pub ip: [u8; 40],
    pub tcp: [u8; 14],
}

impl Headers {
    pub fn ip_version(&self) -> u8 {
        self.ip[0] >> 4
    }

    /// `AF_INET` or `AF_INET6`; 0 for another IP version.
    pub fn family(&self) -> u16 {
        match self.ip_version() {
            4 => AF_INET,
            6 => AF_INET6,
            _ => 0,
        }
    }

    /// TTL (IPv4) or hop limit (IPv6).
    pub fn ttl(&self) -> u8 {
        self.ip[ttl_at(self.ip_version()) as usize]
    }

    pub fn sport(&self) -> u16 {
        u16::from_be_bytes([self.tcp[0], self.tcp[1]])
    }

    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.tcp[2], self.tcp[3]])
    }

    pub fn flags(&self) -> u8 {
        self.tcp[TCP_FLAGS_AT as usize]
    }

    /// The IP and TCP headers of the segment `skb` carries in the receive path.
    #[inline(always)]
    pub fn received(slot: u32, skb: u64) -> Option<Self> {
        let (head, nh, th) = skb_header_offsets(slot, skb)?;
        // The TCP header right after a plain IPv4 (20 bytes) or IPv6 (40 bytes) header, the
        // usual case: one read for both, at constant offsets.
        match th.wrapping_sub(nh) {
            20 => packed::<20, 34>(head, nh),
            40 => packed::<40, 54>(head, nh),
            _ => Some(Self {
                ip: kread(head, nh)?,
                tcp: kread(head, th)?,
            }),
        }
    }

    /// The headers of a transmitted packet (its TCP header found from the IP header); None
    /// unless it is TCP over IPv4 or IPv6.
    #[inline(always)]
    pub fn transmitted(skb: u64) -> Option<Self> {
        let head = kread::<u64>(skb, conf!(skb_head))?;
        let nh = kread::<u16>(skb, conf!(skb_network_header))?;
        let ip_addr = head + u64::from(nh);
        let ip = kread_at::<[u8; 40]>(ip_addr)?;
        let (proto, l4) = match ip[0] >> 4 {
            4 => (ip[9], u64::from(ip[0] & 0x0f) * 4),
            6 => (ip[6], 40),
            _ => return None,
        };
        if u16::from(proto) != IPPROTO_TCP {
            return None;
        }
        Some(Self {
            ip,
            tcp: kread_at::<[u8; 14]>(ip_addr + l4)?,
        })
    }

    /// Family, endpoints, flags and TTL into `ev`. `answered`: this is the segment a reset
    /// answers, and the reset goes back to its source (local = its destination); else it is the
    /// reset itself (local = its source). Only for IPv4 and IPv6 (else nothing is written and
    /// this returns false).
    #[inline(always)]
    pub fn fill(&self, ev: &mut RstEvent, answered: bool) -> bool {
        let ip = &self.ip;
        let (src, dst) = if answered {
            (&mut ev.remote_addr, &mut ev.local_addr)
        } else {
            (&mut ev.local_addr, &mut ev.remote_addr)
        };
        match self.ip_version() {
            4 => {
                src[..4].copy_from_slice(&ip[12..16]);
                dst[..4].copy_from_slice(&ip[16..20]);
            }
            6 => {
                src.copy_from_slice(&ip[8..24]);
                dst.copy_from_slice(&ip[24..40]);
            }
            _ => return false,
        }
        ev.family = self.family() as u8;
        ev.ttl = self.ttl();
        (ev.local_port, ev.remote_port) = if answered {
            (self.dport(), self.sport())
        } else {
            (self.sport(), self.dport())
        };
        ev.tcp_flags = self.flags();
        true
    }
}

/// IP header of `IP` bytes directly followed by the TCP header: `ALL` = `IP` + 14 bytes, one read.
#[inline(always)]
fn packed<const IP: usize, const ALL: usize>(head: u64, nh: u16) -> Option<Headers> {
    let b = kread::<[u8; ALL]>(head, nh)?;
    let mut h = Headers {
        ip: [0; 40],
        tcp: [0; 14],
    };
    copy_bytes(&mut h.ip[..IP], &b[..IP]);
    copy_bytes(&mut h.tcp, &b[IP..]);
    Some(h)
}

/// `skb->head`, `skb->network_header` and `skb->transport_header`: one read where the fields
/// sit together (every kernel so far), else three.
#[inline(always)]
fn skb_header_offsets(slot: u32, skb: u64) -> Option<(u64, u16, u16)> {
    let base = conf!(skb_hdr_base);
    if base == rst_trace_common::OFF_NONE {
        return Some((
            kread(skb, conf!(skb_head))?,
            kread(skb, conf!(skb_network_header))?,
            kread(skb, conf!(skb_transport_header))?,
        ));
    }
    let w = SKB_WINDOW.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot of this program, valid for this run.
    let w = unsafe {
        *w = kread::<[u64; SKB_HDR_WINDOW / 8]>(skb, base)?;
        &*w
    };
    // Userspace checked that the three lie inside the window, naturally aligned; the masks make
    // that visible to the verifier.
    let at = |off: u16, align: usize| {
        usize::from(off.wrapping_sub(base)) & (SKB_HDR_WINDOW - 1) & !(align - 1)
    };
    let bytes = w.as_ptr().cast::<u8>();
    let (head_at, nh_at, th_at) = (
        at(conf!(skb_head), 8),
        at(conf!(skb_network_header), 2),
        at(conf!(skb_transport_header), 2),
    );
    // SAFETY: masked offsets inside the window, aligned for their types.
    unsafe {
        Some((
            *bytes.add(head_at).cast::<u64>(),
            *bytes.add(nh_at).cast::<u16>(),
            *bytes.add(th_at).cast::<u16>(),
        ))
    }
}

/// Reads the IP and TCP headers of the segment a reset answers. The reset goes back to the
/// segment's source, so local = its destination. For a LISTEN or absent socket this is the only
/// place the real endpoints are (the tracepoint shows the listener's `0.0.0.0:port`).
#[inline(always)]
pub fn read_packet(slot: u32, skb: u64, ev: &mut RstEvent) {
    if let Some(h) = Headers::received(slot, skb)
        && h.fill(ev, true)
    {
        ev.facts |= FACT_PACKET;
    }
}
