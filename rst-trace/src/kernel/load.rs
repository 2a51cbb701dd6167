//! Loads the eBPF object with the running kernel's layout, sets the in-kernel filters and attaches
//! the programs to their tracepoints.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, EbpfLoader, maps::MapType};
use rst_trace_common::{
    COUNTS_MAX_ENTRIES, Config, FILTER_CGROUP, FILTER_NO_RECEIVED, FILTER_PID, FILTER_PORT,
    GLOBAL_CONFIG, MAP_COUNTS, MAP_EVENTS, MAP_SEED_OWNERS, MAP_SOCKS, MAP_STACKS,
    MAP_STACKS_SPILL, MAP_TIMEWAIT, PROG_TCP_PROBE, STACKS_MAX_ENTRIES, STACKS_SPILL_ENTRIES,
};

use super::{
    app::{self, AppErrors},
    attach::{Resets, attach_owner_hooks, attach_raw, attach_resets},
    btf::Btf,
    capacity::{self, SocketMaps},
    errors::Notes,
    layout::{self, KernelInfo, Tracepoints},
    maps::{fill_filters, seed_owners},
    tracefs,
    transmit::{RejectSupport, Socketless, attach_transmit_hooks},
};
use crate::{explain::Direction, filter::Filter};

/// Userspace is woken when the ring is this fraction full (and drains every
/// [`DRAIN_INTERVAL`] anyway).
const WAKE_FRACTION: u32 = 16;
/// How often userspace drains the ring without being woken.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The eBPF object, built by build.rs through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rst-trace"));

pub struct Tracer {
    pub ebpf: Ebpf,
    pub info: KernelInfo,
    /// Sockets that existed at start-up whose owner was seeded.
    pub seeded: usize,
    /// The owner maps' sizes, set from the host's socket count.
    pub socket_maps: SocketMaps,
    /// The other network namespaces the TIME_WAIT count was read from (for the watch).
    pub namespaces: capacity::Namespaces,
    /// Whether netfilter REJECT resets are watched (see [`RejectSupport`]).
    pub reject: RejectSupport,
    pub(super) reject_attached: bool,
    /// How resets TCP sends without a full socket are seen.
    pub socketless: Socketless,
    /// The reset programs in use.
    pub resets: Resets,
    /// Whether failing application calls are traced.
    pub app: AppErrors,
    /// Whether the registers saved at system call entry are found (x86_64, arm64: regs.rs):
    /// without them stacks lack the caller of a frameless function, which the readiness line
    /// says.
    pub entry_regs: bool,
    /// Whether programs run at system calls (accept's, and the application-error hooks'):
    /// not with `--no-syscall-hooks`.
    pub syscall_hooks: bool,
}

fn required_format(tracefs: &Path, cat: &str, name: &str) -> Result<tracefs::Format> {
    tracefs::read_format(tracefs, cat, name)?.ok_or_else(|| {
        anyhow!(
            "this kernel has no tracepoint {cat}:{name} (it needs Linux 5.8 or later with \
             CONFIG_TRACEPOINTS): run rst-trace on a newer kernel"
        )
    })
}

/// Which per-packet hooks to use (each costs tens of ns per packet, see README).
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// `tcp_probe`: TTL evidence on received resets.
    pub ttl: bool,
    /// `net_dev_queue`: netfilter REJECT resets.
    pub firewall: bool,
    /// Count resets in the kernel (`MAP_COUNTS`) rather than send each: `--summary --quiet`.
    pub count_in_kernel: bool,
    /// `--stacks`: capture the stacks of process-context aborts (`MAP_STACKS`).
    pub stacks: bool,
    /// `sys_exit`: failing application calls (not `--no-app-errors`).
    pub app_errors: bool,
    /// Programs on system calls (`syscalls:*`, `raw_syscalls:sys_exit`): not
    /// `--no-syscall-hooks`.
    pub syscalls: bool,
}

/// The BPF ring buffer (BPF_MAP_TYPE_RINGBUF, 5.8, commit 457f44363a88) carries every event:
/// without it nothing can work, and the loader's error would only say that a map could not be
/// created. (Ubuntu 20.04's 5.4 is such a kernel.)
fn require_ringbuf() -> Result<()> {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(false) => Err(anyhow!(
            "this kernel has no BPF ring buffer (needs Linux 5.8+)"
        )),
        // A probe that fails for another reason (privileges) is left to the loader to report.
        Ok(true) | Err(_) => Ok(()),
    }
}

/// The tracepoint formats rst-trace reads: the three it cannot work without, and the optional
/// ones (None when this kernel lacks them).
fn read_tracepoints(tracefs: &Path) -> Result<Tracepoints> {
    Ok(Tracepoints {
        send_reset: required_format(tracefs, "tcp", "tcp_send_reset")?,
        receive_reset: required_format(tracefs, "tcp", "tcp_receive_reset")?,
        set_state: required_format(tracefs, "sock", "inet_sock_set_state")?,
        destroy_sock: tracefs::read_format(tracefs, "tcp", "tcp_destroy_sock")?,
        send_length: tracefs::read_format(tracefs, "sock", "sock_send_length")?,
        exit_accept: tracefs::read_format(tracefs, "syscalls", "sys_exit_accept4")?,
        dev_queue: tracefs::read_format(tracefs, "net", "net_dev_queue")?,
    })
}

/// The in-kernel filter settings of `cfg`.
/// (At most `FILTER_MAX_ENTRIES` values of each: the command line's validation refuses more.)
fn filter_config(filter: &Filter, cfg: &mut Config) {
    if !filter.pids.is_empty() {
        cfg.filters |= FILTER_PID;
    }
    if !filter.ports.is_empty() {
        cfg.filters |= FILTER_PORT;
    }
    if filter.by_identity() {
        cfg.filters |= FILTER_CGROUP;
    }
    // --direction is applied in userspace only: a received reset is explained with the sent
    // one it answers (linking, and the data_after_close self-reset), so both must arrive.
    if filter.direction == Some(Direction::Sent) {
        cfg.filters |= FILTER_NO_RECEIVED;
    }
}

/// The eBPF object with this kernel's configuration (offsets, filters' flags) in its globals.
fn load_object(cfg: &Config, ring_size: u32, hooks: Hooks, socks: SocketMaps) -> Result<Ebpf> {
    // No target BTF: aya reads it only for CO-RE relocations and typed ksyms, which the object
    // has none of (offsets come from `CONFIG`); the BTF tracepoints get a BTF of their own
    // (btf/for_aya.rs).
    let (stacks_entries, spill_entries) = if hooks.stacks {
        (STACKS_MAX_ENTRIES, STACKS_SPILL_ENTRIES)
    } else {
        (1, 1)
    };
    EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, cfg, true)
        .map_max_entries(MAP_EVENTS, ring_size)
        .map_max_entries(MAP_SOCKS, socks.owners)
        .map_max_entries(MAP_SEED_OWNERS, socks.seeds)
        // Without --stacks the stack maps are never written: 1 entry (~1 KiB), not 2 MiB each.
        .map_max_entries(MAP_STACKS[0], stacks_entries)
        .map_max_entries(MAP_STACKS[1], stacks_entries)
        .map_max_entries(MAP_STACKS_SPILL[0][0], spill_entries)
        .map_max_entries(MAP_STACKS_SPILL[0][1], spill_entries)
        .map_max_entries(MAP_STACKS_SPILL[1][0], spill_entries)
        .map_max_entries(MAP_STACKS_SPILL[1][1], spill_entries)
        // Preallocated maps only some configurations write: 1 entry where they are never
        // written (creating a preallocated map is a start-up cost).
        .map_max_entries(
            MAP_COUNTS,
            if hooks.count_in_kernel {
                COUNTS_MAX_ENTRIES
            } else {
                1
            },
        )
        .map_max_entries(MAP_TIMEWAIT, socks.timewait)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is the kernel built with CONFIG_BPF_SYSCALL and BTF?)")
}

pub fn load(
    filter: &Filter,
    (ring_size, max_sockets): (u32, Option<u32>),
    hooks: Hooks,
    notes: Notes,
) -> Result<Tracer> {
    require_ringbuf()?;
    // TIME_WAIT sockets are counted per network namespace, through a walk of /proc (~10 ms with
    // 2000 processes): on another core while BTF and the tracepoint formats are read.
    let namespaces = std::thread::spawn(capacity::Namespaces::count);
    let tracefs = tracefs::locate()?;
    let tps = read_tracepoints(&tracefs)?;
    let mut cfg = Config::empty();
    layout::tracepoint_config(&tps, &mut cfg)?;
    let btf = Btf::from_sys_fs()?;
    layout::struct_config(&btf, &mut cfg)?;
    let info = KernelInfo {
        reasons: layout::reason_names(&tps.send_reset, Some(&btf)),
        jiffy_ns: layout::jiffy_ns(),
    };
    let app_plan = app_plan(&btf, (&tracefs, &tps), &mut cfg, hooks, notes);
    cfg.wake_bytes = ring_size / WAKE_FRACTION;
    cfg.count_in_kernel = u8::from(hooks.count_in_kernel);
    cfg.stacks = u8::from(hooks.stacks);
    filter_config(filter, &mut cfg);

    let cpus = capacity::possible_cpus();
    let namespaces = namespaces.join().unwrap_or_default();
    let host = capacity::host_sockets_or_warn(&namespaces);
    let socket_maps = capacity::plan(max_sockets, host, cpus);
    let mut ebpf = load_object(&cfg, ring_size, hooks, socket_maps)?;
    fill_filters(&mut ebpf, filter)?;

    // Owner tracking first, so no socket created meanwhile is missed; resets last.
    attach_owner_hooks(&mut ebpf, (&cfg, hooks.syscalls), &tps, &tracefs, notes)?;
    if hooks.ttl {
        attach_ttl(&mut ebpf, notes);
    }
    // With the owner hooks live, find the sockets that already existed: a scan of /proc and
    // sock_diag, on another core while the other programs load (on a host with many
    // processes it is the longest step of start-up).
    let existing = std::thread::spawn(crate::owners::existing);
    // The BTF aya loads the BTF tracepoints with (see btf/for_aya.rs). Without it, the
    // record-based tracepoints still work.
    let aya_btf = btf.for_aya(&["tcp_send_reset", "tcp_receive_reset"]);
    let resets = attach_resets(&mut ebpf, aya_btf.as_ref().ok(), notes)?;
    if let Err(e) = &aya_btf {
        notes.note(&format!("record-based reset tracepoints: {e:#}"));
    }
    drop(aya_btf);
    let (reject, socketless, reject_attached) =
        attach_transmit_hooks(&mut ebpf, &cfg, &tps, &btf, hooks, notes)?;
    let app = match app_plan {
        Ok(plan) => app::attach_app_hooks(&mut ebpf, plan, (&cfg, hooks.syscalls), notes),
        Err(off) => off,
    };
    let existing = existing
        .join()
        .map_err(|_| anyhow!("the scan for existing sockets panicked"))?;
    let seeded = seed_owners(&mut ebpf, &existing, socket_maps.seeds)?;
    Ok(Tracer {
        ebpf,
        info,
        seeded,
        socket_maps,
        namespaces,
        reject,
        reject_attached,
        socketless,
        resets,
        app,
        entry_regs: cfg.regs_arch != 0,
        syscall_hooks: hooks.syscalls,
    })
}

/// TTL evidence for received resets (raw tracepoints: 4.17+); without it, said and gone on.
fn attach_ttl(ebpf: &mut Ebpf, notes: Notes) {
    if let Err(e) = attach_raw(ebpf, PROG_TCP_PROBE, "tcp_probe") {
        notes.failed(
            "no TTL evidence on received resets (raw tracepoint tcp_probe)",
            &e,
        );
    }
}

/// Whether to trace failing application calls (`Ok((so_error, sock_layer))`: yes, `SO_ERROR`
/// reads too, and at the socket layer), with the config they need filled in; else what the
/// readiness line says instead.
fn app_plan(
    btf: &Btf,
    (tracefs, tps): (&Path, &Tracepoints),
    cfg: &mut Config,
    hooks: Hooks,
    notes: Notes,
) -> std::result::Result<(bool, bool), AppErrors> {
    if !hooks.app_errors {
        return Err(AppErrors::Off);
    }
    if hooks.count_in_kernel {
        let why = "--summary --quiet counts resets in the kernel, without the records they join";
        notes.note(&format!("application errors are not traced: {why}"));
        return Err(AppErrors::Unavailable(why.into()));
    }
    if let Err(why) = app::app_config(btf, cfg) {
        notes.note(&format!("application errors are not traced: {why}"));
        return Err(AppErrors::Unavailable(why));
    }
    if !hooks.syscalls {
        // Only the socket layer's own tracepoints then: sends and receives, from 6.3.
        if !app::sock_layer_config(tracefs, tps.send_length.is_some(), false, cfg) {
            return Err(AppErrors::Unavailable(
                "--no-syscall-hooks: before Linux 6.3 failing calls are seen only at system \
                 call exits"
                    .into(),
            ));
        }
        return Ok((false, true));
    }
    let sock_layer = app::sock_layer_config(tracefs, tps.send_length.is_some(), true, cfg);
    Ok((app::so_error_config(tracefs, cfg, notes), sock_layer))
}
