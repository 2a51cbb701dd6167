//! The eBPF maps userspace fills (filters, seeded owners) and reads (lost events, in-kernel
//! counts).

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use rst_trace_common::{
    CountKey, MAP_APP_LOST, MAP_COUNTS, MAP_EVENTS, MAP_FILTER_PIDS, MAP_FILTER_PORTS,
    MAP_HIDDEN_CGROUPS, MAP_INSERT_FAILED, MAP_LOST, MAP_SEED_OWNERS, PROG_RECEIVE_RESET,
    PROG_RECEIVE_RESET_BTF, PROG_SEND_RESET, PROG_SEND_RESET_BTF, RstEvent, Task,
};
use tokio::io::unix::AsyncFd;

use super::{Tracer, attach::PROG_SEND_RESET_BTF_NC};
use crate::filter::Filter;

/// The `--pid` and `--port` values into their in-kernel maps.
pub(super) fn fill_filters(ebpf: &mut Ebpf, filter: &Filter) -> Result<()> {
    let mut pids: BpfHashMap<_, u32, u8> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_FILTER_PIDS).context("pid filter map")?)?;
    for &p in &filter.pids {
        pids.insert(&p, &1, 0)?;
    }
    let mut ports: BpfHashMap<_, u16, u8> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_FILTER_PORTS).context("port filter map")?)?;
    for &p in &filter.ports {
        ports.insert(&p, &1, 0)?;
    }
    Ok(())
}

/// `--container`/`--pod`: the kernel drops the received resets of cgroup `id` from now on.
pub fn hide_cgroup(ebpf: &mut Ebpf, id: u64) -> Result<()> {
    let mut hidden: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
        ebpf.map_mut(MAP_HIDDEN_CGROUPS)
            .context("hidden cgroup map")?,
    )?;
    hidden.insert(&id, &1, 0)?;
    Ok(())
}

/// Seeds the owners of the sockets that existed before rst-trace started (`existing`, from
/// `owners::existing`), as many as the map's `capacity` holds; returns how many. The map was
/// sized for the host's sockets before the scan: more found means many opened meanwhile, which
/// is said, not silently cut.
pub(super) fn seed_owners(
    ebpf: &mut Ebpf,
    existing: &HashMap<u64, Task>,
    capacity: u32,
) -> Result<usize> {
    let mut seeded = 0;
    let mut seed: BpfHashMap<_, u64, Task> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_SEED_OWNERS).context("seed owner map")?)?;
    for (cookie, task) in existing.iter().take(capacity as usize) {
        seed.insert(cookie, task, 0)?;
        seeded += 1;
    }
    if existing.len() > seeded {
        eprintln!(
            "rst-trace: warning: {} sockets existed at start-up, {seeded} of them owned (the seed \
             map's size, set from the host's socket count a moment before): the resets of the \
             others name no process until the socket is used",
            existing.len()
        );
    }
    Ok(seeded)
}

/// Failed inserts into the kernel side's socket, TIME_WAIT and closing-listener maps, over all
/// CPUs (each a lost owner or TIME_WAIT hand-over; LRU maps evict instead, so normally 0).
pub fn insert_failures(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
        ebpf.map(MAP_INSERT_FAILED)
            .context("insert failure counter map")?,
    )?;
    Ok(map.get(&0, 0)?.iter().sum())
}

/// Events lost so far: the per-CPU count of ring-buffer reservations that failed, plus the
/// runs of the reset programs the kernel skipped. A BTF tracepoint program does not run while it
/// is already running on that CPU (a softirq interrupting it; since 6.1), and a record-based one
/// while any record-based program runs there (bpf_prog_active); the kernel counts each skip in
/// the program's `recursion_misses` (since 6.7). (The transmit hook's skips are not counted: it
/// runs for every packet, and a skipped run is almost never a firewall reset.)
pub fn lost_total(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(MAP_LOST).context("lost counter map")?)?;
    let ring_full: u64 = map.get(&0, 0)?.iter().sum();
    let skipped: u64 = [
        PROG_SEND_RESET_BTF,
        PROG_RECEIVE_RESET_BTF,
        PROG_SEND_RESET_BTF_NC,
        PROG_SEND_RESET,
        PROG_RECEIVE_RESET,
    ]
    .into_iter()
    .filter_map(|name| recursion_misses(ebpf, name))
    .sum();
    Ok(ring_full + skipped)
}

/// Application error records lost so far (ring buffer full), over all CPUs.
pub fn app_lost_total(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
        ebpf.map(MAP_APP_LOST)
            .context("app error lost counter map")?,
    )?;
    Ok(map.get(&0, 0)?.iter().sum())
}

/// The resets counted in the kernel so far (`--summary --quiet`): an event for each key (see
/// `CountKey::event`) with its count over all CPUs.
pub fn kernel_counts(ebpf: &Ebpf) -> Result<Vec<(RstEvent, u64)>> {
    let map: PerCpuHashMap<_, CountKey, u64> =
        PerCpuHashMap::try_from(ebpf.map(MAP_COUNTS).context("count map")?)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = item?;
        out.push((key.event(), per_cpu.iter().sum()));
    }
    Ok(out)
}

/// `recursion_misses` of a loaded program, from its fdinfo (5.12+; None before, or unloaded).
/// Read by hand: procfs parses no fdinfo keys of BPF programs.
fn recursion_misses(ebpf: &Ebpf, prog: &str) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = ebpf.program(prog)?.fd().ok()?.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The ring buffer the reset programs write to, registered with the event loop.
pub type Ring = AsyncFd<RingBuf<MapData>>;

/// Takes the ring buffer out of the object, registered with the event loop.
pub fn event_ring(tracer: &mut Tracer) -> Result<Ring> {
    let ring = RingBuf::try_from(
        tracer
            .ebpf
            .take_map(MAP_EVENTS)
            .context("ring buffer map missing from the eBPF object")?,
    )?;
    // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the AsyncFd lives.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("registering the ring buffer with the event loop: {e}"))
}
