//! `--summary --quiet`: the key resets are counted by in the kernel.

use crate::{FACT_IDLE, FACT_RST_TTL, FACT_STACKS, RstEvent, Task};

/// A reset reduced to what decides its process, condition and direction, so that resets alike
/// share one count: times, addresses, ports, cookie, netns, TTLs, idle times and stacks go;
/// pointers, byte counts and the accept queue become the comparisons userspace makes of them.
/// 48 bytes where the event is 160: the kernel hashes and compares the key at every counted
/// reset. (A unit test in rst-trace checks that the explanation's condition, process and
/// direction survive the round trip through [`CountKey::of`] and [`CountKey::event`].)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CountKey {
    /// The process: its name (`owner.comm`, the thread-group leader's), pid and uid; the
    /// acting thread and the cgroup do not decide it.
    pub comm: [u8; 16],
    pub pid: u32,
    pub uid: u32,
    pub reason: u32,
    /// The event's facts, less those of the dropped fields.
    pub facts: u32,
    pub kind: u8,
    pub family: u8,
    pub state: u8,
    pub prev_state: u8,
    pub tcp_flags: u8,
    pub attribution: u8,
    /// Unread and unsent bytes, at most 2: "more than the FIN it may count" is all userspace
    /// asks of them.
    pub unread: u8,
    pub unsent: u8,
    /// -1 if the event's `linger2` was negative, else 0.
    pub linger2: i8,
    /// 1 if the event had a socket, an skb; whether its accept queue was full.
    pub has_sk: u8,
    pub has_skb: u8,
    pub backlog_full: u8,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<CountKey>() == 48);
const _: () = assert!(core::mem::align_of::<CountKey>() == 4);
const _: () = assert!(core::mem::offset_of!(CountKey, comm) == 0);

impl CountKey {
    /// The key of `ev`. The caller's `comm` copy is its own (the eBPF target turns a
    /// `[u8; 16]` copy into a byte-loop call): it goes into [`CountKey::comm`] unchanged.
    #[inline(always)]
    pub fn fill(&mut self, ev: &RstEvent) {
        self.pid = ev.owner.pid;
        self.uid = ev.owner.uid;
        self.reason = ev.reason;
        self.facts = ev.facts & !(FACT_IDLE | FACT_RST_TTL | FACT_STACKS);
        self.kind = ev.kind;
        self.family = ev.family;
        self.state = ev.state;
        self.prev_state = ev.prev_state;
        self.tcp_flags = ev.tcp_flags;
        self.attribution = ev.attribution;
        self.unread = ev.unread.min(2) as u8;
        self.unsent = ev.unsent.min(2) as u8;
        self.linger2 = if ev.linger2 < 0 { -1 } else { 0 };
        self.has_sk = u8::from(ev.skaddr != 0);
        self.has_skb = u8::from(ev.skbaddr != 0);
        self.backlog_full = u8::from(ev.ack_backlog > ev.max_ack_backlog);
        self._pad = 0;
    }

    /// The key of `ev`, for the property test of the round trip (the eBPF side fills its slot
    /// with [`CountKey::fill`], which this mirrors).
    pub fn of(ev: &RstEvent) -> Self {
        let mut k = Self {
            comm: ev.owner.comm,
            ..Self::default()
        };
        k.fill(ev);
        k
    }

    /// An event userspace explains as it would every reset of this key.
    pub fn event(&self) -> RstEvent {
        RstEvent {
            skaddr: u64::from(self.has_sk),
            skbaddr: u64::from(self.has_skb),
            owner: Task {
                pid: self.pid,
                uid: self.uid,
                comm: self.comm,
                ..Task::default()
            },
            reason: self.reason,
            unread: u32::from(self.unread),
            unsent: u32::from(self.unsent),
            linger2: i32::from(self.linger2),
            kind: self.kind,
            family: self.family,
            state: self.state,
            prev_state: self.prev_state,
            tcp_flags: self.tcp_flags,
            attribution: self.attribution,
            facts: self.facts,
            ack_backlog: u32::from(self.backlog_full),
            ..RstEvent::default()
        }
    }
}
