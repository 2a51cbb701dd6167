//! The BTF aya is handed to load the BTF tracepoint programs.
//!
//! All that aya's `BtfTracePoint::load(name, btf)` takes from vmlinux BTF is the type id of the
//! typedef `btf_trace_<name>`, which it passes to the kernel as `attach_btf_id` (the kernel
//! checks the program against its own BTF). aya finds it by parsing the whole of vmlinux BTF,
//! which was most of the start-up's CPU and its peak memory (more so with musl's allocator,
//! whose lock the main thread then waited on; README, Start-up), for one number each. So it
//! gets a BTF of its own instead: the typedefs at the ids our reader found, every other id a
//! bare `void *`.

use anyhow::{Context as _, Result};

use super::{
    Btf,
    parse::{HEADER_LEN, KIND_PTR, KIND_TYPEDEF},
};

impl Btf {
    /// The type id of `typedef ... btf_trace_<name>`, a BTF tracepoint's prototype.
    pub fn tracepoint_typedef(&self, name: &str) -> Option<u32> {
        self.ids_named(&format!("btf_trace_{name}"))
            .find(|&id| self.header(id).is_some_and(|h| h.kind == KIND_TYPEDEF))
    }

    /// A BTF for aya in which each of `tracepoints` that this kernel has is at its vmlinux id.
    pub fn for_aya(&self, tracepoints: &[&str]) -> Result<aya::Btf> {
        let found: Vec<(u32, String)> = tracepoints
            .iter()
            .filter_map(|n| Some((self.tracepoint_typedef(n)?, format!("btf_trace_{n}"))))
            .collect();
        let last = found.iter().map(|&(id, _)| id).max().unwrap_or(0);
        let mut strs = vec![0u8];
        let mut named = Vec::with_capacity(found.len());
        for (id, name) in &found {
            named.push((*id, strs.len() as u32));
            strs.extend_from_slice(name.as_bytes());
            strs.push(0);
        }
        let mut types = Vec::with_capacity(last as usize * HEADER_LEN);
        for id in 1..=last {
            let (kind, name) = match named.iter().find(|&&(i, _)| i == id) {
                Some(&(_, name)) => (KIND_TYPEDEF, name),
                None => (KIND_PTR, 0),
            };
            // struct btf_type: name_off, info (kind << 24), type (0: void).
            for w in [name, kind << 24, 0] {
                types.extend_from_slice(&w.to_le_bytes());
            }
        }
        aya::Btf::parse(&blob(&types, &strs), aya::Endianness::default())
            .context("aya cannot read the BTF built for it")
    }
}

/// A BTF file: the header, the type section, the string section.
pub(super) fn blob(types: &[u8], strs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + types.len() + strs.len());
    out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
    out.extend_from_slice(&[1, 0]); // version, flags
    let types_len = types.len() as u32;
    for w in [24, 0, types_len, types_len, strs.len() as u32] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(strs);
    out
}

#[cfg(test)]
mod tests {
    use aya_obj::btf::BtfKind;

    use super::Btf;

    /// On the running kernel (the host and every guest of the matrix): aya finds each
    /// tracepoint's typedef in the BTF built for it at the id its own parse of vmlinux BTF
    /// gives, and a tracepoint this kernel lacks in neither.
    #[test]
    fn the_ids_ayas_own_parse_finds() {
        let ours = Btf::from_sys_fs().expect("vmlinux BTF");
        let tracepoints = ["tcp_send_reset", "tcp_receive_reset", "no_such_tracepoint"];
        let built = ours.for_aya(&tracepoints).unwrap();
        let full = aya::Btf::from_sys_fs().unwrap();
        for tp in tracepoints {
            let name = format!("btf_trace_{tp}");
            let want = full.id_by_type_name_kind(&name, BtfKind::Typedef).ok();
            assert_eq!(
                built.id_by_type_name_kind(&name, BtfKind::Typedef).ok(),
                want,
                "{name}"
            );
            assert_eq!(want.is_some(), tp != "no_such_tracepoint", "{name}");
        }
        // None found: an empty BTF, in which aya finds nothing (the reset programs then fall
        // back to the record-based tracepoints).
        let empty = ours.for_aya(&["no_such_tracepoint"]).unwrap();
        assert!(
            empty
                .id_by_type_name_kind("btf_trace_no_such_tracepoint", BtfKind::Typedef)
                .is_err()
        );
    }
}
