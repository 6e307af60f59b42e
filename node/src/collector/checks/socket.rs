//! socket: a unix socket on the target accepts a connection, through a
//! direct-streamlocal channel on the SSH session (nothing runs on the target).
use tokio::io::AsyncWriteExt;

use super::{CheckError, Env, Outcome, Status};
use crate::config::checks::SocketCheck;
use crate::model::Measurement;
use crate::transport::{Endpoint, TunnelError};

pub async fn run(c: &SocketCheck, env: &Env<'_>) -> Result<Outcome, CheckError> {
    let to = Endpoint::Unix(c.path.clone());
    let (up, detail) = match env.transport.connect(&to, env.timeout).await {
        Ok(mut stream) => {
            let _ = stream.shutdown().await;
            (true, format!("{} accepts connections", c.path))
        }
        Err(TunnelError::Refused(why)) => (false, why),
        Err(TunnelError::Prohibited(why)) => return Err(CheckError::Failed(why)),
        Err(TunnelError::Transport(e)) => return Err(CheckError::Transport(e)),
    };
    Ok(Outcome {
        measurements: vec![Measurement::new("socket.up", if up { 1.0 } else { 0.0 })],
        status: Some(Status::up(up)),
        detail: Some(detail),
        ..Default::default()
    })
}
