//! Workloads, stable labels and label selectors for suggestions.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Labels that differ between pods of one workload or between its revisions: a selector
/// on them would break on the next rollout, the next Job run or the next StatefulSet pod.
const UNSTABLE_KEYS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "job-name",
    "controller-uid",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];
const UNSTABLE_PREFIXES: &[&str] = &["batch.kubernetes.io/"];

/// Whether a label key is stable across a workload's pods and revisions.
pub fn is_stable(key: &str) -> bool {
    !UNSTABLE_KEYS.contains(&key) && !UNSTABLE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Labels that name one pod (never usable even as a fallback for a workload).
fn is_pod_specific(key: &str) -> bool {
    matches!(
        key,
        "statefulset.kubernetes.io/pod-name" | "apps.kubernetes.io/pod-index"
    )
}

/// The workload a pod belongs to, for grouping: `namespace/Kind/name`, where the Jobs a
/// CronJob creates (`<cronjob>-<scheduled time>`) are grouped under the CronJob.
pub fn group_of(workload: &str) -> String {
    let mut parts = workload.splitn(3, '/');
    let (ns, kind, name) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if kind == "Job" {
        if let Some((prefix, suffix)) = name.rsplit_once('-') {
            if suffix.len() >= 6 && suffix.bytes().all(|b| b.is_ascii_digit()) && !prefix.is_empty()
            {
                return format!("{ns}/CronJob/{prefix}");
            }
        }
    }
    workload.to_owned()
}

/// `(namespace, kind, name)` of a group key.
pub fn split_group(group: &str) -> (&str, &str, &str) {
    let mut parts = group.splitn(3, '/');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    )
}

/// The labels a selector for a workload uses: the stable labels every pod of it carries;
/// failing that, every label they share except those naming one pod (e.g. a bare Job's
/// `job-name`). `None` when its pods share no label at all.
pub fn workload_labels<'a>(
    pods: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut common: Option<BTreeMap<String, String>> = None;
    for labels in pods {
        common = Some(match common {
            None => labels.clone(),
            Some(c) => c
                .into_iter()
                .filter(|(k, v)| labels.get(k) == Some(v))
                .collect(),
        });
    }
    let common = common?;
    let stable: BTreeMap<String, String> = common
        .iter()
        .filter(|(k, _)| is_stable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !stable.is_empty() {
        return Some(stable);
    }
    let shared: BTreeMap<String, String> = common
        .into_iter()
        .filter(|(k, _)| !is_pod_specific(k))
        .collect();
    (!shared.is_empty()).then_some(shared)
}

/// A label selector as the suggestion writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelSel {
    pub match_labels: BTreeMap<String, String>,
    /// `(key, operator, values)`.
    pub expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSel {
    pub fn labels(match_labels: BTreeMap<String, String>) -> Self {
        Self {
            match_labels,
            expressions: Vec::new(),
        }
    }

    pub fn from_k8s(sel: &LabelSelector) -> Self {
        Self {
            match_labels: sel.match_labels.clone().unwrap_or_default(),
            expressions: sel
                .match_expressions
                .iter()
                .flatten()
                .map(|e| {
                    (
                        e.key.clone(),
                        e.operator.clone(),
                        e.values.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }

    pub fn to_k8s(&self) -> LabelSelector {
        LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.expressions.is_empty()).then(|| {
                self.expressions
                    .iter()
                    .map(|(k, op, values)| LabelSelectorRequirement {
                        key: k.clone(),
                        operator: op.clone(),
                        values: (!values.is_empty()).then(|| values.clone()),
                    })
                    .collect()
            }),
        }
    }

    /// The AND of two selectors.
    pub fn and(&self, other: &LabelSel) -> LabelSel {
        let mut out = self.clone();
        for (k, v) in &other.match_labels {
            match out.match_labels.get(k) {
                None => {
                    out.match_labels.insert(k.clone(), v.clone());
                }
                Some(mine) if mine == v => {}
                Some(_) => out
                    .expressions
                    .push((k.clone(), "In".into(), vec![v.clone()])),
            }
        }
        for e in &other.expressions {
            if !out.expressions.contains(e) {
                out.expressions.push(e.clone());
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.expressions.is_empty()
    }

    /// Whether the selector matches a label set (same semantics as the policy engine's).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        crate::policy::selector::Selector::compile(&self.to_k8s()).is_ok_and(|s| s.matches(labels))
    }
}

/// A `--select` value that is not a label selector.
#[derive(Debug, thiserror::Error)]
#[error("--select {input:?}: {message} (expected e.g. app=ffmpeg,tier in (worker,edge),!canary)")]
pub struct SelectorParseError {
    pub input: String,
    pub message: String,
}

/// Parses a label selector as kubectl's `-l` takes it: `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, separated by commas.
pub fn parse_selector(input: &str) -> Result<LabelSel, SelectorParseError> {
    let err = |m: String| SelectorParseError {
        input: input.to_owned(),
        message: m,
    };
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in input.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    terms.push(cur);
    let mut sel = LabelSel::default();
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    for term in terms.iter().map(|t| t.trim()) {
        if term.is_empty() {
            return Err(err("empty term".into()));
        }
        let set_op = [(" notin ", "NotIn"), (" in ", "In")]
            .into_iter()
            .find_map(|(word, op)| term.find(word).map(|i| (i, word.len(), op)));
        if let Some((i, len, op)) = set_op {
            let key = term[..i].trim();
            let rest = term[i + len..].trim();
            let values = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| err(format!("{term:?}: values must be in parentheses")))?;
            let values: Vec<String> = values
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            if !valid_key(key) || values.is_empty() {
                return Err(err(format!("{term:?}: needs a key and at least one value")));
            }
            sel.expressions
                .push((key.to_owned(), op.to_owned(), values));
        } else if let Some((k, v)) = term.split_once("!=") {
            if !valid_key(k.trim()) {
                return Err(err(format!("{term:?}: bad key")));
            }
            sel.expressions.push((
                k.trim().to_owned(),
                "NotIn".into(),
                vec![v.trim().to_owned()],
            ));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            if !valid_key(k.trim()) {
                return Err(err(format!("{term:?}: bad key")));
            }
            sel.match_labels
                .insert(k.trim().to_owned(), v.trim().to_owned());
        } else if let Some(k) = term.strip_prefix('!') {
            if !valid_key(k.trim()) {
                return Err(err(format!("{term:?}: bad key")));
            }
            sel.expressions
                .push((k.trim().to_owned(), "DoesNotExist".into(), Vec::new()));
        } else if valid_key(term) {
            sel.expressions
                .push((term.to_owned(), "Exists".into(), Vec::new()));
        } else {
            return Err(err(format!("{term:?} is not a requirement")));
        }
    }
    Ok(sel)
}

/// A DNS-1123 name part from arbitrary text.
pub fn dns_name_part(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-');
    let mut out: String = out.chars().take(200).collect();
    if out.is_empty() {
        out.push('x');
    }
    out.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stable_labels_drop_revision_and_pod_labels() {
        let a = l(&[
            ("app", "ffmpeg"),
            ("pod-template-hash", "abc"),
            ("tier", "w"),
        ]);
        let b = l(&[
            ("app", "ffmpeg"),
            ("pod-template-hash", "def"),
            ("tier", "w"),
        ]);
        let got = workload_labels([&a, &b]).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["app", "tier"]);
        let s0 = l(&[
            ("app", "origin"),
            ("controller-revision-hash", "x"),
            ("statefulset.kubernetes.io/pod-name", "origin-0"),
            ("apps.kubernetes.io/pod-index", "0"),
        ]);
        assert_eq!(
            workload_labels([&s0]).unwrap().keys().collect::<Vec<_>>(),
            ["app"]
        );
        let job = l(&[
            ("job-name", "once"),
            ("controller-uid", "u"),
            ("batch.kubernetes.io/job-name", "once"),
        ]);
        // nothing stable: the shared job labels are the fallback
        assert!(workload_labels([&job])
            .unwrap()
            .contains_key("batch.kubernetes.io/job-name"));
        let bare = l(&[]);
        assert_eq!(workload_labels([&bare]), None);
    }

    #[test]
    fn cronjob_jobs_group_by_owner() {
        assert_eq!(
            group_of("media/Job/nightly-transcode-29123456"),
            "media/CronJob/nightly-transcode"
        );
        assert_eq!(group_of("media/Job/backfill"), "media/Job/backfill");
        assert_eq!(group_of("media/Job/backfill-12"), "media/Job/backfill-12");
        assert_eq!(
            group_of("media/Deployment/ffmpeg"),
            "media/Deployment/ffmpeg"
        );
    }

    #[test]
    fn selector_parsing() {
        let s =
            parse_selector("app=ffmpeg, tier in (worker, edge),!canary,env!=prod,team").unwrap();
        assert_eq!(
            s.match_labels.get("app").map(String::as_str),
            Some("ffmpeg")
        );
        assert_eq!(s.expressions.len(), 4);
        let labels = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(s.matches(&labels(&[
            ("app", "ffmpeg"),
            ("tier", "edge"),
            ("team", "a")
        ])));
        assert!(!s.matches(&labels(&[
            ("app", "ffmpeg"),
            ("tier", "edge"),
            ("team", "a"),
            ("canary", "1")
        ])));
        assert!(!s.matches(&labels(&[("app", "ffmpeg"), ("tier", "edge")])));
        for bad in ["", "app=x,,b=y", "tier in worker", "=x", "a b"] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn and_of_selectors() {
        let a = LabelSel::labels([("app".to_string(), "x".to_string())].into());
        let b = LabelSel {
            match_labels: [("app".to_string(), "y".to_string())].into(),
            expressions: vec![("k".into(), "Exists".into(), vec![])],
        };
        let c = a.and(&b);
        assert_eq!(c.match_labels.get("app").map(String::as_str), Some("x"));
        assert_eq!(c.expressions.len(), 2);
    }

    #[test]
    fn names() {
        assert_eq!(
            dns_name_part("Nightly_Transcode.v2"),
            "nightly-transcode-v2"
        );
        assert_eq!(dns_name_part("--"), "x");
    }
}
