//! Where a connection is in its requests, read off the bytes that pass, so that a request's
//! head can be given a deadline without parsing HTTP (hyper does that).
//!
//! A head ends at its first empty line (`\r\n\r\n`); should a client end lines with bare
//! `\n`, the response that follows ends it all the same. A response's status line says what
//! comes next: `HTTP/1.x 1xx` is interim (the final response follows), `101` hands the
//! connection to the upgraded protocol (a WebSocket, which its own keepalive guards), any other
//! status is final (the next byte read begins the next request), and anything but `HTTP/1.`
//! is another protocol (HTTP/2), which is left alone.

use std::time::Duration;

use tokio::time::Instant;

/// The end of a request's head.
const END_OF_HEAD: &[u8; 4] = b"\r\n\r\n";

/// Bytes of a response that tell its status: `HTTP/1.1 101`.
const STATUS_LINE_START: usize = 12;

#[derive(Debug)]
pub(super) struct Phase {
    /// How long a head may take; `None`: no deadline.
    timeout: Option<Duration>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading a request's head, which must be in by `deadline`; `matched` bytes of the empty
    /// line that ends it have been seen.
    Head { deadline: Instant, matched: u8 },
    /// The head is in; the response has not said its status yet (`seen` bytes of it so far).
    Request { status: [u8; STATUS_LINE_START], seen: u8 },
    /// A final response began: the next byte read begins the next request.
    BetweenRequests,
    /// Upgraded, another protocol, or no deadline at all: nothing to watch.
    Handed,
}

impl Phase {
    /// A new connection: its first head is due `timeout` after `accepted`.
    pub(super) fn new(timeout: Option<Duration>, accepted: Instant) -> Self {
        let state = match timeout {
            Some(timeout) => State::Head { deadline: accepted + timeout, matched: 0 },
            None => State::Handed,
        };
        Self { timeout, state }
    }

    /// When the head being read is due, while one is.
    pub(super) fn header_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Head { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// `bytes` were read at `now`. `true` when they began a head (and so a new deadline).
    pub(super) fn read(&mut self, bytes: &[u8], now: Instant) -> bool {
        let mut began = false;
        if let (State::BetweenRequests, Some(timeout), false) = (&self.state, self.timeout, bytes.is_empty()) {
            self.state = State::Head { deadline: now + timeout, matched: 0 };
            began = true;
        }
        if let State::Head { matched, .. } = &mut self.state
            && head_ends_in(matched, bytes)
        {
            self.state = State::Request { status: [0; STATUS_LINE_START], seen: 0 };
            return false;
        }
        began
    }

    /// `bytes` were written.
    pub(super) fn wrote(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Head { .. }) {
            // Answered, so the head was in, whatever ended its lines.
            self.state = State::Request { status: [0; STATUS_LINE_START], seen: 0 };
        }
        let State::Request { status, seen } = &mut self.state else { return };
        let start = usize::from(*seen);
        let taken = bytes.len().min(STATUS_LINE_START - start);
        status[start..start + taken].copy_from_slice(&bytes[..taken]);
        *seen += u8::try_from(taken).unwrap_or(0);
        if usize::from(*seen) < STATUS_LINE_START {
            return;
        }
        self.state = match (&status[..7], &status[9..12]) {
            (b"HTTP/1.", b"101") => State::Handed,
            (b"HTTP/1.", [b'1', _, _]) => State::Request { status: [0; STATUS_LINE_START], seen: 0 },
            (b"HTTP/1.", _) => State::BetweenRequests,
            _ => State::Handed,
        };
    }
}

/// Whether `bytes` complete the empty line that ends a head, `matched` bytes of which were
/// seen before them.
fn head_ends_in(matched: &mut u8, bytes: &[u8]) -> bool {
    for &byte in bytes {
        *matched = if byte == END_OF_HEAD[usize::from(*matched)] { *matched + 1 } else { u8::from(byte == b'\r') };
        if usize::from(*matched) == END_OF_HEAD.len() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn in_head(phase: &Phase) -> bool {
        phase.header_deadline().is_some()
    }

    #[test]
    fn a_head_split_anywhere_ends_at_its_empty_line() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..head.len() {
            let mut phase = Phase::new(Some(TIMEOUT), Instant::now());
            phase.read(&head[..split], Instant::now());
            assert!(in_head(&phase), "split at {split}");
            phase.read(&head[split..], Instant::now());
            assert!(!in_head(&phase), "split at {split}");
        }
        let mut phase = Phase::new(Some(TIMEOUT), Instant::now());
        phase.read(b"GET / HTTP/1.1\r\nX: \r\r\n", Instant::now());
        assert!(in_head(&phase), "\\r\\r\\n is no empty line");
    }

    #[test]
    fn a_final_response_makes_the_next_byte_begin_a_new_deadline() {
        let accepted = Instant::now();
        let mut phase = Phase::new(Some(TIMEOUT), accepted);
        assert_eq!(phase.header_deadline(), Some(accepted + TIMEOUT));
        phase.read(b"GET / HTTP/1.1\r\n\r\n", accepted);
        phase.wrote(b"HTTP/1.1 2");
        phase.wrote(b"00 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!in_head(&phase), "nothing read yet: the idle timeout's business");
        let later = accepted + Duration::from_secs(30);
        assert!(phase.read(b"P", later), "a new head began");
        assert_eq!(phase.header_deadline(), Some(later + TIMEOUT));
    }

    #[test]
    fn an_upgrade_or_another_protocol_is_left_alone() {
        for response in [&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..], &b"\0\0\x12\x04\0\0\0\0\0\0\x03\0\0"[..]] {
            let mut phase = Phase::new(Some(TIMEOUT), Instant::now());
            phase.read(b"GET /ws HTTP/1.1\r\n\r\n", Instant::now());
            phase.wrote(response);
            assert!(!phase.read(b"frame bytes", Instant::now()));
            assert!(!in_head(&phase));
        }
    }

    #[test]
    fn an_interim_response_waits_for_the_final_one() {
        let mut phase = Phase::new(Some(TIMEOUT), Instant::now());
        phase.read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", Instant::now());
        phase.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(!phase.read(b"{\"body\": 1}", Instant::now()), "a body is no head");
        phase.wrote(b"HTTP/1.1 201 Created\r\n\r\n");
        assert!(phase.read(b"G", Instant::now()));
    }

    #[test]
    fn a_response_ends_a_head_whose_lines_ended_in_bare_newlines() {
        let mut phase = Phase::new(Some(TIMEOUT), Instant::now());
        phase.read(b"GET / HTTP/1.1\nHost: x\n\n", Instant::now());
        assert!(in_head(&phase));
        phase.wrote(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(!in_head(&phase));
    }

    #[test]
    fn without_a_timeout_nothing_is_watched() {
        let mut phase = Phase::new(None, Instant::now());
        assert!(!in_head(&phase));
        phase.wrote(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(!phase.read(b"GET", Instant::now()));
    }
}
