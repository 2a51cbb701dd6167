//! The fields both event records (resets) and application records write the same way: a
//! process, an endpoint, an optional string.

use std::net::SocketAddr;

use super::fast::{json_str, push_ip, push_u64};
use crate::explain::Process;

pub(super) fn json_opt_str(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

pub(super) fn json_endpoint(out: &mut String, a: &SocketAddr) {
    // An address never needs escaping.
    out.push_str("{\"addr\":\"");
    push_ip(out, &a.ip());
    out.push_str("\",\"port\":");
    push_u64(out, u64::from(a.port()));
    out.push('}');
}

pub(super) fn json_process(out: &mut String, p: Option<&Process>) {
    match p {
        Some(p) => {
            out.push_str("{\"pid\":");
            push_u64(out, u64::from(p.pid));
            out.push_str(",\"tid\":");
            push_u64(out, u64::from(p.tid));
            out.push_str(",\"comm\":");
            json_str(out, &p.comm);
            if let Some(t) = &p.thread {
                out.push_str(",\"thread\":");
                json_str(out, t);
            }
            out.push_str(",\"uid\":");
            push_u64(out, u64::from(p.uid));
            out.push('}');
        }
        None => out.push_str("null"),
    }
}

/// `comm[pid]`, then `@NAMESPACE/POD` or `@CONTAINER` when it runs in one.
pub(super) fn process_text(p: &Process) -> String {
    let container = p.identity.as_ref().and_then(|i| i.container.as_ref());
    match container {
        Some(c) => format!("{p}@{}", c.pod_label().unwrap_or_else(|| c.label())),
        None => p.to_string(),
    }
}
