//! The one mapping from module errors to gRPC statuses.
use tonic::Status;

use crate::ownership::ApplyError;
use crate::store::StoreError;

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Status {
        match e {
            // The CLI turns InvalidArgument into exit code 2 (bad config).
            ApplyError::Invalid(errors) => Status::invalid_argument(errors.to_string()),
            ApplyError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::Closed => Status::unavailable("the node is shutting down"),
            other => Status::internal(other.to_string()),
        }
    }
}

/// Runs blocking store work off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(Status::from)
}
