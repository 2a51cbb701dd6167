//! Reading BTF data: the header, then one pass over the type section that records where each
//! type starts and indexes the names looked up later. Nothing else is decoded up front.

use anyhow::{Result, anyhow, bail};

use super::{Btf, name_hash};

const BTF_MAGIC: u16 = 0xeb9f;

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
pub const KIND_FWD: u32 = 7;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;
pub const KIND_FLOAT: u32 = 16;
pub const KIND_DECL_TAG: u32 = 17;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

/// Every type starts with `struct btf_type`: name_off, info, size_or_type.
pub const HEADER_LEN: usize = 12;
/// A struct's or union's `struct btf_member`: name_off, type, offset.
pub const MEMBER_LEN: usize = 12;

pub fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A type's `struct btf_type`, decoded.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name_off: u32,
    pub kind: u32,
    pub vlen: usize,
    pub kind_flag: bool,
    pub size_or_type: u32,
    /// Where what follows the header (members, enumerators, ...) starts in the type section.
    pub body: usize,
}

impl Header {
    pub fn read(types_sec: &[u8], pos: usize) -> Option<Self> {
        let info = u32_at(types_sec, pos + 4)?;
        Some(Self {
            name_off: u32_at(types_sec, pos)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: u32_at(types_sec, pos + 8)?,
            body: pos + HEADER_LEN,
        })
    }

    /// How many bytes follow the header (Documentation/bpf/btf.rst, "Type Encoding").
    fn body_len(&self) -> Result<usize> {
        Ok(match self.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION => MEMBER_LEN * self.vlen,
            KIND_DATASEC | KIND_ENUM64 => 12 * self.vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * self.vlen,
            other => bail!("unknown BTF kind {other}"),
        })
    }
}

impl Btf {
    /// Parses `data`, the whole BTF file, which the result keeps.
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let d = data.as_slice();
        if d.len() < 24 || u16::from_le_bytes([d[0], d[1]]) != BTF_MAGIC {
            bail!("not little-endian BTF data");
        }
        let field = |off| u32_at(d, off).map(|v| v as usize);
        let (Some(hdr_len), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(4), field(8), field(12), field(16), field(20))
        else {
            bail!("BTF header truncated");
        };
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strs = hdr_len + str_off..hdr_len + str_off + str_len;
        if d.get(types.clone()).is_none() || d.get(strs.clone()).is_none() {
            bail!("BTF section out of bounds");
        }
        let index = index_types(&d[types.clone()], &d[strs.clone()])?;
        Ok(Self {
            data,
            types,
            strs,
            offsets: index.offsets,
            by_name: index.by_name,
            functions: index.functions,
        })
    }
}

/// What the pass over the type section records.
struct Index {
    offsets: Vec<u32>,
    by_name: Vec<(u64, u32, u32)>,
    functions: Vec<u32>,
}

/// Where each type starts (index = type id; id 0 is `void`, which has no entry in the
/// section), the names of structs, unions, enums and BTF tracepoint prototypes, and the
/// functions' names.
fn index_types(types_sec: &[u8], strs: &[u8]) -> Result<Index> {
    // Roughly 16 bytes of type section per type.
    let mut offsets = Vec::with_capacity(types_sec.len() / 16 + 1);
    offsets.push(u32::MAX);
    let mut by_name = Vec::new();
    let mut functions = Vec::new();
    let name = |off: u32| super::c_str(strs, off);
    let mut pos = 0usize;
    while pos + HEADER_LEN <= types_sec.len() {
        let h = Header::read(types_sec, pos).ok_or_else(|| anyhow!("BTF truncated at {pos}"))?;
        let id = offsets.len() as u32;
        offsets.push(pos as u32);
        pos = h.body + h.body_len()?;
        if h.name_off == 0 {
            continue;
        }
        match h.kind {
            KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => {
                by_name.push((name_hash(name(h.name_off)), id, h.name_off));
            }
            // `typedef void (*btf_trace_<name>)(void *, ...)`: a BTF tracepoint's prototype.
            KIND_TYPEDEF if name(h.name_off).starts_with(b"btf_trace_") => {
                by_name.push((name_hash(name(h.name_off)), id, h.name_off));
            }
            KIND_FUNC => functions.push(h.name_off),
            _ => {}
        }
    }
    if pos != types_sec.len() {
        bail!("BTF truncated: the last type does not end with the type section");
    }
    // Types of one name stay in id order.
    by_name.sort_unstable_by_key(|&(h, id, _)| (h, id));
    Ok(Index {
        offsets,
        by_name,
        functions,
    })
}
