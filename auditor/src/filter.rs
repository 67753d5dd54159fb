//! The kubectl-style filters of `diff`, `suggest` and `report`: `-n/--namespace`,
//! `-A/--all-namespaces`, `-l/--selector`, `--verdict`. One definition of the flags, one
//! compiled form, one rule for which flows they keep (pure).
//!
//! A flow is kept by `-n`/`-l` when a pod at either end of it (any backend of a Service)
//! is in the namespace and matches the selector; by `--verdict` when its verdict is that
//! one. What each command does with the kept flows is in its `--help`.

use std::path::{Path, PathBuf};

use crate::policy::selector::Selector;
use crate::policy::{Engine, FlowResult, Party, PodId};

/// The filter flags, as kubectl's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only flows from or to pods of this namespace, as kubectl's `-n` (`diff`, `report`:
    /// counts cover only the flows shown, unused rules are this namespace's; `suggest`:
    /// only this namespace's workloads get policies, see its --help).
    ///
    /// Example: -n media
    #[arg(
        long,
        short = 'n',
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,
    /// Flows of every namespace, as kubectl's `-A` (the default).
    ///
    /// Example: -A
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Only flows from or to pods whose labels match this selector, as kubectl's `-l`
    /// (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`).
    ///
    /// Example: -l 'app=packager,tier!=edge'
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only the flows with this verdict (`diff`, `report`; `suggest` refuses it: an
    /// allowlist must carry every flow of its workloads, `--mode fix` is the suggestion
    /// for the denied ones).
    ///
    /// Example: --verdict denied
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub verdict: Option<VerdictFilter>,
}

/// `--verdict`: which flows are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictFilter {
    Allowed,
    Denied,
}

impl VerdictFilter {
    /// Whether a flow with this verdict is kept.
    pub fn keeps(self, allowed: bool) -> bool {
        allowed == (self == VerdictFilter::Allowed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{path}: -n {namespace}: the cluster has no namespace {namespace:?} (namespaces of its objects: {known})")]
    UnknownNamespace {
        /// The snapshot file, or the API server.
        path: PathBuf,
        namespace: String,
        known: String,
    },
    #[error("-l {input:?}: {message} (expected a label selector, e.g. app=ffmpeg,tier in (worker,edge),!canary)")]
    Selector { input: String, message: String },
}

/// The filters compiled against one engine.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    selector: Option<Selector>,
    pub verdict: Option<VerdictFilter>,
}

impl Filter {
    /// Parses the selector and checks the namespace against the engine's (every
    /// namespace an object of the cluster names); `origin` names the cluster in errors.
    pub fn compile(args: &FilterArgs, engine: &Engine, origin: &Path) -> Result<Self, FilterError> {
        let selector = match &args.selector {
            Some(s) => {
                let bad = |message: String| FilterError::Selector {
                    input: s.clone(),
                    message,
                };
                Some(Selector::from_kubectl(s).map_err(bad)?)
            }
            None => None,
        };
        if let Some(ns) = &args.namespace {
            if !engine.namespace_names().any(|n| n == ns) {
                let mut known: Vec<&str> = engine.namespace_names().collect();
                known.sort_unstable();
                return Err(FilterError::UnknownNamespace {
                    path: origin.to_owned(),
                    namespace: ns.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(Self {
            namespace: args.namespace.clone(),
            selector,
            verdict: args.verdict,
        })
    }

    /// No `-n` and no `-l`: every pod is kept.
    pub fn all_pods(&self) -> bool {
        self.namespace.is_none() && self.selector.is_none()
    }

    /// No filter at all.
    pub fn is_empty(&self) -> bool {
        self.all_pods() && self.verdict.is_none()
    }

    /// The pod is in `-n`'s namespace and matches `-l`.
    pub fn keeps_pod(&self, engine: &Engine, p: PodId) -> bool {
        let pod = &engine.pods()[p];
        self.namespace
            .as_ref()
            .is_none_or(|ns| &pod.namespace == ns)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
    }

    /// A pod at either end of the flow (any of its targets) is kept by `-n`/`-l`.
    pub fn keeps_pods_of(&self, engine: &Engine, r: &FlowResult) -> bool {
        self.all_pods()
            || r.targets.iter().any(|t| {
                [&t.src, &t.dst]
                    .into_iter()
                    .any(|x| matches!(x, Party::Pod(p) if self.keeps_pod(engine, *p)))
            })
    }

    /// `-n`, `-l` and `--verdict` all keep the flow.
    pub fn keeps(&self, engine: &Engine, r: &FlowResult) -> bool {
        self.verdict.is_none_or(|v| v.keeps(r.allowed)) && self.keeps_pods_of(engine, r)
    }
}
