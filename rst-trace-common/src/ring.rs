//! When the eBPF side wakes userspace: shared so that userspace tests the rule the programs run.

/// `BPF_RINGBUF_HDR_SZ` (include/uapi/linux/bpf.h): the header before every ring record.
pub const RINGBUF_HDR_SZ: u64 = 8;

/// The bytes a record of `size` takes in the ring: its header, then rounded up to 8
/// (`bpf_ringbuf_reserve()` in kernel/bpf/ringbuf.c).
#[inline(always)]
pub const fn ring_record_len(size: u64) -> u64 {
    (size + RINGBUF_HDR_SZ + 7) & !7
}

/// Whether a record of `size`, written when the ring held `unread_before` unread bytes, wakes
/// userspace: when it takes the unread bytes across a multiple of `wake` ([`Config::wake_bytes`],
/// 0: every record).
///
/// Not every record: a wakeup is an irq_work, a self-IPI (a VM exit under a hypervisor), and a
/// storm would pay one per reset. Every multiple, not only the first: two CPUs that read the
/// unread bytes at once can both miss a crossing, and a ring past its only wake point would wait
/// for userspace's drain timer while it fills.
///
/// [`Config::wake_bytes`]: crate::Config::wake_bytes
#[inline(always)]
pub const fn ring_wake_crossed(unread_before: u64, size: u64, wake: u64) -> bool {
    wake == 0 || unread_before / wake != (unread_before + ring_record_len(size)) / wake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_length_counts_header_and_alignment() {
        assert_eq!(ring_record_len(200), 208);
        assert_eq!(ring_record_len(224), 232);
        assert_eq!(ring_record_len(1), 16);
        assert_eq!(ring_record_len(0), 8);
    }

    #[test]
    fn wakes_at_every_multiple_once() {
        let wake = 4096;
        let len = ring_record_len(200);
        // A ring that userspace never drains: one wakeup per `wake` bytes written, each by the
        // record that crosses, including the crossings after the first.
        let mut unread = 0;
        let mut woke_at = [0u64; 8];
        let mut wakeups = 0;
        while unread < 8 * wake {
            if ring_wake_crossed(unread, 200, wake) {
                woke_at[wakeups] = unread + len;
                wakeups += 1;
            }
            unread += len;
        }
        assert_eq!(wakeups, 8);
        for (i, at) in woke_at.iter().enumerate() {
            let multiple = (i as u64 + 1) * wake;
            assert!(
                *at >= multiple && *at < multiple + len,
                "wakeup {i} at {at}"
            );
        }
    }

    #[test]
    fn a_ring_already_past_a_multiple_wakes_at_the_next() {
        // The crossing of 4096 was missed (another CPU's record crossed it unseen): the next
        // multiple still wakes.
        assert!(!ring_wake_crossed(4100, 200, 4096));
        assert!(ring_wake_crossed(8190, 200, 4096));
    }

    #[test]
    fn zero_wakes_every_record() {
        assert!(ring_wake_crossed(0, 200, 0));
        assert!(ring_wake_crossed(12345, 8, 0));
    }
}
