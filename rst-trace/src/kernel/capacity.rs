//! How many sockets the kernel side remembers owners for, sized from the host at start-up and
//! watched while rst-trace runs.
//!
//! Both owner maps are preallocated, so their size is fixed when the eBPF object loads: the
//! socket map (`SOCKS`, an LRU of the sockets seen since start-up, each entry deleted at
//! `tcp_destroy_sock`) and the seed map (sockets older than rst-trace). A host with more live
//! TCP sockets than the socket map holds makes the LRU forget the owners of the least recently
//! used ones, and their resets name no process: so the map is sized from the host's socket
//! count, and a host that outgrows it is warned about. The TIME_WAIT map (`TIMEWAIT`, the
//! flows handed to a TIME_WAIT mini-socket, with the process that closed each) is sized and
//! watched the same way from the host's TIME_WAIT count (every network namespace's, as the
//! kernel counts them per namespace): a flow it forgot makes that
//! mini-socket's reset name no process (and before 6.10 look like one for no socket at all).

use anyhow::{Context as _, Result};

/// The socket map's size on a host with few sockets (~10 MB of kernel memory).
const DEFAULT_OWNERS: u32 = rst_trace_common::SOCKS_MAX_ENTRIES;
/// The largest socket map sized on its own (~160 MB); `--max-sockets` may ask for more.
const AUTO_OWNERS_MAX: u32 = 1 << 20;
/// The seed map's smallest size.
const SEEDS_MIN: u32 = rst_trace_common::SEED_MAX_ENTRIES;
/// The TIME_WAIT map's smallest size.
const TIMEWAIT_MIN: u32 = rst_trace_common::TIMEWAIT_MAX_ENTRIES;
/// Free entries the kernel's LRU keeps on each CPU's own list (`LOCAL_FREE_TARGET`,
/// kernel/bpf/bpf_lru_list.c): it starts evicting while that many per CPU, and as many more on
/// the global list, are still free.
const LRU_FREE_PER_CPU: u64 = 128;

/// Entries of the owner maps and of the TIME_WAIT map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketMaps {
    /// The socket map (`SOCKS`).
    pub owners: u32,
    /// The seed map (`SEED_OWNERS`).
    pub seeds: u32,
    /// Live sockets the socket map holds before its LRU evicts (`owners` less the free
    /// entries the kernel keeps per CPU).
    pub usable: u64,
    /// The TIME_WAIT map (`TIMEWAIT`).
    pub timewait: u32,
    /// TIME_WAIT flows it holds before its LRU evicts.
    pub timewait_usable: u64,
}

/// The TCP line of /proc/net/sockstat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSockets {
    /// `alloc`: the kernel's `tcp_sockets_allocated` (IPv4 and IPv6, every network namespace,
    /// every state but TIME_WAIT and request mini-sockets, which are not in the socket map
    /// either).
    pub alloc: u64,
    /// `tw`: TIME_WAIT sockets of every network namespace a process is in (the kernel counts
    /// them per namespace: rst-trace's own /proc/net/sockstat has only its own, and on a
    /// container host most are in the containers' namespaces).
    pub tw: u64,
}

/// The host's TCP sockets: /proc/net/sockstat, and the TIME_WAIT sockets of the other network
/// namespaces as last counted ([`Namespaces`]).
pub fn host_sockets(others: &Namespaces) -> Result<HostSockets> {
    let text =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let mut host =
        parse_sockstat(&text).context("no `TCP: ... tw N alloc N` line in /proc/net/sockstat")?;
    host.tw += others.tw;
    Ok(host)
}

/// The TIME_WAIT sockets of every network namespace but rst-trace's own, each read from
/// /proc/PID/net/sockstat of one process in it. The namespaces are found by a walk of /proc (a
/// stat per process), and reading each one's count costs a few microseconds, so the watch does
/// both only every [`RESCAN_TICKS`] seconds. A namespace no process is in (`ip netns add`
/// alone) is not counted.
#[derive(Debug, Default)]
pub struct Namespaces {
    tw: u64,
    age: u32,
}

/// How often, in watch ticks (seconds), [`Namespaces`] counts again.
const RESCAN_TICKS: u32 = 10;

impl Namespaces {
    pub fn count() -> Self {
        let tw = crate::owners::netns_pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/sockstat")).ok())
            .filter_map(|text| parse_sockstat(&text))
            .map(|h| h.tw)
            .sum();
        Self { tw, age: 0 }
    }

    /// Counts again when the last count is [`RESCAN_TICKS`] old.
    fn refresh(&mut self) {
        self.age += 1;
        if self.age >= RESCAN_TICKS {
            *self = Self::count();
        }
    }
}

fn parse_sockstat(text: &str) -> Option<HostSockets> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let field = |name: &str| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next()?.parse().ok()
    };
    Some(HostSockets {
        alloc: field("alloc")?,
        tw: field("tw")?,
    })
}

/// The host's possible CPUs, by which the kernel's LRU maps keep entries back (aya reads
/// `/sys/devices/system/cpu/possible`; where it cannot, 1, and aya cannot read per-CPU maps).
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n.get())
}

/// The free entries the LRU keeps back on a host with `cpus` possible CPUs.
fn lru_reserve(cpus: u32) -> u64 {
    LRU_FREE_PER_CPU * (u64::from(cpus) + 1)
}

/// The smallest `--max-sockets` that leaves room for sockets at all on `cpus` CPUs.
pub fn min_owners(cpus: u32) -> u64 {
    (2 * lru_reserve(cpus)).max(1024)
}

/// Room for twice `count` and the LRU's free lists, a power of two in `min..=1M`.
fn lru_size(count: u64, reserve: u64, min: u32) -> u32 {
    (2 * count + reserve)
        .next_power_of_two()
        .clamp(u64::from(min), u64::from(AUTO_OWNERS_MAX)) as u32
}

/// Sizes the maps: `requested` (`--max-sockets`) for the socket map, else room for twice the
/// host's sockets (the count at start-up) and never fewer than [`DEFAULT_OWNERS`]; the seed
/// map for the sockets found now, with a margin for those opened during the scan; the
/// TIME_WAIT map like the socket map, from the host's TIME_WAIT count.
pub fn plan(requested: Option<u32>, host: HostSockets, cpus: u32) -> SocketMaps {
    let reserve = lru_reserve(cpus);
    let tcp = host.alloc;
    let owners = requested.unwrap_or_else(|| lru_size(tcp, reserve, DEFAULT_OWNERS));
    // Capped like the socket map: beyond, the seeding says how many it could not hold.
    let seeds = (tcp + tcp / 4 + 1024)
        .next_power_of_two()
        .clamp(u64::from(SEEDS_MIN), u64::from(AUTO_OWNERS_MAX)) as u32;
    let timewait = lru_size(host.tw, reserve, TIMEWAIT_MIN);
    SocketMaps {
        owners,
        seeds,
        usable: u64::from(owners).saturating_sub(reserve),
        timewait,
        timewait_usable: u64::from(timewait).saturating_sub(reserve),
    }
}

/// The host's sockets against the maps that remember them, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapUse {
    /// The host's TCP sockets ([`HostSockets::alloc`]).
    pub tcp_sockets: u64,
    /// Live sockets the socket map holds before its LRU evicts.
    pub owner_capacity: u64,
    /// TIME_WAIT sockets, and the flows the TIME_WAIT map holds.
    pub time_wait: (u64, u64),
}

/// Watches the host's socket counts against the maps: warns once when they outgrow a map, and
/// once when they fit again.
pub struct Watch {
    maps: SocketMaps,
    namespaces: Namespaces,
    /// Whether the host was over the socket map and over the TIME_WAIT map, as last said.
    over: [bool; 2],
}

impl Watch {
    pub fn new(maps: SocketMaps, namespaces: Namespaces) -> Self {
        Self {
            maps,
            namespaces,
            over: [false; 2],
        }
    }

    /// Once a second: the host's socket counts against the maps, said on stderr when they
    /// cross, and returned for the metrics. (Counts that cannot be read were warned about at
    /// start-up.)
    pub fn tick(&mut self) -> Option<MapUse> {
        self.namespaces.refresh();
        let host = host_sockets(&self.namespaces).ok()?;
        for line in self.check(host) {
            eprintln!("{line}");
        }
        let m = self.maps;
        Some(MapUse {
            tcp_sockets: host.alloc,
            owner_capacity: m.usable,
            time_wait: (host.tw, m.timewait_usable),
        })
    }

    /// The lines to print for the maps the host crossed since the last check.
    fn check(&mut self, host: HostSockets) -> Vec<String> {
        let m = self.maps;
        let mut lines = Vec::new();
        if let Some(over) = crossed(&mut self.over[0], host.alloc > m.usable) {
            lines.push(if over {
                format!(
                    "rst-trace: warning: this host has {} TCP sockets, more than the {} the \
                     socket owner map keeps (--max-sockets {}): the owners of the least \
                     recently used ones may be forgotten, and their resets then name no \
                     process. Restart rst-trace to size the map for this host, or give a \
                     larger --max-sockets",
                    host.alloc, m.usable, m.owners
                )
            } else {
                format!(
                    "rst-trace: note: this host's {} TCP sockets fit the socket owner map \
                     again ({} entries)",
                    host.alloc, m.usable
                )
            });
        }
        if let Some(over) = crossed(&mut self.over[1], host.tw > m.timewait_usable) {
            lines.push(if over {
                format!(
                    "rst-trace: warning: this host has {} TIME_WAIT sockets, more than the {} \
                     the TIME_WAIT map keeps: a reset one of the oldest sends may name no \
                     process (before 6.10: be reported as a reset for no socket). Restart \
                     rst-trace to size the map for this host",
                    host.tw, m.timewait_usable
                )
            } else {
                format!(
                    "rst-trace: note: this host's {} TIME_WAIT sockets fit the TIME_WAIT map \
                     again ({} entries)",
                    host.tw, m.timewait_usable
                )
            });
        }
        lines
    }
}

/// `Some(now)` when `now` differs from `*was`, which then becomes `now`.
fn crossed(was: &mut bool, now: bool) -> Option<bool> {
    (std::mem::replace(was, now) != now).then_some(now)
}

/// Read on the way, so that a host without /proc/net/sockstat (never seen) still starts: the
/// default sizes then, said on stderr.
pub fn host_sockets_or_warn(namespaces: &Namespaces) -> HostSockets {
    host_sockets(namespaces).unwrap_or_else(|e| {
        eprintln!(
            "rst-trace: warning: cannot count this host's TCP sockets ({e:#}): the socket \
             owner map gets the default {DEFAULT_OWNERS} entries (the TIME_WAIT map \
             {TIMEWAIT_MIN}), and neither is watched"
        );
        HostSockets::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_counts_are_read() {
        let text =
            "sockets: used 311\nTCP: inuse 12 orphan 0 tw 3 alloc 57 mem 4\nUDP: inuse 2 mem 1\n";
        assert_eq!(parse_sockstat(text), Some(HostSockets { alloc: 57, tw: 3 }));
        assert_eq!(
            parse_sockstat("sockets: used 1\nUDP: inuse 0 mem 0\n"),
            None
        );
        assert_eq!(parse_sockstat("TCP: inuse 1 tw 2 alloc\n"), None);
        assert_eq!(parse_sockstat("TCP: inuse 1 alloc 2\n"), None);
    }

    #[test]
    fn maps_grow_with_the_host() {
        // A small host: the default socket map, the smallest seed map.
        let host = |alloc, tw| HostSockets { alloc, tw };
        let p = plan(None, host(40, 10), 2);
        assert_eq!((p.owners, p.seeds), (DEFAULT_OWNERS, SEEDS_MIN));
        assert_eq!(p.usable, u64::from(DEFAULT_OWNERS) - 3 * 128);
        assert_eq!(p.timewait, TIMEWAIT_MIN);
        assert_eq!(p.timewait_usable, u64::from(TIMEWAIT_MIN) - 3 * 128);
        // 100k sockets on 64 CPUs: room for twice as many, and for the LRU's free lists.
        let p = plan(None, host(100_000, 50_000), 64);
        assert_eq!(p.owners, 1 << 18);
        assert!(p.usable >= 200_000, "{p:?}");
        assert!(u64::from(p.seeds) >= 125_000, "{p:?}");
        assert_eq!(p.timewait, 1 << 17);
        assert!(p.timewait_usable >= 100_000, "{p:?}");
        // The automatic sizes stop at 1M entries; --max-sockets decides beyond.
        let huge = plan(None, host(10_000_000, 10_000_000), 2);
        assert_eq!(
            (huge.owners, huge.seeds, huge.timewait),
            (AUTO_OWNERS_MAX, AUTO_OWNERS_MAX, AUTO_OWNERS_MAX)
        );
        assert_eq!(plan(Some(4096), host(10_000_000, 0), 2).owners, 4096);
    }

    #[test]
    fn the_watch_warns_once_each_way() {
        let host = |alloc, tw| HostSockets { alloc, tw };
        let mut w = Watch::new(plan(Some(4096), host(0, 0), 2), Namespaces::default());
        assert!(w.check(host(100, 100)).is_empty());
        let warn = w.check(host(4000, 100));
        assert!(
            warn.len() == 1
                && warn[0].contains("4000 TCP sockets")
                && warn[0].contains("--max-sockets 4096"),
            "{warn:?}"
        );
        assert!(w.check(host(5000, 100)).is_empty());
        let both = w.check(host(10, 20_000));
        assert!(
            both.len() == 2
                && both[0].contains("fit the socket owner map")
                && both[1].contains("20000 TIME_WAIT sockets, more than the 16000"),
            "{both:?}"
        );
        assert!(w.check(host(20, 30_000)).is_empty());
        let fits = w.check(host(20, 3));
        assert!(
            fits.len() == 1 && fits[0].contains("fit the TIME_WAIT map"),
            "{fits:?}"
        );
    }
}
