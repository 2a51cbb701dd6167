//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find struct
//! member offsets and enum values. Rust eBPF has no CO-RE, so this is how the kernel side learns
//! where `sock.__sk_common.skc_state` and friends live on the running kernel.
//!
//! Format: Documentation/bpf/btf.rst (header, type section, string section).

use anyhow::{Result, anyhow, bail};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

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

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| anyhow!("BTF truncated at offset {off}"))
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

    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            bail!("not little-endian BTF data");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| anyhow!("BTF type section out of bounds"))?;
        let strs = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| anyhow!("BTF string section out of bounds"))?;
        let name = |off: u32| -> &[u8] {
            let s = strs.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            &s[..end]
        };

        // Roughly 16 bytes of type section per type, 3 members per composite.
        let mut types = Vec::with_capacity(type_len / 16 + 1);
        types.push(Type::Other);
        let mut members_all: Vec<Member> = Vec::with_capacity(type_len / 24);
        let mut functions = Vec::new();
        let mut by_name: Vec<(u64, u32, u32)> = Vec::new();
        let mut pos = 0usize;
        while pos + 12 <= types_sec.len() {
            let name_off = u32_at(types_sec, pos)?;
            let info = u32_at(types_sec, pos + 4)?;
            let size_or_type = u32_at(types_sec, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let ty = match kind {
                KIND_INT => {
                    pos += 4;
                    Type::Other
                }
                KIND_FUNC => {
                    functions.push(name_off);
                    Type::Other
                }
                KIND_PTR => Type::Ptr {
                    type_id: size_or_type,
                },
                KIND_FWD | KIND_FLOAT => Type::Other,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias {
                        type_id: size_or_type,
                    }
                }
                KIND_ARRAY => {
                    pos += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let start = members_all.len() as u32;
                    for _ in 0..vlen {
                        let m_name = u32_at(types_sec, pos)?;
                        let m_type = u32_at(types_sec, pos + 4)?;
                        let m_off = u32_at(types_sec, pos + 8)?;
                        pos += 12;
                        // With kind_flag the offset word is bitfield_size << 24 | bit_offset.
                        let bit_offset = if kind_flag {
                            m_off & 0x00ff_ffff
                        } else {
                            m_off
                        };
                        members_all.push(Member {
                            name: m_name,
                            type_id: m_type,
                            bit_offset,
                        });
                    }
                    Type::Composite {
                        start,
                        len: vlen as u32,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let n = u32_at(types_sec, pos)?;
                        let v = u32_at(types_sec, pos + 4)? as i32;
                        pos += 8;
                        values.push((n, i64::from(v)));
                    }
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let n = u32_at(types_sec, pos)?;
                        let lo = u32_at(types_sec, pos + 4)?;
                        let hi = u32_at(types_sec, pos + 8)?;
                        pos += 12;
                        values.push((n, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
                    }
                    Type::Enum { values }
                }
                KIND_FUNC_PROTO => {
                    pos += 8 * vlen;
                    Type::FuncProto {
                        params: vlen as u32,
                    }
                }
                KIND_VAR => {
                    pos += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    pos += 12 * vlen;
                    Type::Other
                }
                KIND_DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                other => bail!("unknown BTF kind {other}"),
            };
            let id = types.len() as u32;
            // Structs, unions, enums; and the prototypes of BTF tracepoints,
            // `typedef void (*btf_trace_<name>)(void *, ...)`.
            if name_off != 0
                && (matches!(kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64)
                    || (kind == KIND_TYPEDEF && name(name_off).starts_with(b"btf_trace_")))
            {
                by_name.push((name_hash(name(name_off)), id, name_off));
            }
            types.push(ty);
        }
        // Stable: types of one name stay in id order.
        by_name.sort_by_key(|&(h, _, _)| h);
        Ok(Self {
            types,
            members: members_all,
            by_name,
            strings: strs.to_vec(),
            functions,
        })
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
            Type::Composite { start, len } => {
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
