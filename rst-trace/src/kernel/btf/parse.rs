//! Reading BTF data: the header, then the type section in one pass.

use anyhow::{Result, anyhow, bail};

use super::{Btf, Member, Type, name_hash};

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

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| anyhow!("BTF truncated at offset {off}"))
}

impl Btf {
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
            let kind = (info >> 24) & 0x1f;
            let entry = Entry {
                kind,
                vlen: (info & 0xffff) as usize,
                kind_flag: info >> 31 != 0,
                size_or_type,
            };
            let ty = read_type(
                types_sec,
                &mut pos,
                entry,
                &mut members_all,
                &mut functions,
                name_off,
            )?;
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
}

/// A type's header fields that decide how much follows it.
struct Entry {
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
}

/// Reads the rest of the type `e` at `pos` in the type section (advancing `pos` past it);
/// composites' members go to `members`, functions' names to `functions`.
fn read_type(
    types_sec: &[u8],
    pos: &mut usize,
    e: Entry,
    members_all: &mut Vec<Member>,
    functions: &mut Vec<u32>,
    name_off: u32,
) -> Result<Type> {
    let Entry {
        kind,
        vlen,
        kind_flag,
        size_or_type,
    } = e;
    Ok(match kind {
        KIND_INT => {
            *pos += 4;
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
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => Type::Alias {
            type_id: size_or_type,
        },
        KIND_ARRAY => {
            *pos += 12;
            Type::Other
        }
        KIND_STRUCT | KIND_UNION => {
            let mut t = read_members(types_sec, pos, vlen, kind_flag, members_all)?;
            if let Type::Composite { size, .. } = &mut t {
                *size = size_or_type;
            }
            t
        }
        KIND_ENUM => read_enum(types_sec, pos, vlen, false)?,
        KIND_ENUM64 => read_enum(types_sec, pos, vlen, true)?,
        KIND_FUNC_PROTO => {
            *pos += 8 * vlen;
            Type::FuncProto {
                params: vlen as u32,
            }
        }
        KIND_VAR => {
            *pos += 4;
            Type::Other
        }
        KIND_DATASEC => {
            *pos += 12 * vlen;
            Type::Other
        }
        KIND_DECL_TAG => {
            *pos += 4;
            Type::Other
        }
        other => bail!("unknown BTF kind {other}"),
    })
}

/// A struct's or union's `vlen` members, appended to `members_all`.
fn read_members(
    types_sec: &[u8],
    pos: &mut usize,
    vlen: usize,
    kind_flag: bool,
    members_all: &mut Vec<Member>,
) -> Result<Type> {
    let start = members_all.len() as u32;
    for _ in 0..vlen {
        let m_name = u32_at(types_sec, *pos)?;
        let m_type = u32_at(types_sec, *pos + 4)?;
        let m_off = u32_at(types_sec, *pos + 8)?;
        *pos += 12;
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
    Ok(Type::Composite {
        start,
        len: vlen as u32,
        size: 0,
    })
}

/// An enum's `vlen` values: 32-bit signed ones (`BTF_KIND_ENUM`), or 64-bit (`wide`,
/// `BTF_KIND_ENUM64`).
fn read_enum(types_sec: &[u8], pos: &mut usize, vlen: usize, wide: bool) -> Result<Type> {
    let mut values = Vec::with_capacity(vlen);
    for _ in 0..vlen {
        let n = u32_at(types_sec, *pos)?;
        if wide {
            let lo = u32_at(types_sec, *pos + 4)?;
            let hi = u32_at(types_sec, *pos + 8)?;
            *pos += 12;
            values.push((n, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
        } else {
            let v = u32_at(types_sec, *pos + 4)? as i32;
            *pos += 8;
            values.push((n, i64::from(v)));
        }
    }
    Ok(Type::Enum { values })
}
