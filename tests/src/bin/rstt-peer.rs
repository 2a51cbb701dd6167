//! A scriptable TCP peer for rst-trace's end-to-end tests: a real process, with its own comm,
//! that enters a test network namespace and makes a reset happen. It reports on stdout.
//!
//! Usage: rstt-peer --netns NAME --name COMM [--wait] ROLE ARGS...
//!   connect ADDR            connect once, print `errno NAME` or `connected`
//!   server ADDR READ        listen, print `listening`, accept, wait for data, read READ bytes,
//!                           close, print `closed`
//!   client ADDR SEND        connect, send SEND bytes, print `sent`, block reading, print the result
//! With --wait it prints `pid N` and waits for a line on stdin before acting.

use std::{
    ffi::CString,
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
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

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut wait = false;
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        match flag.as_str() {
            "--netns" => enter_netns(&args.remove(0)),
            "--name" => set_comm(&args.remove(0)),
            "--wait" => wait = true,
            other => panic!("unknown flag {other}"),
        }
    }
    if wait {
        say(&format!("pid {}", std::process::id()));
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).expect("stdin");
    }
    let role = args.first().cloned().unwrap_or_default();
    let addr = |i: usize| -> SocketAddr { args[i].parse().expect("ADDR:PORT") };
    match role.as_str() {
        "connect" => match TcpStream::connect_timeout(&addr(1), Duration::from_secs(5)) {
            Ok(_) => say("connected"),
            Err(e) => say(&format!("errno {}", errno_name(&e))),
        },
        "server" => {
            let want: usize = args[2].parse().expect("READ");
            let l = TcpListener::bind(addr(1)).expect("bind");
            say("listening");
            let (mut s, _) = l.accept().expect("accept");
            // Wait until the client's data has arrived, so the close really leaves bytes unread.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD writes an int.
                unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
                if n as usize > want || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut buf = vec![0u8; want];
            s.read_exact(&mut buf).expect("read");
            drop(s);
            drop(l);
            say("closed");
        }
        "client" => {
            let n: usize = args[2].parse().expect("SEND");
            let mut s = TcpStream::connect(addr(1)).expect("connect");
            s.write_all(&vec![b'x'; n]).expect("send");
            say("sent");
            let mut buf = [0u8; 4096];
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
        other => panic!("unknown role {other:?}"),
    }
}
