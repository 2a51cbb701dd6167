//! The cgroup v2 id and path of a process, as a reader of /proc computes them.

use std::{path::PathBuf, process::Command};

use crate::netns::run;

/// The cgroup v2 id of process `pid`, computed as a reader of /proc would: the inode number of
/// its directory (the `0::/PATH` line of /proc/PID/cgroup) under the unified hierarchy's mount
/// (the `cgroup2` line of /proc/self/mountinfo; `/sys/fs/cgroup/unified` on a hybrid host).
/// Where cgroup v2 is not mounted (a bare VM), it is mounted under /tmp first.
pub fn cgroup_v2_id(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mount = cgroup2_mount().unwrap_or_else(|| {
        let dir = PathBuf::from("/tmp/rstt-cgroup2");
        std::fs::create_dir_all(&dir).expect("mkdir /tmp/rstt-cgroup2");
        run(Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&dir));
        dir
    });
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup: {text}"));
    let dir = mount.join(path.trim_start_matches('/'));
    std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

/// The cgroup v2 path of process `pid` (the `0::/PATH` line of /proc/PID/cgroup).
pub fn cgroup_v2_path(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup: {text}"))
        .to_owned()
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let f: Vec<&str> = pre.split(' ').collect();
        (post.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
    })
}
