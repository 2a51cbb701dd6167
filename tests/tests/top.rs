//! `rst-trace top` in a real terminal: tmux runs it, `send-keys` types, `capture-pane` reads the
//! screen, while real resets happen in a namespace of the test's own.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rst_trace_tests::{Netns, Peer, require_root, rst_trace_bin};

const PORT: u16 = 20300;

/// A tmux session running one command in a window of the given size; killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(cmd: &str, width: u16, height: u16) -> Self {
        let name = format!("rstt-top-{}", std::process::id());
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &name])
            .status();
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(cmd)
            .status()
            .expect("tmux (Debian's tmux; ./x test installs it)");
        assert!(ok.success(), "tmux new-session failed");
        Self { name }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(ok.success());
    }

    /// Waits up to 10 s for the screen to satisfy `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {what} on screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

/// The rate column (the number after the condition) of the first line with `condition`.
fn rate_of(screen: &str, condition: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.contains(condition))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == condition)?;
    words.next()?.parse().ok()
}

#[test]
fn top_shows_who_resets_what_and_answers_its_keys() {
    require_root();
    let ns = Netns::new("top");
    let exit_file = std::env::temp_dir().join(format!("rstt-top-exit-{}", std::process::id()));
    let _ = std::fs::remove_file(&exit_file);
    let cmd = format!(
        "{} top --port {PORT}; echo EXIT=$? > {}; sleep 60",
        rst_trace_bin().display(),
        exit_file.display()
    );
    let tmux = Tmux::start(&cmd, 160, 40);
    tmux.wait("the view", |s| s.contains("rst-trace top:"));
    for _ in 0..3 {
        let c = Peer::spawn(&ns, "rstt-top", &[&format!("connect=127.0.0.1:{PORT}")]);
        c.expect("errno ECONNREFUSED");
    }
    // Rows by process: the refused clients, and the kernel's own resets (no process).
    let s = tmux.wait("the resets' rows", |s| {
        s.contains("rstt-top[") && s.contains("kernel (no socket)")
    });
    assert!(
        s.contains("connection_refused") && s.contains("port_not_listening"),
        "{s}"
    );
    assert!(s.contains("ECONNREFUSED"), "{s}");
    // A storm shows as a rate.
    let storm = Peer::spawn(&ns, "rstt-top", &[&format!("storm=3000,127.0.0.1:{PORT}")]);
    let s = tmux.wait("a rate", |s| {
        rate_of(s, "port_not_listening").is_some_and(|r| r > 0)
    });
    assert!(s.contains("resets/s now"), "{s}");
    storm.expect("stormed 3000");
    // The selected row's latest reset: its sentence and endpoints.
    let s = tmux.wait("the detail pane", |s| s.contains("local 127.0.0.1:"));
    assert!(s.contains("remote 127.0.0.1:"), "{s}");
    assert_calls_view(&tmux);
    assert_keys_and_resize(&tmux);
    assert_quits_on_q(&tmux, &exit_file);
    let _ = std::fs::remove_file(&exit_file);
}

/// `Tab`: the second view, the failing calls.
fn assert_calls_view(tmux: &Tmux) {
    tmux.keys(&["Tab"]);
    let s = tmux.wait("the calls view", |s| {
        s.contains("failing application calls")
    });
    // The refused attempt was noticed by connect() itself, or (the RST processed after
    // connect() returned EINPROGRESS: std's connect_timeout) by its SO_ERROR read.
    let noticed = s.lines().find(|l| l.contains("ECONNREFUSED"));
    assert!(
        noticed.is_some_and(|l| {
            let call = l.split_whitespace().next().unwrap_or("");
            call == "connect" || call == "getsockopt(SO_ERROR)"
        }),
        "{s}"
    );
    assert!(s.contains("resets nobody noticed"), "{s}");
}

/// `g` groups by container, then by remote; `s` sorts; `?` helps; a resize redraws at the new
/// size.
fn assert_keys_and_resize(tmux: &Tmux) {
    tmux.keys(&["Tab", "g"]);
    tmux.wait("rows by container", |s| s.contains("resets by container"));
    tmux.keys(&["g", "g"]);
    tmux.wait("rows by remote", |s| s.contains("resets by remote"));
    tmux.keys(&["s"]);
    tmux.wait("another sort", |s| s.contains("(sorted by total)"));
    tmux.keys(&["?"]);
    tmux.wait("the help", |s| {
        s.contains("group by process, container, pod")
    });
    tmux.keys(&["?"]);
    let ok = Command::new("tmux")
        .args(["resize-window", "-t", &tmux.name, "-x", "100", "-y", "30"])
        .status()
        .unwrap();
    assert!(ok.success());
    let s = tmux.wait("the view at 100 columns", |s| {
        s.contains("rst-trace top:") && s.lines().all(|l| l.chars().count() <= 100)
    });
    assert!(s.lines().count() <= 30, "{s}");
}

/// `q` quits with status 0 (the shell around it writes it to `exit_file`) and leaves the
/// alternate screen.
fn assert_quits_on_q(tmux: &Tmux, exit_file: &std::path::Path) {
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exit_file.exists() {
        if Instant::now() >= deadline {
            let diag = Command::new("sh")
                .args(["-c", "for p in $(pgrep -f 'rst-trace top'); do for t in /proc/$p/task/*; do echo $t $(cat $t/comm) $(cat $t/wchan) $(cut -d' ' -f3 $t/stat); cat $t/stack 2>/dev/null | head -5; done; done"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "rst-trace top did not exit on q; its threads:\n{diag}\nscreen:\n{}",
                tmux.screen()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(exit_file).unwrap();
    assert_eq!(status.trim(), "EXIT=0");
    let s = tmux.screen();
    assert!(
        !s.contains("rst-trace top:"),
        "the alternate screen is still up:\n{s}"
    );
}

/// Without a terminal it refuses, in one line, with the usage status.
#[test]
fn top_without_a_terminal_is_a_usage_error() {
    require_root();
    let out = Command::new(rst_trace_bin())
        .arg("top")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("rst-trace top needs a terminal"), "{err}");
}

/// The terminal going away (its other end closed, as when an ssh session drops) ends the view
/// with status 1 and a line that says so, instead of a tracer left running with no one to see
/// it or to press `q`.
#[test]
fn top_ends_with_an_error_when_its_terminal_goes_away() {
    require_root();
    let (master, slave) = pty(30, 100);
    let mut child = Reaped(
        Command::new(rst_trace_bin())
            .args(["top", "--port", &(PORT + 1).to_string()])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave))
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut ready = String::new();
    while !ready.contains("tracing TCP resets") {
        let n = stderr.read_line(&mut ready).unwrap();
        assert!(n > 0, "no readiness line: {ready}");
    }
    // Let it draw a frame or two (read here, so that its writes never wait on a full pty).
    let mut screen = File::from(master);
    let mut buf = vec![0u8; 1 << 16];
    let mut drawn = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // ratatui moves the cursor over blanks: a word of the header, not the phrase.
    while !String::from_utf8_lossy(&drawn).contains("resets/s") {
        assert!(Instant::now() < deadline, "no view drawn");
        let n = screen.read(&mut buf).unwrap();
        drawn.extend_from_slice(&buf[..n]);
    }
    drop(screen);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            panic!("rst-trace top still runs 10 s after its terminal went away");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("rst-trace: error: rst-trace top: drawing on the terminal (is it gone?)")
            || rest.contains("rst-trace: error: rst-trace top: reading the terminal's keys"),
        "{rest}"
    );
}

/// A key typed while the terminal is resized is read: the resize signal and the key wake the
/// view's key reader together. (crossterm's default reader, edge-triggered, returned the resize
/// and left the key unread until another came: `q` did not quit in ~1 round of 4 here.)
#[test]
fn top_reads_a_key_that_comes_with_a_resize() {
    require_root();
    for round in 0..20 {
        let (master, slave) = pty(40, 160);
        let mut cmd = Command::new(rst_trace_bin());
        cmd.args(["top", "--port", &(PORT + 2).to_string()])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave))
            .stderr(Stdio::null());
        // SAFETY: async-signal-safe calls only: a session of its own whose controlling
        // terminal is the pty, so that a resize sends it SIGWINCH.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = Reaped(cmd.spawn().unwrap());
        drop(cmd);
        let screen = drain(File::from(master.try_clone().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut drawn = Vec::new();
        while !String::from_utf8_lossy(&drawn).contains("resets/s") {
            let left = deadline.saturating_duration_since(Instant::now());
            match screen.recv_timeout(left) {
                Ok(chunk) => drawn.extend_from_slice(&chunk),
                Err(e) => panic!("round {round}: no view drawn ({e})"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let size = libc::winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: an ioctl on the master this test owns.
        assert_eq!(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) },
            0
        );
        let mut keys = File::from(master);
        keys.write_all(b"q").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: rst-trace top did not exit on a q typed with a resize"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "round {round}");
    }
}

/// Everything written to the pty, read on a thread of its own (so that the view's writes never
/// wait on a full pty) until its other end closes.
fn drain(mut master: File) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child killed and reaped when the test ends, whichever way it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new pseudo-terminal of `rows` x `cols`: its master and its slave, both close-on-exec from
/// the start (`openpty` leaves them inheritable, and a copy of the master in any process this
/// test binary starts meanwhile would keep the terminal from going away).
fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let err = || std::io::Error::last_os_error();
    // SAFETY: plain system calls on descriptors owned here; ptsname_r writes into `name`.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", err());
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0, "grantpt: {}", err());
        assert_eq!(libc::unlockpt(m), 0, "unlockpt: {}", err());
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            libc::ioctl(m, libc::TIOCSWINSZ, &size),
            0,
            "TIOCSWINSZ: {}",
            err()
        );
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0, "open the pty's slave: {}", err());
        (master, OwnedFd::from_raw_fd(s))
    }
}
