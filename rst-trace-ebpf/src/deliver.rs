//! Getting an event to userspace: the per-CPU slot it is built in, the in-kernel filters, the
//! in-kernel count and the ring buffer.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
};
use rst_trace_common::{
    ATTR_NONE, FILTER_CGROUP, FILTER_PID, FILTER_PORT, KIND_RECEIVED, RstEvent, ring_record_len,
    ring_wake_crossed,
};

use crate::{
    maps::{
        APP_LOST, BUSY, COUNT_KEY, COUNTS, EVENTS, FILTER_PIDS, FILTER_PORTS, HIDDEN_CGROUPS, LOST,
        SCRATCH,
    },
    read::{copy_words, zero_words},
};

/// In-kernel filters, so a busy host does not pay for events nobody asked for.
#[inline(always)]
pub fn wanted(ev: &RstEvent) -> bool {
    // --pid drops received resets here; sent ones go on to userspace, which needs them to
    // explain the received resets they cause (a link to the sender, the data_after_close
    // self-reset) and filters them itself.
    if conf!(filters) & FILTER_PID != 0 && ev.kind == KIND_RECEIVED {
        if ev.attribution == ATTR_NONE {
            return false;
        }
        if FILTER_PIDS.get_ptr(&ev.owner.pid).is_none() {
            return false;
        }
    }
    // --container/--pod: received resets of cgroups userspace found hidden (sent ones go on, as
    // for --pid).
    if conf!(filters) & FILTER_CGROUP != 0 && ev.kind == KIND_RECEIVED {
        if ev.attribution == ATTR_NONE {
            return false;
        }
        if HIDDEN_CGROUPS.get_ptr(&ev.owner.cgroup).is_some() {
            return false;
        }
    }
    if conf!(filters) & FILTER_PORT != 0
        && FILTER_PORTS.get_ptr(&ev.local_port).is_none()
        && FILTER_PORTS.get_ptr(&ev.remote_port).is_none()
    {
        return false;
    }
    true
}

/// Takes `slot` for this run, or counts the event lost if the run this one interrupted holds it:
/// before 6.1 (commit 05b24ff9b2cf) a BTF or raw tracepoint program could nest in itself, a
/// softirq's reset inside a process-context one on the same CPU, and the two would share the
/// slot. (Since then the kernel skips the inner run and counts it in `recursion_misses`, which
/// userspace reports as lost.) Give the slot back with [`unclaim`].
#[inline(always)]
pub fn claim(slot: u32) -> Option<*mut u32> {
    let busy = BUSY.get_ptr_mut(slot)?;
    // SAFETY: per-CPU value; an interrupting run finishes before this one continues.
    unsafe {
        if *busy != 0 {
            count_lost();
            return None;
        }
        *busy = 1;
    }
    Some(busy)
}

#[inline(always)]
pub fn unclaim(busy: *mut u32) {
    // SAFETY: the pointer claim() returned, valid for this run.
    unsafe { *busy = 0 };
}

#[inline(always)]
fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
}

/// The zeroed per-CPU scratch event, stamped with the current time.
#[inline(always)]
pub fn scratch_event(slot: u32) -> Option<&'static mut RstEvent> {
    let ev = SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot, held by this run only (see claim()).
    unsafe {
        zero_words(ev);
        (*ev).mono_ns = bpf_ktime_get_ns();
        Some(&mut *ev)
    }
}

/// Hands the event to userspace: counted in `COUNTS` under its `CountKey` when only a
/// summary is wanted and the event can be (`RstEvent::countable`), else a ring record. A full
/// count map falls back to the ring, so nothing is lost.
#[inline(always)]
pub fn deliver(slot: u32, ev: &mut RstEvent) {
    if conf!(count_in_kernel) != 0
        && ev.countable()
        && let Some(key) = COUNT_KEY.get_ptr_mut(slot)
    {
        // SAFETY: per-CPU slot of this program, held by this run (claim()); the map value is
        // 8-aligned and `comm` is the key's first field, as the event's `owner.comm` sits at an
        // 8-aligned offset (asserted in rst-trace-common): two words.
        let key = unsafe {
            copy_words(
                (*key).comm.as_mut_ptr().cast::<[u64; 2]>(),
                ev.owner.comm.as_ptr().cast::<[u64; 2]>(),
            );
            (*key).fill(ev);
            &*key
        };
        if let Some(n) = COUNTS.get_ptr_mut(key) {
            // SAFETY: this CPU's value; nested runs never use the same key (claim()).
            unsafe { *n += 1 };
            return;
        }
        if COUNTS.insert(key, &1, u64::from(BPF_NOEXIST)).is_ok() {
            return;
        }
        // Another CPU created the key meanwhile (values are per CPU; this one starts at 0).
        if let Some(n) = COUNTS.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { *n += 1 };
            return;
        }
        // The map is full: the event itself, unreduced, goes to the ring.
    }
    submit(ev);
}

#[inline(always)]
fn submit(ev: &RstEvent) {
    if EVENTS
        .output(ev, wake_flags(core::mem::size_of::<RstEvent>() as u64))
        .is_err()
    {
        // Never lose an event silently: userspace reports this count.
        count_lost();
    }
}

/// The ring buffer flags for a record of `size` bytes about to be written with `output()`.
#[inline(always)]
pub fn wake_flags(size: u64) -> u64 {
    flags_after(EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)), size)
}

/// The ring buffer flags for a record of `size` bytes already reserved (the unread bytes the
/// ring reports include it).
#[inline(always)]
pub fn wake_flags_reserved(size: u64) -> u64 {
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    flags_after(unread.saturating_sub(ring_record_len(size)), size)
}

/// Wake only as [`ring_wake_crossed`] says; userspace also drains on a short timer, so a lone
/// event still shows promptly.
#[inline(always)]
fn flags_after(unread_before: u64, size: u64) -> u64 {
    if ring_wake_crossed(unread_before, size, u64::from(conf!(wake_bytes))) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Counts an application error record the ring had no room for (userspace reports it).
#[inline(always)]
pub fn count_app_lost() {
    if let Some(n) = APP_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; a preempted increment (syscall context) may at worst lose one.
        unsafe { *n += 1 };
    }
}
