//! Token authentication of the client API: `authorization: Bearer <token>`.
use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::cluster::credential::constant_time_eq;

/// An API token that cannot be read or sent: the token file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read API token file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API token file {} must hold one token of printable ASCII", .path.display())]
    NotOneToken { path: PathBuf },
    #[error("the API token must be printable ASCII")]
    NotAscii,
}

/// Reads a token file: the whole file, trimmed; it must not be empty.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotOneToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// Server side: rejects calls without the expected token (when one is set).
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Vec<u8>>,
}

impl RequireToken {
    pub fn new(token: Option<String>) -> Self {
        RequireToken {
            expected: token.map(|t| format!("Bearer {t}").into_bytes()),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "this node requires an API token (--token-file or HERD_TOKEN)",
            ))
        }
    }
}

/// Client side: attaches the token to every call (when one is set).
#[derive(Clone)]
pub struct SendToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl SendToken {
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        let header = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| TokenError::NotAscii)?,
            ),
            None => None,
        };
        Ok(SendToken { header })
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: Option<&str>, send: Option<&str>) -> Result<(), Status> {
        let req = SendToken::new(send).unwrap().call(Request::new(()))?;
        RequireToken::new(token.map(String::from))
            .call(req)
            .map(drop)
    }

    #[test]
    fn token_is_required_when_set() {
        assert!(call(None, None).is_ok());
        assert!(call(Some("s3cret"), Some("s3cret")).is_ok());
        assert_eq!(
            call(Some("s3cret"), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            call(Some("s3cret"), Some("s3cre")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
