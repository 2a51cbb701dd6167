use aya_build::{Package, Toolchain};
// A build-dependency only so that cargo rebuilds us when the eBPF crate changes.
use rst_trace_ebpf as _;

/// The eBPF crate is built with a pinned nightly (the bpf target needs `-Z build-std=core`);
/// `./x setup` installs it. Pinned in one place, `rust-toolchain-ebpf` at the repository's root,
/// which xtask reads too.
const EBPF_TOOLCHAIN: &str = include_str!("../rust-toolchain-ebpf").trim_ascii();

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-trace-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "rst-trace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
