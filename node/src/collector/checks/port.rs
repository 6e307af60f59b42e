//! port: a TCP port accepts connections, from the node (default) or from the
//! target through a tunnel on its SSH session (for ports only reachable there).
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::{CheckError, Env, Outcome, Status};
use crate::config::checks::PortCheck;
use crate::config::Vantage;
use crate::model::Measurement;
use crate::transport::{connect_direct, Endpoint, TunnelError};

pub async fn run(c: &PortCheck, env: &Env<'_>) -> Result<Outcome, CheckError> {
    let host = match (&c.host, c.from) {
        (Some(h), _) => h.clone(),
        (None, Vantage::Node) => env.target_host(),
        (None, Vantage::Target) => "127.0.0.1".into(),
    };
    let to = Endpoint::Tcp(host, c.port);
    let started = Instant::now();
    let connected = match c.from {
        Vantage::Node => match tokio::time::timeout(env.timeout, connect_direct(&to)).await {
            Ok(r) => r,
            Err(_) => Err(TunnelError::Refused(format!(
                "{to}: no answer within {:?}",
                env.timeout
            ))),
        },
        Vantage::Target => env.transport.connect(&to, env.timeout).await,
    };
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut measurements = Vec::new();
    let (up, detail) = match connected {
        Ok(mut stream) => {
            let _ = stream.shutdown().await;
            measurements.push(Measurement::new(
                "port.connect_ms",
                super::round_derived(took_ms),
            ));
            (true, format!("{to} accepts connections"))
        }
        Err(TunnelError::Refused(why)) => (false, why),
        Err(TunnelError::Prohibited(why)) => return Err(CheckError::Failed(why)),
        Err(TunnelError::Transport(e)) => return Err(CheckError::Transport(e)),
    };
    measurements.push(Measurement::new("port.up", if up { 1.0 } else { 0.0 }));
    Ok(Outcome {
        measurements,
        status: Some(Status::up(up)),
        detail: Some(detail),
        ..Default::default()
    })
}
