//! Real containers for the container tests (tests/tests/containers/): a docker image built
//! here `FROM scratch` holding the static (musl) test peer, and docker containers running it.
//! The same image runs in the tests' own containerd through its CRI API, as a kubelet's pods
//! do (tests/tests/containers/cri/: the CRI client is a dev-dependency, so that the static
//! peer's build does not compile it).
//!
//! No registry is needed: the image is built locally (`DOCKER_BUILDKIT=0`), once per peer
//! binary (its tag is the binary's hash), and reused. Containers are removed on drop.
//!
//! Docker must answer (`./x test` installs Debian's docker.io and starts dockerd; `./x docker`
//! does only that). Without it the tests fail, saying why: they never skip.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{OnceLock, atomic::Ordering, mpsc},
    time::Duration,
};

use crate::{SEQ, peer_bin, require_root};

/// Debian's docker CLI: a `docker` earlier on PATH may be another one (this project's VMs have
/// an unrelated one in /usr/local/bin).
pub const DOCKER: &str = "/usr/bin/docker";
/// Where `./x` logs the dockerd it starts (xtask/src/docker.rs).
const DOCKERD_LOG: &str = "/var/log/rst-trace-dockerd.log";
const MUSL: &str = "x86_64-unknown-linux-musl";

/// Runs a command, returning its trimmed stdout; panics with its stderr unless it succeeds.
pub fn output(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker(args: &[&str]) -> String {
    output(Command::new(DOCKER).args(args))
}

/// Panics, saying why and what to do, unless dockerd answers `docker info`.
pub fn require_docker() {
    require_root();
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let ok = OK.get_or_init(|| {
        if !Path::new(DOCKER).exists() {
            return Err(format!(
                "{DOCKER} not found: the container tests need Debian's docker.io \
                 (`./x test` installs it and starts dockerd; `./x docker` does only that)"
            ));
        }
        let out = Command::new(DOCKER)
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {DOCKER} info: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        // `docker info`'s own error is a template's; `docker version` says what is wrong.
        let why = Command::new(DOCKER)
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        Err(format!(
            "dockerd does not answer `{DOCKER} info` ({why}): the container tests need a \
             running dockerd (`./x docker` starts one; its log is {DOCKERD_LOG})"
        ))
    });
    if let Err(why) = ok {
        panic!("{why}");
    }
}

/// A name unique to this test process and call: `rstt-TAG-PID-N`.
pub fn unique_name(tag: &str) -> String {
    format!(
        "rstt-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The static (musl) build of the test peer, for images without a libc: `RSTT_PEER_STATIC` if
/// set, else built here with cargo (once per process; a no-op when it is up to date).
pub fn static_peer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RSTT_PEER_STATIC") {
            return PathBuf::from(p);
        }
        // target/release/rstt-peer -> target
        let target = peer_bin()
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        output(
            Command::new(cargo)
                .current_dir(workspace)
                .args(["build", "--quiet", "--release", "--target", MUSL])
                .args([
                    "-p",
                    "rst-trace-tests",
                    "--bin",
                    "rstt-peer",
                    "--target-dir",
                ])
                .arg(&target),
        );
        let bin = target.join(MUSL).join("release/rstt-peer");
        assert!(bin.is_file(), "{} not built", bin.display());
        bin
    })
    .clone()
}

/// FNV-1a: the image tag names the binary it holds, so that concurrent runs of other
/// checkouts never swap it under each other.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const DOCKERFILE: &str = "FROM scratch\nCOPY rstt-peer /rstt-peer\nENTRYPOINT [\"/rstt-peer\"]\n";

/// The image `rstt-peer:<hash>`: `FROM scratch`, `/rstt-peer` as its entrypoint. Built once
/// per binary (docker keeps it), checked once per process.
pub fn peer_image() -> String {
    require_docker();
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let bin = static_peer_bin();
            let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            let tag = format!(
                "rstt-peer:{:016x}",
                fnv1a(DOCKERFILE.as_bytes()) ^ fnv1a(&bytes)
            );
            let have = Command::new(DOCKER)
                .args(["image", "inspect", "--format", "{{.Id}}", &tag])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if have {
                return tag;
            }
            let ctx = std::env::temp_dir().join(format!("rstt-image-{}", std::process::id()));
            std::fs::create_dir_all(&ctx).expect("image context dir");
            std::fs::write(ctx.join("rstt-peer"), &bytes).expect("copy rstt-peer");
            std::fs::set_permissions(
                ctx.join("rstt-peer"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("chmod rstt-peer");
            std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
            output(
                Command::new(DOCKER)
                    .args(["build", "--quiet", "--tag", &tag])
                    .arg(&ctx)
                    // No registry is reachable: the classic builder needs none for FROM scratch.
                    .env("DOCKER_BUILDKIT", "0"),
            );
            let _ = std::fs::remove_dir_all(&ctx);
            tag
        })
        .clone()
}

/// Lines a child prints, as they come.
fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a containerised peer printed, line by line (like [`crate::Peer`]'s).
pub trait Output {
    /// The next line the peer printed (15 s at most).
    fn line(&self) -> String;

    /// Asserts the next line.
    fn expect(&self, want: &str) {
        assert_eq!(self.line(), want, "containerised peer's output");
    }
}

mod docker;

pub use self::docker::{DockerContainer, DockerRun};
