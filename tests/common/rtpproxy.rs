//! An rtpproxy controller for tests: sends `cookie command` datagrams the way Kamailio does and
//! returns the reply body.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub struct Controller {
    sock: UdpSocket,
    pub relay: SocketAddr,
}

impl Controller {
    /// A controller talking to the relay's UDP control socket on 127.0.0.1:`port`.
    pub fn on_port(port: u16) -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A controller with its own source port (as each Kamailio worker has).
    pub fn new(relay: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self { sock, relay }
    }

    /// Sends `cookie command` and returns the reply without the cookie and newline.
    pub fn ask(&self, cookie: &str, command: &str) -> String {
        self.sock
            .send_to(format!("{cookie} {command}").as_bytes(), self.relay)
            .unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = self.sock.recv_from(&mut buf).expect("rtpproxy reply");
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            text.ends_with('\n'),
            "reply must end with a newline: {text:?}"
        );
        let rest = text
            .strip_prefix(&format!("{cookie} "))
            .unwrap_or_else(|| panic!("cookie missing in {text:?}"));
        rest.trim_end().to_owned()
    }
}

/// The port of a `PORT 127.0.0.1` reply to U or L.
pub fn port_of(reply: &str) -> u16 {
    let mut it = reply.split(' ');
    let port = it
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a port reply: {reply:?}"));
    assert_eq!(it.next(), Some("127.0.0.1"), "{reply:?}");
    port
}
