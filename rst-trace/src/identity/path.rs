//! Containers and systemd units read from cgroup paths.
//!
//! Runtimes name their cgroups after the container id, so the path alone gives the id and
//! (mostly) the runtime, without asking any daemon. The innermost match wins: docker-in-docker
//! and kind nest one runtime's cgroups inside another's.

use super::{Container, Runtime};

/// The lines of a `/proc/PID/cgroup` file.
#[derive(Debug, Default, PartialEq)]
pub struct ProcCgroup {
    /// The cgroup v2 path (`0::/path`), relative to the reader's cgroup namespace root.
    pub v2: Option<String>,
    /// cgroup v1 hierarchies, `(controllers, path)`: `name=systemd`, `memory`, `cpu,cpuacct`, ...
    pub v1: Vec<(String, String)>,
}

impl ProcCgroup {
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            // hierarchy-id:controllers:path; the path may itself hold ':'.
            let mut it = line.splitn(3, ':');
            let (Some(num), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if num == "0" && ctrl.is_empty() {
                out.v2 = Some(path.to_owned());
            } else {
                out.v1.push((ctrl.to_owned(), path.to_owned()));
            }
        }
        out
    }

    /// The v1 paths, `name=systemd` first: systemd and the runtimes' systemd drivers always
    /// place their scopes there, while a controller may be left at a parent.
    pub fn v1_paths(&self) -> impl Iterator<Item = &str> {
        let systemd = self.v1.iter().filter(|(c, _)| c == "name=systemd");
        let others = self.v1.iter().filter(|(c, _)| c != "name=systemd");
        systemd.chain(others).map(|(_, p)| p.as_str())
    }
}

/// Scope (systemd driver) and directory (cgroupfs driver) prefixes, by runtime.
const PREFIXES: [(&str, Runtime); 4] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];

/// The container a cgroup path belongs to, if any; only the path's fields are filled (id,
/// runtime, pod UID). A bare 64-hex directory whose parent does not name the runtime (the
/// Kubernetes cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`) gets `Runtime::Unknown`
/// holding that parent, for `meta` to settle by looking for the id in each runtime's state.
pub fn container(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (at, runtime, id) = parts.iter().enumerate().rev().find_map(|(i, part)| {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        component(part, parent).map(|(r, id)| (i, r, id))
    })?;
    let pod_uid = parts[..at].iter().rev().find_map(|p| pod_uid(p));
    let mut c = Container::new(id, runtime);
    c.pod_uid = pod_uid;
    Some(c)
}

fn component<'a>(part: &'a str, parent: Option<&str>) -> Option<(Runtime, &'a str)> {
    let base = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in PREFIXES {
        // `crio-conmon-<id>.scope` (CRI-O's monitor) fails the hex test: not the container.
        if let Some(id) = base.strip_prefix(prefix)
            && is_hex(id)
            && id.len() >= 12
        {
            return Some((runtime, id));
        }
    }
    if part.len() == 64 && is_hex(part) {
        let runtime = match parent {
            Some("docker") => Runtime::Docker,
            Some(p) => Runtime::Unknown(p.to_owned()),
            None => Runtime::Unknown(String::new()),
        };
        return Some((runtime, part));
    }
    None
}

/// A pod UID from `kubepods-<qos>-pod<uid>.slice` (systemd driver, '-' written '_') or
/// `pod<uid>` (cgroupfs driver). Static pods' UIDs are 32 hex digits without dashes.
fn pod_uid(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1,
        None => part.strip_prefix("pod")?,
    };
    let valid = uid.len() >= 32
        && uid
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_');
    valid.then(|| uid.replace('_', "-"))
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The innermost systemd service on the path (`/system.slice/nginx.service` -> `nginx.service`):
/// the unit systemd started the process under, for processes outside containers.
pub fn systemd_unit(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|p| p.len() > ".service".len() && p.ends_with(".service"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9a5e7b2d4c6a8e0f1b3d5c7e9a1b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f";
    const UID: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";

    fn check(path: &str, runtime: Runtime, pod_uid: Option<&str>) {
        let c = container(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!(c.id, ID, "{path}");
        assert_eq!(c.runtime, runtime, "{path}");
        assert_eq!(c.pod_uid.as_deref(), pod_uid, "{path}");
    }

    #[test]
    fn runtimes() {
        // docker, cgroupfs driver (v1 controllers, and pure v2 with cgroupdriver=cgroupfs).
        check(&format!("/docker/{ID}"), Runtime::Docker, None);
        // docker, systemd driver (default on cgroup v2 hosts; v1 name=systemd on hybrid hosts).
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            Runtime::Docker,
            None,
        );
        // containerd CRI plugin, systemd driver (kubeadm's default since 1.22).
        let kube = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a9b8c7d_6e5f_4a3b_2c1d_0e9f8a7b6c5d.slice";
        check(
            &format!("{kube}/cri-containerd-{ID}.scope"),
            Runtime::Containerd,
            Some(UID),
        );
        // Guaranteed QoS pods sit right under kubepods.slice.
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        );
        check(
            &format!("{guaranteed}/cri-containerd-{ID}.scope"),
            Runtime::Containerd,
            Some(UID),
        );
        // kubelet cgroupfs driver: the id alone, the runtime is not in the path.
        let path = format!("/kubepods/besteffort/pod{UID}/{ID}");
        check(&path, Runtime::Unknown(format!("pod{UID}")), Some(UID));
        check(
            &format!("/kubepods/pod{UID}/{ID}"),
            Runtime::Unknown(format!("pod{UID}")),
            Some(UID),
        );
        // CRI-O, systemd driver (its default).
        check(&format!("{kube}/crio-{ID}.scope"), Runtime::CriO, Some(UID));
        // CRI-O and podman with the cgroupfs manager: the same prefixes, without `.scope`.
        check(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            Runtime::CriO,
            Some(UID),
        );
        check(
            &format!("/libpod_parent/libpod-{ID}"),
            Runtime::Podman,
            None,
        );
        // podman rootful (machine.slice), rootless (user@.service) and cgroup v2 split (`container`
        // leaf under the scope, podman 4 with crun).
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            Runtime::Podman,
            None,
        );
        let rootless = "/user.slice/user-1000.slice/user@1000.service/user.slice";
        check(
            &format!("{rootless}/libpod-{ID}.scope"),
            Runtime::Podman,
            None,
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            Runtime::Podman,
            None,
        );
        // docker-in-docker (kind nodes): the innermost container.
        let outer = "a".repeat(64);
        check(
            &format!("/docker/{outer}/docker/{ID}"),
            Runtime::Docker,
            None,
        );
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/system.slice/containerd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/kubepods.slice/kubepods-burstable.slice",
            // CRI-O's conmon monitors the container from a scope of its own.
            &format!("/machine.slice/crio-conmon-{ID}.scope"),
            "/system.slice/docker-xyz.scope",
            "/podman-pause-1234.scope",
        ] {
            assert_eq!(container(path), None, "{path}");
        }
    }

    #[test]
    fn hybrid_proc_cgroup() {
        // Docker cgroupfs driver on a cgroup v1/hybrid host: the container is only in the v1
        // hierarchies; the unified one still shows the shim's service (systemd placed it there).
        let text = format!(
            "12:pids:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n4:memory:/docker/{ID}\n\
             1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        let p = ProcCgroup::parse(&text);
        assert_eq!(p.v2.as_deref(), Some("/system.slice/containerd.service"));
        assert_eq!(p.v1.len(), 4);
        assert_eq!(p.v1_paths().next(), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(container(p.v2.as_deref().unwrap()), None);
        check(p.v1_paths().next().unwrap(), Runtime::Docker, None);
    }

    #[test]
    fn pure_v2_proc_cgroup() {
        // containerd CRI on a cgroup v2 host: one line.
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        let p = ProcCgroup::parse(&text);
        assert!(p.v1.is_empty());
        check(p.v2.as_deref().unwrap(), Runtime::Containerd, Some(UID));
        // A v2 path holding ':' (systemd escapes little) keeps it.
        assert_eq!(ProcCgroup::parse("0::/a:b\n").v2.as_deref(), Some("/a:b"));
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            systemd_unit("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            systemd_unit("/system.slice/system-getty.slice/getty@tty1.service").as_deref(),
            Some("getty@tty1.service")
        );
        // A service that delegates sub-cgroups (systemd's Delegate=yes).
        assert_eq!(
            systemd_unit("/system.slice/containerd.service/sub").as_deref(),
            Some("containerd.service")
        );
        let user = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox.service";
        assert_eq!(systemd_unit(user).as_deref(), Some("app-firefox.service"));
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
        assert_eq!(systemd_unit("/"), None);
    }
}
