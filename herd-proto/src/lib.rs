//! Generated gRPC types of Herd's API, and the Prometheus remote-write request.
pub mod v1 {
    tonic::include_proto!("herd.v1");
}

/// The Prometheus remote-write 1.0 messages Herd sends.
pub mod prometheus {
    tonic::include_proto!("prometheus");
}
