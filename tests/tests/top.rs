//! `rst-trace top` in a real terminal: tmux runs it, `send-keys` types, `capture-pane` reads the
//! screen, while real resets happen in a namespace of the test's own.

use std::{
    process::Command,
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
    // The second view: the failing calls.
    tmux.keys(&["Tab"]);
    let s = tmux.wait("the calls view", |s| {
        s.contains("failing application calls")
    });
    assert!(s.contains("connect") && s.contains("ECONNREFUSED"), "{s}");
    assert!(s.contains("resets nobody noticed"), "{s}");
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
    // A resize redraws at the new size.
    let ok = Command::new("tmux")
        .args(["resize-window", "-t", &tmux.name, "-x", "100", "-y", "30"])
        .status()
        .unwrap();
    assert!(ok.success());
    let s = tmux.wait("the view at 100 columns", |s| {
        s.contains("rst-trace top:") && s.lines().all(|l| l.chars().count() <= 100)
    });
    assert!(s.lines().count() <= 30, "{s}");
    // q quits with status 0 and leaves the alternate screen.
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
    let status = std::fs::read_to_string(&exit_file).unwrap();
    assert_eq!(status.trim(), "EXIT=0");
    let s = tmux.screen();
    assert!(
        !s.contains("rst-trace top:"),
        "the alternate screen is still up:\n{s}"
    );
    let _ = std::fs::remove_file(&exit_file);
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
