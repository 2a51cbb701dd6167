//! rst-trace as a command: root required, usage errors, `--count`, a closed pipe, a hostile
//! process name.

use std::process::Command;

use rst_trace_tests::{Netns, Peer, require_root, rst_trace_bin, spawn_attached};

/// Scenario (d): an unprivileged user gets exit 1 and the documented message.
#[test]
fn unprivileged_user_is_told_to_use_sudo() {
    require_root();
    let dir = std::env::temp_dir().join(format!("rstt-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("rst-trace");
    std::fs::copy(rst_trace_bin(), &bin).unwrap();
    Command::new("chmod")
        .args(["755", dir.to_str().unwrap(), bin.to_str().unwrap()])
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("rst-trace needs root"), "stderr: {err}");
    assert!(err.contains("sudo"), "stderr: {err}");
    assert!(out.stdout.is_empty());
}

/// Scenario (e): an unknown flag is a usage error, exit 2.
#[test]
fn unknown_flag_is_usage_error() {
    let out = Command::new(rst_trace_bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "stderr: {err}");
    let out = Command::new(rst_trace_bin())
        .args(["--condition", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A filter that can match nothing is refused, not run silently empty.
    for (flag, why) in [
        ("--pid", "0 is no process's id"),
        ("--port", "port 0 is no connection's port"),
    ] {
        let out = Command::new(rst_trace_bin())
            .args([flag, "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{flag} 0: {err}");
    }
}

/// `--count` ends the program with status 0 after N events.
#[test]
fn count_exits_zero() {
    let ns = Netns::new("count");
    let (t, _errs) = spawn_attached(&[
        "--json",
        "--count",
        "1",
        "--port",
        "20021",
        "--direction",
        "received",
    ]);
    let c = Peer::spawn(&ns, "rstt-count", &["connect=127.0.0.1:20021"]);
    c.expect("errno ECONNREFUSED");
    // A broken --count must fail the test, not hang CI: kill it after 20 s.
    let pid = t.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        if !flag.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = t.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["condition"], "connection_refused");
}

/// `rst-trace | head -1`: the closed pipe ends rst-trace quietly with status 0.
#[test]
fn broken_pipe_exits_zero_quietly() {
    use std::io::BufRead as _;
    let ns = Netns::new("pipe");
    let (mut t, errs) = spawn_attached(&["--port", "20043"]);
    let mut out = std::io::BufReader::new(t.stdout.take().unwrap());
    let c = Peer::spawn(&ns, "rstt-pipe", &["connect=127.0.0.1:20043"]);
    c.expect("errno ECONNREFUSED");
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.contains("port_not_listening") || line.contains("connection_refused"),
        "{line}"
    );
    drop(out); // like `head -1` exiting
    // More resets: the next write hits the closed pipe.
    for _ in 0..3 {
        let c = Peer::spawn(&ns, "rstt-pipe", &["connect=127.0.0.1:20043"]);
        c.expect("errno ECONNREFUSED");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = t.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rst-trace kept running after EPIPE"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = errs.map_while(Result::ok).collect();
    assert!(rest.iter().all(|l| !l.contains("error")), "{rest:?}");
}

/// A process can name itself anything (`prctl(PR_SET_NAME)`): a client named
/// `"a\nFAKE\x1b[31m"` that hits a closed port gets one text line per event, its name made
/// visible and no raw control byte on stdout; JSON has the exact name.
#[test]
fn hostile_comm_is_visible_in_text_and_exact_in_json() {
    const HOSTILE: &str = "a\nFAKE\x1b[31m";
    let ns = Netns::new("hostile");
    let json = rst_trace_tests::Tracer::start(&["--port", "20097"]);
    let (mut text, _errs) = spawn_attached(&["--port", "20097", "--duration", "4"]);
    let c = Peer::spawn(&ns, HOSTILE, &["connect=127.0.0.1:20097"]);
    let pid = c.pid();
    c.expect("errno ECONNREFUSED");
    let recv = rst_trace_tests::received(&json, &ns, "connection_refused");
    assert_eq!(recv["process"]["comm"], HOSTILE, "{recv:#}");
    assert_eq!(recv["process"]["pid"], pid);
    // Every line an event line of its own (none starts with "FAKE"), no raw control byte.
    let out = rst_trace_tests::visible_text_output(&mut text);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 2, "{out}");
    let shown = format!("a\\nFAKE\\x1b[31m[{pid}]");
    let recv_line = lines
        .iter()
        .find(|l| l.contains("RECV") && l.contains("connection_refused"))
        .unwrap_or_else(|| panic!("no RECV line: {out}"));
    assert!(recv_line.contains(&shown), "{recv_line}");
    let (status, _) = json.stop();
    assert!(status.success());
}

/// A name that is not UTF-8 (`prctl(PR_SET_NAME)` takes any byte but NUL), with a C1 control
/// (U+009B, a terminal's CSI) and DEL: text shows each byte that is not UTF-8 as `\xNN` and
/// the controls visibly; JSON carries the same `\xNN` and escapes the controls, so neither
/// output has a raw control character.
#[test]
fn name_not_utf8_with_c1_controls_is_visible_in_text_and_escaped_in_json() {
    let ns = Netns::new("badutf8");
    let args = ["--port", "20096", "--duration", "4"];
    let (mut text, _errs) = spawn_attached(&args);
    let (mut json, _jerrs) = spawn_attached(&[&["--json"][..], &args].concat());
    // The peer turns `\xff` and `\xfe` into those bytes: n ff fe c2 9b '2' 'J' 7f.
    let c = Peer::spawn(
        &ns,
        "n\\xff\\xfe\u{9b}2J\u{7f}",
        &["connect=127.0.0.1:20096"],
    );
    let pid = c.pid();
    c.expect("errno ECONNREFUSED");

    let out = rst_trace_tests::visible_text_output(&mut text);
    let recv_line = out
        .lines()
        .find(|l| l.contains("RECV") && l.contains("connection_refused"))
        .unwrap_or_else(|| panic!("no RECV line: {out}"));
    let shown = format!("n\\xff\\xfe\\u{{9b}}2J\\x7f[{pid}]");
    assert!(recv_line.contains(&shown), "{recv_line}");

    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut json.stdout.take().expect("stdout"), &mut raw).unwrap();
    assert!(json.wait().unwrap().success());
    let raw = rst_trace_tests::no_raw_controls(raw);
    let line = raw
        .lines()
        .find(|l| l.contains("\"received\"") && l.contains("connection_refused"))
        .unwrap_or_else(|| panic!("no received record: {raw}"));
    assert!(
        line.contains(r#""comm":"n\\xff\\xfe\u009b2J\u007f""#),
        "{line}"
    );
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["process"]["comm"], "n\\xff\\xfe\u{9b}2J\u{7f}", "{v:#}");
    assert_eq!(v["process"]["pid"], pid);
}
