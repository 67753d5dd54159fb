//! A small block-style YAML writer with comments, for the suggested policies.
//!
//! serde_yaml cannot write comments, and the comments are the point: every rule says
//! which flows need it. Strings are written double-quoted with JSON escapes (valid YAML),
//! so no value can be misread (`on`, `0755`, `*.example`).

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

fn comment(out: &mut String, indent: usize, text: &str) {
    for line in text.lines() {
        out.push_str(&" ".repeat(indent));
        out.push_str("# ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if text.is_empty() {
        out.push_str(&" ".repeat(indent));
        out.push_str("#\n");
    }
}

fn quote(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_owned())
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
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

#[cfg(test)]
mod tests {
    use super::*;

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
