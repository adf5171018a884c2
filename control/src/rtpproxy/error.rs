//! The `E<n>` error replies, numbered as modern rtpproxy numbers them
//! (`rtpp_command_ecodes.h`), so controllers that log or act on specific codes keep working.
//!
//! Numbers 7 to 10 are never produced: OpenSIPS reads them as "the proxy itself is broken" and
//! disables the node, which would turn one malformed command into an outage for every call.
//! rtpproxy uses them for a few parse errors; rtprelay moves those to 11-19 or 35 instead.
//!
//! How parse errors are numbered here (one code per field, so a log line names the culprit):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | unknown command letter |
//! | 1 | wrong number of arguments (also: more arguments than any command takes) |
//! | 2 | modifiers on a command that takes none (`V`, `VF`, `X`, `S`) |
//! | 3 | `&&` sub-commands (not supported) |
//! | 5 | no command: empty input, or a datagram holding only a cookie |
//! | 6 | malformed input: too long, not UTF-8, control characters, unusable cookie |
//! | 11 / 12 | `e` / `i`: more than two interface modifiers, or no such interface |
//! | 13 | `z`: packetization time missing or outside 1-999 ms |
//! | 14 | `c` modifier or `P` codecs: bad payload-type list (each 0-127), or `c` given twice |
//! | 15 / 16 | `l` / `r`: malformed address |
//! | 17 | `P<n>`: bad play count |
//! | 18 | bad tag: empty tag or media index (`tag;N`) not a number >= 1 |
//! | 19 | notify tag: invalid URL encoding or control characters once decoded |
//! | 35 | unknown modifier, on every command that takes modifiers |
//! | 37 | remote address or port of `U`/`L` invalid (or of the wrong family for `6`) |
//! | 62 | `Q`: unknown statistic name |
//!
//! The remaining codes are for the executor (session lookup, allocation, resources).

use std::fmt;

/// An rtpproxy error code; `Display` renders the reply text `E<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// The command letter is not one rtpproxy defines.
    UnknownCommand = 0,
    /// Too few or too many arguments for the command.
    WrongArgCount = 1,
    /// Modifiers were attached to a command that takes none.
    ModifiersNotAllowed = 2,
    /// `&&` sub-commands were sent; capability 20191015 is not announced.
    SubcommandNotAllowed = 3,
    /// Nothing to execute: empty input, or a datagram holding only a cookie.
    MissingCommand = 5,
    /// Input that cannot be a command at all (size, encoding, control bytes, bad cookie).
    MalformedInput = 6,
    /// `e`: a third interface modifier, or no external interface is configured.
    BadExternalBridge = 11,
    /// `i`: a third interface modifier, or no internal interface is configured.
    BadInternalBridge = 12,
    /// `z<ms>` missing its value or outside 1-999.
    BadPtime = 13,
    /// A payload-type list (`c` modifier, `P` codecs) is malformed or repeated.
    BadCodecList = 14,
    /// `l<addr>` is not an IPv4 address or a bracketed IPv6 address.
    BadLocalModifier = 15,
    /// `r<addr>` is not an IPv4 address or a bracketed IPv6 address.
    BadRouteModifier = 16,
    /// `P<n>`: the play count is not a number.
    BadPlayCount = 17,
    /// A tag is empty or its `;N` media index is not a number >= 1.
    BadTag = 18,
    /// The notify tag's URL encoding is broken or decodes to control characters.
    BadNotifyTag = 19,
    /// A global reply (`G`, `I`) would exceed the maximum reply size.
    ReplyTooBig = 25,
    /// A per-session reply (`Q`) would exceed the maximum reply size.
    SessionReplyTooBig = 26,
    /// `l<addr>` names an address the relay does not own.
    LocalAddressUnavailable = 31,
    /// `r<addr>` cannot be used as a remote address.
    RouteAddressInvalid = 32,
    /// No local address routes to the `r<addr>` remote.
    NoRouteToRemote = 33,
    /// The local address routing to `r<addr>` is not one the relay may use.
    RoutedLocalUnavailable = 34,
    /// A modifier letter the command does not know.
    UnknownModifier = 35,
    /// No local address of the stream's family (IPv4 / IPv6) is configured.
    NoAddressForFamily = 36,
    /// The remote address or port in `U`/`L` is invalid.
    BadRemoteAddress = 37,
    /// No session matches the call-ID and tags.
    SessionUnknown = 50,
    /// Starting a prompt failed.
    PlayFailed = 60,
    /// A query failed, e.g. an unknown statistic name.
    QueryFailed = 62,
    /// Starting a copy or recording failed.
    CopyFailed = 65,
    /// Reading global statistics failed, e.g. an unknown counter name.
    StatsFailed = 68,
    /// No media port could be allocated (port range exhausted).
    ListenerFailed = 71,
    /// Binding the allocated media port failed.
    ListenerBindFailed = 72,
    /// A notify socket was given but timeout notifications are disabled or not whitelisted.
    NotifyDisabled = 75,
    /// Memory or another bounded resource ran out.
    OutOfMemory = 81,
    /// The relay sheds load; the controller should try another node.
    Overload = 98,
    /// The relay is shutting down and accepts no new work.
    ShuttingDown = 99,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation tables.
    pub const ALL: [ErrorCode; 35] = [
        Self::UnknownCommand,
        Self::WrongArgCount,
        Self::ModifiersNotAllowed,
        Self::SubcommandNotAllowed,
        Self::MissingCommand,
        Self::MalformedInput,
        Self::BadExternalBridge,
        Self::BadInternalBridge,
        Self::BadPtime,
        Self::BadCodecList,
        Self::BadLocalModifier,
        Self::BadRouteModifier,
        Self::BadPlayCount,
        Self::BadTag,
        Self::BadNotifyTag,
        Self::ReplyTooBig,
        Self::SessionReplyTooBig,
        Self::LocalAddressUnavailable,
        Self::RouteAddressInvalid,
        Self::NoRouteToRemote,
        Self::RoutedLocalUnavailable,
        Self::UnknownModifier,
        Self::NoAddressForFamily,
        Self::BadRemoteAddress,
        Self::SessionUnknown,
        Self::PlayFailed,
        Self::QueryFailed,
        Self::CopyFailed,
        Self::StatsFailed,
        Self::ListenerFailed,
        Self::ListenerBindFailed,
        Self::NotifyDisabled,
        Self::OutOfMemory,
        Self::Overload,
        Self::ShuttingDown,
    ];

    /// The number sent on the wire after `E`.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E{}", self.code())
    }
}

impl std::error::Error for ErrorCode {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn renders_as_e_number() {
        assert_eq!(ErrorCode::UnknownCommand.to_string(), "E0");
        assert_eq!(ErrorCode::SessionUnknown.to_string(), "E50");
        assert_eq!(ErrorCode::ShuttingDown.to_string(), "E99");
    }

    #[test]
    fn codes_are_unique_and_never_disable_an_opensips_node() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "{code} listed twice");
            assert!(
                !(7..=10).contains(&code.code()),
                "{code} would disable the node"
            );
        }
    }
}
