//! The reader on a small BTF blob built here, with what vmlinux has that a lookup must get
//! right: anonymous unions, bitfields (`kind_flag`), typedefs, 32- and 64-bit enums, a
//! tracepoint prototype, and names that are not functions. (The running kernel's BTF is read by
//! the layout tests, on every kernel of the matrix.)

use super::{
    Btf,
    parse::{
        KIND_ENUM, KIND_ENUM64, KIND_FUNC, KIND_FUNC_PROTO, KIND_INT, KIND_PTR, KIND_STRUCT,
        KIND_TYPEDEF, KIND_UNION,
    },
};

#[derive(Default)]
struct Blob {
    strs: Vec<u8>,
    types: Vec<u8>,
}

impl Blob {
    fn new() -> Self {
        Self {
            strs: vec![0],
            types: Vec::new(),
        }
    }

    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strs.len() as u32;
        self.strs.extend_from_slice(name.as_bytes());
        self.strs.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// A type's header: name, kind, vlen, kind_flag, size or type.
    fn ty(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, size_or_type: u32) {
        let name = self.s(name);
        self.words(&[
            name,
            (u32::from(flag) << 31) | (kind << 24) | vlen,
            size_or_type,
        ]);
    }

    fn member(&mut self, name: &str, type_id: u32, offset: u32) {
        let name = self.s(name);
        self.words(&[name, type_id, offset]);
    }

    fn bytes(&self) -> Vec<u8> {
        super::for_aya::blob(&self.types, &self.strs)
    }
}

fn blob() -> Blob {
    let mut b = Blob::new();
    b.ty("int", KIND_INT, 0, false, 4); // 1
    b.words(&[32]);
    b.ty("", KIND_UNION, 2, false, 4); // 2: anonymous
    b.member("a", 1, 0);
    b.member("b", 1, 0);
    b.ty("outer", KIND_STRUCT, 3, true, 16); // 3: bitfield offsets
    b.member("x", 1, (3 << 24) | 5);
    b.member("", 2, 32);
    b.member("nested", 5, 64);
    b.ty("leaf", KIND_STRUCT, 1, false, 8); // 4
    b.member("y", 1, 32);
    b.ty("leaf_t", KIND_TYPEDEF, 0, false, 4); // 5
    b.ty("big", KIND_ENUM64, 2, false, 8); // 6
    let (one, huge) = (b.s("BIG_ONE"), b.s("BIG_HUGE"));
    b.words(&[one, 1, 0, huge, 0, 1]);
    b.ty("small", KIND_ENUM, 2, false, 4); // 7
    let (neg, two) = (b.s("S_NEG"), b.s("S_TWO"));
    b.words(&[neg, u32::MAX, two, 2]);
    b.ty("", KIND_FUNC_PROTO, 3, false, 0); // 8: (void *, int, int)
    b.words(&[0, 1, 0, 1, 0, 1]);
    b.ty("", KIND_PTR, 0, false, 8); // 9
    b.ty("btf_trace_probe", KIND_TYPEDEF, 0, false, 9); // 10
    b.ty("do_thing", KIND_FUNC, 1, false, 8); // 11
    b.ty("do_other", KIND_STRUCT, 0, false, 0); // 12: a name, not a function
    b.s("do_thing_not");
    b
}

fn parse(b: &Blob) -> anyhow::Result<Btf> {
    Btf::parse(b.bytes())
}

#[test]
fn members_through_anonymous_unions_typedefs_and_bitfields() {
    let btf = parse(&blob()).unwrap();
    assert_eq!(btf.offset_of("outer", "b").unwrap(), 4);
    assert_eq!(btf.offset_of("outer", "nested.y").unwrap(), 12);
    assert_eq!(btf.bit_offset_of("outer", "x").unwrap(), 5);
    assert!(
        btf.offset_of("outer", "x").is_err(),
        "a bitfield has no byte offset"
    );
    assert!(btf.offset_of("outer", "z").is_err());
    assert!(btf.offset_of("outer", "b.c").is_err(), "b is not a struct");
    assert!(btf.offset_of("missing", "a").is_err());
    assert_eq!(btf.struct_size("outer").unwrap(), 16);
    assert!(
        btf.struct_size("do_other").is_err(),
        "no members: a declaration"
    );
}

#[test]
fn enums_tracepoints_and_functions() {
    let btf = parse(&blob()).unwrap();
    assert_eq!(
        btf.enum_values("big").unwrap(),
        [("BIG_ONE".to_owned(), 1), ("BIG_HUGE".to_owned(), 1 << 32)]
    );
    assert_eq!(btf.enum_value("small", "S_NEG").unwrap(), -1);
    assert_eq!(btf.enum_value("small", "S_TWO").unwrap(), 2);
    assert!(btf.enum_value("small", "S_THREE").is_err());
    assert_eq!(btf.tracepoint_args("probe"), Some(2));
    assert_eq!(btf.tracepoint_args("nope"), None);
    assert!(btf.has_function("do_thing"));
    assert!(!btf.has_function("do_other"), "a struct's name");
    assert!(!btf.has_function("do_thin"), "a prefix");
    assert!(!btf.has_function("do_thing_not"), "a string no type names");
}

#[test]
fn bad_data_is_an_error() {
    let good = blob().bytes();
    // The last type's body cut off.
    let mut b = blob();
    b.types.truncate(b.types.len() - 4);
    assert!(parse(&b).is_err());
    // Not BTF.
    assert!(Btf::parse(good[2..].to_vec()).is_err());
    // A section past the end.
    assert!(Btf::parse(good[..good.len() - 1].to_vec()).is_err());
    // An unknown kind.
    let mut b = blob();
    b.ty("", 31, 0, false, 0);
    assert!(parse(&b).is_err());
}
