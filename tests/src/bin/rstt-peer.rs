//! A scriptable TCP peer for rst-trace's end-to-end tests: a real process, with its own comm,
//! that enters a test network namespace and makes a reset happen. It runs its steps in order and
//! reports on stdout.
//!
//! Usage: rstt-peer --netns NAME --name COMM STEP...
//!
//! Steps (`ADDR` is `127.0.0.1:PORT` or `[::1]:PORT`):
//!   listen=ADDR[,BACKLOG]   listen (default backlog 16)
//!   accept                  accept one connection; it becomes the current socket
//!   connect=ADDR            connect; on failure print `errno NAME` and stop
//!   connect_timeout=ADDR,MS non-blocking connect, give up after MS ms: print `timeout` and close
//!   send=N | fill           send N bytes (on failure print `errno NAME`) | send without
//!                           blocking until the buffers are full
//!   read=N                  read exactly N bytes
//!   wait_unread=N           wait until at least N bytes are queued for reading
//!   wait_eof                read until end of stream
//!   read_err                read until an error or EOF, print `errno NAME` or `eof`
//!   shutdown=rd|wr|rdwr     shutdown(2)
//!   linger0 | linger2=S     SO_LINGER {1, 0} | TCP_LINGER2 = S
//!   keepalive=IDLE,INTVL,CNT  SO_KEEPALIVE with these TCP_KEEP* values
//!   repair_close            TCP_REPAIR on, then close: the socket vanishes without FIN or RST
//!   disconnect              connect(AF_UNSPEC) on the current socket
//!   close | close_listener  close the current socket | the listener
//!   sleep=MS | say=TEXT | wait (for a line on stdin) | hold (sleep until killed)
//!   kill                    SIGKILL this process (the kernel closes its sockets)
//!   fork                    fork: the parent prints `child PID` and holds; the child goes on
//!   storm=N,ADDR            N connects to ADDR (a closed port): a reset storm; prints `stormed N`
//!   busy=MS                 spin on the CPU (a bystander)
//!   thread=NAME             run the remaining steps on a new thread named NAME (PR_SET_NAME)
//!
//! It prints `pid N` first.

use std::{
    ffi::CString,
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _},
    time::{Duration, Instant},
};

fn say(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(n) => format!("E{n}"),
        None => format!("{e}"),
    }
}

fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: a valid namespace fd; single-threaded at this point.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

fn set_comm(name: &str) {
    let c = CString::new(name).expect("comm without NUL");
    // SAFETY: PR_SET_NAME with a NUL-terminated string (the kernel truncates to 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) {
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

fn unread(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n as usize
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        match flag.as_str() {
            "--netns" => enter_netns(&args.remove(0)),
            "--name" => set_comm(&args.remove(0)),
            other => panic!("unknown flag {other}"),
        }
    }
    say(&format!("pid {}", std::process::id()));
    run(&args, None, None);
}

/// Runs `steps` in order on the calling thread, with the listener and current socket given.
fn run(steps: &[String], mut listener: Option<TcpListener>, mut sock: Option<TcpStream>) {
    let cur = |s: &Option<TcpStream>| -> i32 { s.as_ref().expect("no current socket").as_raw_fd() };
    for (i, step) in steps.iter().enumerate() {
        let (name, arg) = step.split_once('=').unwrap_or((step.as_str(), ""));
        let addr = || -> SocketAddr {
            arg.split(',')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("ADDR")
        };
        let nth = |i: usize| -> i64 {
            arg.split(',')
                .nth(i)
                .expect("argument")
                .parse()
                .expect("number")
        };
        match name {
            "listen" => {
                let a = addr();
                let backlog = if arg.contains(',') { nth(1) as i32 } else { 16 };
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
                listener = Some(l);
            }
            "accept" => {
                let (s, _) = listener
                    .as_ref()
                    .expect("no listener")
                    .accept()
                    .expect("accept");
                sock = Some(s);
            }
            "connect" => match TcpStream::connect_timeout(&addr(), Duration::from_secs(5)) {
                Ok(s) => sock = Some(s),
                Err(e) => {
                    say(&format!("errno {}", errno_name(&e)));
                    return;
                }
            },
            "connect_timeout" => {
                match TcpStream::connect_timeout(&addr(), Duration::from_millis(nth(1) as u64)) {
                    Ok(s) => {
                        say("connected");
                        sock = Some(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => say("timeout"),
                    Err(e) => say(&format!("errno {}", errno_name(&e))),
                }
            }
            "send" => {
                let n = nth(0) as usize;
                if let Err(e) = sock.as_ref().expect("socket").write_all(&vec![b'x'; n]) {
                    say(&format!("errno {}", errno_name(&e)));
                }
            }
            "fill" => {
                let s = sock.as_ref().expect("socket");
                s.set_nonblocking(true).expect("nonblocking");
                let buf = vec![b'y'; 65536];
                let mut total = 0usize;
                let deadline = Instant::now() + Duration::from_secs(5);
                // Keep writing until the send buffer stays full for a while (peer not reading).
                let mut full_since: Option<Instant> = None;
                while Instant::now() < deadline {
                    match (&*s).write(&buf) {
                        Ok(n) => {
                            total += n;
                            full_since = None;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let t = *full_since.get_or_insert_with(Instant::now);
                            if t.elapsed() > Duration::from_millis(200) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("fill: {e}"),
                    }
                }
                s.set_nonblocking(false).expect("blocking");
                say(&format!("filled {total}"));
            }
            "read" => {
                let mut buf = vec![0u8; nth(0) as usize];
                sock.as_ref()
                    .expect("socket")
                    .read_exact(&mut buf)
                    .expect("read");
            }
            "wait_unread" => {
                let want = nth(0) as usize;
                let deadline = Instant::now() + Duration::from_secs(10);
                while unread(cur(&sock)) < want && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            "wait_eof" => {
                let mut buf = [0u8; 65536];
                loop {
                    match sock.as_ref().expect("socket").read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(e) => panic!("wait_eof: {e}"),
                    }
                }
            }
            "read_err" => {
                let mut buf = [0u8; 65536];
                loop {
                    match sock.as_ref().expect("socket").read(&mut buf) {
                        Ok(0) => {
                            say("eof");
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            say(&format!("errno {}", errno_name(&e)));
                            break;
                        }
                    }
                }
            }
            "shutdown" => {
                let how = match arg {
                    "rd" => std::net::Shutdown::Read,
                    "wr" => std::net::Shutdown::Write,
                    _ => std::net::Shutdown::Both,
                };
                sock.as_ref()
                    .expect("socket")
                    .shutdown(how)
                    .expect("shutdown");
            }
            "linger0" => {
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid fd and a struct linger.
                let rc = unsafe {
                    libc::setsockopt(
                        cur(&sock),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&l as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0);
            }
            "linger2" => setsockopt_int(
                cur(&sock),
                libc::IPPROTO_TCP,
                libc::TCP_LINGER2,
                nth(0) as i32,
            ),
            "keepalive" => {
                let fd = cur(&sock);
                setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
                setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, nth(0) as i32);
                setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, nth(1) as i32);
                setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, nth(2) as i32);
            }
            "repair_close" => {
                let s = sock.take().expect("socket");
                // TCP_REPAIR (needs CAP_NET_ADMIN): close() then frees the socket silently, as if
                // the host had crashed.
                setsockopt_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 1);
                drop(s);
            }
            "disconnect" => {
                let sa = libc::sockaddr {
                    sa_family: libc::AF_UNSPEC as libc::sa_family_t,
                    sa_data: [0; 14],
                };
                // SAFETY: a valid fd and sockaddr.
                let rc = unsafe {
                    libc::connect(
                        cur(&sock),
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
            "close" => drop(sock.take().expect("socket")),
            "close_listener" => drop(listener.take().expect("listener")),
            "sleep" => std::thread::sleep(Duration::from_millis(nth(0) as u64)),
            "say" => say(arg),
            "wait" => {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).expect("stdin");
            }
            "hold" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "kill" => {
                // Leak the fds so that only the kernel's exit path closes them.
                if let Some(s) = sock.take() {
                    let _ = s.into_raw_fd();
                }
                // SAFETY: signalling ourselves.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            "storm" => {
                let n = nth(0) as u64;
                let to: SocketAddr = arg.split(',').nth(1).expect("ADDR").parse().expect("ADDR");
                let mut refused = 0u64;
                for _ in 0..n {
                    if TcpStream::connect(to).is_err() {
                        refused += 1;
                    }
                }
                say(&format!("stormed {refused}"));
            }
            "fork" => {
                // SAFETY: single-threaded here; the child only continues this loop.
                let child = unsafe { libc::fork() };
                assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
                if child > 0 {
                    say(&format!("child {child}"));
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                // The child dies with its parent (the test kills the parent).
                // SAFETY: prctl with a signal number.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            }
            "busy" => {
                let end = Instant::now() + Duration::from_millis(nth(0) as u64);
                let mut x = 0u64;
                while Instant::now() < end {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                std::hint::black_box(x);
            }
            "thread" => {
                // The rest runs on a new thread named ARG (the process keeps its name), with the
                // listener and current socket; this thread waits for it.
                let rest = steps[i + 1..].to_vec();
                let thread_name = arg.to_owned();
                let (l, s) = (listener.take(), sock.take());
                let worker = std::thread::spawn(move || {
                    set_comm(&thread_name);
                    run(&rest, l, s);
                });
                worker.join().expect("worker thread panicked");
                return;
            }
            other => panic!("unknown step {other:?}"),
        }
    }
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
