//! The caller a frame-pointer walk misses: that of a function that keeps no frame.

/// The kernel's frame-pointer walk starts at the user registers (frame 0, e.g. in libc's
/// close()) and goes on from the frame pointer, which a function that keeps no frame (libc's
/// system call wrappers) leaves pointing at its caller's frame: the caller itself (the line
/// that called close()) is skipped. Its return address is where the call put it (x86_64: the
/// word at the stack pointer; arm64: the link register), which the eBPF side read at the
/// system call: inserted as frame 1 when it is a return address (a call instruction ends right
/// before it, in the process's memory) and not frame 1 already.
pub fn add_frameless_caller(pid: u32, ret: u64, ips: &mut Vec<u64>) {
    if ret == 0 || ips.is_empty() || ips.get(1) == Some(&ret) {
        return;
    }
    if follows_call(pid, ret) {
        ips.insert(1, ret);
    }
}

/// The `N` bytes of process `pid`'s memory that end at `ret`.
fn bytes_before<const N: usize>(pid: u32, ret: u64) -> Option<[u8; N]> {
    use std::os::unix::fs::FileExt as _;
    let start = ret.checked_sub(N as u64)?;
    let mut b = [0u8; N];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .and_then(|f| f.read_exact_at(&mut b, start))
        .ok()?;
    Some(b)
}

/// Whether an x86_64 call instruction ends at `ret` in process `pid`'s memory: `call rel32`
/// (E8), `call *disp32(%rip)` (FF 15, as with -fno-plt), `call *%reg` (FF D0+r, with a REX
/// prefix 41 for r8-r15), `call *disp8(%reg)` (FF 50+r) and `call *disp32(%reg)` (FF 90+r).
#[cfg(not(target_arch = "aarch64"))]
fn follows_call(pid: u32, ret: u64) -> bool {
    let Some(b) = bytes_before::<7>(pid, ret) else {
        return false;
    };
    // b[7 - n] is the first byte of an n-byte instruction ending at `ret`.
    let modrm = |m: u8, base: u8| m & 0xf8 == base;
    b[2] == 0xe8
        || (b[1] == 0xff && b[2] == 0x15)
        || (b[5] == 0xff && modrm(b[6], 0xd0))
        || (b[4] == 0x41 && b[5] == 0xff && modrm(b[6], 0xd0))
        || (b[4] == 0xff && modrm(b[5], 0x50))
        || (b[1] == 0xff && modrm(b[2], 0x90))
}

/// Whether an arm64 branch with link ends at `ret` in process `pid`'s memory (instructions are
/// 4 bytes, little-endian): `bl imm26` (100101 in the top bits), `blr xN` (0xd63f0000 | N << 5),
/// and the pointer-authenticated `blraa`/`blrab`/`blraaz`/`blrabz` (0xd63f0800 family, and
/// 0xd73f0800 with a modifier register).
#[cfg(target_arch = "aarch64")]
fn follows_call(pid: u32, ret: u64) -> bool {
    let Some(b) = bytes_before::<4>(pid, ret) else {
        return false;
    };
    let insn = u32::from_le_bytes(b);
    insn & 0xfc00_0000 == 0x9400_0000
        || insn & 0xffff_fc1f == 0xd63f_0000
        || insn & 0xfeff_f800 == 0xd63f_0800
}
