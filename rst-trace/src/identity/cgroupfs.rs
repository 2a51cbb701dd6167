//! The cgroup v2 hierarchy on this host: where it is mounted, and which directory a cgroup id
//! names. The kernel's cgroup id (`bpf_get_current_cgroup_id()`) is the kernfs node id, which
//! cgroup2 reports as the directory's inode number (Linux >= 5.5 on 64-bit hosts).

use std::{
    collections::VecDeque,
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::PathBuf,
};

/// A cgroup2 mount.
#[derive(Clone, Debug, PartialEq)]
pub struct Cgroup2 {
    /// Where it is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
    pub mount: PathBuf,
    /// The cgroup the mount shows as its root (mountinfo's 4th field): `/` on the host, deeper
    /// when mounted from inside a cgroup namespace.
    pub root: String,
}

impl Cgroup2 {
    /// The first cgroup2 mount in a mountinfo file (`/proc/self/mountinfo`).
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        text.lines().find_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source opts
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = left.split(' ').collect();
            Some(Self {
                mount: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                root: unescape_mountinfo(fields.get(3)?),
            })
        })
    }

    /// A mount at `mount` whose root is the hierarchy's root (tests, `Roots::cgroup2`).
    pub fn at(mount: PathBuf) -> Self {
        Self {
            mount,
            root: "/".to_owned(),
        }
    }

    /// The directory of a cgroup path as /proc/PID/cgroup writes it.
    fn dir(&self, path: &str) -> Option<PathBuf> {
        let rel = match self.root.as_str() {
            "/" => path,
            root => path.strip_prefix(root)?,
        };
        let rel = rel.trim_start_matches('/');
        // A path from /proc could only climb with "..": cgroup names cannot be "..", but make
        // sure the join stays under the mount.
        if rel.split('/').any(|p| p == "..") {
            return None;
        }
        Some(self.mount.join(rel))
    }

    /// The id (directory inode) of the cgroup at `path`, as /proc/PID/cgroup writes it.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        self.dir(path)
            .and_then(|d| fs::metadata(d).ok())
            .map(|m| m.ino())
    }

    /// Whether `path` is the cgroup whose id is `id`: the pid may have moved, or died and had
    /// its number reused, since the event.
    pub fn matches(&self, path: &str, id: u64) -> bool {
        self.dir(path)
            .and_then(|d| fs::metadata(d).ok())
            .is_some_and(|m| m.ino() == id)
    }

    /// The path of the cgroup whose id is `id`, by a breadth-first walk of the hierarchy that
    /// visits at most `max_dirs` directories. Costs readdir only (the inode is in each entry),
    /// but a host with many cgroups takes milliseconds: only for pids gone or moved.
    pub fn find(&self, id: u64, max_dirs: usize) -> Option<String> {
        if fs::metadata(&self.mount).ok()?.ino() == id {
            return Some(self.root.clone());
        }
        let mut queue = VecDeque::from([PathBuf::new()]);
        let mut visited = 0;
        while let Some(rel) = queue.pop_front() {
            visited += 1;
            if visited > max_dirs {
                return None;
            }
            let Ok(entries) = fs::read_dir(self.mount.join(&rel)) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = rel.join(entry.file_name());
                if entry.ino() == id {
                    let root = self.root.trim_end_matches('/');
                    return Some(format!("{root}/{}", child.to_string_lossy()));
                }
                queue.push_back(child);
            }
        }
        None
    }
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal (also read by the
/// containerd bundle search in `meta.rs`).
pub(super) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::TempRoots;

    #[test]
    fn mountinfo() {
        // A cgroup v1/hybrid host (Debian 10, systemd 241): cgroup2 at .../unified.
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
        let c = Cgroup2::from_mountinfo(hybrid).unwrap();
        assert_eq!(c, Cgroup2::at("/sys/fs/cgroup/unified".into()));
        // Pure v2, seen from inside a container with its own cgroup namespace mounted from a
        // parent's: the root is the container's cgroup.
        let v2 = "1205 1201 0:27 /../.. /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate\n";
        let c = Cgroup2::from_mountinfo(v2).unwrap();
        assert_eq!(c.root, "/../..");
        // Octal escapes; a backslash not followed by three octal digits stays as it is.
        assert_eq!(unescape_mountinfo("/a\\040b\\134c\\9"), "/a b\\c\\9");
        let odd = "50 31 0:40 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(
            Cgroup2::from_mountinfo(odd).unwrap().mount,
            PathBuf::from("/mnt/cg two")
        );
        assert_eq!(
            Cgroup2::from_mountinfo("35 31 0:32 / /x rw - cgroup cgroup rw"),
            None
        );
    }

    #[test]
    fn dirs() {
        let c = Cgroup2 {
            mount: "/sys/fs/cgroup".into(),
            root: "/kubepods.slice".into(),
        };
        let dir = c.dir("/kubepods.slice/x.scope").unwrap();
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/x.scope"));
        assert_eq!(c.dir("/system.slice/a.service"), None);
        assert_eq!(Cgroup2::at("/cg".into()).dir("/a/../../etc"), None);
        assert_eq!(
            Cgroup2::at("/cg".into()).dir("/").unwrap(),
            PathBuf::from("/cg/")
        );
    }

    #[test]
    fn find_by_inode() {
        // A directory tree stands in for the hierarchy: the walk only needs inodes.
        let t = TempRoots::new("walk");
        let mount = t.dir.join("cgroup2");
        let leaf = mount.join("kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope");
        fs::create_dir_all(&leaf).unwrap();
        fs::create_dir_all(mount.join("system.slice/nginx.service")).unwrap();
        let c = Cgroup2::at(mount.clone());
        let id = fs::metadata(&leaf).unwrap().ino();
        let want = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope";
        assert_eq!(c.find(id, 100).as_deref(), Some(want));
        assert!(c.matches(want, id));
        assert!(!c.matches("/system.slice/nginx.service", id));
        assert_eq!(
            c.find(fs::metadata(&mount).unwrap().ino(), 1).as_deref(),
            Some("/")
        );
        // The bound: the leaf's entry is read with the 4th directory (/, kubepods.slice,
        // system.slice, kubepods-pod1.slice).
        assert_eq!(c.find(id, 3), None);
        assert_eq!(c.find(u64::MAX, 100), None);
    }
}
