//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find struct
//! member offsets and enum values. Rust eBPF has no CO-RE, so this is how the kernel side learns
//! where `sock.__sk_common.skc_state` and friends live on the running kernel.
//!
//! Format: Documentation/bpf/btf.rst (header, type section, string section).

mod parse;

use anyhow::{Result, anyhow, bail};

/// Names are kept as offsets into the string section, and members in one flat array: vmlinux has
/// ~100k types, and an allocation per type or name is most of the start-up time (more so with
/// the static binary's musl allocator).
#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// struct or union: `Btf::members[start..start + len]`
    Composite {
        start: u32,
        len: u32,
        /// `sizeof` in bytes.
        size: u32,
    },
    /// typedef, const, volatile, restrict, type tag: all just refer to another type
    Alias {
        type_id: u32,
    },
    Enum {
        values: Vec<(u32, i64)>,
    },
    Ptr {
        type_id: u32,
    },
    FuncProto {
        params: u32,
    },
    Other,
}

pub struct Btf {
    /// Index = type id (id 0 is `void`).
    types: Vec<Type>,
    members: Vec<Member>,
    /// (hash of the name, type id, name offset) of named structs, unions, enums and
    /// `btf_trace_*` typedefs, sorted: looked up by binary search, then the name compared.
    by_name: Vec<(u64, u32, u32)>,
    strings: Vec<u8>,
    /// Name offsets of the functions (KIND_FUNC) in this BTF: built-in code only.
    functions: Vec<u32>,
}

/// FNV-1a: names are short, and the index only needs to spread them.
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|e| {
            anyhow!(
                "cannot read {path} ({e}): rst-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            )
        })?;
        Self::parse(&data)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Whether the kernel image (not a module) has function `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.functions.iter().any(|&off| self.name(off) == name)
    }

    /// Ids of the indexed types named `name`, in id order.
    fn ids_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let h = name_hash(name.as_bytes());
        let first = self.by_name.partition_point(|&(x, _, _)| x < h);
        self.by_name[first..]
            .iter()
            .take_while(move |&&(x, _, _)| x == h)
            .filter(move |&&(_, _, off)| self.name(off) == name)
            .map(|&(_, id, _)| id)
    }

    fn composite_members(&self, t: &Type) -> Option<&[Member]> {
        match *t {
            Type::Composite { start, len, .. } => {
                self.members.get(start as usize..(start + len) as usize)
            }
            _ => None,
        }
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias { type_id } => id = *type_id,
                t => return Some(t),
            }
        }
        None
    }

    fn composite(&self, name: &str) -> Option<&[Member]> {
        self.ids_named(name).find_map(|id| {
            self.resolve(id)
                .and_then(|t| self.composite_members(t))
                .filter(|m| !m.is_empty())
        })
    }

    /// Finds member `name` in `members`, looking through anonymous structs and unions as C does.
    /// Returns its bit offset and type id.
    fn find_member(&self, members: &[Member], name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in members {
            let m_name = self.name(m.name);
            if m_name == name {
                return Some((m.bit_offset, m.type_id));
            }
            if m_name.is_empty()
                && let Some(inner) = self
                    .resolve(m.type_id)
                    .and_then(|t| self.composite_members(t))
                && let Some((off, ty)) = self.find_member(inner, name, depth + 1)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// `sizeof(struct root)` (e.g. `pt_regs`, whose copy at system call entry ends at the top of
    /// the task's kernel stack).
    pub fn struct_size(&self, root: &str) -> Result<u32> {
        self.ids_named(root)
            .find_map(|id| match self.resolve(id) {
                Some(Type::Composite { size, len, .. }) if *len > 0 => Some(*size),
                _ => None,
            })
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
        let mut members = self
            .composite(root)
            .ok_or_else(|| anyhow!("kernel BTF has no struct {root}"))?;
        let mut bits = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, ty) = self
                .find_member(members, part, 0)
                .ok_or_else(|| anyhow!("kernel BTF: struct {root} has no member {path}"))?;
            bits += off;
            if parts.peek().is_some() {
                members = match self.resolve(ty).and_then(|t| self.composite_members(t)) {
                    Some(members) => members,
                    None => bail!("kernel BTF: {root}.{path}: {part} is not a struct"),
                };
            }
        }
        Ok(bits)
    }

    /// How many arguments tracepoint `name` passes to a BTF tracepoint program (the prototype's
    /// parameters after the leading `void *`), or None if the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<u32> {
        let id = self.ids_named(&format!("btf_trace_{name}")).next()?;
        let Type::Alias { type_id } = self.types.get(id as usize)? else {
            return None;
        };
        let Some(Type::Ptr { type_id }) = self.resolve(*type_id) else {
            return None;
        };
        match self.resolve(*type_id)? {
            Type::FuncProto { params } => params.checked_sub(1),
            _ => None,
        }
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
            .find_map(|id| match self.resolve(id) {
                Some(Type::Enum { values }) => Some(
                    values
                        .iter()
                        .map(|(n, v)| (self.name(*n).to_owned(), *v))
                        .collect(),
                ),
                _ => None,
            })
            .ok_or_else(|| anyhow!("kernel BTF has no enum {enum_name}"))
    }
}
