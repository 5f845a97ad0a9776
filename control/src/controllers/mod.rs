//! Controllers that run inside skiff-control on the store's own watch streams.

use std::sync::Arc;

use crate::api::App;

mod crd;

/// Starts the controllers.
pub fn start(app: Arc<App>) {
    tokio::spawn(crd::run(app));
}
