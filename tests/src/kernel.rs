//! What the running kernel can report: the tests state what they expect on each kernel.

use crate::Value;

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

/// The host's possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1` or `0-3,6`): the
/// kernel's LRU maps keep 128 entries free on each.
pub fn possible_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("possible CPUs");
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// The smallest `--max-sockets` on this host, and the live sockets such a socket map keeps
/// before its LRU evicts (rst-trace's `kernel::capacity`).
pub fn smallest_socket_map() -> (u32, u32) {
    let reserve = 128 * (possible_cpus() + 1);
    let max = (2 * reserve).max(1024);
    (max, max - reserve)
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
