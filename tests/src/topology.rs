//! Test namespaces: one named after the test, or three hosts in a line joined by veth pairs.

use std::{process::Command, sync::atomic::Ordering};

use crate::{Netns, SEQ, netns::run, require_root};

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
