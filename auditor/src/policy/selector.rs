//! Label selectors (`metav1.LabelSelector`), compiled once.
//!
//! `matchLabels` and every `matchExpressions` requirement are AND-ed. An empty selector
//! (`{}`) matches everything. The operators are those of the Kubernetes API: `In` and
//! `NotIn` need at least one value, `Exists` and `DoesNotExist` none. `NotIn` and
//! `DoesNotExist` match objects that lack the key.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A compiled label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A selector that the API server would reject: the field (relative to the selector) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    /// The selector `{}`, which matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses and compiles a selector in kubectl's `-l` syntax (`app=x,tier in (a,b),!canary`);
    /// the error says what is wrong with it.
    pub fn from_kubectl(input: &str) -> Result<Self, String> {
        let parsed = crate::suggest::labels::parse_selector(input).map_err(|e| e.message)?;
        Self::compile(&parsed.to_k8s()).map_err(|e| format!("{}: {}", e.field, e.message))
    }

    /// Compiles a selector; an error names the offending field relative to the selector.
    pub fn compile(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(labels) = &sel.match_labels {
            for (k, v) in labels {
                let at = |message: String| SelectorError {
                    field: format!("matchLabels.{k}"),
                    message,
                };
                check_label_key(k).map_err(at)?;
                check_label_value(v).map_err(at)?;
                reqs.push(Requirement::Equals(k.clone(), v.clone()));
            }
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let err = |field: &str, message: String| SelectorError {
                field: format!("matchExpressions[{i}]{field}"),
                message,
            };
            check_label_key(&e.key).map_err(|m| err(".key", m))?;
            for (j, v) in values.iter().enumerate() {
                check_label_value(v).map_err(|m| err(&format!(".values[{j}]"), m))?;
            }
            let req = match e.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(err(
                            ".values",
                            format!("operator {} needs at least one value", e.operator),
                        ));
                    }
                    if e.operator == "In" {
                        Requirement::In(e.key.clone(), values)
                    } else {
                        Requirement::NotIn(e.key.clone(), values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(err(
                            ".values",
                            format!("operator {} takes no values", e.operator),
                        ));
                    }
                    if e.operator == "Exists" {
                        Requirement::Exists(e.key.clone())
                    } else {
                        Requirement::DoesNotExist(e.key.clone())
                    }
                }
                other => {
                    return Err(err(
                        ".operator",
                        format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    ))
                }
            };
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    /// Whether this selector selects every object.
    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// A label name or value part: at most 63 characters, alphanumerics, `-`, `_` and `.`,
/// beginning and ending with an alphanumeric.
fn name_part(s: &str, what: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.len() > 63 {
        return Err(format!("{what} {s:?} is longer than 63 characters"));
    }
    let ok_inner = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    let ok_ends = b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric);
    if !(ok_inner && ok_ends) {
        return Err(format!(
            "{what} {s:?} is not valid (alphanumerics, '-', '_' and '.', beginning and ending with an alphanumeric)"
        ));
    }
    Ok(())
}

/// A label key as the API server accepts it: `[prefix/]name`, the prefix a DNS subdomain.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if name.is_empty() {
        return Err(format!("label key {k:?} has an empty name"));
    }
    name_part(name, "label key name").map_err(|m| format!("label key {k:?}: {m}"))?;
    if let Some(p) = prefix {
        let dns_ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
            });
        if !dns_ok {
            return Err(format!(
                "label key {k:?}: prefix {p:?} is not a DNS subdomain (lowercase alphanumerics, '-' and '.')"
            ));
        }
    }
    Ok(())
}

/// A label value: empty, or a name part.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    name_part(v, "label value")
}

/// A named port (IANA_SVC_NAME): 1-15 lowercase alphanumerics and '-', at least one
/// letter, no '-' at either end nor two in a row.
pub fn check_port_name(n: &str) -> Result<(), String> {
    let b = n.as_bytes();
    let ok = (1..=15).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !n.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{n:?} is not a valid port name (1-15 lowercase letters, digits and '-', at least one letter, no '-' at either end or twice in a row)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|s| s.to_string()).collect())
            },
        }
    }

    #[test]
    fn operators() {
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("In", &["a", "b"], &[("k", "a")], true),
            ("In", &["a", "b"], &[("k", "c")], false),
            ("In", &["a"], &[], false),
            ("NotIn", &["a"], &[("k", "b")], true),
            ("NotIn", &["a"], &[], true),
            ("NotIn", &["a"], &[("k", "a")], false),
            ("Exists", &[], &[("k", "")], true),
            ("Exists", &[], &[("j", "x")], false),
            ("DoesNotExist", &[], &[("j", "x")], true),
            ("DoesNotExist", &[], &[("k", "x")], false),
        ];
        for (op, values, pod, want) in cases {
            let sel = LabelSelector {
                match_expressions: Some(vec![expr("k", op, values)]),
                match_labels: None,
            };
            let s = Selector::compile(&sel).unwrap();
            assert_eq!(s.matches(&labels(pod)), *want, "{op} {values:?} on {pod:?}");
        }
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "ffmpeg")])),
            match_expressions: Some(vec![expr("tier", "In", &["edge"])]),
        };
        let s = Selector::compile(&sel).unwrap();
        assert!(s.matches(&labels(&[("app", "ffmpeg"), ("tier", "edge")])));
        assert!(!s.matches(&labels(&[("app", "ffmpeg")])));
        assert!(!s.matches(&labels(&[("tier", "edge")])));
        assert!(Selector::compile(&LabelSelector::default())
            .unwrap()
            .matches(&labels(&[])));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        for (op, values, field) in [
            ("In", &[][..], "matchExpressions[0].values"),
            ("Exists", &["x"][..], "matchExpressions[0].values"),
            ("Equals", &["x"][..], "matchExpressions[0].operator"),
        ] {
            let sel = LabelSelector {
                match_expressions: Some(vec![expr("k", op, values)]),
                match_labels: None,
            };
            assert_eq!(Selector::compile(&sel).unwrap_err().field, field);
        }
    }
}
