//! auditor: an eBPF connection auditor for Kubernetes media pipelines.
//!
//! One module a pipeline stage (see ARCHITECTURE.md). Only `probe`, `record`
//! (the sinks) and `procfs` do I/O; the other stages are pure.

pub mod alertmanager;
pub mod alerts;
pub mod attribute;
pub mod btf;
pub mod cluster;
pub mod collect;
pub mod coverage;
pub mod decode;
pub mod diff;
pub mod dns;
pub mod drill;
pub mod enrich;
pub mod filter;
pub mod flowlog;
pub mod identity;
pub mod kube;
pub mod observed;
pub mod policy;
pub mod probe;
pub mod procfs;
pub mod record;
pub mod report;
pub mod serve;
pub mod suggest;
pub mod tracefs;
pub mod whatif;
