//! Under load: 100k sockets churned with bounded memory, SIGTERM in the middle of a storm.

use rst_trace_tests::{Netns, Peer, spawn_attached};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// 100k sockets churned (each refused connect is a socket created and destroyed, and two
/// events): rst-trace's memory stays bounded, and nothing is lost silently.
#[test]
fn hundred_thousand_sockets_churned_memory_stays_bounded() {
    let ns = Netns::new("churn");
    let (t, _errs) = spawn_attached(&["--port", "20051", "--json", "--summary", "--quiet"]);
    let warm = Peer::spawn(&ns, "rstt-churn", &["storm=10000,127.0.0.1:20051"]);
    warm.expect("stormed 10000");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after_10k = rss_kib(t.id());
    let mut done = 10_000;
    while done < 100_000 {
        let p = Peer::spawn(&ns, "rstt-churn", &["storm=30000,127.0.0.1:20051"]);
        p.expect("stormed 30000");
        done += 30_000;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after_100k = rss_kib(t.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.id() as i32, libc::SIGTERM) };
    let out = t.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        after_100k < after_10k + 8 * 1024,
        "RSS grew from {after_10k} KiB to {after_100k} KiB"
    );
    // Every reset is either counted in the summary or reported lost.
    let text = String::from_utf8(out.stdout).unwrap();
    let mut total = 0;
    let mut lost = 0;
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        match v["type"].as_str() {
            Some("summary") => total = v["total"].as_u64().unwrap(),
            Some("lost") => lost += v["count"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert_eq!(total + lost, 2 * done, "summary {total} + lost {lost}");
}

/// SIGTERM in the middle of a storm: exit 0, every line printed is whole.
#[test]
fn sigterm_mid_storm_exits_zero_with_whole_lines() {
    let ns = Netns::new("sigterm");
    let (t, _errs) = spawn_attached(&["--port", "20052", "--json"]);
    let storm = Peer::spawn(&ns, "rstt-storm", &["storm=200000,127.0.0.1:20052"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.id() as i32, libc::SIGTERM) };
    let out = t.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let n = text.lines().count();
    assert!(n > 100, "only {n} lines before SIGTERM");
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    drop(storm);
}
