//! Readiness notification to the service manager (`sd_notify(3)`), for a
//! `Type=notify` systemd unit.
//!
//! The protocol is one datagram of `KEY=VALUE` lines sent to the
//! `AF_UNIX` socket named by `$NOTIFY_SOCKET`: a path, or, when the name
//! starts with `@`, a socket in the abstract namespace (the `@` stands for
//! the leading NUL byte). Without `$NOTIFY_SOCKET` (not started by systemd,
//! or a unit of another type) every call does nothing.
//!
//! The agent sends `READY=1` once every pool, ring and listening socket
//! exists, so that units ordered after it (`Before=libvirtd.service`) start
//! only when QEMU can attach; `STATUS=` lines say what it is doing, and
//! `STOPPING=1` comes first on shutdown.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

/// Where notifications go: the socket `$NOTIFY_SOCKET` names, if any.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, OsString)>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` describes (one that does nothing when
    /// it is unset or empty).
    pub fn from_env() -> std::io::Result<Notifier> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) if !name.is_empty() => Notifier::for_socket(name),
            _ => Ok(Notifier { socket: None }),
        }
    }

    /// A notifier that sends to the socket `name` (`/path` or `@abstract`).
    pub fn for_socket(name: OsString) -> std::io::Result<Notifier> {
        let sock = UnixDatagram::unbound()?;
        Ok(Notifier {
            socket: Some((sock, name)),
        })
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state`: newline-separated `KEY=VALUE` assignments (`READY=1`,
    /// `STATUS=...`, `STOPPING=1`). Does nothing without a socket.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some((sock, name)) = &self.socket else {
            return Ok(());
        };
        let sent = send_to(sock, name, state.as_bytes())?;
        if sent != state.len() {
            return Err(std::io::Error::other(
                "the notification was cut short by the socket",
            ));
        }
        Ok(())
    }

    /// [`Notifier::notify`] for messages the agent cannot do without: a
    /// failure is logged, not returned (the service manager times the unit
    /// out if `READY=1` never arrives, which says more than an early exit).
    pub fn tell(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, state, "cannot notify the service manager ($NOTIFY_SOCKET)");
        }
    }
}

/// Sends `msg` to the socket `name`: a path, or `@name` in the abstract
/// namespace.
fn send_to(sock: &UnixDatagram, name: &OsString, msg: &[u8]) -> std::io::Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        sock.send_to_addr(msg, &addr)
    } else if bytes.first() == Some(&b'/') {
        sock.send_to(msg, std::path::Path::new(name))
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path() {
        let dir = std::env::temp_dir().join(format!("vmdedup-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_socket(path.clone().into_os_string()).unwrap();
        assert!(n.enabled());
        n.notify("READY=1\nSTATUS=serving").unwrap();
        assert_eq!(recv(&server), "READY=1\nSTATUS=serving");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("vmdedup-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::for_socket(format!("@{name}").into()).unwrap();
        n.notify("STOPPING=1").unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_name_and_a_missing_socket() {
        let n = Notifier::for_socket("relative/sock".into()).unwrap();
        assert!(n.notify("READY=1").is_err());
        let n = Notifier::for_socket("/nonexistent/vmdedup/notify".into()).unwrap();
        assert!(n.notify("READY=1").is_err());
        let none = Notifier { socket: None };
        assert!(!none.enabled());
        none.notify("READY=1").unwrap();
    }
}
