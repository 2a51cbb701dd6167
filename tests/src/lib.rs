//! Helpers for rst-trace's end-to-end tests: network namespaces, the real rst-trace binary
//! (with its real eBPF programs), and scriptable peer processes that make real resets happen.
//!
//! These tests need root. Without it they fail loudly; they never skip.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

pub mod clients;
pub mod container;
mod netns;
mod scenario;

pub use netns::{Netns, enter as enter_netns};
pub use scenario::Scenario;
pub use serde_json::Value;

use netns::run;

/// Panics unless running as root: the tests load eBPF programs and create namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "rst-trace's end-to-end tests need root (they load eBPF programs and create network \
         namespaces): run them with sudo, e.g. `sudo ./x test`"
    );
}

/// The rst-trace binary under test (built by `./x test` / `cargo xtask test`).
pub fn rst_trace_bin() -> PathBuf {
    let p = std::env::var_os("RST_TRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/rst-trace")
        });
    assert!(
        p.exists(),
        "{} not found: build it first with `cargo build --release -p rst-trace` (./x test does)",
        p.display()
    );
    p
}

/// The peer helper binary of this crate. Cargo builds it next to the test executables' `deps/`
/// directory when it runs this package's integration tests.
pub fn peer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("rstt-peer");
    assert!(p.exists(), "{} not built", p.display());
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// A namespace named after the test's `tag` (unique per process and call).
    pub fn new(tag: &str) -> Self {
        require_root();
        let name = format!(
            "rstt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self::create(&name).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Three hosts in a line, each a network namespace: client — router — server, joined by veth
/// pairs on documentation prefixes (198.51.100.0/24 and 203.0.113.0/24). The router forwards,
/// so the server's segments reach the client with TTL 63 while a router-made RST has TTL 64.
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

pub const CLIENT_ADDR: &str = "198.51.100.2";
pub const ROUTER_CLIENT_SIDE: &str = "198.51.100.1";
pub const ROUTER_SERVER_SIDE: &str = "203.0.113.1";
pub const SERVER_ADDR: &str = "203.0.113.2";

impl Topology {
    pub fn new(tag: &str) -> Self {
        let client = Netns::new(&format!("{tag}c"));
        let router = Netns::new(&format!("{tag}r"));
        let server = Netns::new(&format!("{tag}s"));
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Interface names are created in the root namespace first: keep them unique there.
        let (a, b, c, d) = (
            format!("rc{n}x{}", std::process::id() % 10000),
            format!("rc{n}y{}", std::process::id() % 10000),
            format!("rs{n}x{}", std::process::id() % 10000),
            format!("rs{n}y{}", std::process::id() % 10000),
        );
        run(Command::new("ip").args([
            "link",
            "add",
            &a,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &router.name,
        ]));
        run(Command::new("ip").args([
            "link",
            "add",
            &c,
            "netns",
            &router.name,
            "type",
            "veth",
            "peer",
            "name",
            &d,
            "netns",
            &server.name,
        ]));
        client.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", &a]);
        client.ip(&["link", "set", &a, "up"]);
        client.ip(&["route", "add", "default", "via", ROUTER_CLIENT_SIDE]);
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_CLIENT_SIDE}/24"),
            "dev",
            &b,
        ]);
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_SERVER_SIDE}/24"),
            "dev",
            &c,
        ]);
        router.ip(&["link", "set", &b, "up"]);
        router.ip(&["link", "set", &c, "up"]);
        router.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        server.ip(&["addr", "add", &format!("{SERVER_ADDR}/24"), "dev", &d]);
        server.ip(&["link", "set", &d, "up"]);
        server.ip(&["route", "add", "default", "via", ROUTER_SERVER_SIDE]);
        Self {
            client,
            router,
            server,
        }
    }
}

/// Starts rst-trace with exactly `args`, stdout piped for the caller, and waits for the
/// readiness line. Returns the child and the rest of its stderr.
pub fn spawn_attached(
    args: &[&str],
) -> (Child, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    require_root();
    let mut t = Command::new(rst_trace_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rst-trace");
    let mut errs = BufReader::new(t.stderr.take().expect("stderr")).lines();
    // Notes first (a fallback on an older kernel, named with its reason), then readiness.
    loop {
        let line = errs
            .next()
            .expect("rst-trace printed no readiness line")
            .expect("stderr");
        if line.starts_with("rst-trace: tracing TCP resets") {
            break;
        }
        assert!(line.starts_with("rst-trace: note: "), "{line}");
    }
    (t, errs)
}

/// A running rst-trace with `--json`, its events collected as they arrive.
pub struct Tracer {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    /// Starts rst-trace and waits for its readiness line on stderr.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Tracer::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let mut child = Command::new(rst_trace_bin())
            .envs(env.iter().copied())
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning rst-trace");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("rst-trace printed a non-JSON line {line:?}: {e}"));
                ev.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let se = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let ready = line.starts_with("rst-trace: tracing TCP resets");
                se.lock().unwrap().push(line);
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let mut t = Self {
            child,
            events,
            stderr,
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = t.child.kill();
            panic!(
                "rst-trace did not print its readiness line; stderr: {:?}",
                t.stderr.lock().unwrap()
            );
        }
        t
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The readiness line (`rst-trace: tracing TCP resets (...)`).
    pub fn ready_line(&self) -> String {
        self.stderr()
            .into_iter()
            .find(|l| l.starts_with("rst-trace: tracing TCP resets"))
            .expect("readiness line")
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to 10 s for an event matching `pred`, and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, 10, pred)
    }

    /// [`Tracer::wait_for`] with a deadline of `secs` seconds.
    pub fn wait_for_within(&self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no event for {what} within {secs} s; events seen: {:#?}; stderr: {:?}",
                    self.events(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT and waits for the exit status.
    pub fn stop(mut self) -> (ExitStatus, Vec<Value>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait rst-trace");
        // Give the reader thread a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        (status, self.events())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer process (see `rstt-peer`), in a namespace, with its own comm, running steps.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    /// Starts `rstt-peer --netns NS --name COMM STEPS...` and reads its `pid N` line.
    pub fn spawn(ns: &Netns, comm: &str, steps: &[&str]) -> Self {
        Self::start(Some(&ns.name), comm, steps)
    }

    /// A peer in the test's own (the host's) network namespace, e.g. a client of a container on
    /// docker's bridge.
    pub fn spawn_host(comm: &str, steps: &[&str]) -> Self {
        Self::start(None, comm, steps)
    }

    fn start(netns: Option<&str>, comm: &str, steps: &[&str]) -> Self {
        let mut cmd = Command::new(peer_bin());
        if let Some(ns) = netns {
            cmd.args(["--netns", ns]);
        }
        cmd.args(["--name", comm]).args(steps);
        Self::from_command(cmd)
    }

    /// Any program that speaks the peer's protocol: `pid N` first (its own pid: an `ip netns
    /// exec` wrapper execs it), then lines; `go` lines on stdin.
    pub fn from_command(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning rstt-peer");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().expect("stdin");
        let p = Self {
            child,
            stdin,
            lines: rx,
        };
        let l = p.line();
        assert_eq!(l, format!("pid {}", p.pid()), "peer's first line");
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the peer printed (15 s at most).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("peer printed nothing within 15 s")
    }

    /// Asserts the next line.
    pub fn expect(&self, want: &str) {
        assert_eq!(self.line(), want, "peer {} output", self.pid());
    }

    /// Lets the peer past its next `wait` step.
    pub fn go(&mut self) {
        writeln!(self.stdin, "go").expect("writing to peer");
    }

    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("wait peer")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the sent reset with `condition` in `ns` (see [`Tracer::wait_for`]).
pub fn sent(t: &Tracer, ns: &Netns, condition: &str) -> Value {
    let inode = ns.inode();
    t.wait_for(&format!("sent {condition}"), |v| {
        is_rst(v, "sent", condition) && v["netns"] == inode
    })
}

/// Waits for the received reset with `condition` in `ns`.
pub fn received(t: &Tracer, ns: &Netns, condition: &str) -> Value {
    let inode = ns.inode();
    t.wait_for(&format!("received {condition}"), |v| {
        is_rst(v, "received", condition) && v["netns"] == inode
    })
}

/// Stops the tracer (after 200 ms for late events), asserts it exited 0 and saw exactly these
/// (direction, condition) pairs in `ns`, in any order.
pub fn assert_only(t: Tracer, ns: &Netns, want: &[(&str, &str)]) {
    std::thread::sleep(Duration::from_millis(200));
    let (status, events) = t.stop();
    assert!(status.success(), "rst-trace exit {status:?}");
    let inode = ns.inode();
    let mut got: Vec<(String, String)> = events
        .iter()
        .filter(|v| v["type"] == "rst" && v["netns"] == inode)
        .map(|v| {
            (
                v["direction"].as_str().unwrap_or_default().to_owned(),
                v["condition"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(d, c)| ((*d).to_owned(), (*c).to_owned()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "events: {events:#?}");
}

/// The cgroup v2 id of process `pid`, computed as a reader of /proc would: the inode number of
/// its directory (the `0::/PATH` line of /proc/PID/cgroup) under the unified hierarchy's mount
/// (the `cgroup2` line of /proc/self/mountinfo; `/sys/fs/cgroup/unified` on a hybrid host).
/// Where cgroup v2 is not mounted (a bare VM), it is mounted under /tmp first.
pub fn cgroup_v2_id(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mount = cgroup2_mount().unwrap_or_else(|| {
        let dir = PathBuf::from("/tmp/rstt-cgroup2");
        std::fs::create_dir_all(&dir).expect("mkdir /tmp/rstt-cgroup2");
        run(Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&dir));
        dir
    });
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup: {text}"));
    let dir = mount.join(path.trim_start_matches('/'));
    std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

/// The cgroup v2 path of process `pid` (the `0::/PATH` line of /proc/PID/cgroup).
pub fn cgroup_v2_path(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup: {text}"))
        .to_owned()
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let f: Vec<&str> = pre.split(' ').collect();
        (post.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
    })
}

/// Accessors that keep assertions short.
pub fn s<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

pub fn is_rst(v: &Value, direction: &str, condition: &str) -> bool {
    v["type"] == "rst" && v["direction"] == direction && v["condition"] == condition
}

/// The running kernel's (major, minor) version, from uname(2): the tests state what each
/// kernel can report.
pub fn kernel() -> (u32, u32) {
    // SAFETY: uname fills the struct it is given.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        assert_eq!(libc::uname(&mut u), 0, "uname");
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}

/// `tcp_send_reset` passes the kernel's reset reason since 6.10 (commit 5cb2cb3cb271): before,
/// rst-trace infers the condition and says so.
pub fn kernel_has_reasons() -> bool {
    kernel() >= (6, 10)
}

/// Tracing programs may call bpf_get_socket_cookie() since 5.12 (commit c5dbb89fc2ac): before,
/// a sent reset's cookie is null when the kernel had not generated one yet.
pub fn kernel_generates_cookies() -> bool {
    kernel() >= (5, 12)
}

/// What a sent reset says of the kernel's reason on this kernel: `reason` from 6.10, with
/// `inferred` false; before, `kernel_reason` null and `inferred` true (the condition, asserted
/// by the caller, is then rst-trace's inference).
pub fn assert_reason(v: &Value, reason: &str) {
    if kernel_has_reasons() {
        assert_eq!(v["kernel_reason"], reason, "{v:#}");
        assert_eq!(v["inferred"], false, "{v:#}");
    } else {
        assert_eq!(v["kernel_reason"], Value::Null, "{v:#}");
        assert_eq!(v["inferred"], true, "{v:#}");
    }
}
