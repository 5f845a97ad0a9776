//! skiff-agent: the node agent (kubelet and kube-proxy in one process). Arrives with Node agent I.

fn main() {
    eprintln!("skiff-agent: the node agent is not built yet; see docs/architecture.md");
    std::process::exit(2);
}
