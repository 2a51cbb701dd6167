//! `--stacks`: a sent reset's user and kernel stacks, in JSON (`"stacks"`) and as indented text
//! lines after the event's line (docs/output.md).

use std::fmt::Write as _;

use super::fast::{json_str, push_u64};
use crate::stacks::{Frame, Stack, Stacks};

/// `,"stacks":{"user":[...],"kernel":[...]}`; `"user_error"`/`"kernel_error"` say why a stack
/// is empty (not captured) or has bare addresses (not symbolized).
pub fn json_stacks(out: &mut String, s: &Stacks) {
    out.push_str(",\"stacks\":{");
    json_stack(out, "user", &s.user);
    out.push(',');
    json_stack(out, "kernel", &s.kernel);
    out.push('}');
}

fn json_stack(out: &mut String, which: &str, st: &Stack) {
    let _ = write!(out, "\"{which}\":[");
    for (i, f) in st.frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_frame(out, f);
    }
    out.push(']');
    if let Some(why) = &st.error {
        let _ = write!(out, ",\"{which}_error\":");
        json_str(out, why);
    }
}

fn json_frame(out: &mut String, f: &Frame) {
    let _ = write!(out, "{{\"addr\":\"{:#x}\"", f.addr);
    if let Some(v) = &f.function {
        out.push_str(",\"function\":");
        json_str(out, v);
    }
    if let Some(v) = &f.file {
        out.push_str(",\"file\":");
        json_str(out, v);
    }
    if let Some(v) = f.line {
        out.push_str(",\"line\":");
        push_u64(out, u64::from(v));
    }
    if let Some(v) = &f.module {
        out.push_str(",\"module\":");
        json_str(out, v);
    }
    if let Some(v) = f.offset {
        let _ = write!(out, ",\"offset\":\"{v:#x}\"");
    }
    out.push('}');
}

/// The text lines after the event line: `    user stack:` then one `      #N ...` per frame.
pub fn text_stacks(out: &mut String, s: &Stacks) {
    for (which, st) in [("user", &s.user), ("kernel", &s.kernel)] {
        let _ = write!(out, "\n    {which} stack:");
        match (&st.error, st.frames.is_empty()) {
            (Some(why), true) => {
                let _ = write!(out, " none ({why})");
            }
            (Some(why), false) => {
                let _ = write!(out, " ({why})");
            }
            (None, _) => {}
        }
        for (i, f) in st.frames.iter().enumerate() {
            let _ = write!(out, "\n      #{i:<2} {:#018x} {}", f.addr, text_frame(f));
        }
    }
}

/// `function (file:line) [module]`, or `module+0xOFFSET`, or `?`.
fn text_frame(f: &Frame) -> String {
    let mut s = String::new();
    match (&f.function, &f.module, f.offset) {
        (Some(func), _, _) => s.push_str(func),
        (None, Some(m), Some(off)) => {
            let _ = write!(s, "{m}+{off:#x}");
            return s;
        }
        _ => s.push('?'),
    }
    if let Some(file) = &f.file {
        let _ = write!(s, " ({file}");
        if let Some(l) = f.line {
            let _ = write!(s, ":{l}");
        }
        s.push(')');
    }
    if let Some(m) = &f.module {
        let _ = write!(s, " [{m}]");
    }
    s
}
