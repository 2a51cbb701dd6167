//! `--stacks`: a sent reset's or a failing call's user and kernel stacks, in JSON (`"stacks"`)
//! and as indented text lines after the event's (or the `APP`) line (docs/output.md).

use std::fmt::Write as _;

use super::fast::{json_str, push_u64, visible};
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
                let _ = write!(out, " none ({})", visible(why));
            }
            (Some(why), false) => {
                let _ = write!(out, " ({})", visible(why));
            }
            (None, _) => {}
        }
        for (i, f) in st.frames.iter().enumerate() {
            // Symbols, files and module paths come from the traced process's binaries.
            let frame = text_frame(f);
            let _ = write!(out, "\n      #{i:<2} {:#018x} {}", f.addr, visible(&frame));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stacks() -> Stacks {
        Stacks {
            user: Stack {
                frames: vec![
                    Frame {
                        addr: 0x7f00_0000_1000,
                        function: Some("close".into()),
                        module: Some("/lib/libc.so.6".into()),
                        ..Frame::default()
                    },
                    Frame {
                        addr: 0x5500_0000_1234,
                        function: Some("abort_with_unread_data".into()),
                        file: Some("/src/a \"b\".c".into()),
                        line: Some(17),
                        module: Some("/usr/bin/server".into()),
                        offset: None,
                    },
                    Frame {
                        addr: 0x5500_0000_9999,
                        module: Some("/usr/bin/server".into()),
                        offset: Some(0x9999),
                        ..Frame::default()
                    },
                ],
                error: None,
            },
            kernel: Stack {
                frames: Vec::new(),
                error: Some("EEXIST: taken".into()),
            },
        }
    }

    #[test]
    fn json_has_the_frames_and_the_reason_a_stack_is_empty() {
        let mut out = String::from("{\"x\":1");
        json_stacks(&mut out, &stacks());
        out.push('}');
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        let user = &v["stacks"]["user"];
        assert_eq!(user[0]["addr"], "0x7f0000001000");
        assert_eq!(user[0]["function"], "close");
        assert_eq!(user[0].get("line"), None);
        assert_eq!(user[1]["file"], "/src/a \"b\".c");
        assert_eq!(user[1]["line"], 17);
        assert_eq!(user[2]["offset"], "0x9999");
        assert_eq!(user[2].get("function"), None);
        assert_eq!(v["stacks"].get("user_error"), None);
        assert_eq!(v["stacks"]["kernel"], serde_json::json!([]));
        assert_eq!(v["stacks"]["kernel_error"], "EEXIST: taken");
    }

    #[test]
    fn text_indents_one_line_per_frame() {
        let mut out = String::from("EVENT");
        text_stacks(&mut out, &stacks());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "    user stack:");
        assert!(lines[2].starts_with("      #0  0x00007f0000001000 close [/lib/libc.so.6]"));
        assert!(lines[3].ends_with("abort_with_unread_data (/src/a \"b\".c:17) [/usr/bin/server]"));
        assert!(lines[4].ends_with("/usr/bin/server+0x9999"), "{}", lines[4]);
        assert_eq!(lines[5], "    kernel stack: none (EEXIST: taken)");
        assert_eq!(lines.len(), 6);
    }
}
