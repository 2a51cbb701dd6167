//! A host with more TCP sockets than the kernel side's owner map: said on stderr, never silent.

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
};

use rst_trace_tests::{
    Netns, Tracer, Value, is_rst, possible_cpus, s, scrape_until, smallest_socket_map,
};

/// tests/scripts/crowd.py in `ns`: `pairs` idle connections to `port`, held until its stdin
/// closes; a line on stdin aborts the first one's server end.
struct Crowd {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Crowd {
    fn start(ns: &Netns, port: u16, pairs: u32) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/crowd.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "/usr/bin/python3", script])
            .args([port.to_string(), pairs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting tests/scripts/crowd.py");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready", "crowd.py");
        Self { child, lines }
    }

    /// Aborts the first connection's server end; the first client's port.
    fn abort_first(&mut self) -> u64 {
        writeln!(self.child.stdin.as_ref().unwrap()).unwrap();
        let line = self.lines.next().unwrap().unwrap();
        line.strip_prefix("aborted ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("crowd.py said {line:?}"))
    }

    /// Ends the crowd: every connection closes.
    fn end(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "crowd.py exit {status:?}");
    }
}

/// The entries of the kernel maps `pid` holds of `map_type` with keys and values of
/// `(key_size, value_size)` bytes, from its descriptors' fdinfo.
fn map_entries(pid: u32, map_type: u32, (key_size, value_size): (u32, u32)) -> Vec<u64> {
    let mut found = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(text) = std::fs::read_to_string(fd.unwrap().path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("map_type:") == Some(u64::from(map_type))
            && field("key_size:") == Some(u64::from(key_size))
            && field("value_size:") == Some(u64::from(value_size))
        {
            found.push(field("max_entries:").expect("max_entries"));
        }
    }
    found
}

/// The first client's received reset, in `t`'s output.
fn first_client_reset(t: &Tracer, ns: &Netns, client_port: u64) -> Value {
    let inode = ns.inode();
    t.wait_for("the first client's peer_reset", |v| {
        is_rst(v, "received", "peer_reset")
            && v["netns"] == inode
            && v["local"]["port"] == client_port
    })
}

/// `--max-sockets` sizes the socket owner map (the kernel map has that many entries). Once the
/// host holds more TCP sockets than it keeps, rst-trace warns (once), and says so again when
/// they fit. The default map, sized from the host, keeps the owner of an idle connection among
/// them. (Which entries the small map's LRU forgets depends on the CPUs the inserts ran on:
/// not asserted.)
#[test]
fn host_outgrowing_the_owner_map_is_warned() {
    let (max, usable) = smallest_socket_map();
    let ns = Netns::new("capacity");
    let port = "20071";
    let small = Tracer::start(&["--port", port, "--max-sockets", &max.to_string()]);
    let default = Tracer::start(&["--port", port]);
    // The socket map: an LRU hash (9) from a socket's address to its SockInfo (80 bytes,
    // asserted in rst-trace-common).
    let socks = (8, 80);
    assert_eq!(map_entries(small.pid(), 9, socks), vec![u64::from(max)]);
    let default_entries = map_entries(default.pid(), 9, socks);
    assert!(
        default_entries.len() == 1 && default_entries[0] >= 65536,
        "{default_entries:?}"
    );
    let mut crowd = Crowd::start(&ns, 20071, max);
    let over = format!("more than the {usable} the socket owner map keeps (--max-sockets {max})");
    small.wait_for_stderr("a host outgrowing --max-sockets", 5, |l| {
        l.starts_with("rst-trace: warning: this host has ") && l.contains(&over)
    });
    let client_port = crowd.abort_first();
    let kept = first_client_reset(&default, &ns, client_port);
    assert_eq!(s(&kept, "process.pid"), crowd.child.id(), "{kept:#}");
    assert_eq!(kept["attribution"], "socket_owner", "{kept:#}");
    first_client_reset(&small, &ns, client_port);
    crowd.end();
    small.wait_for_stderr("the sockets fitting again", 5, |l| {
        l.starts_with("rst-trace: note: this host's ") && l.contains("fit the socket owner map")
    });
    let (status, _, lines) = small.stop_with_stderr();
    assert!(status.success(), "rst-trace exit {status:?}");
    let warnings = lines.iter().filter(|l| l.contains(&over)).count();
    assert_eq!(warnings, 1, "warned once while over: {lines:#?}");
    let (status, _, lines) = default.stop_with_stderr();
    assert!(status.success(), "rst-trace exit {status:?}");
    assert!(
        !lines.iter().any(|l| l.contains("socket owner map")),
        "the default map was outgrown by {} sockets: {lines:#?}",
        2 * max
    );
}

/// The TIME_WAIT map (an LRU hash, 9, from a 40-byte flow to a 72-byte `TimeWaitInfo`) is
/// sized from the host's TIME_WAIT sockets at start-up (here those of rst-trace's own network
/// namespace; the next test has another's): room for twice as many and the LRU's free lists,
/// so with more than ~8000 of them it outgrows its smallest size, 16384. `--metrics` says the TIME_WAIT count and the map's capacity.
#[test]
fn time_wait_map_is_sized_from_the_host() {
    // TIME_WAIT sockets are counted per network namespace: these are rst-trace's, the host's
    // (on a port of this test's own; nothing sends them a segment).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/timewait.py");
    let out = Command::new("/usr/bin/python3")
        .args([script, "20072", "9000"])
        .output()
        .expect("running tests/scripts/timewait.py");
    assert!(out.status.success(), "timewait.py: {out:?}");
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let tw: u64 = sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "tw").nth(1))
        .and_then(|n| n.parse().ok())
        .expect("tw in /proc/net/sockstat");
    // The kernel keeps at most net.ipv4.tcp_max_tw_buckets (8192 on a small VM).
    let reserve = 128 * (u64::from(possible_cpus()) + 1);
    assert!(
        2 * tw + reserve > 16384,
        "only {tw} TIME_WAIT sockets (net.ipv4.tcp_max_tw_buckets?): {sockstat}"
    );
    let t = Tracer::start(&["--port", "20072", "--metrics", "127.0.0.1:0"]);
    let entries = map_entries(t.pid(), 9, (40, 72));
    let owners = map_entries(t.pid(), 9, (8, 80));
    let page = scrape_until(&t.metrics_url(), "rst_trace_host_tcp_sockets");
    let (status, _, lines) = t.stop_with_stderr();
    assert!(status.success(), "rst-trace exit {status:?}: {lines:#?}");
    let gauge = |name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
    };
    assert!(gauge("rst_trace_host_tcp_sockets") >= Some(1), "{page}");
    assert_eq!(
        gauge("rst_trace_socket_owner_map_capacity"),
        Some(owners[0] - reserve),
        "{page}"
    );
    let want = (2 * tw + reserve).next_power_of_two();
    assert!(
        entries.len() == 1 && entries[0] >= want && entries[0].is_power_of_two(),
        "{tw} TIME_WAIT sockets: map entries {entries:?}, want at least {want}"
    );
    assert!(
        gauge("rst_trace_host_time_wait_sockets") > Some(8000),
        "{page}"
    );
    assert_eq!(
        gauge("rst_trace_time_wait_map_capacity"),
        Some(entries[0] - reserve),
        "{page}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("TIME_WAIT map")),
        "the map sized for them was outgrown: {lines:#?}"
    );
}

/// TIME_WAIT sockets are counted per network namespace, and on a container host most are in
/// the containers' namespaces: rst-trace adds up those of every namespace a process is in, so
/// a namespace of this test's own with 20000 of them (more than this test leaves in rst-trace's
/// own namespace) sizes the TIME_WAIT map and shows in `rst_trace_host_time_wait_sockets`.
#[test]
fn time_wait_of_other_namespaces_is_counted() {
    let ns = Netns::new("captw");
    // A namespace's count is read through a process in it, as a container's or a pod's is.
    let mut holder = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sleep", "300"])
        .spawn()
        .expect("ip netns exec sleep");
    // Room for them: the namespace's own limit, and ports (bind() looks for a free port in
    // half the range first, and past that slowly).
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.tcp_max_tw_buckets=65536",
        "net.ipv4.ip_local_port_range=1024 65000",
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/timewait.py");
    ns.exec(&["/usr/bin/python3", script, "20073", "20000"]);
    let tw_of = |path: &str| -> u64 {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "tw").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("tw in {path}: {text}"))
    };
    let in_ns = tw_of(&format!("/proc/{}/net/sockstat", holder.id()));
    assert!(
        in_ns >= 19_000,
        "only {in_ns} TIME_WAIT sockets in the namespace"
    );
    let t = Tracer::start(&["--port", "20073", "--metrics", "127.0.0.1:0"]);
    let entries = map_entries(t.pid(), 9, (40, 72));
    let page = scrape_until(&t.metrics_url(), "rst_trace_host_time_wait_sockets");
    let (status, _, lines) = t.stop_with_stderr();
    let own = tw_of("/proc/net/sockstat");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(status.success(), "rst-trace exit {status:?}: {lines:#?}");
    // Else rst-trace's own namespace alone could explain what follows.
    assert!(
        own < in_ns / 2,
        "{own} TIME_WAIT sockets in rst-trace's own namespace: the test cannot tell"
    );
    let reserve = 128 * (u64::from(possible_cpus()) + 1);
    let want = (2 * in_ns + reserve).next_power_of_two();
    assert!(
        entries.len() == 1 && entries[0] >= want,
        "{in_ns} TIME_WAIT sockets in another namespace: map entries {entries:?}, want at least \
         {want}"
    );
    let gauge = page.lines().find_map(|l| {
        l.strip_prefix("rst_trace_host_time_wait_sockets ")?
            .parse::<u64>()
            .ok()
    });
    assert!(
        gauge >= Some(in_ns - 500),
        "{in_ns} in the namespace: {page}"
    );
}
