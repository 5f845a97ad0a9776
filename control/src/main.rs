//! skiff-control: the control plane.

fn main() {}
