//! The one renderer of events: every record rst-trace prints goes through here, as text or as
//! JSON (NDJSON), per docs/output.md.

use std::{fmt::Write as _, net::SocketAddr};

#[cfg(test)]
use serde_json::Value;
use serde_json::json;

use super::{
    fast::{Clock, Format, json_str, push_u64, rfc3339, visible},
    fields::{json_endpoint, json_opt_str, json_process, process_text},
};
use crate::explain::{DetailValue, Origin, Process, Report};

/// `"cgroup":{...}`: the id, and the path and systemd unit once resolved; `null` when the id
/// is unknown.
fn json_cgroup(out: &mut String, p: Option<&Process>) {
    let Some(p) = p.filter(|p| p.cgroup != 0) else {
        out.push_str("null");
        return;
    };
    let identity = p.identity.as_deref();
    out.push_str("{\"id\":");
    push_u64(out, p.cgroup);
    out.push_str(",\"path\":");
    json_opt_str(out, identity.and_then(|i| i.cgroup_path.as_deref()));
    out.push_str(",\"unit\":");
    json_opt_str(out, identity.and_then(|i| i.systemd_unit.as_deref()));
    out.push('}');
}

/// The process's container, or `null` outside containers (or while unresolved).
fn json_container(out: &mut String, p: Option<&Process>) {
    let c = p
        .and_then(|p| p.identity.as_deref())
        .and_then(|i| i.container.as_ref());
    let Some(c) = c else {
        out.push_str("null");
        return;
    };
    out.push_str("{\"id\":");
    json_str(out, &c.id);
    out.push_str(",\"runtime\":");
    json_str(out, c.runtime.as_str());
    out.push_str(",\"name\":");
    json_opt_str(out, c.display_name());
    out.push_str(",\"pod\":");
    json_opt_str(out, c.pod.as_deref());
    out.push_str(",\"namespace\":");
    json_opt_str(out, c.namespace.as_deref());
    out.push('}');
}

/// Appends one reset as a JSON object (one NDJSON line without the newline). Written directly,
/// not through a `serde_json::Value` tree: in a reset storm this is the hot path.
pub fn report_json_into(out: &mut String, r: &Report, clock: &Clock) {
    out.push_str("{\"type\":\"rst\",\"time\":");
    json_str(out, &rfc3339(clock.wall_ns(r.mono_ns), 9));
    out.push_str(",\"mono_ns\":");
    push_u64(out, r.mono_ns);
    out.push_str(",\"direction\":");
    json_str(out, r.direction.as_str());
    out.push_str(",\"origin\":");
    json_opt_str(out, r.origin.map(Origin::as_str));
    out.push_str(",\"condition\":");
    json_str(out, r.condition.as_str());
    out.push_str(",\"explanation\":");
    json_str(out, &r.explanation);
    out.push_str(",\"kernel_reason\":");
    json_opt_str(out, r.kernel_reason.as_deref());
    out.push_str(",\"state\":");
    json_opt_str(out, r.state.map(|s| s.name()).as_deref());
    out.push_str(",\"family\":");
    json_str(out, if r.ipv6 { "ipv6" } else { "ipv4" });
    out.push_str(",\"local\":");
    json_endpoint(out, &r.local);
    out.push_str(",\"remote\":");
    json_endpoint(out, &r.remote);
    out.push_str(",\"process\":");
    json_process(out, r.process.as_ref());
    out.push_str(",\"cgroup\":");
    json_cgroup(out, r.process.as_ref());
    out.push_str(",\"container\":");
    json_container(out, r.process.as_ref());
    out.push_str(",\"attribution\":");
    json_str(out, r.attribution.as_str());
    out.push_str(",\"netns\":");
    push_u64(out, u64::from(r.netns));
    out.push_str(",\"socket_cookie\":");
    match r.socket_cookie {
        Some(c) => push_u64(out, c),
        None => out.push_str("null"),
    }
    out.push_str(",\"detail\":{");
    for (i, (k, v)) in r.detail.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, k.as_str());
        out.push(':');
        match v {
            DetailValue::Num(n) => push_u64(out, *n),
            DetailValue::Text(t) => json_str(out, t),
        }
    }
    let _ = write!(out, "}},\"inferred\":{}", r.inferred);
    if let Some(s) = &r.stacks {
        super::stacks::json_stacks(out, s);
    }
    if let Some(l) = &r.linked {
        out.push_str(",\"linked_sent\":{\"condition\":");
        json_str(out, l.condition.as_str());
        out.push_str(",\"process\":");
        json_process(out, l.process.as_ref());
        out.push_str(",\"container\":");
        json_container(out, l.process.as_ref());
        let _ = write!(out, ",\"mono_ns\":{}}}", l.mono_ns);
    }
    if let Some(n) = &r.app_notice {
        super::app::json_notice(out, n, clock);
    }
    out.push('}');
}

/// The JSON object as a `serde_json::Value` (tests and tools).
#[cfg(test)]
pub fn report_json(r: &Report, clock: &Clock) -> Value {
    let mut s = String::new();
    report_json_into(&mut s, r, clock);
    serde_json::from_str(&s).expect("valid JSON")
}

fn endpoint_text(a: &SocketAddr) -> String {
    // SocketAddr's Display already brackets IPv6: [::1]:8888
    a.to_string()
}

/// One aligned line per reset.
pub fn report_text(r: &Report, clock: &Clock, color: bool) -> String {
    let time = rfc3339(clock.wall_ns(r.mono_ns), 6);
    // The direction's tag, and its color on a terminal.
    let (dir, dir_color) = match r.direction {
        crate::explain::Direction::Sent => ("SENT", "\x1b[31m"),
        crate::explain::Direction::Received => ("RECV", "\x1b[33m"),
    };
    let process = match (&r.process, r.no_process_why) {
        (Some(p), _) => process_text(p),
        (None, Some(why)) => format!("-({why})"),
        (None, None) => "-".to_owned(),
    };
    let ends = format!("{} > {}", endpoint_text(&r.local), endpoint_text(&r.remote));
    let state = r.state.map(|s| s.name()).unwrap_or_else(|| "-".into());
    let (c0, c1, b0) = if color {
        (dir_color, "\x1b[0m", "\x1b[1m")
    } else {
        ("", "", "")
    };
    // The process field and the sentence carry names from outside: see `visible`.
    let process = visible(&process);
    format!(
        "{time} {c0}{dir}{c1} {process:<24} {ends:<45} {state:<12} {b0}{cond:<27}{c1} {expl}",
        cond = r.condition.as_str(),
        expl = visible(&r.explanation)
    )
}

#[cfg(test)]
pub fn render(r: &Report, clock: &Clock, fmt: Format) -> String {
    let mut s = String::new();
    render_into(&mut s, r, clock, fmt);
    s
}

/// `render` into a reused buffer (cleared first): the event loop's path, one allocation less
/// per event.
pub fn render_into(out: &mut String, r: &Report, clock: &Clock, fmt: Format) {
    out.clear();
    match fmt {
        Format::Json => report_json_into(out, r, clock),
        Format::Text { color } => {
            out.push_str(&report_text(r, clock, color));
            if let Some(s) = &r.stacks {
                super::stacks::text_stacks(out, s);
            }
            if let Some(n) = &r.app_notice {
                out.push('\n');
                out.push_str(&super::app::notice_text(n, r.condition.as_str(), clock));
            }
        }
    }
}

/// A `lost` record: events the kernel side could not queue (ring buffer full).
pub fn lost(count: u64, total: u64, clock: &Clock, fmt: Format) -> String {
    let now = Clock::mono_now();
    match fmt {
        Format::Json => json!({
            "type": "lost",
            "count": count,
            "total": total,
            "time": rfc3339(clock.wall_ns(now), 9),
            "mono_ns": now,
        })
        .to_string(),
        Format::Text { .. } => format!(
            "rst-trace: warning: {count} reset events lost ({total} in total; ring buffer full, or the kernel skipped a reset program that was already running on that CPU): raise --ring-size or filter with --pid/--port"
        ),
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
