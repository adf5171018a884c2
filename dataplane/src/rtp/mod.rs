//! RTP/RTCP parsing and RFC 3550 statistics (sans-IO).
