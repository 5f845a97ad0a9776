//! Periodic compaction of watch history, as kube-apiserver asks etcd every five minutes: history
//! older than the revision seen one interval ago is forgotten on every member.

use std::sync::Arc;
use std::time::Duration;

use crate::objects::Objects;

/// How often history is compacted.
const INTERVAL: Duration = Duration::from_secs(300);

/// Compacts to the revision observed one interval earlier.
pub async fn run(app: Arc<Objects>) {
    let mut previous = app.store.revision();
    loop {
        tokio::time::sleep(INTERVAL).await;
        let current = app.store.revision();
        if previous > app.store.oldest_watchable()
            && let Err(e) = app.store.compact(previous).await
        {
            tracing::debug!(error = %e, "compaction skipped");
        }
        previous = current;
    }
}
