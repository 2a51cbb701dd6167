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
