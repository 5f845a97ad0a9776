//! Why a reconcile did not finish. The worker logs it (debug) and retries the key with back-off.

use crate::objects::status::ApiError;

/// A reconcile's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused a read or a write (a conflict, a missing object, an invalid change, no
    /// leader): usually gone on the next try.
    #[error("{} ({} {})", .0.message, .0.code, .0.reason)]
    Api(#[from] ApiError),
    /// A direct store write (an ownership change) failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// What the controller read cannot be acted on as it is (a bad selector, an unknown time
    /// zone): retried in case it is fixed.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Invalid(message)
    }
}
