//! A minimal reader of kernel BTF (/sys/kernel/btf/vmlinux): byte offsets of
//! struct members, including members of anonymous unions and structs.
//!
//! Rust eBPF programs get no CO-RE relocations, so the offsets the drop program
//! needs (`sk_buff.head`, `.network_header`, `.transport_header`) are resolved
//! here at load time and handed to the program as globals.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not BTF ({what})")]
    Malformed { path: PathBuf, what: &'static str },
    #[error("{path}: struct {strukt} has no member {member}")]
    NoMember {
        path: PathBuf,
        strukt: String,
        member: String,
    },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    members: Vec<Member>,
}

/// Parsed BTF: enough to find struct member offsets.
pub struct Btf {
    path: PathBuf,
    strings: Vec<u8>,
    /// Index = type id (0 is void).
    types: Vec<Type>,
    /// The `size/type` word of each type (the referenced type for modifiers).
    targets: Vec<u32>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &data)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, BtfError> {
        let bad = |what| BtfError::Malformed {
            path: path.to_owned(),
            what,
        };
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(bad(
                "missing magic 0xeb9f (only little-endian BTF is supported)",
            ));
        }
        let hdr_len = u32_at(data, 4).ok_or_else(|| bad("short header"))? as usize;
        let type_off = u32_at(data, 8).ok_or_else(|| bad("short header"))? as usize;
        let type_len = u32_at(data, 12).ok_or_else(|| bad("short header"))? as usize;
        let str_off = u32_at(data, 16).ok_or_else(|| bad("short header"))? as usize;
        let str_len = u32_at(data, 20).ok_or_else(|| bad("short header"))? as usize;
        let tsec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            members: vec![],
        }];
        let mut targets = vec![0u32];
        let mut at = 0;
        while at + 12 <= tsec.len() {
            let name_off = u32_at(tsec, at).ok_or_else(|| bad("truncated type"))?;
            let info = u32_at(tsec, at + 4).ok_or_else(|| bad("truncated type"))?;
            targets.push(u32_at(tsec, at + 8).ok_or_else(|| bad("truncated type"))?);
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(tsec, m + 8).ok_or_else(|| bad("truncated member"))?;
                        members.push(Member {
                            name_off: u32_at(tsec, m).ok_or_else(|| bad("truncated member"))?,
                            type_id: u32_at(tsec, m + 4).ok_or_else(|| bad("truncated member"))?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                name_off,
                kind,
                members,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            strings,
            types,
            targets,
        })
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous members.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let not_found = || BtfError::NoMember {
            path: self.path.clone(),
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        };
        let id = self
            .types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT && !t.members.is_empty() && self.name(t.name_off) == strukt
            })
            .ok_or_else(not_found)?;
        self.find(id, member, 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(not_found)
    }

    fn find(&self, id: usize, member: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let t = self.types.get(id)?;
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(base_bits + m.bit_offset);
            }
            if name.is_empty() {
                let inner = self.resolve(m.type_id as usize)?;
                if let Some(b) = self.find(inner, member, base_bits + m.bit_offset, depth + 1) {
                    return Some(b);
                }
            }
        }
        None
    }

    /// Follows typedef/const/volatile/type_tag to a struct or union.
    fn resolve(&self, mut id: usize) -> Option<usize> {
        for _ in 0..16 {
            let t = self.types.get(id)?;
            match t.kind {
                KIND_STRUCT | KIND_UNION => return Some(id),
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG carry the target in `type`.
                8..=11 | 18 => id = *self.targets.get(id)? as usize,
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF: struct outer { int a; union { int b; struct { int c; int d; }; }; }
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0".to_vec();
        let s = |n: &str| -> u32 {
            let pos = strings
                .windows(n.len() + 2)
                .position(|w| w[0] == 0 && &w[1..=n.len()] == n.as_bytes() && w[n.len() + 1] == 0);
            pos.unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(&mut t, s("int"));
        push(&mut t, KIND_INT << 24);
        push(&mut t, 4);
        push(&mut t, 32);
        // 2: anon struct { c@0, d@32 }
        push(&mut t, 0);
        push(&mut t, (KIND_STRUCT << 24) | 2);
        push(&mut t, 8);
        for (n, off) in [("c", 0), ("d", 32)] {
            push(&mut t, s(n));
            push(&mut t, 1);
            push(&mut t, off);
        }
        // 3: anon union { b@0, <anon struct>@0 }
        push(&mut t, 0);
        push(&mut t, (KIND_UNION << 24) | 2);
        push(&mut t, 8);
        push(&mut t, s("b"));
        push(&mut t, 1);
        push(&mut t, 0);
        push(&mut t, 0);
        push(&mut t, 2);
        push(&mut t, 0);
        // 4: outer { a@0, <anon union>@64 }
        push(&mut t, s("outer"));
        push(&mut t, (KIND_STRUCT << 24) | 2);
        push(&mut t, 16);
        push(&mut t, s("a"));
        push(&mut t, 1);
        push(&mut t, 0);
        push(&mut t, 0);
        push(&mut t, 3);
        push(&mut t, 64);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_members() {
        let btf = Btf::parse(Path::new("t"), &sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 12);
        assert!(btf
            .member_offset("outer", "zz")
            .unwrap_err()
            .to_string()
            .contains("zz"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(Path::new("x"), b"hello").is_err());
        let mut s = sample();
        s.truncate(30);
        assert!(Btf::parse(Path::new("x"), &s).is_err());
    }

    #[test]
    fn kernel_sk_buff_when_available() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("skipped: no {}", p.display());
            return;
        }
        let btf = Btf::from_file(p).unwrap();
        let head = btf.member_offset("sk_buff", "head").unwrap();
        let nh = btf.member_offset("sk_buff", "network_header").unwrap();
        assert!(head > 0 && nh > 0 && head != nh);
    }
}
