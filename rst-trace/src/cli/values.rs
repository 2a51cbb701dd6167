//! The checks of option values clap cannot express: each error names what is valid.

use crate::explain::Condition;

pub(super) fn parse_condition(s: &str) -> Result<Condition, String> {
    if let Some(c) = Condition::from_id(s) {
        Ok(c)
    } else {
        let ids: Vec<&str> = Condition::ALL.iter().map(|c| c.as_str()).collect();
        Err(format!(
            "unknown condition id; valid ids: {}",
            ids.join(", ")
        ))
    }
}

/// A process id: 1 or more (0 is the kernel's idle task, which owns no socket).
pub(super) fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("0 is no process's id: give a running program's pid (pgrep NAME)".into()),
        Ok(pid) => Ok(pid),
        Err(_) => Err("a pid is a number of 1 or more (pgrep NAME prints them)".into()),
    }
}

/// A TCP port: 1 to 65535 (no connection has port 0 at either end).
pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is no connection's port: give one of 1 to 65535".into()),
        Ok(port) => Ok(port),
        Err(_) => Err("a port is a number from 1 to 65535".into()),
    }
}

pub(super) fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(
            "a comm is 1 to 15 bytes (the kernel truncates longer names): give the first 15".into(),
        );
    }
    Ok(s.to_owned())
}

pub(super) fn parse_container(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('/') {
        return Err("give a container's name or the first digits of its id (docker ps)".into());
    }
    Ok(s.to_owned())
}

pub(super) fn parse_pod(s: &str) -> Result<String, String> {
    let name = match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.contains('/') => name,
        Some(_) => return Err("a pod is NAME or NAMESPACE/NAME".into()),
        None => s,
    };
    if name.is_empty() {
        return Err("a pod is NAME or NAMESPACE/NAME".into());
    }
    Ok(s.to_owned())
}

pub(super) fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096 bytes".into());
    }
    Ok(n)
}
