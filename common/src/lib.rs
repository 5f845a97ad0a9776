//! Helpers that both `skiff-control` and `skiff-agent` need, kept in one place: URL escaping for
//! query strings, files replaced whole that only their owner may read, mount points, and
//! timestamps as Kubernetes writes them.

#![forbid(unsafe_code)]

pub mod fs;
pub mod time;
pub mod url;
