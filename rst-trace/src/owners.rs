//! Owners of the TCP sockets that existed before rst-trace started.
//!
//! The kernel side learns owners from system calls it sees (connect, listen, accept, send,
//! receive). Sockets older than rst-trace are seeded here: `/proc/*/fd` maps socket inodes to
//! processes, and sock_diag (NETLINK_SOCK_DIAG), dumped inside every network namespace in use,
//! maps inodes to socket cookies. Dumping also makes the kernel generate each socket's cookie
//! (sock_diag_save_cookie()), which is what the eBPF side then finds in `sk_cookie`.

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::identity::cgroupfs::Cgroup2;
use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use procfs::process::Process;
use rst_trace_common::Task;

/// A process that holds a socket.
#[derive(Clone, Debug)]
struct Holder {
    pid: u32,
    uid: u32,
    /// The thread-group leader's name, i.e. the process's name.
    comm: [u8; 16],
    /// cgroup v2 id (0: unknown).
    cgroup: u64,
}

/// The cgroup v2 (unified) hierarchy, from /proc/self/mountinfo (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_mount() -> Option<Cgroup2> {
    Cgroup2::from_mountinfo(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup v2 id of process `pid`: the inode number of its directory in the unified
/// hierarchy (what `bpf_get_current_cgroup_id()` returns for its tasks), found through its
/// `0::/PATH` line in /proc/PID/cgroup; 0 if unknown.
pub fn cgroup_id(cgroup2: Option<&Cgroup2>, pid: u32) -> u64 {
    let Some(cgroup2) = cgroup2 else { return 0 };
    let Ok(groups) = Process::new(pid as i32).and_then(|p| p.cgroups()) else {
        return 0;
    };
    groups
        .into_iter()
        .find(|g| g.hierarchy == 0)
        .and_then(|g| cgroup2.id_of(&g.pathname))
        .unwrap_or(0)
}

// The two /proc links the seed reads for every process and every descriptor, read by hand:
// procfs's `Process::namespaces()` stats each of a process's namespaces, and `Process::fd()`
// opens and stats each descriptor, which made the seed slower (README, "Benchmark").

/// The network namespace of process `pid`: its inode, and the file to setns() through.
fn net_ns(pid: i32) -> Option<(u64, PathBuf)> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let ino = fs::metadata(&path).ok()?.ino();
    Some((ino, path))
}

/// The inodes of the sockets among process `pid`'s open files (`socket:[INODE]` links).
fn socket_inodes(pid: i32) -> impl Iterator<Item = u64> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"));
    fds.into_iter().flatten().flatten().filter_map(|fd| {
        let link = fs::read_link(fd.path()).ok()?;
        link.to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
}

fn holder(p: &Process, cgroup2: Option<&Cgroup2>) -> Holder {
    let pid = p.pid() as u32;
    // /proc/PID/stat's comm, as /proc/PID/comm: the thread-group leader's.
    let name = p.stat().map(|s| s.comm).unwrap_or_default();
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name.as_bytes()[..n]);
    Holder {
        pid,
        // The real uid, as bpf_get_current_uid_gid() reports it.
        uid: p.status().map(|s| s.ruid).unwrap_or(0),
        comm,
        cgroup: cgroup_id(cgroup2, pid),
    }
}

/// Socket inode -> holder, and one setns() path per network namespace (by inode).
fn scan_proc() -> (HashMap<u64, Holder>, HashMap<u64, PathBuf>) {
    let mut by_inode = HashMap::new();
    let mut netns = HashMap::new();
    let cgroup2 = cgroup2_mount();
    let Ok(procs) = procfs::process::all_processes() else {
        return (by_inode, netns);
    };
    for p in procs.flatten() {
        if let Some((ino, path)) = net_ns(p.pid()) {
            netns.entry(ino).or_insert(path);
        }
        let mut h: Option<Holder> = None;
        for inode in socket_inodes(p.pid()) {
            let h = h.get_or_insert_with(|| holder(&p, cgroup2.as_ref()));
            // The first process found keeps it (usually the one that created it).
            by_inode.entry(inode).or_insert_with(|| h.clone());
        }
    }
    (by_inode, netns)
}

/// The request: a sock_diag dump of every TCP socket of `family`, in every state.
fn diag_request(family: u8, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(u32::MAX),
        socket_id: if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        },
    };
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// One socket from a sock_diag dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DiagSock {
    inode: u64,
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
}

/// Parses one recv() worth of netlink messages into sockets. Returns true at the end of the
/// dump.
fn parse_diag(buf: &[u8], out: &mut Vec<DiagSock>) -> Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..])
            .map_err(|e| anyhow::anyhow!("malformed sock_diag message: {e}"))?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => bail!("sock_diag error {}", e.to_io()),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let (id, inode) = (&r.header.socket_id, r.header.inode);
                // idiag_cookie is two u32s, the low one first.
                let c = id.cookie;
                let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    | (u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32);
                if inode != 0 {
                    out.push(DiagSock {
                        inode: u64::from(inode),
                        cookie,
                        local: SocketAddr::new(id.source_address, id.source_port),
                        remote: SocketAddr::new(id.destination_address, id.destination_port),
                    });
                }
            }
            _ => {}
        }
        // NLMSG_ALIGN; deserialize() checked that the length covers at least the header.
        off += (msg.header.length as usize).next_multiple_of(4);
    }
    Ok(false)
}

/// Every TCP socket in the calling thread's network namespace.
fn dump_tcp() -> Result<Vec<DiagSock>> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).context("sock_diag socket")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1u32, AF_INET), (2, AF_INET6)] {
        socket
            .send(&diag_request(family, seq), 0)
            .context("sock_diag send")?;
        loop {
            let n = socket
                .recv(&mut &mut buf[..], 0)
                .context("sock_diag recv")?;
            if n == 0 || parse_diag(&buf[..n.min(buf.len())], &mut out)? {
                break;
            }
        }
    }
    Ok(out)
}

/// Dumps TCP sockets inside the network namespace `ns` (a /proc/PID/ns/net), from a thread of
/// its own (setns() changes only the calling thread's namespace).
fn dump_in_netns(ns: &Path) -> Result<Vec<DiagSock>> {
    let ns = fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::spawn(move || -> Result<Vec<DiagSock>> {
        // SAFETY: a valid namespace fd; affects this short-lived thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        dump_tcp()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sock_diag thread panicked"))?
}

/// One process in each network namespace but ours (`capacity::Namespaces`).
pub fn netns_pids() -> Vec<i32> {
    let own = own_netns();
    let mut seen = std::collections::HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|&pid| net_ns(pid).is_some_and(|(ino, _)| Some(ino) != own && seen.insert(ino)))
        .collect()
}

/// Our own network namespace's inode.
fn own_netns() -> Option<u64> {
    net_ns(std::process::id() as i32).map(|(ino, _)| ino)
}

/// Socket cookie -> owner, for every TCP socket some process holds now.
pub fn existing() -> HashMap<u64, Task> {
    let (by_inode, netns) = scan_proc();
    let own = own_netns();
    let mut out = HashMap::new();
    for (ino, path) in &netns {
        // Our own namespace needs no setns() (nor the CAP_SYS_ADMIN it takes).
        let socks = if own == Some(*ino) {
            dump_tcp()
        } else {
            dump_in_netns(path)
        };
        // A process may exit meanwhile, or setns() may be refused: skip that namespace.
        let Ok(socks) = socks else {
            continue;
        };
        for d in socks {
            if d.cookie == 0 {
                continue;
            }
            if let Some(h) = by_inode.get(&d.inode) {
                out.insert(d.cookie, to_task(h));
            }
        }
    }
    out
}

/// The setns() path of network namespace `netns` (by inode), through some process in it.
fn netns_path(netns: u64) -> Option<PathBuf> {
    procfs::process::all_processes()
        .ok()?
        .flatten()
        .find_map(|p| net_ns(p.pid()).filter(|(ino, _)| *ino == netns))
        .map(|(_, path)| path)
}

fn to_task(h: &Holder) -> Task {
    Task {
        pid: h.pid,
        tid: h.pid,
        uid: h.uid,
        _pad: 0,
        cgroup: h.cgroup,
        comm: h.comm,
        // The pid is the thread-group leader's tid: the same name.
        thread: h.comm,
    }
}

/// The process holding the local socket of the flow `a`-`b` in network namespace `netns`, if
/// any. Costs a sock_diag dump and a /proc scan (tens of ms on a busy host): see
/// `enrich::FlowOwners`, which runs it off the event loop.
pub fn flow_owner(netns: u64, a: SocketAddr, b: SocketAddr) -> Option<Task> {
    // sock_diag first (cheap); the /proc fd walk only once a socket is found.
    let socks = if own_netns() == Some(netns) {
        // No setns() (and no CAP_SYS_ADMIN) for our own namespace.
        dump_tcp().ok()?
    } else {
        dump_in_netns(&netns_path(netns)?).ok()?
    };
    // An IPv4 flow on a dual-stack socket shows as ::ffff:a.b.c.d.
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let d = socks.iter().find(|d| {
        let (l, r) = (canon(d.local), canon(d.remote));
        (l == a && r == b) || (l == b && r == a)
    })?;
    let (by_inode, _) = scan_proc();
    by_inode.get(&d.inode).map(to_task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR};
    use netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;

    /// struct nlmsghdr.
    const NLMSG_HDRLEN: usize = 16;
    /// struct inet_diag_msg: family, state, timer, retrans, id (48 bytes), expires, rqueue,
    /// wqueue, uid, inode.
    const INET_DIAG_MSG_LEN: usize = 72;

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(body);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    #[test]
    fn parses_inode_and_cookie() {
        let mut m = vec![0u8; INET_DIAG_MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[4..6].copy_from_slice(&8888u16.to_be_bytes());
        m[6..8].copy_from_slice(&43210u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[24..28].copy_from_slice(&[10, 0, 0, 2]);
        m[44..48].copy_from_slice(&7u32.to_ne_bytes());
        m[48..52].copy_from_slice(&1u32.to_ne_bytes());
        m[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let mut buf = msg(SOCK_DIAG_BY_FAMILY, &m);
        buf.extend(msg(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse_diag(&buf, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].inode, out[0].cookie), (4242, (1u64 << 32) | 7));
        assert_eq!(out[0].local, "127.0.0.1:8888".parse().unwrap());
        assert_eq!(out[0].remote, "10.0.0.2:43210".parse().unwrap());
    }

    #[test]
    fn rejects_truncated_and_reports_errors() {
        let mut out = Vec::new();
        let mut buf = msg(SOCK_DIAG_BY_FAMILY, &[0; 8]);
        assert!(parse_diag(&buf, &mut out).is_err());
        buf = msg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let e = parse_diag(&buf, &mut out).unwrap_err().to_string();
        assert!(e.contains("sock_diag error"), "{e}");
        let mut bad = msg(SOCK_DIAG_BY_FAMILY, &[0; INET_DIAG_MSG_LEN]);
        bad[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse_diag(&bad, &mut out).is_err());
    }

    #[test]
    fn own_cgroup_id_is_a_directory_inode() {
        // (mountinfo parsing itself is tested in identity::cgroupfs.)
        let m = cgroup2_mount().expect("a cgroup2 mount on the build host");
        let id = cgroup_id(Some(&m), std::process::id());
        assert_ne!(id, 0, "cgroup2 at {}", m.mount.display());
        assert_eq!(cgroup_id(None, std::process::id()), 0);
    }

    #[test]
    fn request_layout() {
        let r = diag_request(libc::AF_INET6 as u8, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(&r[20..24], &u32::MAX.to_ne_bytes());
    }
}
