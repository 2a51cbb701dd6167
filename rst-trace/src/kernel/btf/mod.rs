//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find struct
//! member offsets and enum values. Rust eBPF has no CO-RE, so this is how the kernel side learns
//! where `sock.__sk_common.skc_state` and friends live on the running kernel.
//!
//! Format: Documentation/bpf/btf.rst (header, type section, string section).

mod for_aya;
mod parse;
#[cfg(test)]
mod tests;

use std::ops::Range;

use anyhow::{Result, anyhow, bail};
use parse::{
    Header, KIND_CONST, KIND_ENUM, KIND_ENUM64, KIND_FUNC_PROTO, KIND_PTR, KIND_RESTRICT,
    KIND_STRUCT, KIND_TYPE_TAG, KIND_TYPEDEF, KIND_UNION, KIND_VOLATILE, MEMBER_LEN, u32_at,
};

/// A struct or union member.
#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// vmlinux BTF, decoded only where it is looked at: start-up reads a few dozen of its ~100k
/// types, and decoding them all (an allocation per enum, a copy of every member) was most of
/// the parse's time.
pub struct Btf {
    /// The whole file.
    data: Vec<u8>,
    /// The type and string sections' places in `data`.
    types: Range<usize>,
    strs: Range<usize>,
    /// Index = type id: where the type starts in the type section (id 0 is `void`).
    offsets: Vec<u32>,
    /// (hash of the name, type id, name offset) of named structs, unions, enums and
    /// `btf_trace_*` typedefs, sorted: looked up by binary search, then the name compared.
    by_name: Vec<(u64, u32, u32)>,
    /// Name offsets of the functions (KIND_FUNC) in this BTF: built-in code only.
    functions: Vec<u32>,
}

/// FNV-1a: names are short, and the index only needs to spread them.
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The NUL-terminated string at `off` in a string section.
fn c_str(strs: &[u8], off: u32) -> &[u8] {
    let s = strs.get(off as usize..).unwrap_or_default();
    &s[..memchr::memchr(0, s).unwrap_or(s.len())]
}

/// vmlinux BTF's bytes.
fn read_sys_fs() -> Result<Vec<u8>> {
    let path = "/sys/kernel/btf/vmlinux";
    std::fs::read(path).map_err(|e| {
        anyhow!(
            "cannot read {path} ({e}): rst-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )
    })
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self> {
        Self::parse(read_sys_fs()?)
    }

    fn types_sec(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn name(&self, off: u32) -> &[u8] {
        c_str(&self.data[self.strs.clone()], off)
    }

    fn header(&self, id: u32) -> Option<Header> {
        let pos = *self.offsets.get(id as usize).filter(|&&p| p != u32::MAX)?;
        Header::read(self.types_sec(), pos as usize)
    }

    /// Whether the kernel image (not a module) has function `name`: the name's places in the
    /// string section (`"\0name\0"`, found with memmem), then the functions' name offsets.
    pub fn has_function(&self, name: &str) -> bool {
        let needle = [&[0u8][..], name.as_bytes(), &[0u8][..]].concat();
        memchr::memmem::find_iter(&self.data[self.strs.clone()], &needle)
            .any(|at| self.functions.contains(&(at as u32 + 1)))
    }

    /// Ids of the indexed types named `name`, in id order.
    fn ids_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let h = name_hash(name.as_bytes());
        let first = self.by_name.partition_point(|&(x, _, _)| x < h);
        self.by_name[first..]
            .iter()
            .take_while(move |&&(x, _, _)| x == h)
            .filter(move |&&(_, _, off)| self.name(off) == name.as_bytes())
            .map(|&(_, id, _)| id)
    }

    /// The members of a struct or union.
    fn members(&self, h: &Header) -> Option<impl Iterator<Item = Member> + '_> {
        if !matches!(h.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        let sec = self.types_sec();
        let (body, kind_flag) = (h.body, h.kind_flag);
        Some((0..h.vlen).map_while(move |i| {
            let at = body + i * MEMBER_LEN;
            let off = u32_at(sec, at + 8)?;
            Some(Member {
                name: u32_at(sec, at)?,
                type_id: u32_at(sec, at + 4)?,
                // With kind_flag the offset word is bitfield_size << 24 | bit_offset.
                bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
            })
        }))
    }

    /// The type `id` refers to, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<Header> {
        for _ in 0..32 {
            let h = self.header(id)?;
            match h.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = h.size_or_type;
                }
                _ => return Some(h),
            }
        }
        None
    }

    /// The first struct or union named `name` that has members (not a forward declaration).
    fn composite(&self, name: &str) -> Option<Header> {
        self.ids_named(name).find_map(|id| {
            self.resolve(id)
                .filter(|h| matches!(h.kind, KIND_STRUCT | KIND_UNION) && h.vlen > 0)
        })
    }

    /// Finds member `name` of `parent`, looking through anonymous structs and unions as C does.
    /// Returns its bit offset and type id.
    fn find_member(&self, parent: &Header, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in self.members(parent)? {
            let m_name = self.name(m.name);
            if m_name == name.as_bytes() {
                return Some((m.bit_offset, m.type_id));
            }
            if m_name.is_empty()
                && let Some(inner) = self.resolve(m.type_id)
                && let Some((off, ty)) = self.find_member(&inner, name, depth + 1)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// `sizeof(struct root)` (e.g. `pt_regs`, whose copy at system call entry ends at the top of
    /// the task's kernel stack).
    pub fn struct_size(&self, root: &str) -> Result<u32> {
        self.composite(root)
            .map(|h| h.size_or_type)
            .ok_or_else(|| anyhow!("kernel BTF has no struct {root}"))
    }

    /// Byte offset of `path` (e.g. `__sk_common.skc_net.net`) inside `struct` (or union) `root`.
    pub fn offset_of(&self, root: &str, path: &str) -> Result<u32> {
        let bits = self.bit_offset_of(root, path)?;
        if !bits.is_multiple_of(8) {
            bail!("kernel BTF: {root}.{path} is a bitfield");
        }
        Ok(bits / 8)
    }

    /// Bit offset of `path` inside `root` (bitfields included).
    pub fn bit_offset_of(&self, root: &str, path: &str) -> Result<u32> {
        let mut parent = self
            .composite(root)
            .ok_or_else(|| anyhow!("kernel BTF has no struct {root}"))?;
        let mut bits = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, ty) = self
                .find_member(&parent, part, 0)
                .ok_or_else(|| anyhow!("kernel BTF: struct {root} has no member {path}"))?;
            bits += off;
            if parts.peek().is_some() {
                parent = match self.resolve(ty) {
                    Some(h) if matches!(h.kind, KIND_STRUCT | KIND_UNION) => h,
                    _ => bail!("kernel BTF: {root}.{path}: {part} is not a struct"),
                };
            }
        }
        Ok(bits)
    }

    /// How many arguments tracepoint `name` passes to a BTF tracepoint program (the prototype's
    /// parameters after the leading `void *`), or None if the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<u32> {
        let typedef = self.header(self.tracepoint_typedef(name)?)?;
        let ptr = self
            .resolve(typedef.size_or_type)
            .filter(|h| h.kind == KIND_PTR)?;
        let proto = self.resolve(ptr.size_or_type)?;
        (proto.kind == KIND_FUNC_PROTO).then(|| (proto.vlen as u32).checked_sub(1))?
    }

    /// Value of enumerator `name` in `enum enum_name`.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Result<i64> {
        self.enum_values(enum_name)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow!("kernel BTF: enum {enum_name} has no {name}"))
    }

    /// All enumerators of `enum enum_name`.
    pub fn enum_values(&self, enum_name: &str) -> Result<Vec<(String, i64)>> {
        self.ids_named(enum_name)
            .find_map(|id| {
                self.resolve(id)
                    .filter(|h| matches!(h.kind, KIND_ENUM | KIND_ENUM64))
            })
            .map(|h| self.enumerators(&h))
            .ok_or_else(|| anyhow!("kernel BTF has no enum {enum_name}"))
    }

    /// An enum's values: 32-bit signed ones (`BTF_KIND_ENUM`), or 64-bit (`BTF_KIND_ENUM64`).
    fn enumerators(&self, h: &Header) -> Vec<(String, i64)> {
        let sec = self.types_sec();
        let wide = h.kind == KIND_ENUM64;
        let step = if wide { 12 } else { 8 };
        (0..h.vlen)
            .map_while(|i| {
                let at = h.body + i * step;
                let name = String::from_utf8_lossy(self.name(u32_at(sec, at)?)).into_owned();
                let lo = u32_at(sec, at + 4)?;
                let v = if wide {
                    ((u64::from(u32_at(sec, at + 8)?) << 32) | u64::from(lo)) as i64
                } else {
                    i64::from(lo as i32)
                };
                Some((name, v))
            })
            .collect()
    }
}
