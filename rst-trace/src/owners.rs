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
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::identity::cgroupfs::Cgroup2;
use anyhow::{Context as _, Result, bail};
use rst_trace_common::Task;

/// A process that holds a socket.
#[derive(Clone, Debug)]
struct Holder {
    pid: u32,
    uid: u32,
    /// /proc/PID/comm: the thread-group leader's, i.e. the process's name.
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
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| cgroup2.id_of(p))
        .unwrap_or(0)
}

/// Socket inode -> holder, and one pid per network namespace.
fn scan_proc() -> (HashMap<u32, Holder>, HashMap<u64, u32>) {
    let mut by_inode = HashMap::new();
    let cgroup2 = cgroup2_mount();
    let mut netns = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return (by_inode, netns);
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = entry.path();
        if let Ok(link) = fs::read_link(base.join("ns/net"))
            && let Some(ino) = link
                .to_str()
                .and_then(|s| s.strip_prefix("net:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
        {
            netns.entry(ino).or_insert(pid);
        }
        let Ok(fds) = fs::read_dir(base.join("fd")) else {
            continue;
        };
        let mut holder: Option<Holder> = None;
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let h = holder.get_or_insert_with(|| {
                let name = fs::read_to_string(base.join("comm")).unwrap_or_default();
                let mut comm = [0u8; 16];
                let n = name.trim_end().len().min(15);
                comm[..n].copy_from_slice(&name.trim_end().as_bytes()[..n]);
                let uid = fs::read_to_string(base.join("status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("Uid:"))
                            .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))
                    })
                    .unwrap_or(0);
                let cgroup = cgroup_id(cgroup2.as_ref(), pid);
                Holder {
                    pid,
                    uid,
                    comm,
                    cgroup,
                }
            });
            // The first process found keeps it (usually the one that created it).
            by_inode.entry(inode).or_insert_with(|| h.clone());
        }
    }
    (by_inode, netns)
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_msg: family, state, timer, retrans, id (48 bytes), expires, rqueue, wqueue,
/// uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;

/// The request: struct nlmsghdr + struct inet_diag_req_v2 for every TCP state.
fn diag_request(family: u8, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 56;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(0); // idiag_ext
    b.push(0); // pad
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    b.resize(len, 0); // inet_diag_sockid: all zero (dump)
    b
}

/// One socket from a sock_diag dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DiagSock {
    inode: u32,
    cookie: u64,
    local: SocketAddr,
    remote: SocketAddr,
}

/// Parses one recv() worth of netlink messages into sockets. Returns true at the end of the
/// dump.
fn parse_diag(buf: &[u8], out: &mut Vec<DiagSock>) -> Result<bool> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            bail!("malformed sock_diag message (length {len})");
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = i32::from_ne_bytes(
                    buf.get(off + 16..off + 20)
                        .context("short error")?
                        .try_into()?,
                );
                bail!(
                    "sock_diag error {}",
                    std::io::Error::from_raw_os_error(-errno)
                );
            }
            SOCK_DIAG_BY_FAMILY => {
                let m = buf
                    .get(off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + INET_DIAG_MSG_LEN)
                    .context("short inet_diag_msg")?;
                let cookie = u64::from(u32::from_ne_bytes(m[44..48].try_into()?))
                    | (u64::from(u32::from_ne_bytes(m[48..52].try_into()?)) << 32);
                let inode = u32::from_ne_bytes(m[68..72].try_into()?);
                // inet_diag_sockid: sport, dport (network order), src[4], dst[4] (u32s).
                let addr = |at: usize| -> IpAddr {
                    if u16::from(m[0]) == libc::AF_INET6 as u16 {
                        let b: [u8; 16] = m[at..at + 16].try_into().unwrap_or([0; 16]);
                        IpAddr::V6(Ipv6Addr::from(b))
                    } else {
                        IpAddr::V4(Ipv4Addr::new(m[at], m[at + 1], m[at + 2], m[at + 3]))
                    }
                };
                let local = SocketAddr::new(addr(8), u16::from_be_bytes([m[4], m[5]]));
                let remote = SocketAddr::new(addr(24), u16::from_be_bytes([m[6], m[7]]));
                if inode != 0 {
                    out.push(DiagSock {
                        inode,
                        cookie,
                        local,
                        remote,
                    });
                }
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// Every TCP socket in the calling thread's network namespace.
fn dump_tcp() -> Result<Vec<DiagSock>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        bail!("sock_diag socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Vec::new();
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let req = diag_request(family, seq);
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            bail!("sock_diag send: {}", std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                bail!("sock_diag recv: {}", std::io::Error::last_os_error());
            }
            if n == 0 || parse_diag(&buf[..n as usize], &mut out)? {
                break;
            }
        }
    }
    Ok(out)
}

/// Dumps TCP sockets inside the network namespace of `pid`, from a thread of its own (setns()
/// changes only the calling thread's namespace).
fn dump_in_netns_of(pid: u32) -> Result<Vec<DiagSock>> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
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

/// Socket cookie -> owner, for every TCP socket some process holds now.
pub fn existing() -> HashMap<u64, Task> {
    let (by_inode, netns) = scan_proc();
    let own = fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| l.to_str().map(str::to_owned));
    let mut out = HashMap::new();
    for (ino, pid) in &netns {
        // Our own namespace needs no setns() (nor the CAP_SYS_ADMIN it takes).
        let mine = own.as_deref() == Some(format!("net:[{ino}]").as_str());
        let socks = if mine {
            dump_tcp()
        } else {
            dump_in_netns_of(*pid)
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

/// A process in network namespace `netns` (by inode), to setns() through.
fn netns_pid(netns: u64) -> Option<u32> {
    let want = format!("net:[{netns}]");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let link = fs::read_link(e.path().join("ns/net")).ok()?;
        (link.to_str() == Some(want.as_str())).then_some(pid)
    })
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
    let own = fs::read_link("/proc/self/ns/net")
        .ok()
        .is_some_and(|l| l.to_str() == Some(format!("net:[{netns}]").as_str()));
    let socks = if own {
        // No setns() (and no CAP_SYS_ADMIN) for our own namespace.
        dump_tcp().ok()?
    } else {
        dump_in_netns_of(netns_pid(netns)?).ok()?
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
