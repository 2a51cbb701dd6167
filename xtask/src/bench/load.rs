//! The reset generator: client threads, and the server a mode needs, in the bench's namespace.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use rst_trace_tests::{Netns, enter_netns};

use super::{Mode, PORT};

/// Runs the generator for `secs` with `threads` client threads; returns the resets generated.
pub(super) fn generate(ns: &Netns, mode: Mode, threads: usize, secs: f64) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    let mut handles = Vec::new();
    if mode == Mode::Echo {
        handles.push(echo_server(ns, addr, threads, &stop)?);
    }
    if mode == Mode::Unread {
        handles.push(unread_server(ns, addr, &stop)?);
    }
    for _ in 0..threads {
        let stop = stop.clone();
        let count = count.clone();
        let ns_name = ns.name.clone();
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter_netns(&ns_name)?;
            let n = client(mode, addr, &stop)?;
            count.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    }
    Ok(count.load(Ordering::Relaxed))
}

/// [`Mode::Echo`]'s server: one connection per client thread, each byte sent back.
fn echo_server(
    ns: &Netns,
    addr: SocketAddr,
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<Result<()>>> {
    let stop = stop.clone();
    server(ns, addr, "bench echo server", move |l| {
        let mut conns = Vec::new();
        for _ in 0..threads {
            let (s, _) = l.accept()?;
            let stop = stop.clone();
            conns.push(std::thread::spawn(move || {
                let mut s = s;
                let mut b = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    if s.read_exact(&mut b).is_err() || s.write_all(&b).is_err() {
                        break;
                    }
                }
            }));
        }
        for c in conns {
            let _ = c.join();
        }
        Ok(())
    })
}

/// [`Mode::Unread`]'s server: accept and close at once, leaving the client's byte unread.
fn unread_server(
    ns: &Netns,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<Result<()>>> {
    let stop = stop.clone();
    server(ns, addr, "bench server", move |l| {
        l.set_nonblocking(true)?;
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    // Wait for the byte, so the close really leaves data unread.
                    s.set_nonblocking(false)?;
                    let mut b = [0u8; 1];
                    let _ = s.peek(&mut b);
                    drop(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
}

/// A server thread in the bench's namespace: `serve` runs on the listener bound to `addr`.
/// Returns once it listens (`what` names it if it does not).
fn server(
    ns: &Netns,
    addr: SocketAddr,
    what: &str,
    serve: impl FnOnce(TcpListener) -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    let ns_name = ns.name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> Result<()> {
        enter_netns(&ns_name)?;
        let l = TcpListener::bind(addr)?;
        tx.send(()).ok();
        serve(l)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .with_context(|| format!("{what} did not start"))?;
    Ok(handle)
}

/// One client thread's loop until `stop`; returns what it counted (resets, echoes or calls).
fn client(mode: Mode, addr: SocketAddr, stop: &AtomicBool) -> Result<u64> {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match mode {
            Mode::Echo => {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let mut b = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    // The server side may go first at the end of the round.
                    if s.write_all(b"x").is_err() || s.read_exact(&mut b).is_err() {
                        break;
                    }
                    n += 1;
                }
            }
            Mode::Refused => {
                if TcpStream::connect(addr).is_err() {
                    n += 1;
                }
            }
            Mode::Syscalls => {
                for _ in 0..1000 {
                    // SAFETY: no preconditions.
                    unsafe { libc::getppid() };
                }
                n += 1000;
            }
            Mode::Unread => {
                // At the end of the round the server may be gone, its accept queue
                // reset: not an error then.
                let conn = TcpStream::connect(addr).and_then(|mut s| {
                    s.write_all(b"x")?;
                    Ok(s)
                });
                let mut s = match conn {
                    Ok(s) => s,
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(e) => return Err(e.into()),
                };
                let mut b = [0u8; 1];
                // The server's close resets the connection.
                if s.read(&mut b).is_err() {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}
