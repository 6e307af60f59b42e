//! Generated gRPC types of Herd's API.
pub mod v1 {
    tonic::include_proto!("herd.v1");
}
