//! A scriptable TCP peer for rst-trace's end-to-end tests: a real process, with its own comm,
//! that enters a test network namespace and makes a reset happen. It runs its steps in order and
//! reports on stdout.
//!
//! Usage: rstt-peer --netns NAME --name COMM STEP...
//! (`\xNN` in COMM is the byte NN: a name that is not UTF-8.)
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
//!
//! Here: the flags and the step loop; `steps.rs` has one function per step, `sys.rs` the raw
//! socket calls that std does not offer.

mod steps;
mod sys;

use std::{
    ffi::CString,
    io::Write as _,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
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
    let mut bytes = Vec::new();
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        let hex = rest
            .strip_prefix(b"\\x")
            .and_then(|r| r.get(..2))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        let (b, taken) = hex.map_or((rest[0], 1), |b| (b, 4));
        bytes.push(b);
        rest = &rest[taken..];
    }
    let c = CString::new(bytes).expect("comm without NUL");
    // SAFETY: PR_SET_NAME with a NUL-terminated string (the kernel truncates to 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
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
    run(&args, Sockets::default());
}

/// What the steps act on: the listener and the current socket. `thread` hands both over to its
/// new thread.
#[derive(Default)]
struct Sockets {
    listener: Option<TcpListener>,
    sock: Option<TcpStream>,
}

impl Sockets {
    /// The current socket, for the steps that use it through std.
    fn sock(&self) -> &TcpStream {
        self.sock.as_ref().expect("socket")
    }

    /// The current socket's fd, for the steps that call libc on it.
    fn fd(&self) -> i32 {
        self.sock.as_ref().expect("no current socket").as_raw_fd()
    }
}

/// Runs `steps` in order on the calling thread, with the listener and current socket given.
fn run(steps: &[String], mut socks: Sockets) {
    for (i, step) in steps.iter().enumerate() {
        let (name, arg) = step.split_once('=').unwrap_or((step.as_str(), ""));
        // `thread` is handled here, not in steps.rs: it takes the rest of the steps with it.
        if name == "thread" {
            on_thread(arg, steps[i + 1..].to_vec(), socks);
            return;
        }
        if steps::step(name, steps::Arg(arg), &mut socks).is_break() {
            return;
        }
    }
}

/// `thread=NAME`: the rest runs on a new thread named NAME (the process keeps its name), with the
/// listener and current socket; this thread waits for it.
fn on_thread(name: &str, rest: Vec<String>, socks: Sockets) {
    let thread_name = name.to_owned();
    let worker = std::thread::spawn(move || {
        set_comm(&thread_name);
        run(&rest, socks);
    });
    worker.join().expect("worker thread panicked");
}
