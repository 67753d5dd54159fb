//! tracefs: where it is mounted, tracepoint record layouts, and drop-reason names.
//!
//! Tracepoint record layouts move between kernels, so the programs get their
//! field offsets from the `format` files at load time instead of constants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted (looked for /sys/kernel/tracing and /sys/kernel/debug/tracing); mount it with `mount -t tracefs tracefs /sys/kernel/tracing`")]
    NotMounted,
    #[error("cannot read tracepoint format {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint format {path}: field `{field}` not found (this kernel's layout is not supported)")]
    MissingField { path: PathBuf, field: String },
}

/// Finds the tracefs mount point.
pub fn find_tracefs() -> Result<PathBuf, TracefsError> {
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        if let Some(p) = mounts.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            let (_dev, mnt, fstype) = (it.next()?, it.next()?, it.next()?);
            (fstype == "tracefs").then(|| PathBuf::from(mnt))
        }) {
            return Ok(p);
        }
    }
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(TracefsError::NotMounted)
}

/// A parsed tracepoint `format` file.
#[derive(Debug, Clone, Default)]
pub struct Format {
    /// field name -> (offset, size)
    pub fields: BTreeMap<String, (u32, u32)>,
    pub print_fmt: String,
}

/// Parses the text of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Format {
    let mut f = Format::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("print fmt:") {
            f.print_fmt = rest.trim().to_owned();
            continue;
        }
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            } else if name.is_none() && !part.is_empty() && !part.contains(':') {
                // "const void * skaddr" or "__u8 saddr[4]"
                let decl = part.split('[').next().unwrap_or(part);
                name = decl
                    .split_whitespace()
                    .last()
                    .map(|s| s.trim_start_matches('*').to_owned());
            }
        }
        if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
            f.fields.insert(n, (o, s));
        }
    }
    f
}

impl Format {
    pub fn offset(&self, path: &Path, field: &str) -> Result<u32, TracefsError> {
        self.fields
            .get(field)
            .map(|(o, _)| *o)
            .ok_or_else(|| TracefsError::MissingField {
                path: path.to_owned(),
                field: field.to_owned(),
            })
    }
}

/// Reads `events/<category>/<name>/format` below the tracefs mount.
pub fn read_format(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<(PathBuf, Format), TracefsError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, parse_format(&text)))
}

/// Drop-reason names from the `__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...)`
/// part of `skb:kfree_skb`'s print format.
pub fn parse_drop_reasons(print_fmt: &str) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let Some(start) = print_fmt.find("__print_symbolic(REC->reason") else {
        return out;
    };
    let mut rest = &print_fmt[start..];
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let entry = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        let mut parts = entry.splitn(2, ',');
        let (Some(num), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Ok(n) = num.trim().parse::<u32>() {
            out.insert(n, name.trim().trim_matches('"').to_owned());
        }
        if rest.trim_start().starts_with(')') {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE: &str = r#"name: kfree_skb
ID: 1866
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:void * rx_sk;	offset:24;	size:8;	signed:0;
	field:unsigned short protocol;	offset:32;	size:2;	signed:0;
	field:enum skb_drop_reason reason;	offset:36;	size:4;	signed:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 12, "NETFILTER_DROP" })
"#;

    #[test]
    fn parses_fields_and_reasons() {
        let f = parse_format(KFREE);
        assert_eq!(f.fields["skbaddr"], (8, 8));
        assert_eq!(f.fields["reason"], (36, 4));
        assert_eq!(f.fields["protocol"], (32, 2));
        let r = parse_drop_reasons(&f.print_fmt);
        assert_eq!(r.get(&12).map(String::as_str), Some("NETFILTER_DROP"));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn array_fields() {
        let f = parse_format("\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;");
        assert_eq!(f.fields["saddr_v6"], (40, 16));
        assert_eq!(f.fields["skaddr"], (8, 8));
    }

    #[test]
    fn missing_field_is_named() {
        let f = parse_format(KFREE);
        let e = f
            .offset(Path::new("/t/format"), "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("/t/format"), "{e}");
    }
}
