//! The answers to `VF <yyyymmdd>` capability probes. Controllers switch features on from these
//! answers, so a date answers `1` only when rtprelay really implements it: claiming too much
//! makes Kamailio or OpenSIPS send commands or modifiers that then fail on live calls.
//!
//! The table is the single place to change when a feature is wired to the relay.

/// The base protocol version: the reply to `V`, and a `VF` date always supported. Kamailio and
/// OpenSIPS refuse a node that answers `V` with anything else.
pub const BASE_VERSION: &str = "20040107";

/// One protocol extension date and whether rtprelay announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub date: &'static str,
    pub supported: bool,
    /// What the extension adds, as rtpproxy describes it.
    pub what: &'static str,
}

const fn cap(date: &'static str, supported: bool, what: &'static str) -> Capability {
    Capability {
        date,
        supported,
        what,
    }
}

/// Every known extension date. Dates not listed are unsupported.
pub const CAPABILITIES: &[Capability] = &[
    // Base protocol; Kamailio probes it (as `V`) before anything else.
    cap(BASE_VERSION, true, "basic RTP proxy functionality"),
    // Media index `;N` on tags; Kamailio and OpenSIPS refuse a node without it.
    cap("20050322", true, "multiple RTP streams per call and MOH"),
    // `V <arg>`; the parser accepts `V` alone.
    cap("20060704", false, "extra parameter in the V command"),
    // `z<ms>` is parsed, but the data plane does not repacketize: announcing it would make
    // controllers rely on ptime conversion that never happens.
    cap("20071116", false, "RTP repacketization"),
    // `C` to a UDP target (copying to a file is not supported and answers E65).
    cap("20071218", true, "forking (copying) RTP streams"),
    // `Q` statistics; OpenSIPS reads per-call counters with it.
    cap("20080403", true, "RTP statistics querying"),
    // `c<pt,...>` on U/L: the list is parsed and carried to the session.
    cap("20081102", true, "codecs list in the update/lookup command"),
    // `U ... notify_socket notify_tag`: not wired yet (sessions do expire, but nobody is told).
    cap("20081224", false, "session timeout notifications"),
    // Automatic bridging between interfaces without i/e; not implemented.
    cap("20090810", false, "automatic bridging"),
    // `Il` average load.
    cap("20140323", false, "load tracking and reporting"),
    // `n` modifier on U/L.
    cap("20150330", true, "Un/Ln: new port for an existing stream"),
    // `Q` with named statistics (see `query`); OpenSIPS needs it for its statistics.
    cap("20150420", true, "extended Q command with named statistics"),
    // Notifications over the control connection itself.
    cap("20150617", false, "notify on the control connection"),
    // `&&` sub-commands; the parser rejects them with E3.
    cap("20191015", false, "&& sub-commands"),
    // `N`: stops recording and copying.
    cap("20200226", true, "N command"),
];

/// Whether `VF <date>` answers `1`. Any other text, well-formed or not, answers `0`, as in
/// rtpproxy, which never errors on a probe.
pub fn supports(date: &str) -> bool {
    CAPABILITIES.iter().any(|c| c.supported && c.date == date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kamailio_and_opensips_probes() {
        for date in [
            "20040107", "20050322", "20080403", "20081102", "20071218", "20200226", "20150420",
            "20150330",
        ] {
            assert!(supports(date), "{date}");
        }
        for date in [
            "20071116", "20090810", "20150617", "20170313", "20191015", "20081224",
        ] {
            assert!(!supports(date), "{date}");
        }
        for junk in ["", "2004010", "200401077", " 20040107", "V"] {
            assert!(!supports(junk), "{junk:?}");
        }
    }

    #[test]
    fn dates_are_unique_eight_digit_dates() {
        for (i, c) in CAPABILITIES.iter().enumerate() {
            assert!(c.date.len() == 8 && c.date.bytes().all(|b| b.is_ascii_digit()));
            assert!(
                CAPABILITIES[..i].iter().all(|o| o.date != c.date),
                "{}",
                c.date
            );
        }
    }
}
