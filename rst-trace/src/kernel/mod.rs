//! Everything that talks to the kernel: tracefs formats, vmlinux BTF, the record and struct
//! layouts handed to the eBPF programs, loading, attaching and the maps.

mod app;
mod attach;
mod btf;
mod capacity;
mod cost;
mod errors;
mod host;
mod layout;
mod load;
mod maps;
mod tracefs;
mod transmit;

pub use attach::detach_record_links;
pub use capacity::{MapUse, Watch as SocketWatch, min_owners, possible_cpus};
pub use cost::{ProgramCost, SelfCost, cost_lines, program_costs};
pub use errors::{LoadFailure, Notes, first_line, print_details};
pub use host::{check_privileges, raise_memlock};
pub use layout::KernelInfo;
pub use load::{DRAIN_INTERVAL, Hooks, Tracer, load};
pub use maps::{
    Ring, app_lost_total, event_ring, hide_cgroup, insert_failures, kernel_counts, lost_total,
};
