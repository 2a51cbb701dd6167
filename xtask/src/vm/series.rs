//! The kernel series of the matrix: which kernel of which archive, which tests each runs, and
//! on which architecture it boots.

use anyhow::{Context as _, Result};

use super::kernels::{Archive, DEBIAN, DEBIAN_ARM64, UBUNTU};

/// Which test files (`tests/tests/NAME.rs` or `tests/tests/NAME/`) a series runs.
pub enum TestFiles {
    All,
    /// Only these, and why not the others.
    Only(&'static [&'static str], &'static str),
}

/// A kernel series of the matrix: the meta package that depends on the newest image of the
/// series, and the archive that carries it.
pub struct Series {
    pub name: &'static str,
    pub(super) archive: &'static Archive,
    pub(super) meta: &'static str,
    /// The meta package's version starts with this (one meta package name spans 5.10 and 6.1).
    pub(super) version_prefix: &'static str,
    pub files: TestFiles,
    /// Booted as an arm64 guest (TCG, with a Debian arm64 root: see `arm64.rs`).
    pub arm64: bool,
}

/// 5.4: Ubuntu 20.04's, without a BPF ring buffer; 5.10: Debian 11 (bullseye) and Amazon
/// Linux 2's; 5.15: Ubuntu 22.04's; 6.1: Debian 12 and Amazon Linux 2023's; 6.12: the next LTS,
/// the first with `tcp_send_reset`'s `reason` and socketless resets. arm64-6.1 and arm64-6.12:
/// Debian's cloud kernels for arm64 (Graviton, Ampere), the same two series.
pub const SERIES: &[Series] = &[
    Series {
        name: "5.4",
        archive: &UBUNTU,
        meta: "linux-image-generic",
        version_prefix: "5.4.0.",
        files: TestFiles::Only(
            &["startup"],
            "Linux 5.4 has no BPF ring buffer: rst-trace only says so and exits 1, \
             which tests/tests/startup.rs checks",
        ),
        arm64: false,
    },
    Series {
        name: "5.10",
        archive: &DEBIAN,
        meta: "linux-image-cloud-amd64",
        version_prefix: "5.10.",
        files: TestFiles::All,
        arm64: false,
    },
    Series {
        name: "5.15",
        archive: &UBUNTU,
        meta: "linux-image-generic",
        version_prefix: "5.15.0.",
        files: TestFiles::All,
        arm64: false,
    },
    Series {
        name: "6.1",
        archive: &DEBIAN,
        meta: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
        files: TestFiles::All,
        arm64: false,
    },
    Series {
        name: "6.12",
        archive: &DEBIAN,
        meta: "linux-image-6.12-cloud-amd64",
        version_prefix: "6.12.",
        files: TestFiles::All,
        arm64: false,
    },
    Series {
        name: "arm64-6.1",
        archive: &DEBIAN_ARM64,
        meta: "linux-image-cloud-arm64",
        version_prefix: "6.1.",
        files: TestFiles::All,
        arm64: true,
    },
    Series {
        name: "arm64-6.12",
        archive: &DEBIAN_ARM64,
        meta: "linux-image-6.12-cloud-arm64",
        version_prefix: "6.12.",
        files: TestFiles::All,
        arm64: true,
    },
];

/// Resolves names from the command line ("5.4", "5.10", ... or "all"); none: all of them, the
/// matrix of `./x test`.
pub fn select(names: &[String]) -> Result<Vec<&'static Series>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(SERIES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            SERIES.iter().find(|s| s.name == n).with_context(|| {
                let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
                format!(
                    "unknown kernel {n:?}: choose from {}, all",
                    known.join(", ")
                )
            })
        })
        .collect()
}

impl Series {
    /// Why the series does not run test file `name` (`tests/tests/NAME.rs` or
    /// `tests/tests/NAME/`), if it does not.
    pub fn not_run(&self, name: &str) -> Option<&'static str> {
        match self.files {
            TestFiles::Only(files, why) if !files.contains(&name) => Some(why),
            _ => None,
        }
    }
}
