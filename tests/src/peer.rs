//! Scriptable peer processes (`rstt-peer`, or any program speaking its protocol) that make real
//! resets happen.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::{Netns, peer_bin};

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

    /// An idle keep-alive connection in `ns`: a server (`comms.0`) listening on `listen`:`port`
    /// that has accepted it and, once told to `go`, closes it (says `closed`); a client
    /// (`comms.1`) connected to 127.0.0.1:`port` that, once told to `go`, sends twice, 200 ms
    /// apart (the second send fails if the first drew a reset).
    pub fn keepalive_pair(
        ns: &Netns,
        comms: (&str, &str),
        listen: &str,
        port: u16,
    ) -> (Self, Self) {
        let server = Self::spawn(
            ns,
            comms.0,
            &[
                &format!("listen={listen}:{port}"),
                "say=listening",
                "accept",
                "say=accepted",
                "wait",
                "close",
                "say=closed",
                "hold",
            ],
        );
        server.expect("listening");
        let client = Self::spawn(
            ns,
            comms.1,
            &[
                &format!("connect=127.0.0.1:{port}"),
                "say=connected",
                "wait",
                "send=10",
                "sleep=200",
                "send=10",
                "hold",
            ],
        );
        client.expect("connected");
        server.expect("accepted");
        (server, client)
    }

    /// The pid of the child a `fork` step made (its `child PID` line).
    pub fn forked_child(&self) -> u32 {
        let line = self.line();
        line.strip_prefix("child ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("peer {}: want `child PID`, got {line:?}", self.pid()))
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
