//! The kernels of the matrix, from their distributions' archives: Debian's cloud kernels and
//! Ubuntu's generic ones. Each archive has its own private apt configuration under [`CACHE`]
//! (sources, lists, downloads: the host's apt setup is left alone), with the Release files checked
//! against the distribution's keyring. The packages are unpacked into `/boot` and
//! `/lib/modules`, which is where vng looks for a kernel's modules (given an image path instead,
//! the guest gets none: no veth, no nf_tables).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::series::Series;
use crate::{output_ok, run, say};

const CACHE: &str = "/var/cache/rst-trace-vm";

/// A distribution's archive: its apt sources and the packages that make up one kernel.
pub struct Archive {
    name: &'static str,
    /// The private apt directory under [`CACHE`].
    dir: &'static str,
    sources: &'static str,
    keyring: &'static str,
    /// The packages of one kernel release, `{}` standing for the release.
    packages: &'static [&'static str],
    /// Debian's name of the architecture its packages are for.
    arch: &'static str,
}

const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const UBUNTU_KEYRING: &str = "/usr/share/keyrings/ubuntu-archive-keyring.gpg";

pub(super) const DEBIAN: Archive = Archive {
    name: "Debian",
    dir: "apt",
    sources: "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
",
    keyring: DEBIAN_KEYRING,
    packages: &["linux-image-{}"],
    arch: "amd64",
};

/// Debian's arm64 kernels (the same archive, lists of their own for the other architecture).
pub(super) const DEBIAN_ARM64: Archive = Archive {
    name: "Debian arm64",
    dir: "apt-arm64",
    sources: "\
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
",
    keyring: DEBIAN_KEYRING,
    packages: &["linux-image-{}"],
    arch: "arm64",
};

/// Debian's `ubuntu-keyring`, which Ubuntu's Release files are checked against: in
/// bookworm-backports, not in bookworm (lists of their own, apart from the kernels').
const DEBIAN_BACKPORTS: Archive = Archive {
    name: "Debian backports",
    dir: "apt-debian-backports",
    sources: "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
",
    keyring: DEBIAN_KEYRING,
    packages: &[],
    arch: "amd64",
};

/// Ubuntu signs its images (`linux-image-*`) and splits the modules: `linux-modules-*` has the
/// common ones (virtio_fs, veth, nf_tables), `linux-modules-extra-*` the rest.
pub(super) const UBUNTU: Archive = Archive {
    name: "Ubuntu",
    dir: "apt-ubuntu",
    sources: "\
deb [signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] http://archive.ubuntu.com/ubuntu focal-updates main
deb [signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] http://security.ubuntu.com/ubuntu focal-security main
deb [signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] http://archive.ubuntu.com/ubuntu jammy-updates main
deb [signed-by=/usr/share/keyrings/ubuntu-archive-keyring.gpg] http://security.ubuntu.com/ubuntu jammy-security main
",
    keyring: UBUNTU_KEYRING,
    packages: &[
        "linux-image-{}",
        "linux-modules-{}",
        "linux-modules-extra-{}",
    ],
    arch: "amd64",
};

impl Archive {
    fn apt(&self) -> std::path::PathBuf {
        Path::new(CACHE).join(self.dir)
    }

    fn apt_private(&self) -> Vec<String> {
        let c = self.apt();
        vec![
            format!(
                "-oDir::Etc::SourceList={}",
                c.join("sources.list").display()
            ),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={}", c.join("lists").display()),
            format!("-oDir::Cache={}", c.display()),
            "-oDir::State::status=/dev/null".into(),
            format!("-oAPT::Architecture={}", self.arch),
            format!("-oAPT::Architectures={}", self.arch),
            "-oAPT::Sandbox::User=root".into(),
            "-qq".into(),
        ]
    }

    /// Writes the sources and updates the lists. Called only before a download, which needs the
    /// network anyway: lists kept from an earlier run may name packages the archive has since
    /// removed (superseded kernels are).
    fn lists(&self) -> Result<()> {
        if !Path::new(self.keyring).is_file() {
            if self.keyring != UBUNTU_KEYRING {
                bail!("no {} (debian-archive-keyring)", self.keyring);
            }
            ubuntu_keyring()?;
        }
        let apt = self.apt();
        std::fs::create_dir_all(apt.join("lists/partial"))?;
        std::fs::create_dir_all(apt.join("archives/partial"))?;
        std::fs::write(apt.join("sources.list"), self.sources)?;
        say(&format!("updating the private apt lists ({})", self.name));
        run(Command::new("apt-get")
            .args(self.apt_private())
            .arg("update"))?;
        Ok(())
    }
}

/// Debian's `ubuntu-keyring`, downloaded from bookworm-backports and installed with apt.
fn ubuntu_keyring() -> Result<()> {
    say("installing Debian's ubuntu-keyring (bookworm-backports)");
    DEBIAN_BACKPORTS.lists()?;
    let dir = Path::new(CACHE).join("debs");
    std::fs::create_dir_all(&dir)?;
    clear_debs(&dir, "ubuntu-keyring")?;
    run(Command::new("apt-get")
        .current_dir(&dir)
        .args(DEBIAN_BACKPORTS.apt_private())
        .args(["download", "ubuntu-keyring"]))?;
    let deb = find_deb(&dir, "ubuntu-keyring")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if !Path::new(UBUNTU_KEYRING).is_file() {
        bail!("ubuntu-keyring installed no {UBUNTU_KEYRING}");
    }
    Ok(())
}

/// Removes earlier downloads of `package` from `dir`, so that [`find_deb`] finds the one about
/// to be downloaded.
fn clear_debs(dir: &Path, package: &str) -> Result<()> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// The one `.deb` of `package` in `dir` (see [`clear_debs`]).
fn find_deb(dir: &Path, package: &str) -> Result<std::path::PathBuf> {
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("{package}: no .deb in {} after download", dir.display()))
}

/// The installed kernel release of `s` (e.g. "6.1.0-57-cloud-amd64"), downloading and
/// installing it the first time. A kernel once installed is kept: later runs need no network.
pub fn kernel(s: &Series) -> Result<String> {
    let marker = Path::new(CACHE).join(format!("{}.release", s.name));
    if let Ok(kver) = std::fs::read_to_string(&marker) {
        let kver = kver.trim().to_owned();
        if installed(&kver) {
            say(&format!("kernel {} present: {kver}", s.name));
            return Ok(kver);
        }
    }
    s.archive.lists()?;
    let image = image_package(s)?;
    let kver = image
        .strip_prefix("linux-image-")
        .context("image package name")?
        .to_owned();
    let packages: Vec<String> = s
        .archive
        .packages
        .iter()
        .map(|p| p.replace("{}", &kver))
        .collect();
    say(&format!("downloading {}", packages.join(" ")));
    let debs = Path::new(CACHE).join("debs");
    std::fs::create_dir_all(&debs)?;
    for p in &packages {
        clear_debs(&debs, p)?;
    }
    run(Command::new("apt-get")
        .current_dir(&debs)
        .args(s.archive.apt_private())
        .arg("download")
        .args(&packages))?;
    let debs = packages
        .iter()
        .map(|p| find_deb(&debs, p))
        .collect::<Result<Vec<_>>>()?;
    install_debs(&debs, &kver)?;
    std::fs::write(&marker, &kver)?;
    say(&format!("kernel {} installed: {kver}", s.name));
    Ok(kver)
}

fn installed(kver: &str) -> bool {
    Path::new(&format!("/boot/vmlinuz-{kver}")).is_file()
        && Path::new(&format!("/lib/modules/{kver}/modules.dep")).is_file()
}

/// The image package the newest meta package of the series depends on.
fn image_package(s: &Series) -> Result<String> {
    let out = output_ok(
        Command::new("apt-cache")
            .args(s.archive.apt_private())
            .args(["show", s.meta]),
    )
    .with_context(|| format!("apt-cache show {}", s.meta))?;
    let mut best: Option<(String, String)> = None;
    for stanza in out.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
            continue;
        };
        if !version.starts_with(s.version_prefix) {
            continue;
        }
        let newer = best.as_ref().is_none_or(|(v, _)| {
            Command::new("dpkg")
                .args(["--compare-versions", &version, "gt", v])
                .status()
                .is_ok_and(|st| st.success())
        });
        if newer {
            let image = depends
                .split(',')
                .map(|d| d.split_whitespace().next().unwrap_or_default().to_owned())
                .find(|d| d.starts_with("linux-image-"))
                .with_context(|| format!("{} {version}: no image dependency", s.meta))?;
            best = Some((version, image));
        }
    }
    best.map(|(_, image)| image)
        .with_context(|| format!("no {} {}* in the archive", s.meta, s.version_prefix))
}

/// Unpacks the image and module packages of `kver` into /boot and /lib/modules.
fn install_debs(debs: &[std::path::PathBuf], kver: &str) -> Result<()> {
    let x = Path::new(CACHE).join(format!("x-{kver}"));
    let _ = std::fs::remove_dir_all(&x);
    for deb in debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x))?;
    }
    std::fs::copy(
        x.join(format!("boot/vmlinuz-{kver}")),
        format!("/boot/vmlinuz-{kver}"),
    )?;
    let modules = format!("/lib/modules/{kver}");
    let _ = std::fs::remove_dir_all(&modules);
    std::fs::create_dir_all("/lib/modules")?;
    run(Command::new("cp")
        .arg("-a")
        .arg(x.join(format!("lib/modules/{kver}")))
        .arg(&modules))?;
    run(Command::new("depmod").arg(kver))?;
    std::fs::remove_dir_all(&x)?;
    Ok(())
}
