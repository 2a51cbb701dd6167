//! Network namespaces of a test's (or the bench's) own, deleted on drop. Only `ip` and `setns(2)`:
//! no rst-trace or aya, so xtask can use it before the eBPF toolchain exists.

use std::{
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    process::Command,
};

/// Runs a command and panics, with its stderr, unless it succeeds.
pub(crate) fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace (`ip netns add NAME`, loopback up), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up; an error says why (`ip`'s stderr).
    pub fn create(name: &str) -> std::io::Result<Self> {
        let out = Command::new("ip").args(["netns", "add", name]).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "ip netns add {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let ns = Self {
            name: name.to_owned(),
        };
        let out = Command::new("ip")
            .args(["-n", name, "link", "set", "lo", "up"])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "ip -n {name} link set lo up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Runs a command inside the namespace and asserts it succeeds.
    pub fn exec(&self, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args));
    }

    /// The namespace's inode, as rst-trace reports it in `netns`.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> std::io::Result<()> {
        enter(&self.name)
    }
}

/// Moves the calling thread into the named namespace (threads that cannot borrow a [`Netns`]).
pub fn enter(name: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: a valid namespace fd; setns affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::other(format!(
            "setns: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
