//! TLS on the gRPC port: mutual between nodes, server-side for clients.
//! (Being written: see `herd certs`.)
