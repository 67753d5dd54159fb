//! The fake Kubernetes API server of the cluster end-to-end test, as a process of its own:
//! HTTPS on loopback, driven by JSON commands on stdin (see `auditor::kube::fake::server`).

fn main() {
    std::process::exit(auditor::kube::fake::server::main(std::env::args().skip(1)));
}
