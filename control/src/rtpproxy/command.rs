//! The typed form of every rtpproxy command rtprelay understands. Parsing ([`super::parse`])
//! produces these; the executor consumes them without ever looking at text again.

use std::net::{IpAddr, SocketAddr};

/// A SIP dialog tag with the media index controllers append (`tag;N`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The tag proper, without `;N`.
    pub tag: String,
    /// The media index if one was given. `D` without an index means "every stream of this
    /// tag", so the absence is kept rather than folded into 1.
    pub media: Option<u32>,
}

impl Tag {
    /// The media index, 1 when none was given (rtpproxy's default stream).
    pub fn index(&self) -> u32 {
        self.media.unwrap_or(1)
    }
}

/// What every session command names: a call and one or both dialog tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    /// The Call-ID as sent, including any `;via-branch` suffix.
    pub call_id: String,
    pub from_tag: Tag,
    pub to_tag: Option<Tag>,
}

/// A relay interface named by the `i` / `e` bridging modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Internal,
    External,
}

/// The `i`/`e` modifiers in the order given: rtpproxy binds the first to one leg and the second
/// to the other, so `ie` and `ei` bridge in opposite directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bridge {
    pub first: Interface,
    pub second: Option<Interface>,
}

/// Where to bind the allocated port (`l` / `r`); the last of the two given wins, as in rtpproxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAddress {
    /// `l<addr>`: bind to this local address.
    Bind(IpAddr),
    /// `r<addr>`: bind to whichever local address routes to this remote address.
    RouteTo(IpAddr),
}

/// Modifiers of `U` and `L`. Defaults are rtpproxy's: symmetric, strong, IPv4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modifiers {
    /// `a` (true) / `s` (false), last one wins: send to the signalled address instead of
    /// latching onto the first packet's source.
    pub asymmetric: bool,
    /// `w`: a weak reference for this command's side; the stream lives while any strong or
    /// weak reference is left (see [`super::refs`]).
    pub weak: bool,
    /// `i` / `e`: bridge between the internal and external interfaces.
    pub bridge: Option<Bridge>,
    /// `6`: the remote address in the command is IPv6.
    pub ipv6: bool,
    /// `z<ms>`: repacketize to this packetization time (1-999 ms).
    pub ptime_ms: Option<u16>,
    /// `c<pt,...>`: payload types of the codecs in use, in the order given.
    pub codecs: Option<Vec<u8>>,
    /// `l<addr>` / `r<addr>`.
    pub local: Option<LocalAddress>,
    /// `n`: allocate a fresh port even if the stream already has one.
    pub new_port: bool,
}

/// Where `U` asks to be told when the session times out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// As sent (`unix:/path`, `tcp:host:port`, ...); must match the configured whitelist.
    pub socket: String,
    /// Decoded from URL encoding; written back verbatim followed by `\n`. Never holds control
    /// bytes, so it cannot break that line framing.
    pub tag: Vec<u8>,
}

/// Arguments of `U` (create or update) and `L` (lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateLookup {
    pub modifiers: Modifiers,
    pub stream: StreamRef,
    /// Where this side's media comes from, as signalled (SDP), unspecified address or port 0
    /// included; see [`UpdateLookup::remote_known`].
    pub remote: SocketAddr,
    /// Only ever set for `U`.
    pub notify: Option<Notify>,
}

impl UpdateLookup {
    /// The signalled remote endpoint, or `None` when it is not known yet (`0.0.0.0`, `::` or
    /// port 0: on hold or not negotiated) and must be learned by latching.
    pub fn remote_known(&self) -> Option<SocketAddr> {
        (!self.remote.ip().is_unspecified() && self.remote.port() != 0).then_some(self.remote)
    }
}

/// The codecs of a prompt to play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayCodecs {
    /// `session`: the list the last `U`/`L` `c` modifier gave for this stream.
    Session,
    /// Payload types to try in order.
    List(Vec<u8>),
}

/// Per-stream statistics `Q` can name; the names are rtpproxy's, case-sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryStat {
    Ttl,
    NpktsIna,
    NpktsIno,
    LongestIpi,
    RtpaJlast,
    RtpaJmax,
    RtpaJavg,
    Nrelayed,
    Ndropped,
    RtpaNsent,
    RtpaNrcvd,
    RtpaNdups,
    RtpaNlost,
    RtpaPerrs,
}

impl QueryStat {
    /// Every statistic with its wire name.
    pub const ALL: [(QueryStat, &'static str); 14] = [
        (Self::Ttl, "ttl"),
        (Self::NpktsIna, "npkts_ina"),
        (Self::NpktsIno, "npkts_ino"),
        (Self::LongestIpi, "longest_ipi"),
        (Self::RtpaJlast, "rtpa_jlast"),
        (Self::RtpaJmax, "rtpa_jmax"),
        (Self::RtpaJavg, "rtpa_javg"),
        (Self::Nrelayed, "nrelayed"),
        (Self::Ndropped, "ndropped"),
        (Self::RtpaNsent, "rtpa_nsent"),
        (Self::RtpaNrcvd, "rtpa_nrcvd"),
        (Self::RtpaNdups, "rtpa_ndups"),
        (Self::RtpaNlost, "rtpa_nlost"),
        (Self::RtpaPerrs, "rtpa_perrs"),
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }
}

/// One control-protocol command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `V`: base protocol version.
    Version,
    /// `VF <yyyymmdd>`: capability probe; any token is accepted and unknown ones answer `0`.
    VersionFeature { date: String },
    /// `U[mods] callid addr port from_tag [to_tag] [notify_socket notify_tag]`.
    Update(UpdateLookup),
    /// `L[mods] callid addr port from_tag to_tag`.
    Lookup(UpdateLookup),
    /// `D[w] callid from_tag [to_tag]`.
    Delete { stream: StreamRef, weak: bool },
    /// `Q[v] callid from_tag [to_tag [stat ...]]`; no stats means the classic five counters.
    Query {
        stream: StreamRef,
        verbose: bool,
        stats: Vec<QueryStat>,
    },
    /// `I[b][l]`: brief (no per-session lines), with load.
    Info { brief: bool, load: bool },
    /// `G[v] [name ...]`: global counters; names are checked by the executor (E68).
    GetStats { verbose: bool, names: Vec<String> },
    /// `X`: delete every session.
    DeleteAll,
    /// `P[n] callid prompt codecs from_tag [to_tag]`; `n` repetitions, default 1.
    Play {
        stream: StreamRef,
        prompt: String,
        codecs: PlayCodecs,
        count: u32,
    },
    /// `S callid from_tag [to_tag]`: stop playing.
    StopPlay { stream: StreamRef },
    /// `R[s] callid from_tag [to_tag]`; `s` records both directions into one file.
    Record {
        stream: StreamRef,
        single_file: bool,
    },
    /// `C[s] callid target from_tag [to_tag]`: copy media to a UDP target or a file.
    Copy {
        stream: StreamRef,
        target: String,
        single_file: bool,
    },
    /// `N[a] callid from_tag [to_tag]`; `a` stops both directions.
    NoRecord { stream: StreamRef, all: bool },
}
