//! The application's side, rendered: the `app_error` object on a reset, the `app_error` and
//! `not_noticed` records (docs/output.md), and their text lines; with `--stacks`, the failing
//! call's stacks (`"stacks"`, indented lines), as on a sent reset.

use std::net::SocketAddr;

use super::{
    fast::{Clock, Format, json_str, push_u64, rfc3339, visible},
    fields::{json_endpoint, json_opt_str, json_process, process_text},
    stacks::{json_stacks, text_stacks},
};
use crate::{
    apperr::{AppError, Joined, NOTICE_WINDOW_NS, Outcome},
    explain::{AppNotice, Process, TcpState},
};

/// `1.234 ms`, `12.3 s`: a delay for a sentence.
pub fn human_ns(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.3} ms", ns as f64 / 1e6)
    } else {
        format!("{:.3} s", ns as f64 / 1e9)
    }
}

/// The call's own fields: call, fd, errno, process, time, mono_ns.
fn json_call(out: &mut String, e: &AppError, clock: &Clock) {
    out.push_str("\"call\":");
    json_str(out, &e.call.name());
    out.push_str(",\"fd\":");
    out.push_str(itoa::Buffer::new().format(e.fd));
    out.push_str(",\"errno\":");
    json_str(out, &e.errno.name());
    out.push_str(",\"process\":");
    json_process(out, Some(&e.process));
    out.push_str(",\"time\":");
    json_str(out, &rfc3339(clock.wall_ns(e.mono_ns), 9));
    out.push_str(",\"mono_ns\":");
    push_u64(out, e.mono_ns);
}

/// `,"app_error":{...}` on a reset event: the call that noticed it before it was printed.
pub fn json_notice(out: &mut String, n: &AppNotice, clock: &Clock) {
    out.push_str(",\"app_error\":{");
    json_call(out, &n.error, clock);
    out.push_str(",\"delay_ns\":");
    push_u64(out, n.delay_ns);
    if let Some(st) = &n.error.stacks {
        json_stacks(out, st);
    }
    out.push('}');
}

/// The socket part of a record: family, endpoints, state, netns, cookie.
#[allow(clippy::too_many_arguments)]
fn json_socket(
    out: &mut String,
    ipv6: bool,
    local: &SocketAddr,
    remote: &SocketAddr,
    state: Option<TcpState>,
    netns: u32,
    cookie: Option<u64>,
) {
    out.push_str(",\"family\":");
    json_str(out, if ipv6 { "ipv6" } else { "ipv4" });
    out.push_str(",\"local\":");
    json_endpoint(out, local);
    out.push_str(",\"remote\":");
    json_endpoint(out, remote);
    out.push_str(",\"state\":");
    json_opt_str(out, state.map(TcpState::name).as_deref());
    out.push_str(",\"netns\":");
    push_u64(out, u64::from(netns));
    out.push_str(",\"socket_cookie\":");
    match cookie {
        Some(c) => push_u64(out, c),
        None => out.push_str("null"),
    }
}

/// The sentence for a call joined to its reset.
fn joined_sentence(e: &AppError, condition: &str, delay_ns: u64) -> String {
    let thread = e
        .process
        .thread
        .as_deref()
        .map(|t| format!(" thread {t}"))
        .unwrap_or_default();
    format!(
        "{}{thread} (tid {}) noticed the reset ({condition}): {} failed with {} {} after it",
        e.process,
        e.process.tid,
        e.call_text(),
        e.errno.name(),
        human_ns(delay_ns)
    )
}

fn app_record_json(e: &AppError, joined: Option<&Joined>, clock: &Clock) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("{\"type\":\"app_error\",");
    json_call(&mut out, e, clock);
    json_socket(
        &mut out, e.ipv6, &e.local, &e.remote, e.state, e.netns, e.cookie,
    );
    out.push_str(",\"reset\":");
    match joined {
        Some(j) => {
            out.push_str("{\"mono_ns\":");
            push_u64(&mut out, j.reset.reset_mono_ns);
            out.push_str(",\"condition\":");
            json_str(&mut out, j.reset.condition.as_str());
            out.push_str(",\"direction\":");
            json_str(&mut out, j.reset.direction.as_str());
            out.push_str("},\"delay_ns\":");
            push_u64(&mut out, j.delay_ns);
        }
        None => out.push_str("null,\"delay_ns\":null"),
    }
    out.push_str(",\"explanation\":");
    let why = match joined {
        Some(j) => joined_sentence(e, j.reset.condition.as_str(), j.delay_ns),
        None => e.explain_alone(),
    };
    json_str(&mut out, &why);
    if let Some(st) = &e.stacks {
        json_stacks(&mut out, st);
    }
    out.push('}');
    out
}

/// One text line in the event lines' columns: `APP` where they say SENT or RECV.
fn text_line(
    clock: &Clock,
    mono_ns: u64,
    process: Option<&Process>,
    ends: (&SocketAddr, &SocketAddr),
    state: Option<TcpState>,
    what: &str,
    sentence: &str,
) -> String {
    let time = rfc3339(clock.wall_ns(mono_ns), 6);
    let process = process.map_or_else(|| "-".to_owned(), process_text);
    let ends = format!("{} > {}", ends.0, ends.1);
    let state = state.map(TcpState::name).unwrap_or_else(|| "-".into());
    // The process field and the sentence carry names from outside: see `visible`.
    let (process, sentence) = (visible(&process), visible(sentence));
    format!("{time} APP  {process:<24} {ends:<45} {state:<12} {what:<27} {sentence}")
}

/// The follow-up text line under a reset whose call noticed it (and its stacks' lines).
pub fn notice_text(n: &AppNotice, condition: &str, clock: &Clock) -> String {
    call_text(
        clock,
        &n.error,
        &joined_sentence(&n.error, condition, n.delay_ns),
    )
}

/// A failing call's text line with `sentence`, followed (`--stacks`) by its stacks' indented
/// lines.
fn call_text(clock: &Clock, e: &AppError, sentence: &str) -> String {
    let mut line = text_line(
        clock,
        e.mono_ns,
        Some(&e.process),
        (&e.local, &e.remote),
        e.state,
        &e.errno.name(),
        sentence,
    );
    if let Some(st) = &e.stacks {
        text_stacks(&mut line, st);
    }
    line
}

/// An `app_error` or `not_noticed` record, as JSON or a text line.
pub fn outcome(o: &Outcome, clock: &Clock, fmt: Format) -> String {
    let json = fmt == Format::Json;
    match o {
        Outcome::Joined(j) if json => app_record_json(&j.error, Some(j), clock),
        Outcome::Alone(e) if json => app_record_json(e, None, clock),
        Outcome::Joined(j) => call_text(
            clock,
            &j.error,
            &joined_sentence(&j.error, j.reset.condition.as_str(), j.delay_ns),
        ),
        Outcome::Alone(e) => call_text(clock, e, &e.explain_alone()),
        Outcome::NotNoticed(p, waited) => {
            let now = p.reset_mono_ns + waited;
            let who = p
                .process
                .as_ref()
                .map_or_else(|| "its application".to_owned(), ToString::to_string);
            let sentence = format!(
                "no call on the socket failed in the {} after the reset ({}, at {}): {who} has not used it since, or closed it without a failing call (close() reports no error; io_uring operations are not seen)",
                human_ns(*waited),
                p.condition.as_str(),
                rfc3339(clock.wall_ns(p.reset_mono_ns), 6)
            );
            if !json {
                return text_line(
                    clock,
                    now,
                    p.process.as_ref(),
                    (&p.local, &p.remote),
                    p.state,
                    "not_noticed",
                    &sentence,
                );
            }
            let mut out = String::with_capacity(512);
            out.push_str("{\"type\":\"not_noticed\",\"time\":");
            json_str(&mut out, &rfc3339(clock.wall_ns(now), 9));
            out.push_str(",\"mono_ns\":");
            push_u64(&mut out, now);
            out.push_str(",\"reset\":{\"mono_ns\":");
            push_u64(&mut out, p.reset_mono_ns);
            out.push_str(",\"condition\":");
            json_str(&mut out, p.condition.as_str());
            out.push_str(",\"direction\":");
            json_str(&mut out, p.direction.as_str());
            out.push_str("},\"waited_ns\":");
            push_u64(&mut out, *waited);
            out.push_str(",\"process\":");
            json_process(&mut out, p.process.as_ref());
            json_socket(
                &mut out, p.ipv6, &p.local, &p.remote, p.state, p.netns, p.cookie,
            );
            out.push_str(",\"explanation\":");
            json_str(&mut out, &sentence);
            out.push('}');
            out
        }
    }
}

/// How long [`NOTICE_WINDOW_NS`] is, for the summary.
pub fn notice_window_s() -> u64 {
    NOTICE_WINDOW_NS / 1_000_000_000
}
