//! `herd certs`: a CA and node certificates for a new herd. (Being written.)
