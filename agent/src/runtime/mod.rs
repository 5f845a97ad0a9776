//! Running containers: the shim process that creates and reaps them through libcontainer, their
//! consoles and attach sockets, the cgroups they are placed in, and what those cgroups use.

pub mod attach;
pub mod cgroups;
pub mod console;
pub mod helper;
pub mod shim;
pub mod stats;
pub mod userns;
