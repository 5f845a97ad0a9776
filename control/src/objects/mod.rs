//! The layer between the store and everything that reads or writes objects (the API handlers,
//! the controllers, the scheduler). Today: where objects live in the store (`keys`) and the
//! helpers on objects as JSON (`meta`); the one write path and the admission chain move here
//! next (see docs/architecture.md).

pub mod cluster_cidr;
pub mod cron;
pub mod keys;
pub mod meta;
pub mod quantity;
pub mod scheduling;
