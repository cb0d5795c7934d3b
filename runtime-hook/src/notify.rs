//! Delivers one event to tracer-node over its unix socket and waits for the answer, never past
//! the deadline. Blocking I/O: the hook does one round trip, an async runtime would only add
//! start-up time to every container creation.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};
use tracer_api::{HookReply, RegistryEvent};

use crate::error::DeliverError;

/// Largest reply read back; a real one is a few bytes.
const MAX_REPLY_BYTES: u64 = 64 * 1024;

/// Sends `event` and returns tracer-node's reply. Fails with [`DeliverError::Timeout`] when the
/// daemon does not answer before `deadline` (a stopped or overloaded daemon accepts connections
/// into its backlog but never answers).
pub fn deliver(
    socket: &Path,
    event: &RegistryEvent,
    deadline: Instant,
    deadline_ms: u64,
) -> Result<HookReply, DeliverError> {
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(DeliverError::Timeout(deadline_ms))
        } else {
            Ok(d)
        }
    };
    let mut message = serde_json::to_vec(event).map_err(|e| DeliverError::BadReply(e.to_string()))?;
    message.push(b'\n');

    let sock = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    let addr = SockAddr::unix(socket)?;
    // A connect to a unix socket whose backlog is full blocks: bound it too.
    sock.connect_timeout(&addr, left()?).map_err(|e| timeout_or(e, deadline_ms))?;
    let stream: std::os::unix::net::UnixStream = sock.into();
    stream.set_write_timeout(Some(left()?))?;
    (&stream).write_all(&message).map_err(|e| timeout_or(e, deadline_ms))?;

    let mut reader = BufReader::new((&stream).take(MAX_REPLY_BYTES));
    let mut line = Vec::with_capacity(64);
    loop {
        stream.set_read_timeout(Some(left()?.max(Duration::from_millis(1))))?;
        match reader.read_until(b'\n', &mut line) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(timeout_or(e, deadline_ms)),
        }
    }
    if line.last() != Some(&b'\n') {
        return Err(DeliverError::BadReply("connection closed before a complete answer".into()));
    }
    serde_json::from_slice(&line).map_err(|e| DeliverError::BadReply(e.to_string()))
}

/// Maps the socket-timeout errors to [`DeliverError::Timeout`], keeping real I/O errors.
fn timeout_or(e: std::io::Error, deadline_ms: u64) -> DeliverError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => DeliverError::Timeout(deadline_ms),
        _ => DeliverError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use tracer_api::ContainerStopped;

    use super::*;

    fn event() -> RegistryEvent {
        RegistryEvent::Stopped(ContainerStopped { version: 1, id: "c".into(), stopped_unix_ns: 1 })
    }

    #[test]
    fn a_listener_that_never_answers_times_out_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let _listener = UnixListener::bind(&path).expect("bind");
        let start = Instant::now();
        let err = deliver(&path, &event(), start + Duration::from_millis(80), 80).expect_err("must time out");
        assert!(matches!(err, DeliverError::Timeout(80)), "{err}");
        assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    }

    #[test]
    fn a_missing_socket_fails_at_once() {
        let err = deliver(Path::new("/nonexistent/x.sock"), &event(), Instant::now() + Duration::from_secs(1), 1000)
            .expect_err("no socket");
        assert!(matches!(err, DeliverError::Io(_)), "{err}");
    }

    #[test]
    fn a_garbled_answer_is_a_bad_reply_and_a_good_one_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            for answer in [&b"nonsense\n"[..], &b"{\"ok\":true}\n"[..]] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).expect("read");
                assert!(line.contains("\"stopped\""));
                s.write_all(answer).expect("write");
            }
        });
        let d = || Instant::now() + Duration::from_secs(2);
        assert!(matches!(deliver(&path, &event(), d(), 2000), Err(DeliverError::BadReply(_))));
        assert!(deliver(&path, &event(), d(), 2000).expect("ok").ok);
        server.join().expect("server");
    }
}
