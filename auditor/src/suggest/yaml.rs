//! A small block-style YAML writer with comments, for the suggested policies.
//!
//! serde_yaml cannot write comments, and the comments are the point: every rule says
//! which flows need it. Strings are written double-quoted with JSON escapes (valid YAML),
//! plus `\u` escapes for what YAML reads as a line break or does not allow, so no value
//! can be misread (`on`, `0755`, `*.example`); keys are plain only when no YAML reader
//! could take them for anything but a string; comment text cannot break out of its line.
//!
//! [`to_value`] is the value a YAML reader gets from [`document`]'s text; the property test
//! below checks that for any tree (serde_yaml parsing the text gives `to_value` of the
//! tree), so `suggest` checks its policies from the tree without parsing its own output.

/// A YAML value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Item>),
    Str(String),
    Int(i64),
}

/// A sequence element with the comment lines written above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub comments: Vec<String>,
    pub node: Node,
}

impl Item {
    pub fn new(node: Node) -> Self {
        Self {
            comments: Vec::new(),
            node,
        }
    }
}

/// Builds a map from `(key, value)` pairs.
pub fn map<I: IntoIterator<Item = (&'static str, Node)>>(entries: I) -> Node {
    Node::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

pub fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

pub fn seq(items: impl IntoIterator<Item = Node>) -> Node {
    Node::Seq(items.into_iter().map(Item::new).collect())
}

/// One YAML document: header comments, then the value.
pub fn document(header: &[String], node: &Node) -> String {
    let mut out = String::from("---\n");
    for c in header {
        comment(&mut out, 0, c);
    }
    match node {
        Node::Map(entries) if !entries.is_empty() => write_map(&mut out, entries, 0, None),
        other => {
            out.push_str(&scalar_or_flow(other));
            out.push('\n');
        }
    }
    out
}

/// Comment lines before the first document: `# ` and each line of each text.
pub fn stream_header(texts: &[String]) -> String {
    let mut out = String::new();
    for text in texts {
        for line in text.lines() {
            out.push_str("# ");
            comment_text(&mut out, line);
            out.push('\n');
        }
    }
    out
}

/// A comment's text, with what YAML would read as a line break (or refuse) escaped.
fn comment_text(out: &mut String, line: &str) {
    if line.chars().all(plain_in_comment) {
        out.push_str(line);
    } else {
        for c in line.chars() {
            if plain_in_comment(c) {
                out.push(c);
            } else {
                out.extend(c.escape_unicode());
            }
        }
    }
}

fn comment(out: &mut String, indent: usize, text: &str) {
    for line in text.lines() {
        out.push_str(&" ".repeat(indent));
        out.push_str("# ");
        comment_text(out, line.trim_end());
        out.push('\n');
    }
    if text.is_empty() {
        out.push_str(&" ".repeat(indent));
        out.push_str("#\n");
    }
}

/// YAML's printable characters (YAML 1.2, 5.1) less line breaks (NEL, LS, PS too) and the BOM.
fn plain_in_comment(c: char) -> bool {
    matches!(c, '\t' | '\x20'..='\x7e' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'..)
}

fn quote(v: &str) -> String {
    let json = serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_owned());
    // JSON escapes `"`, `\\` and C0 controls; YAML also reads NEL, LS and PS as line
    // breaks and refuses DEL, C1 controls and the BOM inside a scalar.
    if json.chars().all(|c| c == '"' || plain_in_comment(c)) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if c == '"' || plain_in_comment(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        }
    }
    out
}

/// Plain scalars a YAML 1.1 or 1.2 reader resolves to a boolean or null.
const RESERVED_WORDS: &[&str] = &[
    "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL", "y", "Y", "yes",
    "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
];

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !RESERVED_WORDS.contains(&k);
    if plain {
        k.to_owned()
    } else {
        quote(k)
    }
}

/// Scalars, and empty collections as flow style.
fn scalar_or_flow(n: &Node) -> String {
    match n {
        Node::Str(v) => quote(v),
        Node::Int(i) => i.to_string(),
        Node::Map(_) => "{}".to_owned(),
        Node::Seq(_) => "[]".to_owned(),
    }
}

fn is_block(n: &Node) -> bool {
    match n {
        Node::Map(m) => !m.is_empty(),
        Node::Seq(s) => !s.is_empty(),
        _ => false,
    }
}

/// Writes map entries at `indent`; `first` is the prefix for the first line (`- `).
fn write_map(out: &mut String, entries: &[(String, Node)], indent: usize, first: Option<&str>) {
    for (i, (k, v)) in entries.iter().enumerate() {
        match (i, first) {
            (0, Some(prefix)) => out.push_str(prefix),
            _ => out.push_str(&" ".repeat(indent)),
        }
        out.push_str(&key(k));
        out.push(':');
        write_value(out, v, indent);
    }
}

fn write_value(out: &mut String, v: &Node, indent: usize) {
    if !is_block(v) {
        out.push(' ');
        out.push_str(&scalar_or_flow(v));
        out.push('\n');
        return;
    }
    out.push('\n');
    match v {
        Node::Map(m) => write_map(out, m, indent + 2, None),
        Node::Seq(items) => write_seq(out, items, indent + 2),
        _ => {}
    }
}

fn write_seq(out: &mut String, items: &[Item], indent: usize) {
    for item in items {
        for c in &item.comments {
            comment(out, indent, c);
        }
        let prefix = format!("{}- ", " ".repeat(indent));
        match &item.node {
            Node::Map(m) if !m.is_empty() => write_map(out, m, indent + 2, Some(&prefix)),
            Node::Seq(s) if !s.is_empty() => {
                out.push_str(prefix.trim_end());
                out.push('\n');
                write_seq(out, s, indent + 2);
            }
            other => {
                out.push_str(&prefix);
                out.push_str(&scalar_or_flow(other));
                out.push('\n');
            }
        }
    }
}

/// The value a YAML reader gets from the text [`document`] writes for `node` (comments
/// are not part of it). A key written twice in one map is an error, as for a reader.
pub fn to_value(node: &Node) -> Result<serde_yaml::Value, String> {
    use serde_yaml::Value;
    Ok(match node {
        Node::Str(v) => Value::String(v.clone()),
        Node::Int(i) => Value::Number((*i).into()),
        Node::Seq(items) => Value::Sequence(
            items
                .iter()
                .map(|i| to_value(&i.node))
                .collect::<Result<_, _>>()?,
        ),
        Node::Map(entries) => {
            let mut m = serde_yaml::Mapping::with_capacity(entries.len());
            for (k, v) in entries {
                if m.insert(Value::String(k.clone()), to_value(v)?).is_some() {
                    return Err(format!("duplicate key {k:?} in one mapping"));
                }
            }
            Value::Mapping(m)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "",
                "on",
                "yes",
                "No",
                "null",
                "~",
                "true",
                "0755",
                "1e3",
                "-",
                "- x",
                "a: b",
                "#x",
                " lead",
                "trail ",
                "*.example",
                "&a",
                "!tag",
                "|",
                ">",
                "'",
                "\"",
                "\\",
                "%x",
                "@x",
                "`x",
                "[1]",
                "{a}",
                "?",
                ": ",
                "---",
                "...",
                "x\ny",
                "x\ry",
                "x\r\ny",
                "\u{85}",
                "\u{2028}",
                "\u{2029}",
                "\u{feff}",
                "\u{7f}",
                "\u{9f}",
                "\t",
                "\u{0}",
                "é",
                "日本",
                "🙂",
                "\u{fffe}",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
            "[a-z][a-z0-9./_-]{0,8}",
        ]
    }

    fn tree() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![text().prop_map(Node::Str), any::<i64>().prop_map(Node::Int)];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::btree_map(text(), inner.clone(), 0..5)
                    .prop_map(|m| Node::Map(m.into_iter().collect())),
                prop::collection::vec((prop::collection::vec(text(), 0..3), inner), 0..5).prop_map(
                    |v| Node::Seq(
                        v.into_iter()
                            .map(|(comments, node)| Item { comments, node })
                            .collect()
                    )
                ),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// What `suggest` relies on to check its policies from the tree: the text of any
        /// documents, with any comments, reads back as `to_value` of each tree.
        #[test]
        fn text_reads_back_as_to_value(
            header in prop::collection::vec(text(), 0..3),
            docs in prop::collection::vec(
                (
                    prop::collection::vec(text(), 0..3),
                    prop::collection::btree_map(text(), tree(), 0..4)
                        .prop_map(|m| Node::Map(m.into_iter().collect())),
                ),
                1..4,
            )
        ) {
            let mut all = stream_header(&header);
            for (header, node) in &docs {
                all.push_str(&document(header, node));
            }
            let read: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&all)
                .map(serde::Deserialize::deserialize)
                .collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("{e}\n{all}")))?;
            let want: Vec<serde_yaml::Value> =
                docs.iter().map(|(_, n)| to_value(n).unwrap()).collect();
            prop_assert_eq!(read, want, "{}", all);
        }
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let n = Node::Map(vec![("a".into(), s("1")), ("a".into(), s("2"))]);
        assert!(to_value(&n).is_err());
    }

    #[test]
    fn writes_comments_and_round_trips() {
        let doc = map([
            ("kind", s("NetworkPolicy")),
            (
                "metadata",
                map([
                    ("name", s("a")),
                    ("annotations", map([("x.io/y", s("on"))])),
                ]),
            ),
            (
                "spec",
                map([
                    ("podSelector", map([])),
                    (
                        "egress",
                        Node::Seq(vec![Item {
                            comments: vec!["needed by: a -> b".into()],
                            node: map([("ports", seq([map([("port", Node::Int(53))])]))]),
                        }]),
                    ),
                ]),
            ),
        ]);
        let text = document(&["header".into()], &doc);
        assert!(
            text.contains("  egress:\n    # needed by: a -> b\n    - ports:\n        - port: 53\n"),
            "{text}"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap();
        assert_eq!(v["metadata"]["annotations"]["x.io/y"].as_str(), Some("on"));
        assert_eq!(
            v["spec"]["egress"][0]["ports"][0]["port"].as_i64(),
            Some(53)
        );
        assert!(v["spec"]["podSelector"].as_mapping().unwrap().is_empty());
    }
}
