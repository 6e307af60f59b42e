//! systemd's notify protocol (`sd_notify(3)`), spoken without libsystemd: one
//! datagram per message to the unix socket named by `NOTIFY_SOCKET` (a path, or
//! `@name` in the abstract namespace). `READY=1` once the node serves and — when it
//! belongs to a herd or is configured to form one — has joined it and holds its
//! lease; `WATCHDOG=1` every half `WATCHDOG_USEC` while the runtime runs; `STOPPING=1`
//! when it begins to stop. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the messages go.
pub struct SdNotify {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl SdNotify {
    /// From `NOTIFY_SOCKET`; None when it is unset or unusable (said in the log).
    pub fn from_env() -> Option<SdNotify> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy().into_owned();
        let to = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())
            }
            None => SocketAddr::from_pathname(&name),
        };
        let made = to.and_then(|to| Ok((UnixDatagram::unbound()?, to)));
        match made {
            Ok((socket, to)) => Some(SdNotify { socket, to }),
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET is not usable; systemd is not told of readiness");
                None
            }
        }
    }

    /// Sends one message (`KEY=VALUE` lines); a failure is logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            tracing::warn!(error = %e, message, "cannot notify systemd");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set for
/// this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_every() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
