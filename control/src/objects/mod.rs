//! The layer between the store and everything that reads or writes objects (the API handlers,
//! the controllers, the scheduler): where objects live in the store (`keys`), the helpers on
//! objects as JSON (`meta`), and the transport-free rules of writes (`write`: delete options,
//! preconditions, what a delete does). The rest of the write path moves here next (see
//! docs/architecture.md).

pub mod cluster_cidr;
pub mod cron;
pub mod keys;
pub mod meta;
pub mod quantity;
pub mod scheduling;
pub mod write;
