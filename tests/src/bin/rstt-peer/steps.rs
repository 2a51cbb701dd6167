//! The steps (their syntax is in main.rs's header): `step` dispatches by name, one function per
//! step that does more than one call.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    ops::ControlFlow,
    os::fd::{AsRawFd as _, IntoRawFd as _},
    time::{Duration, Instant},
};

use crate::{Sockets, errno_name, say, sys};

/// A step's argument: the text after `=`, comma-separated fields.
#[derive(Clone, Copy)]
pub struct Arg<'a>(pub &'a str);

impl Arg<'_> {
    /// The first field, as `ADDR`.
    fn addr(self) -> SocketAddr {
        self.0
            .split(',')
            .next()
            .unwrap_or_default()
            .parse()
            .expect("ADDR")
    }

    /// Field `i`, as a number.
    fn nth(self, i: usize) -> i64 {
        self.0
            .split(',')
            .nth(i)
            .expect("argument")
            .parse()
            .expect("number")
    }

    /// Field `i`, as milliseconds.
    fn ms(self, i: usize) -> Duration {
        Duration::from_millis(self.nth(i) as u64)
    }
}

/// Runs the step `name` (all but `thread`, which `run` handles); `Break` stops the peer.
pub fn step(name: &str, arg: Arg, s: &mut Sockets) -> ControlFlow<()> {
    match name {
        "listen" => s.listener = Some(listen(arg)),
        "accept" => s.sock = Some(accept(s.listener.as_ref().expect("no listener"))),
        "connect" => return connect(arg, s),
        "connect_timeout" => connect_timeout(arg, s),
        "send" => send(arg.nth(0) as usize, s.sock()),
        "fill" => fill(s.sock()),
        "read" => read(arg.nth(0) as usize, s.sock()),
        "wait_unread" => wait_unread(arg.nth(0) as usize, s),
        "wait_eof" => wait_eof(s.sock()),
        "read_err" => read_err(s.sock()),
        "shutdown" => shutdown(arg.0, s.sock()),
        "linger0" => sys::linger0(s.fd()),
        "linger2" => sys::setsockopt_int(
            s.fd(),
            libc::IPPROTO_TCP,
            libc::TCP_LINGER2,
            arg.nth(0) as i32,
        ),
        "keepalive" => keepalive(s.fd(), arg),
        "repair_close" => repair_close(s.sock.take().expect("socket")),
        "disconnect" => sys::disconnect(s.fd()),
        "close" => drop(s.sock.take().expect("socket")),
        "close_listener" => drop(s.listener.take().expect("listener")),
        "sleep" => std::thread::sleep(arg.ms(0)),
        "say" => say(arg.0),
        "wait" => wait_for_stdin(),
        "hold" => hold(),
        "kill" => kill(s),
        "storm" => storm(arg),
        "fork" => fork(),
        "busy" => busy(arg.ms(0)),
        other => panic!("unknown step {other:?}"),
    }
    ControlFlow::Continue(())
}

/// `listen=ADDR[,BACKLOG]`.
fn listen(arg: Arg) -> TcpListener {
    let a = arg.addr();
    let backlog = if arg.0.contains(',') {
        arg.nth(1) as i32
    } else {
        16
    };
    sys::listener(a, backlog)
}

fn accept(l: &TcpListener) -> TcpStream {
    l.accept().expect("accept").0
}

/// `connect=ADDR`: a refusal ends the script.
fn connect(arg: Arg, s: &mut Sockets) -> ControlFlow<()> {
    match TcpStream::connect_timeout(&arg.addr(), Duration::from_secs(5)) {
        Ok(c) => s.sock = Some(c),
        Err(e) => {
            say(&format!("errno {}", errno_name(&e)));
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}

/// `connect_timeout=ADDR,MS`: unlike `connect`, the script goes on after a failure.
fn connect_timeout(arg: Arg, s: &mut Sockets) {
    match TcpStream::connect_timeout(&arg.addr(), arg.ms(1)) {
        Ok(c) => {
            say("connected");
            s.sock = Some(c);
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => say("timeout"),
        Err(e) => say(&format!("errno {}", errno_name(&e))),
    }
}

fn send(n: usize, mut s: &TcpStream) {
    if let Err(e) = s.write_all(&vec![b'x'; n]) {
        say(&format!("errno {}", errno_name(&e)));
    }
}

/// `fill`: writes without blocking until the send buffer stays full, and says how much it sent.
fn fill(s: &TcpStream) {
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

fn read(n: usize, mut s: &TcpStream) {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read");
}

/// `wait_unread=N`: polls FIONREAD for up to 10 s.
fn wait_unread(want: usize, s: &Sockets) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sys::unread(s.fd()) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_eof(mut s: &TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("wait_eof: {e}"),
        }
    }
}

/// `read_err`: reads until EOF or an error, and says which.
fn read_err(mut s: &TcpStream) {
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
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

/// `shutdown=rd|wr|rdwr` (anything else: both).
fn shutdown(how: &str, s: &TcpStream) {
    let how = match how {
        "rd" => std::net::Shutdown::Read,
        "wr" => std::net::Shutdown::Write,
        _ => std::net::Shutdown::Both,
    };
    s.shutdown(how).expect("shutdown");
}

/// `keepalive=IDLE,INTVL,CNT`.
fn keepalive(fd: i32, arg: Arg) {
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, arg.nth(0) as i32);
    sys::setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        arg.nth(1) as i32,
    );
    sys::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, arg.nth(2) as i32);
}

fn repair_close(s: TcpStream) {
    // TCP_REPAIR (needs CAP_NET_ADMIN): close() then frees the socket silently, as if the host
    // had crashed.
    sys::setsockopt_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 1);
    drop(s);
}

/// `wait`: blocks until the test writes a line on stdin.
fn wait_for_stdin() {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
}

/// `hold`, and a forked parent: sleeps until killed.
fn hold() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn kill(s: &mut Sockets) {
    // Leak the fds so that only the kernel's exit path closes them.
    if let Some(c) = s.sock.take() {
        let _ = c.into_raw_fd();
    }
    // SAFETY: signalling ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// `storm=N,ADDR`: N connects to a closed port; says how many were refused.
fn storm(arg: Arg) {
    let n = arg.nth(0) as u64;
    let to: SocketAddr = arg
        .0
        .split(',')
        .nth(1)
        .expect("ADDR")
        .parse()
        .expect("ADDR");
    let mut refused = 0u64;
    for _ in 0..n {
        if TcpStream::connect(to).is_err() {
            refused += 1;
        }
    }
    say(&format!("stormed {refused}"));
}

/// `fork`: the parent says `child PID` and holds; the child returns and runs the rest.
fn fork() {
    // SAFETY: single-threaded here; the child only continues the step loop.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child > 0 {
        say(&format!("child {child}"));
        hold();
    }
    // The child dies with its parent (the test kills the parent).
    // SAFETY: prctl with a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// `busy=MS`: spins on the CPU (a bystander process).
fn busy(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
}
