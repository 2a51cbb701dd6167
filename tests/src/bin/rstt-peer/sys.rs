//! The raw socket calls the steps need and std does not offer: a listener with SO_REUSEADDR and
//! a chosen backlog, socket options, FIONREAD, connect(AF_UNSPEC).

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::FromRawFd as _,
};

pub fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: valid fd and a pointer to an int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {opt}, {v}): {}",
        std::io::Error::last_os_error()
    );
}

/// How many bytes are queued for reading on `fd`.
pub fn unread(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n as usize
}

/// A listener on `a` with SO_REUSEADDR and `backlog`, which std's TcpListener::bind does not
/// take.
pub fn listener(a: SocketAddr, backlog: i32) -> TcpListener {
    let domain = if a.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket calls on a fresh fd; the sockaddr is built by std.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let l = unsafe { TcpListener::from_raw_fd(fd) };
    let sa: socket2_lite::SockAddr = a.into();
    // SAFETY: sa points to a valid sockaddr of sa.len bytes.
    let rc = unsafe { libc::bind(fd, sa.as_ptr(), sa.len) };
    assert_eq!(rc, 0, "bind {a}: {}", std::io::Error::last_os_error());
    let rc = unsafe { libc::listen(fd, backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    l
}

/// SO_LINGER {1, 0}: close() then sends a RST instead of a FIN.
pub fn linger0(fd: i32) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a struct linger.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// connect(AF_UNSPEC): disconnects the socket (an established one sends a RST).
pub fn disconnect(fd: i32) {
    let sa = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid fd and sockaddr.
    let rc = unsafe {
        libc::connect(
            fd,
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "connect(AF_UNSPEC): {}",
        std::io::Error::last_os_error()
    );
}

/// Just enough of a sockaddr builder for bind(2) with a std SocketAddr.
mod socket2_lite {
    use std::net::SocketAddr;

    pub struct SockAddr {
        storage: libc::sockaddr_storage,
        pub len: libc::socklen_t,
    }

    impl SockAddr {
        pub fn as_ptr(&self) -> *const libc::sockaddr {
            (&self.storage as *const libc::sockaddr_storage).cast()
        }
    }

    impl From<SocketAddr> for SockAddr {
        fn from(a: SocketAddr) -> Self {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = match a {
                SocketAddr::V4(v4) => {
                    // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                    let sin = unsafe {
                        &mut *(&mut storage as *mut libc::sockaddr_storage)
                            .cast::<libc::sockaddr_in>()
                    };
                    sin.sin_family = libc::AF_INET as libc::sa_family_t;
                    sin.sin_port = v4.port().to_be();
                    sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                    std::mem::size_of::<libc::sockaddr_in>()
                }
                SocketAddr::V6(v6) => {
                    // SAFETY: as above, for sockaddr_in6.
                    let sin6 = unsafe {
                        &mut *(&mut storage as *mut libc::sockaddr_storage)
                            .cast::<libc::sockaddr_in6>()
                    };
                    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sin6.sin6_port = v6.port().to_be();
                    sin6.sin6_addr.s6_addr = v6.ip().octets();
                    std::mem::size_of::<libc::sockaddr_in6>()
                }
            };
            Self {
                storage,
                len: len as libc::socklen_t,
            }
        }
    }
}
