//! Tracefs: where it is, and what the tracepoint `format` files say about record layouts.
//!
//! The record layout of `tcp:tcp_send_reset` changed twice (6.1 added `family`; 6.10 replaced the
//! split address fields with `sockaddr` buffers and added `reason`), and `enum sk_rst_reason` was
//! renumbered in 6.12. Reading both from the running kernel's `format` files keeps one binary
//! correct on all of them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// A parsed tracefs `format` file.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub name: String,
    pub fields: HashMap<String, Field>,
    pub print_fmt: String,
}

impl Format {
    pub fn parse(text: &str) -> Result<Self> {
        let mut fmt = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                fmt.name = name.trim().to_owned();
            } else if let Some(rest) = line.strip_prefix("field:") {
                // field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
                let mut parts = rest.split(';').map(str::trim);
                let decl = parts.next().unwrap_or_default();
                let mut offset = None;
                let mut size = None;
                for p in parts {
                    if let Some(v) = p.strip_prefix("offset:") {
                        offset = v.parse::<u16>().ok();
                    } else if let Some(v) = p.strip_prefix("size:") {
                        size = v.parse::<u16>().ok();
                    }
                }
                let ident = decl
                    .rsplit(|c: char| c.is_whitespace() || c == '*')
                    .next()
                    .unwrap_or_default();
                let ident = ident.split('[').next().unwrap_or_default();
                let (Some(offset), Some(size)) = (offset, size) else {
                    return Err(anyhow!("malformed field line in format file: {line}"));
                };
                if ident.is_empty() {
                    return Err(anyhow!("field without a name in format file: {line}"));
                }
                fmt.fields.insert(ident.to_owned(), Field { offset, size });
            } else if let Some(p) = line.strip_prefix("print fmt:") {
                fmt.print_fmt = p.trim().to_owned();
            }
        }
        if fmt.fields.is_empty() {
            return Err(anyhow!("format file has no fields"));
        }
        Ok(fmt)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// Offset of a field that must exist with the given size.
    pub fn require(&self, name: &str, size: u16) -> Result<u16> {
        match self.fields.get(name) {
            Some(f) if f.size == size => Ok(f.offset),
            Some(f) => Err(anyhow!(
                "tracepoint {}: field `{name}` has size {}, expected {size}",
                self.name,
                f.size
            )),
            None => Err(anyhow!("tracepoint {}: no field `{name}`", self.name)),
        }
    }

    /// Offset of an optional field (must have the given size when present).
    pub fn optional(&self, name: &str, size: u16) -> Result<Option<u16>> {
        if self.fields.contains_key(name) {
            self.require(name, size).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The `{ value, "NAME" }` table that `__print_symbolic(REC->field, ...)` prints for a field.
    /// Values written as numbers only (enum names such as `TCP_ESTABLISHED` are skipped).
    pub fn symbols(&self, field: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return out;
        };
        let mut rest = &self.print_fmt[start + needle.len()..];
        // Entries look like `{ 1, "NO_SOCKET" }`; the list ends at the closing `)`.
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some(body) = rest.strip_prefix('{') else {
                break;
            };
            let Some(end) = body.find('}') else {
                break;
            };
            let entry = &body[..end];
            rest = &body[end + 1..];
            let mut kv = entry.splitn(2, ',');
            let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                continue;
            };
            if let Ok(k) = k.trim().parse::<u32>() {
                out.insert(k, v.trim().trim_matches('"').to_owned());
            }
        }
        out
    }
}

/// Where tracefs is mounted, mounting it if it is not (as `perf` and `bpftrace` do).
pub fn locate() -> Result<PathBuf> {
    const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    for c in CANDIDATES {
        if Path::new(c).join("events").is_dir() {
            return Ok(PathBuf::from(c));
        }
    }
    let target = CANDIDATES[0];
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", target])
        .stderr(std::process::Stdio::null())
        .status();
    if matches!(status, Ok(s) if s.success()) && Path::new(target).join("events").is_dir() {
        return Ok(PathBuf::from(target));
    }
    Err(anyhow!(
        "tracefs is not mounted and could not be mounted at {target}: \
         mount it with `mount -t tracefs nodev {target}` (the kernel needs CONFIG_FTRACE)"
    ))
}

/// Reads `events/<category>/<name>/format`; `Ok(None)` if the kernel has no such tracepoint.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> Result<Option<Format>> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => Format::parse(&text)
            .with_context(|| format!("parsing {}", path.display()))
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
