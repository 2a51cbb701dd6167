use aya_build::{Package, Toolchain};

/// The eBPF crate is built with a pinned nightly (the bpf target needs `-Z build-std=core`);
/// `./x setup` installs it. Keep in sync with `EBPF_TOOLCHAIN` in xtask.
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";

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
