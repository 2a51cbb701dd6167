//! Waiting for a test's reset events and asserting on them.

use std::time::Duration;

use crate::{Netns, Tracer, Value};

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

/// Accessors that keep assertions short.
pub fn s<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

pub fn is_rst(v: &Value, direction: &str, condition: &str) -> bool {
    v["type"] == "rst" && v["direction"] == direction && v["condition"] == condition
}

/// The whole stdout of a text-mode rst-trace (`spawn_attached`) once it has exited 0, asserted
/// to be what no hostile name may break: no control byte but the newlines that end lines (no
/// ESC), and every line an event line of its own, starting with its time stamp.
pub fn visible_text_output(child: &mut std::process::Child) -> String {
    use std::io::Read as _;
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_end(&mut out)
        .expect("reading rst-trace's stdout");
    assert!(child.wait().expect("wait rst-trace").success());
    let out = no_raw_controls(out);
    assert!(out.lines().all(|l| l.starts_with("20")), "{out}");
    out
}

/// `out` as UTF-8 with no control character but the newlines: no C0 byte, no DEL, no C1
/// control (U+0080-U+009F).
pub fn no_raw_controls(out: Vec<u8>) -> String {
    let out = String::from_utf8(out).expect("UTF-8 output");
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
    out
}
