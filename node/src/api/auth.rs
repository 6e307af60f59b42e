//! Token authentication of the client API: `authorization: Bearer <token>`.
use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::cluster::credential::constant_time_eq;

/// Reads a token file: the whole file, trimmed; it must not be empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read API token file {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "API token file {} must hold one token of printable ASCII",
            path.display()
        ));
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
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the API token must be printable ASCII".to_string())?,
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
