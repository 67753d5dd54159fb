//! `auditor diff`: placeholder until the policy engine lands (issue 3).
use std::path::PathBuf;

/// Evaluate observed flows against the installed NetworkPolicies.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Cluster snapshot (kubectl get ns,pods,svc,endpointslices,networkpolicies -A -o yaml).
    #[arg(long)]
    pub cluster: PathBuf,
    /// Flow log (JSON lines).
    #[arg(long)]
    pub flows: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("the policy engine is not built yet")]
    NotBuilt,
}

pub fn run(_args: &DiffArgs) -> Result<i32, DiffError> {
    Err(DiffError::NotBuilt)
}
