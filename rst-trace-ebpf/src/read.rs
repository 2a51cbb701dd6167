//! Reading kernel memory and tracepoint arguments, and copying map values word by word.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_kernel,
    programs::{BtfTracePointContext, TracePointContext},
};
use rst_trace_common::OFF_NONE;

/// Reads a field of the tracepoint record at an offset found in its tracefs `format` file.
#[inline(always)]
pub fn tp<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == OFF_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the access; a bad offset yields an error, not a fault.
    unsafe { ctx.read_at::<T>(usize::from(off)).ok() }
}

/// Reads kernel memory at `base + off`. Pointers are handled as numbers: the verifier rejects
/// arithmetic on typed pointers, and these offsets come from BTF at run time.
#[inline(always)]
pub fn kread<T>(base: u64, off: u16) -> Option<T> {
    if off == OFF_NONE || base == 0 {
        return None;
    }
    // SAFETY: as above, bpf_probe_read_kernel never faults.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// Reads kernel memory at an absolute address.
#[inline(always)]
pub fn kread_at<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel never faults.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// The first `N` arguments of a BTF tracepoint as plain numbers, in one read: the verifier
/// types a pointer argument loaded straight from the context and rejects arithmetic on it, and
/// the fields we read sit at offsets only known at run time.
#[inline(always)]
pub fn btf_args<const N: usize>(ctx: &BtfTracePointContext) -> [u64; N] {
    // SAFETY: bpf_probe_read_kernel never faults; the context is an array of u64 arguments.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const [u64; N]) }.unwrap_or([0; N])
}

/// Copies a value word by word: a plain assignment between two map values becomes a call to
/// the byte-by-byte `memmove` (the compiler cannot rule out overlap).
///
/// # Safety
/// Both must be valid, 8-aligned, of a type whose size is a multiple of 8 (the ABI structs).
#[inline(always)]
pub unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds, per the contract above.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        i += 1;
    }
}

/// Zeroes a value with 8-byte volatile stores, which the compiler cannot turn into a call to
/// the eBPF target's byte-by-byte `memset` (160 iterations for an event).
///
/// # Safety
/// `p` must be valid for writes, 8-aligned, of a type whose size is a multiple of 8 and for
/// which all-zero bytes are a valid value.
#[inline(always)]
pub unsafe fn zero_words<T>(p: *mut T) {
    let words = p.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds, per the contract above.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Byte copy, unrolled by the compiler for these constant lengths (`copy_from_slice` can become
/// a call to the target's byte-loop memcpy).
#[inline(always)]
pub fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    let mut i = 0;
    while i < dst.len() && i < src.len() {
        dst[i] = src[i];
        i += 1;
    }
}
