//! The one mapping from module errors to gRPC statuses.
use tonic::Status;

use crate::cluster::node::ClusterError;
use crate::cluster::{ApplyError, PauseError};
use crate::store::StoreError;

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Status {
        match e {
            // The CLI turns InvalidArgument into exit code 2 (bad config).
            ApplyError::Invalid(errors) => Status::invalid_argument(errors.to_string()),
            ApplyError::Cluster(e) => e.into(),
        }
    }
}

impl From<PauseError> for Status {
    fn from(e: PauseError) -> Status {
        match e {
            PauseError::NoTarget(_) => Status::not_found(e.to_string()),
            PauseError::Cluster(e) => e.into(),
        }
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Status {
        match &e {
            ClusterError::Config(_) | ClusterError::Rejected(_) => {
                Status::failed_precondition(e.to_string())
            }
            ClusterError::NotLeader { .. }
            | ClusterError::Timeout { .. }
            | ClusterError::Stopped(_)
            | ClusterError::Forward { .. } => Status::unavailable(e.to_string()),
            ClusterError::Store(_) => Status::internal(e.to_string()),
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
