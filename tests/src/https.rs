//! A real rustls client for the HTTPS servers under test: one request per connection, the
//! status, body and the leaf certificate the server presented.

use std::{
    io::{Read, Write},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

/// A rustls client connection for `localhost` trusting `cas` (PEM files).
pub fn client(cas: &[&Path]) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from_pem_file(ca).expect("CA")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("client")
}

/// What one request got.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status (0 when none arrived).
    pub status: u16,
    /// The body (after the head; the servers under test send Content-Length bodies).
    pub body: Vec<u8>,
    /// The server's leaf certificate, DER.
    pub leaf: Vec<u8>,
}

/// Sends `method path` to `127.0.0.1:port` over TLS for `localhost`, trusting `cas`, with
/// `headers` and `body`; `Connection: close`. Status 0 when nothing answers.
pub fn https(port: u16, cas: &[&Path], method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let conn = client(cas);
    // Refused (not listening yet, or gone): status 0, as when no answer arrives.
    let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Answer { status: 0, body: Vec::new(), leaf: Vec::new() };
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut answer = Vec::new();
    if tls.write_all(head.as_bytes()).and_then(|()| tls.write_all(body)).is_ok() {
        // A server closing without close_notify is an error after the data: the data is kept.
        let _ = tls.read_to_end(&mut answer);
    }
    let leaf = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, body: answer[split..].to_vec(), leaf }
}
