//! Real application clients, in C (compiled with `cc` at test time) and Python, that make one
//! socket call fail because of a reset or a timeout (`tests/clients/`), run as [`Peer`]s.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::{Netns, Peer};

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// `tests/clients/apperr_client.c`, compiled once per test process with frame pointers and
/// debug info into the temporary directory (writable in the kernel-matrix guests too).
pub fn c_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("rstt-capp-{}", std::process::id()));
        let status = Command::new("cc")
            .args([
                "-O1",
                "-g",
                "-fno-omit-frame-pointer",
                "-pthread",
                "-Wall",
                "-o",
            ])
            .arg(&out)
            .arg(clients_dir().join("apperr_client.c"))
            .status()
            .expect("running cc (./x setup installs build-essential)");
        assert!(status.success(), "cc failed to build apperr_client.c");
        out
    })
}

/// Which client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    C,
    Python,
}

impl Lang {
    /// The process name the client gives itself.
    pub fn comm(self) -> &'static str {
        match self {
            Self::C => "rstt-capp",
            Self::Python => "rstt-pyapp",
        }
    }

    /// The failing call's thread name: the C client makes it on a thread of its own.
    pub fn thread(self) -> Option<&'static str> {
        match self {
            Self::C => Some("c-worker"),
            Self::Python => None,
        }
    }
}

/// Starts the client in `ns`: `MODE ADDR PORT` (see the clients' usage).
pub fn spawn_client(ns: &Netns, lang: Lang, mode: &str, addr: &str, port: u16) -> Peer {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    match lang {
        Lang::C => cmd.arg(c_client()),
        Lang::Python => cmd
            .arg("/usr/bin/python3")
            .arg(clients_dir().join("apperr_client.py")),
    };
    cmd.args([mode, addr, &port.to_string()]);
    Peer::from_command(cmd)
}

/// A client's `fail CALL fd FD tid TID errno NAME` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    pub call: String,
    pub fd: i64,
    pub tid: u64,
    pub errno: String,
}

impl Failed {
    pub fn parse(line: &str) -> Self {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert!(
            w.len() == 8 && w[0] == "fail" && w[2] == "fd" && w[4] == "tid" && w[6] == "errno",
            "client line {line:?}"
        );
        Self {
            call: w[1].to_owned(),
            fd: w[3].parse().expect("fd"),
            tid: w[5].parse().expect("tid"),
            errno: w[7].to_owned(),
        }
    }
}
