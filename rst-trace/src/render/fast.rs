//! The fast formatting helpers the renderers share: time stamps, integers, addresses and JSON
//! strings written straight into a reused buffer, without `format!` or serde per event.

use std::fmt::Write as _;

/// Converts kernel monotonic timestamps (`bpf_ktime_get_ns`) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, measured at start-up.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    #[cfg(test)]
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        self.offset_ns + i128::from(mono_ns)
    }

    pub fn mono_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

/// RFC 3339 UTC with `digits` fractional digits (9 = ns, 6 = µs).
pub fn rfc3339(wall_ns: i128, digits: u32) -> String {
    let secs = wall_ns.div_euclid(1_000_000_000) as i64;
    let nanos = wall_ns.rem_euclid(1_000_000_000) as u64;
    let mut out = String::with_capacity(31);
    // The date and time of day change once a second; a storm has thousands of events in it.
    thread_local! {
        static LAST_SECOND: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST_SECOND.with_borrow_mut(|(last, prefix)| {
        if *last != secs {
            *last = secs;
            *prefix = date_time(secs);
        }
        out.push_str(prefix);
    });
    if digits > 0 {
        out.push('.');
        push_fixed(&mut out, nanos / 10u64.pow(9 - digits), digits);
    }
    out.push('Z');
    out
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time.
fn date_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = String::with_capacity(20);
    if (0..10_000).contains(&y) {
        push_fixed(&mut out, y as u64, 4);
    } else {
        // Outside RFC 3339's range; only a broken clock gets here.
        let _ = write!(out, "{y:04}");
    }
    for (sep, n, width) in [
        ('-', m as u64, 2),
        ('-', d as u64, 2),
        ('T', (sod / 3600) as u64, 2),
        (':', (sod % 3600 / 60) as u64, 2),
        (':', (sod % 60) as u64, 2),
    ] {
        out.push(sep);
        push_fixed(&mut out, n, width);
    }
    out
}

/// Appends the low `width` decimal digits of `n`, zero-padded.
pub(super) fn push_fixed(out: &mut String, n: u64, width: u32) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n % 10u64.pow(width));
    for _ in digits.len()..width as usize {
        out.push('0');
    }
    out.push_str(digits);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text { color: bool },
    Json,
}

/// Appends `v` as a JSON string: quotes and escapes as serde_json writes them, and also DEL and
/// the C1 controls (U+0080-U+009F, which some terminals obey as escape sequences) as `\u00NN`:
/// JSON lines read in a terminal (`tail -f`) carry no control character at all.
pub(super) fn json_str(out: &mut String, v: &str) {
    out.push('"');
    // Copy runs that need no escaping in one go, eight bytes checked at a time: almost every
    // string here is plain ASCII, and this is the hottest function of a reset storm.
    let bytes = v.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8)
            && !needs_escape8(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])))
        {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            b if b < 0x20 || b == 0x7f => "",
            // U+0080-U+009F are 0xc2 0x80-0x9f in UTF-8.
            0xc2 if bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) => {
                out.push_str(&v[start..i]);
                let _ = write!(out, "\\u{:04x}", bytes[i + 1]);
                i += 2;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // Every byte matched above is ASCII, so `i` is on a char boundary.
        out.push_str(&v[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        i += 1;
        start = i;
    }
    out.push_str(&v[start..]);
    out.push('"');
}

/// Whether any of eight bytes is a control character, `"`, `\\`, DEL or 0xc2 (the first byte
/// of a C1 control) (the classic "has a byte less than n" and "has a zero byte" bit tricks;
/// may only err towards true).
fn needs_escape8(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |y: u64| y.wrapping_sub(ONES) & !y & HIGH;
    let has = |b: u8| has_zero(x ^ (ONES * u64::from(b)));
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    (below_space | has(b'"') | has(b'\\') | has(0x7f) | has(0xc2)) != 0
}

/// `s` with its control characters made visible, for the text output: `\n`, `\r`, `\t`, and
/// `\xNN` for the other C0 bytes and DEL, `\u{NN}` for the C1 controls (U+0080-U+009F, which
/// some terminals obey as escape sequences). Every string from outside rst-trace (process and
/// thread names, container and pod names, labels, cgroup paths, symbols and files) goes
/// through it in text mode, so that no process can start a line of its own or send escape
/// sequences to the operator's terminal (`prctl(PR_SET_NAME)` takes any byte but NUL). Nothing
/// else changes; JSON escapes them in its own way ([`json_str`]).
pub fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    let is_control = |c: char| c.is_control();
    if !s.contains(is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Appends a decimal number (itoa: no `core::fmt` per event).
pub fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends an IP address: IPv4 by hand (the common case), IPv6 through `Display`.
pub(super) fn push_ip(out: &mut String, ip: &std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => crate::explain::put_ipv4(*v4, |s| out.push_str(s)),
        std::net::IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_u64_matches_display() {
        let mut v = vec![
            0u64,
            1,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            65_535,
            u64::MAX,
        ];
        v.extend((0..64).map(|b| 1u64 << b));
        v.extend((1..20).map(|e| 10u64.pow(e) - 1));
        for n in v {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn push_ip_matches_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.9",
            "255.255.255.255",
            "::1",
            "fd77::2",
            "::ffff:10.1.2.3",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, &ip);
            assert_eq!(s, ip.to_string());
        }
    }

    #[test]
    fn visible_shows_control_characters_and_changes_nothing_else() {
        assert!(matches!(
            visible("nginx: worker"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(visible("a\nFAKE\x1b[31m"), "a\\nFAKE\\x1b[31m");
        assert_eq!(visible("t\tr\r\x7f\u{9b}x"), "t\\tr\\r\\x7f\\u{9b}x");
        // Backslashes, quotes and non-ASCII letters stay as they are.
        assert_eq!(visible("C:\\dir \"é\""), "C:\\dir \"é\"");
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0, 9), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-24T12:00:01.123456789Z
        let t = 1_795_521_601_123_456_789i128;
        assert_eq!(rfc3339(t, 9), "2026-11-24T12:00:01.123456789Z");
        assert_eq!(rfc3339(t, 6), "2026-11-24T12:00:01.123456Z");
        // leap day
        assert_eq!(
            rfc3339(951_782_400_000_000_000, 3),
            "2000-02-29T00:00:00.000Z"
        );
    }

    /// serde_json's string, with DEL and the C1 controls escaped as well.
    fn serde_and_c1(v: &str) -> String {
        let mut out = String::new();
        for c in serde_json::to_string(v).unwrap().chars() {
            if c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn json_strings_escape_like_serde_and_c1_controls_too() {
        for v in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n tab\t cr\r",
            "\u{01}\u{08}\u{0c}\u{1f}",
            "émoji ✓ © Â \u{a0}",
            "a run of plain text longer than eight bytes \" then more text \\ and\u{1f} end",
            "éééééééé\"ééééééé\n\u{7f}",
            "csi \u{9b}2J and \u{80}\u{9f} in a longer name",
        ] {
            let mut s = String::new();
            json_str(&mut s, v);
            assert_eq!(s, serde_and_c1(v));
        }
        let mut s = String::new();
        json_str(&mut s, "a\u{7f}\u{9b}©");
        assert_eq!(s, r#""a\u007f\u009b©""#);
        // Every character that needs escaping, at every position of a chunk.
        for special in [
            '"', '\\', '\n', '\u{0}', '\u{1f}', '\u{08}', '\u{7f}', '\u{80}', '\u{9b}',
        ] {
            for pos in 0..20 {
                let mut v: String = "x".repeat(pos);
                v.push(special);
                // Last in the string, too.
                let mut s = String::new();
                json_str(&mut s, &v);
                assert_eq!(s, serde_and_c1(&v), "{v:?}");
                v.push_str("tail text é");
                let mut s = String::new();
                json_str(&mut s, &v);
                assert_eq!(s, serde_and_c1(&v), "{v:?}");
            }
        }
    }
}
