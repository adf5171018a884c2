//! Cookies and line framing: turning what arrived on a control socket into command text, and
//! wrapping reply text for the way back.
//!
//! Datagram transports (UDP, unix datagram) prefix every command with an opaque cookie that the
//! controller uses to match replies to its retransmitted requests; stream transports (unix
//! stream, TCP) carry one command per line and no cookie.

use super::error::ErrorCode;

/// Largest command accepted, cookie included; rtpproxy's own command buffer is 8 KiB, and no
/// real command comes close, so anything longer is garbage or an attack.
pub const MAX_COMMAND_LEN: usize = 8192;

/// Longest cookie echoed back. Kamailio and OpenSIPS send ~10-32 bytes; the bound keeps every
/// reply within [`MAX_REPLY_LEN`].
pub const MAX_COOKIE_LEN: usize = 128;

/// Largest reply written, cookie and newline included; fits one unfragmented local datagram.
pub const MAX_REPLY_LEN: usize = 4096;

/// Largest reply body (without cookie, separator and newline), so that any body with any
/// accepted cookie fits in [`MAX_REPLY_LEN`].
pub const MAX_REPLY_BODY_LEN: usize = MAX_REPLY_LEN - MAX_COOKIE_LEN - 2;

/// How the command arrived, which decides whether a cookie is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `<cookie> <command>`; replies are `<cookie> <reply>\n`.
    Datagram,
    /// `<command>` alone; replies are `<reply>\n`.
    Stream,
}

/// A command split from its framing, borrowing the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The cookie to echo; `None` in stream mode.
    pub cookie: Option<&'a str>,
    /// The command text, trimmed of surrounding whitespace; never empty.
    pub command: &'a str,
}

/// Why input could not be framed, with the cookie to answer under if one could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError<'a> {
    /// `None` when no cookie could be told apart (rtpproxy then answers without one too).
    pub cookie: Option<&'a str>,
    pub code: ErrorCode,
}

impl FrameError<'_> {
    /// The reply to send back for this error.
    pub fn reply(&self) -> String {
        format_reply(self.cookie, &self.code.to_string())
    }
}

fn is_cookie(token: &[u8]) -> bool {
    !token.is_empty()
        && token.len() <= MAX_COOKIE_LEN
        && token.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Control bytes other than whitespace would be cut, mangled or misread further down (C
/// controllers stop at NUL), so they make the whole command malformed.
fn has_control_bytes(text: &[u8]) -> bool {
    text.iter()
        .any(|&b| (b < 0x20 && !b.is_ascii_whitespace()) || b == 0x7f)
}

/// Splits received input into cookie and command. Never panics, whatever the bytes.
pub fn split(input: &[u8], mode: Mode) -> Result<Frame<'_>, FrameError<'_>> {
    let text = input.trim_ascii();
    let (cookie, rest) = match mode {
        Mode::Stream => (None, text),
        Mode::Datagram => {
            let end = text
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(text.len());
            let (token, rest) = text.split_at(end);
            // Only a printable ASCII token of sane size is a cookie worth echoing.
            let cookie = if is_cookie(token) {
                std::str::from_utf8(token).ok()
            } else {
                None
            };
            (cookie, rest.trim_ascii_start())
        }
    };
    let fail = |code| Err(FrameError { cookie, code });
    if input.len() > MAX_COMMAND_LEN {
        return fail(ErrorCode::MalformedInput);
    }
    if mode == Mode::Datagram && cookie.is_none() && !text.is_empty() {
        return fail(ErrorCode::MalformedInput);
    }
    if rest.is_empty() {
        // rtpproxy cannot tell a lone token from a cookie-less command and answers without one.
        return Err(FrameError {
            cookie: None,
            code: ErrorCode::MissingCommand,
        });
    }
    if has_control_bytes(rest) {
        return fail(ErrorCode::MalformedInput);
    }
    match std::str::from_utf8(rest) {
        Ok(command) => Ok(Frame { cookie, command }),
        Err(_) => fail(ErrorCode::MalformedInput),
    }
}

/// Wraps a reply body for the wire: `<cookie> <body>\n`, or `<body>\n` without a cookie.
pub fn format_reply(cookie: Option<&str>, body: &str) -> String {
    let body = body.trim_end_matches(['\r', '\n']);
    match cookie {
        Some(cookie) => format!("{cookie} {body}\n"),
        None => format!("{body}\n"),
    }
}

/// Finds the next complete line in a stream buffer: `Ok(Some((line, consumed)))` with the line
/// without its terminator, `Ok(None)` when more bytes are needed, or an error when the buffer
/// already holds more than any command may be, so the connection can be answered and closed.
pub fn take_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ErrorCode> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if end > MAX_COMMAND_LEN => Err(ErrorCode::MalformedInput),
        Some(end) => Ok(Some((&buf[..end], end + 1))),
        None if buf.len() > MAX_COMMAND_LEN => Err(ErrorCode::MalformedInput),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(input: &str, mode: Mode) -> (Option<&str>, &str) {
        let frame = split(input.as_bytes(), mode).expect("frames");
        (frame.cookie, frame.command)
    }

    fn err(input: &[u8], mode: Mode) -> (Option<String>, ErrorCode) {
        let e = split(input, mode).expect_err("rejected");
        (e.cookie.map(str::to_owned), e.code)
    }

    #[test]
    fn datagram_cookie_and_command() {
        assert_eq!(ok("29816_0 V", Mode::Datagram), (Some("29816_0"), "V"));
        assert_eq!(
            ok("  abc\tVF 20050322 \r\n", Mode::Datagram),
            (Some("abc"), "VF 20050322")
        );
    }

    #[test]
    fn stream_has_no_cookie() {
        assert_eq!(ok("VF 20050322\n", Mode::Stream), (None, "VF 20050322"));
    }

    #[test]
    fn missing_command_is_e5_without_cookie() {
        assert_eq!(
            err(b"29816_0", Mode::Datagram),
            (None, ErrorCode::MissingCommand)
        );
        assert_eq!(
            err(b" \r\n", Mode::Datagram),
            (None, ErrorCode::MissingCommand)
        );
        assert_eq!(err(b"", Mode::Stream), (None, ErrorCode::MissingCommand));
    }

    #[test]
    fn malformed_input_is_e6_with_cookie_when_readable() {
        let c = Some("c1".to_owned());
        assert_eq!(
            err(b"c1 V\0", Mode::Datagram),
            (c.clone(), ErrorCode::MalformedInput)
        );
        assert_eq!(
            err(b"c1 U \xff", Mode::Datagram),
            (c.clone(), ErrorCode::MalformedInput)
        );
        let mut long = b"c1 U ".to_vec();
        long.resize(MAX_COMMAND_LEN + 1, b'x');
        assert_eq!(err(&long, Mode::Datagram), (c, ErrorCode::MalformedInput));
        let long_cookie = format!("{} V", "k".repeat(MAX_COOKIE_LEN + 1));
        assert_eq!(
            err(long_cookie.as_bytes(), Mode::Datagram),
            (None, ErrorCode::MalformedInput)
        );
        assert_eq!(
            err(b"\xffck V", Mode::Datagram),
            (None, ErrorCode::MalformedInput)
        );
    }

    #[test]
    fn replies_carry_cookie_and_newline() {
        assert_eq!(
            format_reply(Some("29816_0"), "20040107"),
            "29816_0 20040107\n"
        );
        assert_eq!(format_reply(None, "1"), "1\n");
        assert_eq!(format_reply(None, "a\nb\n"), "a\nb\n");
        let e = split(b"k1 V\x01", Mode::Datagram).expect_err("control byte");
        assert_eq!(e.reply(), "k1 E6\n");
    }

    #[test]
    fn lines_are_taken_one_at_a_time() {
        assert_eq!(take_line(b"V\nX\n"), Ok(Some((&b"V"[..], 2))));
        assert_eq!(take_line(b"VF 2005"), Ok(None));
        assert_eq!(
            take_line(&vec![b'x'; MAX_COMMAND_LEN + 1]),
            Err(ErrorCode::MalformedInput)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                       datagram in any::<bool>()) {
            let mode = if datagram { Mode::Datagram } else { Mode::Stream };
            match split(&bytes, mode) {
                Ok(f) => {
                    prop_assert!(!f.command.is_empty());
                    prop_assert_eq!(f.cookie.is_some(), datagram);
                }
                Err(e) => prop_assert!(e.reply().len() <= MAX_REPLY_LEN),
            }
            let _ = take_line(&bytes);
        }

        #[test]
        fn cookie_round_trips(cookie in "[!-~]{1,128}", cmd in "[A-Za-z0-9 ;.@]{1,60}") {
            let input = format!("{cookie} {cmd}");
            match split(input.as_bytes(), Mode::Datagram) {
                Ok(f) => {
                    prop_assert_eq!(f.cookie, Some(cookie.as_str()));
                    prop_assert_eq!(f.command, cmd.trim());
                }
                Err(e) => {
                    prop_assert!(cmd.trim().is_empty());
                    prop_assert_eq!(e.code, ErrorCode::MissingCommand);
                }
            }
        }
    }
}
