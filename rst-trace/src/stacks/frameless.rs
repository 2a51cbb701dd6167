//! The caller a frame-pointer walk misses: that of a function that keeps no frame.

/// The kernel's frame-pointer walk starts at the user registers (frame 0, e.g. in libc's
/// close()) and goes on from the frame pointer, which a function that keeps no frame (libc's
/// system call wrappers) leaves pointing at its caller's frame: the caller itself (the line
/// that called close()) is skipped. Its return address is the word at the stack pointer when
/// such a function made the system call: inserted as frame 1 when it is a return address (a
/// call instruction ends right before it, in the process's memory) and not frame 1 already.
pub fn add_frameless_caller(pid: u32, sp_word: u64, ips: &mut Vec<u64>) {
    if sp_word == 0 || ips.is_empty() || ips.get(1) == Some(&sp_word) {
        return;
    }
    if follows_call(pid, sp_word) {
        ips.insert(1, sp_word);
    }
}

/// Whether an x86_64 call instruction ends at `ret` in process `pid`'s memory: `call rel32`
/// (E8), `call *disp32(%rip)` (FF 15, as with -fno-plt), `call *%reg` (FF D0+r, with a REX
/// prefix 41 for r8-r15), `call *disp8(%reg)` (FF 50+r) and `call *disp32(%reg)` (FF 90+r).
fn follows_call(pid: u32, ret: u64) -> bool {
    use std::os::unix::fs::FileExt as _;
    let Some(start) = ret.checked_sub(7) else {
        return false;
    };
    let mut b = [0u8; 7];
    let read = std::fs::File::open(format!("/proc/{pid}/mem"))
        .and_then(|f| f.read_exact_at(&mut b, start));
    if read.is_err() {
        return false;
    }
    // b[7 - n] is the first byte of an n-byte instruction ending at `ret`.
    let modrm = |m: u8, base: u8| m & 0xf8 == base;
    b[2] == 0xe8
        || (b[1] == 0xff && b[2] == 0x15)
        || (b[5] == 0xff && modrm(b[6], 0xd0))
        || (b[4] == 0x41 && b[5] == 0xff && modrm(b[6], 0xd0))
        || (b[4] == 0xff && modrm(b[5], 0x50))
        || (b[1] == 0xff && modrm(b[2], 0x90))
}
