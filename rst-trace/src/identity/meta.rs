//! Container names and Kubernetes pods, from the files the runtimes keep on the node: no daemon
//! socket and no Kubernetes API, so nothing here can hang on a busy runtime.
//!
//! Container ids reach here only from `path::container`, which admits hex digits alone, so
//! joining them to a root cannot leave it.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use super::{Container, Roots, Runtime};

/// The most read of any one metadata file: containers.json lists every container podman and
/// CRI-O know; past this the host is unusual and the name is not worth the memory.
const MAX_FILE: u64 = 16 << 20;

/// The Kubernetes keys of one runtime: pod name, pod namespace, container name, pod UID.
struct K8sKeys([&'static str; 4]);

/// cri-dockerd's container labels, which CRI-O also uses as annotations.
const POD_KEYS: K8sKeys = K8sKeys([
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.container.name",
    "io.kubernetes.pod.uid",
]);

/// containerd's CRI plugin's annotations.
const CRI_KEYS: K8sKeys = K8sKeys([
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.cri.container-name",
    "io.kubernetes.cri.sandbox-uid",
]);

/// Looks for a container in one runtime's files, filling what it finds.
type Probe = fn(&Roots, &mut Container) -> bool;

/// Fills the container's name and pod from its runtime's files. A runtime the path did not
/// name (`Runtime::Unknown`) is settled by whichever runtime has the id.
pub fn fill(roots: &Roots, c: &mut Container) {
    let found = match c.runtime {
        Runtime::Docker => docker(roots, c),
        Runtime::Containerd => containerd(roots, c),
        Runtime::CriO => crio(roots, c),
        Runtime::Podman => podman(roots, c),
        Runtime::Unknown(_) => false,
    };
    if found || !matches!(c.runtime, Runtime::Unknown(_)) {
        return;
    }
    let probes: [(Runtime, Probe); 3] = [
        (Runtime::Containerd, containerd),
        (Runtime::CriO, crio),
        (Runtime::Docker, docker),
    ];
    for (runtime, probe) in probes {
        if probe(roots, c) {
            c.runtime = runtime;
            return;
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

fn docker(roots: &Roots, c: &mut Container) -> bool {
    let file = roots.docker.join(&c.id).join("config.v2.json");
    read_json(&file).is_some_and(|v| apply_docker(&v, c))
}

/// config.v2.json: `"Name": "/web-1"`, and under cri-dockerd the pod in `Config.Labels`.
fn apply_docker(v: &Value, c: &mut Container) -> bool {
    let Some(obj) = v.as_object() else {
        return false;
    };
    // Docker keeps the name with the '/' of its old links tree.
    c.name = obj
        .get("Name")
        .and_then(Value::as_str)
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| !n.is_empty());
    if let Some(labels) = v.pointer("/Config/Labels").and_then(Value::as_object) {
        apply_k8s(labels, &POD_KEYS, c);
    }
    true
}

fn containerd(roots: &Roots, c: &mut Container) -> bool {
    for root in &roots.containerd {
        // Kubernetes' namespace first, then any other (nerdctl's `default`, docker's `moby`).
        let first = root.join("k8s.io").join(&c.id).join("config.json");
        let others = fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|ns| ns.path().join(&c.id).join("config.json"));
        for file in std::iter::once(first).chain(others) {
            if let Some(v) = read_json(&file) {
                return apply_oci(&v, &CRI_KEYS, c);
            }
        }
    }
    let bundle = containerd_bundle_from_mounts(roots, &c.id);
    bundle
        .and_then(|b| read_json(&b.join("config.json")))
        .is_some_and(|v| apply_oci(&v, &CRI_KEYS, c))
}

/// containerd's task directory: `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`.
const CONTAINERD_TASKS: &str = "io.containerd.runtime.v2.task";

/// The bundle of containerd's container `id` wherever that containerd keeps its state (its
/// config's `state`, not always /run/containerd: a second containerd beside dockerd's, a
/// distribution's own): containerd mounts the container's root filesystem at the bundle's
/// `rootfs`, so the mount point `<state>/io.containerd.runtime.v2.task/<ns>/<id>/rootfs` names
/// it in this mount namespace's mountinfo.
fn containerd_bundle_from_mounts(roots: &Roots, id: &str) -> Option<PathBuf> {
    let mut text = String::new();
    fs::File::open(roots.proc.join("self/mountinfo"))
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    text.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT ...
        let mount_point = super::cgroupfs::unescape_mountinfo(line.split(' ').nth(4)?);
        let bundle = Path::new(&mount_point).parent()?;
        let mut up = Path::new(&mount_point).iter().rev();
        let is_bundle = up.next()? == "rootfs"
            && up.next()? == id
            && up.next().is_some()
            && up.next()? == CONTAINERD_TASKS;
        is_bundle.then(|| bundle.to_path_buf())
    })
}

fn crio(roots: &Roots, c: &mut Container) -> bool {
    let file = roots.crio.join(&c.id).join("userdata/config.json");
    let Some(v) = read_json(&file) else {
        return false;
    };
    if apply_oci(&v, &POD_KEYS, c) {
        // CRI-O's own name for it: k8s_<container>_<pod>_<namespace>_<uid>_<attempt>.
        c.name = annotation(&v, "io.kubernetes.cri-o.Name");
    }
    true
}

/// An OCI bundle's config.json: the pod and container in `annotations`.
fn apply_oci(v: &Value, keys: &K8sKeys, c: &mut Container) -> bool {
    let Some(ann) = v.get("annotations").and_then(Value::as_object) else {
        return false;
    };
    apply_k8s(ann, keys, c);
    true
}

fn annotation(v: &Value, key: &str) -> Option<String> {
    let s = v.get("annotations")?.get(key)?.as_str()?;
    (!s.is_empty()).then(|| s.to_owned())
}

fn apply_k8s(map: &Map<String, Value>, keys: &K8sKeys, c: &mut Container) {
    let get = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let [pod, namespace, container, uid] = keys.0;
    c.pod = get(pod);
    c.namespace = get(namespace);
    c.container_name = get(container);
    if c.pod_uid.is_none() {
        c.pod_uid = get(uid);
    }
}

/// Podman keeps names in containers/storage's containers.json, not in the OCI bundle.
fn podman(roots: &Roots, c: &mut Container) -> bool {
    let Some(v) = read_json(&roots.podman.join("containers.json")) else {
        return false;
    };
    c.name = podman_name(&v, &c.id);
    c.name.is_some()
}

fn podman_name(v: &Value, id: &str) -> Option<String> {
    let entry = v
        .as_array()?
        .iter()
        .find(|e| e.get("id").and_then(Value::as_str) == Some(id))?;
    Some(entry.get("names")?.get(0)?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::identity::tests::TempRoots;

    fn fixture(name: &str) -> String {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cgroup")
            .join(name);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()))
    }

    fn put(dir: &Path, text: &str) {
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        fs::write(dir, text).unwrap();
    }

    const DOCKER_ID: &str = "3f1c9a5e7b2d4c6a8e0f1b3d5c7e9a1b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f";
    const CRI_DOCKERD_ID: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";
    const CONTAINERD_ID: &str = "5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c";
    const CRIO_ID: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";
    const PODMAN_ID: &str = "b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6";

    fn host() -> TempRoots {
        let t = TempRoots::new("meta");
        let r = &t.roots;
        let docker = |id: &str| r.docker.join(id).join("config.v2.json");
        put(&docker(DOCKER_ID), &fixture("docker-config.v2.json"));
        put(
            &docker(CRI_DOCKERD_ID),
            &fixture("cri-dockerd-config.v2.json"),
        );
        let bundle = r.containerd[0]
            .join("k8s.io")
            .join(CONTAINERD_ID)
            .join("config.json");
        put(&bundle, &fixture("containerd-config.json"));
        let userdata = r.crio.join(CRIO_ID).join("userdata/config.json");
        put(&userdata, &fixture("crio-config.json"));
        put(
            &r.podman.join("containers.json"),
            &fixture("podman-containers.json"),
        );
        t
    }

    fn filled(t: &TempRoots, id: &str, runtime: Runtime) -> Container {
        let mut c = Container::new(id, runtime);
        fill(&t.roots, &mut c);
        c
    }

    #[test]
    fn docker_names() {
        let t = host();
        let c = filled(&t, DOCKER_ID, Runtime::Docker);
        assert_eq!(c.name.as_deref(), Some("web-1"));
        assert_eq!((c.pod, c.namespace, c.container_name), (None, None, None));
        let c = filled(&t, CRI_DOCKERD_ID, Runtime::Docker);
        assert_eq!(c.pod.as_deref(), Some("api-7d9f8c6b5-x2kqz"));
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        assert_eq!(c.container_name.as_deref(), Some("api"));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("6f1e2d3c-4b5a-4978-8a1b-2c3d4e5f6a7b")
        );
        assert!(
            c.name
                .unwrap()
                .starts_with("k8s_api_api-7d9f8c6b5-x2kqz_shop_")
        );
    }

    #[test]
    fn oci_annotations() {
        let t = host();
        let c = filled(&t, CONTAINERD_ID, Runtime::Containerd);
        assert_eq!(c.pod.as_deref(), Some("gateway-5c8b7d9f4-qw7zt"));
        assert_eq!(c.namespace.as_deref(), Some("edge"));
        assert_eq!(c.container_name.as_deref(), Some("envoy"));
        assert_eq!(c.name, None);
        let c = filled(&t, CRIO_ID, Runtime::CriO);
        assert_eq!(c.pod.as_deref(), Some("coredns-76f75df574-9xk2p"));
        assert_eq!(c.namespace.as_deref(), Some("kube-system"));
        assert_eq!(c.container_name.as_deref(), Some("coredns"));
        assert!(c.name.unwrap().starts_with("k8s_coredns_"));
    }

    #[test]
    fn podman_and_unknown() {
        let t = host();
        let c = filled(&t, PODMAN_ID, Runtime::Podman);
        assert_eq!(c.name.as_deref(), Some("pg-main"));
        // Kubernetes cgroupfs driver: the runtime is whoever holds the id.
        let c = filled(&t, CONTAINERD_ID, Runtime::Unknown("pod1".into()));
        assert_eq!(c.runtime, Runtime::Containerd);
        assert_eq!(c.container_name.as_deref(), Some("envoy"));
        let c = filled(&t, CRIO_ID, Runtime::Unknown("pod1".into()));
        assert_eq!(c.runtime, Runtime::CriO);
        let nowhere = "f".repeat(64);
        let c = filled(&t, &nowhere, Runtime::Unknown("pod1".into()));
        assert_eq!(c.runtime, Runtime::Unknown("pod1".into()));
        assert_eq!(c.name, None);
    }

    /// A containerd with a state directory of its own: found by its bundle's rootfs mount.
    #[test]
    fn containerd_bundle_outside_the_known_roots() {
        let t = host();
        let state = t.dir.join("run/my\tcontainerd");
        let id = "e".repeat(64);
        let bundle = state.join("io.containerd.runtime.v2.task/k8s.io").join(&id);
        put(
            &bundle.join("config.json"),
            &fixture("containerd-config.json"),
        );
        let rootfs = bundle.join("rootfs").display().to_string();
        let escaped = rootfs.replace('\t', "\\011");
        let mountinfo = format!(
            "22 1 0:21 / /proc rw - proc proc rw\n\
             31 22 0:30 / {}/other/rootfs rw - overlay overlay rw\n\
             32 22 0:31 / {escaped} rw,relatime - overlay overlay rw,lowerdir=/x\n",
            state.display()
        );
        put(&t.roots.proc.join("self/mountinfo"), &mountinfo);
        let c = filled(&t, &id, Runtime::Unknown("pod1".into()));
        assert_eq!(c.runtime, Runtime::Containerd);
        assert_eq!(c.pod.as_deref(), Some("gateway-5c8b7d9f4-qw7zt"));
        assert_eq!(c.container_name.as_deref(), Some("envoy"));
        // Another id's rootfs, or a rootfs outside a task directory, names nothing.
        let other = "0".repeat(64);
        assert_eq!(containerd_bundle_from_mounts(&t.roots, &other), None);
    }

    #[test]
    fn malformed_files() {
        let mut c = Container::new(DOCKER_ID, Runtime::Docker);
        assert!(!apply_docker(&Value::Null, &mut c));
        assert!(apply_docker(&serde_json::json!({"Name": "/"}), &mut c));
        assert_eq!(c.name, None);
        assert!(!apply_oci(
            &serde_json::json!({"ociVersion": "1.0"}),
            &CRI_KEYS,
            &mut c
        ));
        assert_eq!(podman_name(&serde_json::json!({}), PODMAN_ID), None);
    }
}
