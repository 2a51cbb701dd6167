//! The third record type on the ring: a cgroup in which a socket owner was learned for the first
//! time. Userspace resolves that cgroup's container and pod then, while its processes live: a
//! process that dies with its connections (a crash, an OOM kill, a deleted pod) takes its
//! cgroup, and the runtime's state, along before the resets it leaves are read.

use crate::{APP_ERROR_SIZE, RST_EVENT_SIZE};

/// LRU set of the cgroup ids already announced (value unused): the kernel side sends a
/// [`CgroupSeen`] only for an id not in it.
pub const MAP_SEEN_CGROUPS: &str = "SEEN_CGROUPS";
pub const SEEN_CGROUPS_MAX_ENTRIES: u32 = 4096;

/// A cgroup seen for the first time: its v2 id and the process the owner is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupSeen {
    pub cgroup: u64,
    pub pid: u32,
    pub _pad: u32,
}

pub const CGROUP_SEEN_SIZE: usize = core::mem::size_of::<CgroupSeen>();
const _: () = assert!(CGROUP_SEEN_SIZE == 16);
const _: () = assert!(CGROUP_SEEN_SIZE != RST_EVENT_SIZE && CGROUP_SEEN_SIZE != APP_ERROR_SIZE);

impl CgroupSeen {
    /// Decodes one ring record of [`CGROUP_SEEN_SIZE`] bytes (`None` for any other length).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CGROUP_SEEN_SIZE {
            return None;
        }
        // SAFETY: the length is checked; integers only, every bit pattern is valid;
        // read_unaligned because ring records are only 8-byte aligned by convention.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}
