//! How many sockets the kernel side remembers owners for, sized from the host at start-up and
//! watched while rst-trace runs.
//!
//! Both owner maps are preallocated, so their size is fixed when the eBPF object loads: the
//! socket map (`SOCKS`, an LRU of the sockets seen since start-up, each entry deleted at
//! `tcp_destroy_sock`) and the seed map (sockets older than rst-trace). A host with more live
//! TCP sockets than the socket map holds makes the LRU forget the owners of the least recently
//! used ones, and their resets name no process: so the map is sized from the host's socket
//! count, and a host that outgrows it is warned about.

use anyhow::{Context as _, Result};

/// The socket map's size on a host with few sockets (~10 MB of kernel memory).
const DEFAULT_OWNERS: u32 = rst_trace_common::SOCKS_MAX_ENTRIES;
/// The largest socket map sized on its own (~160 MB); `--max-sockets` may ask for more.
const AUTO_OWNERS_MAX: u32 = 1 << 20;
/// The seed map's smallest size.
const SEEDS_MIN: u32 = rst_trace_common::SEED_MAX_ENTRIES;
/// Free entries the kernel's LRU keeps on each CPU's own list (`LOCAL_FREE_TARGET`,
/// kernel/bpf/bpf_lru_list.c): it starts evicting while that many per CPU, and as many more on
/// the global list, are still free.
const LRU_FREE_PER_CPU: u64 = 128;

/// Entries of the two owner maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketMaps {
    /// The socket map (`SOCKS`).
    pub owners: u32,
    /// The seed map (`SEED_OWNERS`).
    pub seeds: u32,
    /// Live sockets the socket map holds before its LRU evicts (`owners` less the free
    /// entries the kernel keeps per CPU).
    pub usable: u64,
}

/// TCP sockets allocated on the whole host: `alloc` of /proc/net/sockstat's TCP line, the
/// kernel's `tcp_sockets_allocated` (IPv4 and IPv6, every network namespace, every state but
/// TIME_WAIT and request mini-sockets, which are not in the socket map either).
pub fn tcp_sockets() -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    parse_sockstat(&text).context("no `TCP: ... alloc N` line in /proc/net/sockstat")
}

fn parse_sockstat(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "alloc" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The free entries the LRU keeps back on a host with `cpus` possible CPUs.
fn lru_reserve(cpus: u32) -> u64 {
    LRU_FREE_PER_CPU * (u64::from(cpus) + 1)
}

/// The smallest `--max-sockets` that leaves room for sockets at all on `cpus` CPUs.
pub fn min_owners(cpus: u32) -> u64 {
    (2 * lru_reserve(cpus)).max(1024)
}

/// Sizes the maps: `requested` (`--max-sockets`) for the socket map, else room for twice the
/// host's `tcp` sockets (the count at start-up) and never fewer than [`DEFAULT_OWNERS`]; the
/// seed map for the sockets found now, with a margin for those opened during the scan.
pub fn plan(requested: Option<u32>, tcp: u64, cpus: u32) -> SocketMaps {
    let reserve = lru_reserve(cpus);
    let owners = requested.unwrap_or_else(|| {
        let want = (2 * tcp + reserve).next_power_of_two();
        want.clamp(u64::from(DEFAULT_OWNERS), u64::from(AUTO_OWNERS_MAX)) as u32
    });
    // Capped like the socket map: beyond, the seeding says how many it could not hold.
    let seeds = (tcp + tcp / 4 + 1024)
        .next_power_of_two()
        .clamp(u64::from(SEEDS_MIN), u64::from(AUTO_OWNERS_MAX)) as u32;
    SocketMaps {
        owners,
        seeds,
        usable: u64::from(owners).saturating_sub(reserve),
    }
}

/// Watches the host's TCP socket count against the socket map: warns once when it outgrows
/// the map, and once when it fits again.
pub struct Watch {
    usable: u64,
    owners: u32,
    over: bool,
}

impl Watch {
    pub fn new(maps: SocketMaps) -> Self {
        Self {
            usable: maps.usable,
            owners: maps.owners,
            over: false,
        }
    }

    /// Once a second: the host's socket count against the map, said on stderr when it
    /// crosses. (A count that cannot be read was warned about at start-up.)
    pub fn tick(&mut self) {
        if let Ok(tcp) = tcp_sockets()
            && let Some(line) = self.check(tcp)
        {
            eprintln!("{line}");
        }
    }

    /// The warning to print, if the host crossed the map's size since the last check.
    fn check(&mut self, tcp: u64) -> Option<String> {
        let over = tcp > self.usable;
        if over == self.over {
            return None;
        }
        self.over = over;
        Some(if over {
            format!(
                "rst-trace: warning: this host has {tcp} TCP sockets, more than the {} the \
                 socket owner map keeps (--max-sockets {}): the owners of the least recently \
                 used ones may be forgotten, and their resets then name no process. Restart \
                 rst-trace to size the map for this host, or give a larger --max-sockets",
                self.usable, self.owners
            )
        } else {
            format!(
                "rst-trace: note: this host's {tcp} TCP sockets fit the socket owner map again \
                 ({} entries)",
                self.usable
            )
        })
    }
}

/// Read on the way, so that a host without /proc/net/sockstat (never seen) still starts: the
/// default size then, said on stderr.
pub fn tcp_sockets_or_warn() -> u64 {
    tcp_sockets().unwrap_or_else(|e| {
        eprintln!(
            "rst-trace: warning: cannot count this host's TCP sockets ({e:#}): the socket \
             owner map gets the default {DEFAULT_OWNERS} entries and is not watched"
        );
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_alloc_is_read() {
        let text =
            "sockets: used 311\nTCP: inuse 12 orphan 0 tw 3 alloc 57 mem 4\nUDP: inuse 2 mem 1\n";
        assert_eq!(parse_sockstat(text), Some(57));
        assert_eq!(
            parse_sockstat("sockets: used 1\nUDP: inuse 0 mem 0\n"),
            None
        );
        assert_eq!(parse_sockstat("TCP: inuse 1 alloc\n"), None);
    }

    #[test]
    fn maps_grow_with_the_host() {
        // A small host: the default socket map, the smallest seed map.
        let p = plan(None, 40, 2);
        assert_eq!((p.owners, p.seeds), (DEFAULT_OWNERS, SEEDS_MIN));
        assert_eq!(p.usable, u64::from(DEFAULT_OWNERS) - 3 * 128);
        // 100k sockets on 64 CPUs: room for twice as many, and for the LRU's free lists.
        let p = plan(None, 100_000, 64);
        assert_eq!(p.owners, 1 << 18);
        assert!(p.usable >= 200_000, "{p:?}");
        assert!(u64::from(p.seeds) >= 125_000, "{p:?}");
        // The automatic sizes stop at 1M entries; --max-sockets decides beyond.
        let huge = plan(None, 10_000_000, 2);
        assert_eq!(
            (huge.owners, huge.seeds),
            (AUTO_OWNERS_MAX, AUTO_OWNERS_MAX)
        );
        assert_eq!(plan(Some(4096), 10_000_000, 2).owners, 4096);
    }

    #[test]
    fn the_watch_warns_once_each_way() {
        let mut w = Watch::new(plan(Some(4096), 0, 2));
        assert_eq!(w.check(100), None);
        let warn = w.check(4000).expect("over the map");
        assert!(warn.contains("4000 TCP sockets") && warn.contains("--max-sockets 4096"));
        assert_eq!(w.check(5000), None);
        assert!(w.check(10).expect("fits again").contains("fit"));
        assert_eq!(w.check(20), None);
    }
}
