//! `--stacks`: a C program built here with frame pointers and debug info aborts a connection
//! from a function the test names; the sent reset's user stack must name that function and the
//! line of its close(), and its kernel stack the close() system call.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
};

use rst_trace_tests::{Netns, Peer, Scenario, Tracer, Value, s, sent};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/c/abort_unread.c");

/// `cc -O0 -g -fno-omit-frame-pointer` of the test program, into a directory of this test's own
/// under /tmp (writable in the kernel matrix's guests too).
fn build(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rstt-stacks-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bin = dir.join("abort_unread");
    let out = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(SOURCE)
        .output()
        .expect("running cc (./x setup installs gcc)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The line of the source holding `marker`, 1-based.
fn line_of(marker: &str) -> u64 {
    let text = std::fs::read_to_string(SOURCE).expect("read the C source");
    let i = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker} not in {SOURCE}"));
    i as u64 + 1
}

/// The server in `ns`, once it listens.
fn server(ns: &Netns, bin: &Path, port: u16, mode: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin)
        .args([&port.to_string(), mode])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the C server");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("server output");
    assert_eq!(line.trim(), "listening");
    (child, out)
}

/// A client that sends 256 bytes the server never reads, then reads: ECONNRESET.
fn client(ns: &Netns, port: u16) -> Peer {
    let client = Peer::spawn(
        ns,
        "rstt-client",
        &[
            &format!("connect=127.0.0.1:{port}"),
            "send=256",
            "say=sent",
            "read_err",
        ],
    );
    client.expect("sent");
    client
}

/// The functions of a stack's frames.
fn functions(stack: &Value) -> Vec<&str> {
    stack
        .as_array()
        .unwrap_or_else(|| panic!("not a stack: {stack}"))
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect()
}

#[test]
fn stacks_of_close_with_unread_data_name_the_function_and_line() {
    close_with_unread_data("close", 20601, &[]);
}

/// The record-based `tcp_send_reset` program (where no BTF tracepoint loads) captures the same.
#[test]
fn stacks_with_record_tracepoints() {
    close_with_unread_data("record", 20603, &[("RST_TRACE_RECORD_TRACEPOINTS", "1")]);
}

fn close_with_unread_data(tag: &str, port: u16, env: &[(&str, &str)]) {
    let bin = build(tag);
    let scenario = env.iter().fold(
        Scenario::new(&format!("stack{tag}")).port(port),
        |sc, (k, v)| sc.env(k, v),
    );
    let (ns, tracer) = scenario.tracer(&["--stacks"]);
    let ready = tracer.ready_line();
    assert!(
        ready.contains("; stacks of process-context aborts;"),
        "{ready}"
    );
    if !env.is_empty() {
        assert!(ready.contains("; record tracepoints;"), "{ready}");
    }
    let plain = Tracer::start(&["--port", &port.to_string()]);
    let (mut srv, _out) = server(&ns, &bin, port, "close");
    let client = client(&ns, port);
    client.expect("errno ECONNRESET");
    let ev = sent(&tracer, &ns, "close_with_unread_data");
    assert_eq!(s(&ev, "process.pid"), srv.id(), "{ev:#}");
    let user = &ev["stacks"]["user"];
    // The function that called close(), at the line that called it: the frame a frame-pointer
    // walk skips (libc's close() keeps no frame), from the word at the stack pointer.
    let frame = user
        .as_array()
        .and_then(|f| f.iter().find(|f| f["function"] == "abort_with_unread_data"))
        .unwrap_or_else(|| panic!("no abort_with_unread_data in the user stack: {ev:#}"));
    assert_eq!(frame["line"], line_of("/* ABORT */"), "{ev:#}");
    assert!(
        frame["file"].as_str().unwrap().ends_with("abort_unread.c"),
        "{frame}"
    );
    assert_eq!(frame["module"], bin.to_str().unwrap(), "{frame}");
    assert!(frame["addr"].as_str().unwrap().starts_with("0x"), "{frame}");
    // ... called from main.
    let names = functions(user);
    let at = names.iter().position(|f| *f == "abort_with_unread_data");
    assert_eq!(names.get(at.unwrap() + 1), Some(&"main"), "{names:?}");
    assert_eq!(ev["stacks"].get("user_error"), None, "{ev:#}");
    // Newer kernels release the socket inside close() (__fput_sync()); older ones (5.10 here)
    // queue the final fput for the return to user space (task_work_run()).
    let kernel = functions(&ev["stacks"]["kernel"]);
    assert!(
        kernel.contains(&"tcp_close")
            && (kernel.contains(&"__x64_sys_close") || kernel.contains(&"task_work_run")),
        "kernel stack: {kernel:?}"
    );
    // Nothing of the kind without --stacks.
    let ev = sent(&plain, &ns, "close_with_unread_data");
    assert_eq!(ev.get("stacks"), None, "{ev:#}");
    let _ = srv.wait();
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
}

/// A process's exit closes its sockets after its memory is gone: the kernel stack says so, the
/// user stack says why it has no frames.
#[test]
fn stacks_of_exit_with_unread_data_have_the_kernel_one() {
    let bin = build("exit");
    let port = 20602;
    let (ns, tracer) = Scenario::new("stackexit").port(port).tracer(&["--stacks"]);
    let (mut srv, _out) = server(&ns, &bin, port, "exit");
    let client = client(&ns, port);
    client.expect("errno ECONNRESET");
    let ev = sent(&tracer, &ns, "close_with_unread_data");
    assert_eq!(s(&ev, "process.pid"), srv.id(), "{ev:#}");
    let kernel = functions(&ev["stacks"]["kernel"]);
    assert!(
        kernel.contains(&"tcp_close") && kernel.contains(&"do_exit"),
        "kernel stack: {kernel:?}"
    );
    // bpf_get_stackid() finds no user memory to walk: -EFAULT, said, and no frames.
    let stacks = &ev["stacks"];
    assert!(
        stacks["user_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("EFAULT")),
        "{ev:#}"
    );
    assert_eq!(stacks["user"], serde_json::json!([]), "{ev:#}");
    let _ = srv.wait();
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
}
