//! The layer between the store and everything that reads or writes objects (the API handlers,
//! the controllers, the scheduler), shared through one [`Objects`] handle: the write path
//! (`write`, with `admission`, `patch`, `apply`, `service` allocation), what objects are (`schema`,
//! `registry`, `crd`, `validation`), where they live in the store (`keys`) and the helpers on
//! objects as JSON (`meta`). See docs/architecture.md.

pub mod admission;
pub mod apply;
pub mod autoscaling;
pub mod cel;
pub mod certificates;
pub mod cluster_cidr;
pub mod convert;
pub mod cpu;
pub mod crd;
pub mod cron;
pub mod ephemeral;
pub mod keys;
pub mod limits;
pub mod meta;
pub mod patch;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod scheduling;
pub mod schema;
pub mod schema_constraints;
pub mod selector;
pub mod service;
pub mod status;
pub mod validation;
pub mod write;

use self::cluster_cidr::ClusterCidr;
use self::registry::Registry;
use self::service::Cidr;
use crate::store::Store;

/// The objects of the cluster: the store they live in, the resources served, and what a write
/// allocates from (service addresses, node pod ranges). The API server, the controllers and the
/// scheduler read and write through one shared handle.
#[derive(Debug)]
pub struct Objects {
    /// The store.
    pub store: Store,
    /// Served resources (built-in and custom).
    pub registry: Registry,
    /// The service CIDR cluster IPs come from.
    pub service_cidr: Cidr,
    /// Where nodes' pod CIDRs come from (None: nodes bring their own).
    pub cluster_cidr: Option<ClusterCidr>,
    /// Serialises address allocation for Services.
    alloc: tokio::sync::Mutex<()>,
    /// Admission webhooks' configurations and calls (the API server's; none in unit tests and
    /// until the API server starts).
    webhooks: std::sync::OnceLock<std::sync::Arc<dyn admission::webhooks::Backend>>,
}

impl Objects {
    /// The objects in `store`, cluster IPs from `service_cidr`.
    pub fn new(store: Store, service_cidr: Cidr) -> Self {
        Self {
            store,
            registry: Registry::new(),
            service_cidr,
            cluster_cidr: None,
            alloc: tokio::sync::Mutex::new(()),
            webhooks: std::sync::OnceLock::new(),
        }
    }

    /// Writes are sent to the admission webhooks `backend` knows (once; later calls are ignored).
    pub fn set_webhooks(&self, backend: std::sync::Arc<dyn admission::webhooks::Backend>) {
        let _ = self.webhooks.set(backend);
    }

    /// Nodes' pod CIDRs come from `range`.
    #[must_use]
    pub fn with_cluster_cidr(mut self, range: Option<ClusterCidr>) -> Self {
        self.cluster_cidr = range;
        self
    }
}
