//! Helpers for rst-trace's end-to-end tests: network namespaces, the real rst-trace binary
//! (with its real eBPF programs), and scriptable peer processes that make real resets happen.
//!
//! These tests need root. Without it they fail loudly; they never skip.

use std::{path::PathBuf, sync::atomic::AtomicU32};

mod cgroup;
pub mod clients;
pub mod container;
mod events;
mod kernel;
mod netns;
mod peer;
mod scenario;
mod topology;
mod tracer;

pub use cgroup::{cgroup_v2_id, cgroup_v2_path};
pub use events::{assert_only, is_rst, no_raw_controls, received, s, sent, visible_text_output};
pub use kernel::{
    assert_reason, kernel, kernel_generates_cookies, kernel_has_reasons, possible_cpus,
    smallest_socket_map,
};
pub use netns::{Netns, enter as enter_netns};
pub use peer::Peer;
pub use scenario::Scenario;
pub use serde_json::Value;
pub use topology::{CLIENT_ADDR, ROUTER_CLIENT_SIDE, ROUTER_SERVER_SIDE, SERVER_ADDR, Topology};
pub use tracer::{Tracer, scrape_until, spawn_attached};

/// Makes names unique within the process: namespaces, interfaces, containers.
static SEQ: AtomicU32 = AtomicU32::new(0);

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
